"""WinCLIP, zero-shot (Jeong et al., "WinCLIP: Zero-/Few-Shot Anomaly Classification and
Segmentation", CVPR 2023).

- Text: the compositional prompt ensemble (7 normal and 4 abnormal states x 22 templates), the raw
  sentence embeddings averaged per class and then normalised (as anomalib implements it).
- Image score: ``softmax(cos(global, T) / 0.07)[abnormal]`` on the whole-image embedding.
- Map: for each window size k (2 and 3 patches, stride 1), every k x k window of patch tokens,
  with its original positional embeddings and the class token in front, runs through the whole
  image tower on its own (``ln_pre``, all blocks, ``ln_post``, ``proj``) and is scored like the
  image. Each patch takes the harmonic mean of the scores of the windows covering it; the scales
  and the image score (as a third, constant scale) are combined by a harmonic mean, and the patch
  grid is upsampled bilinearly (``align_corners=False``) to S x S.
- No Gaussian smoothing (``sigma=0``), like the reference implementations.

Equal to anomalib's ``WinClipModel`` zero-shot path (checked number by number on random weights in
``tests/test_reference_agreement.py``) when given anomalib's 21-template prompt list; by default the
paper's 22 templates are used (see :data:`zsad_core.prompts.WINCLIP_TEMPLATES`). All windows of all
images of a batch run as one batch of short sequences per scale, instead of one pass per window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..backbone import ClipBackbone
from ..postprocess import gaussian_blur, upsample_patch_maps
from ..prompts import WINCLIP_PROMPTS, PromptSet, text_anchors
from ..registry import register_method
from ..types import MethodInfo
from .base import AnomalyModel, Detector, MethodConfig, ModelOutput, SharedPasses


@dataclass(frozen=True)
class WinCLIPConfig(MethodConfig):
    """WinCLIP settings; defaults are the paper's zero-shot setting.

    Attributes:
        scales: window sides in patches.
        temperature: tau of the two-class softmax over cosine similarities.
        window_batch: window sequences per forward chunk (memory bound, not a result setting).

    ``resize`` defaults to anomalib's preprocessing (a float tensor resized bicubic with
    antialiasing, not clamped; :mod:`zsad_core.preprocess`).
    """

    model: str = "ViT-B-16-plus-240:laion400m_e31"
    image_size: int = 240
    sigma: float = 0.0
    resize: str = "tensor-bicubic-unclamped"
    scales: tuple[int, ...] = (2, 3)
    temperature: float = 0.07
    window_batch: int = 2048


def window_indices(grid_size: int, window: int) -> torch.Tensor:
    """Patch indices of every ``window`` x ``window`` window with stride 1 on a square grid.

    Returns:
        (n_windows, window**2) long tensor; windows in row-major order of their top-left corner,
        patches row-major inside each window; indices count patches only (no class token).
    """
    if window > grid_size:
        raise ValueError(f"window of {window} patches does not fit a {grid_size}x{grid_size} patch grid")
    grid = torch.arange(grid_size * grid_size).view(grid_size, grid_size)
    return grid.unfold(0, window, 1).unfold(1, window, 1).reshape(-1, window * window)


def harmonic_window_aggregation(window_scores: torch.Tensor, windows: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Per patch, the harmonic mean of the scores of the windows covering it.

    Args:
        window_scores: (B, n_windows) positive scores.
        windows: (n_windows, k*k) patch indices of each window.
        num_patches: N.
    Returns:
        (B, N); patches no window covers get 0.
    """
    coverage = torch.zeros(windows.shape[0], num_patches, dtype=window_scores.dtype, device=window_scores.device)
    coverage.scatter_(1, windows.to(window_scores.device), 1.0)
    inverse_sum = (1.0 / window_scores) @ coverage
    counts = coverage.sum(0)
    return torch.where(counts > 0, counts / inverse_sum, torch.zeros_like(inverse_sum))


class WinCLIPModel(AnomalyModel):
    """WinCLIP's torch model: ``forward(pixels, anchors)`` with anchors (D, 2) from :func:`text_anchors`.

    The windows of each scale and the patches they cover are fixed by the grid, so they are
    buffers built once (nothing is computed on the host per call).
    """

    config: WinCLIPConfig

    def __init__(self, backbone: ClipBackbone, config: WinCLIPConfig) -> None:
        super().__init__(backbone, config)
        grid = backbone.grid_size
        for scale in config.scales:
            windows = window_indices(grid, scale)
            self.register_buffer(f"windows_{scale}", windows.to(backbone.device), persistent=False)

    def windows(self, scale: int) -> torch.Tensor:
        """(n_windows, scale**2) patch indices of the windows of one scale."""
        return getattr(self, f"windows_{scale}")

    def class_scores(self, embeddings: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """(..., D) embeddings -> (...) abnormal probability ``softmax(cos / tau)[1]``."""
        logits = F.normalize(embeddings.float(), dim=-1) @ anchors / self.config.temperature
        return logits.softmax(dim=-1)[..., 1]

    def window_embeddings(self, tokens: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """Embeddings of every window of every image.

        Args:
            tokens: (B, 1+N, C) patch embedding with positional embedding (before ``ln_pre``).
            windows: (n_windows, k*k) patch indices.
        Returns:
            (B, n_windows, D) window embeddings.
        """
        backbone = self.backbone
        batch, n_windows = tokens.shape[0], windows.shape[0]
        cls_index = torch.zeros(n_windows, 1, dtype=windows.dtype, device=windows.device)
        index = torch.cat([cls_index, windows + 1], dim=1).to(tokens.device)
        sequences = tokens[:, index].flatten(0, 1)  # (B * n_windows, 1 + k*k, C)
        outputs = []
        for start in range(0, sequences.shape[0], self.config.window_batch):
            x = backbone.visual.ln_pre(sequences[start : start + self.config.window_batch])
            for block in backbone.blocks:
                x = backbone.block_forward(block, x)
            outputs.append(backbone.pool(x))
        return torch.cat(outputs).view(batch, n_windows, -1)

    def forward(self, pixels: torch.Tensor, text: torch.Tensor, passes: SharedPasses | None = None) -> ModelOutput:
        backbone = self.backbone
        grid = backbone.grid_size
        plain = (passes or SharedPasses()).plain(backbone, pixels)
        tokens, pooled = plain.embedded, plain.pooled
        image_scores = self.class_scores(pooled, text)  # (B,)

        inverse = (1.0 / image_scores)[:, None]  # the image score is the coarsest "scale"
        for scale in self.config.scales:
            windows = self.windows(scale)
            scores = self.class_scores(self.window_embeddings(tokens, windows), text)
            inverse = inverse + 1.0 / harmonic_window_aggregation(scores, windows, grid * grid)
        patch_map = (len(self.config.scales) + 1) / inverse
        maps = upsample_patch_maps(patch_map.view(-1, grid, grid), self.config.image_size)
        return ModelOutput(
            scores=image_scores,
            maps=gaussian_blur(maps, self.config.sigma),
            embeddings=F.normalize(pooled.float(), dim=-1),
        )


@register_method("winclip")
class WinCLIP(Detector):
    """Zero-shot WinCLIP. See the module docstring for the algorithm and references."""

    info = MethodInfo(
        id="winclip",
        name="WinCLIP",
        paper="Jeong et al., WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation, CVPR 2023",
        training_free=True,
        default_model=WinCLIPConfig.model,
        image_size=WinCLIPConfig.image_size,
        map_range=(0.0, 1.0),
        description="compositional prompt ensemble, multi-scale window scoring, harmonic aggregation",
    )
    config_class = WinCLIPConfig
    default_prompts = WINCLIP_PROMPTS
    config: WinCLIPConfig
    model: WinCLIPModel

    text_reducer = "mean_raw"

    @property
    def text_logit_scale(self) -> float:
        return 1.0 / self.config.temperature

    def build_model(self) -> WinCLIPModel:
        return WinCLIPModel(self.backbone, self.config)

    def _prepare_text(self, class_name: str, prompts: PromptSet) -> torch.Tensor:
        return text_anchors(self.backbone, class_name, prompts, reducer=self.text_reducer, method_id=self.method_id)
