"""CLIP-AD (Chen et al., "CLIP-AD: A Language-Guided Staged Dual-Path Model for Zero-shot Anomaly
Detection", arXiv 2311.00453; code: ByChelsea/CLIP-AD).

Parts implemented here:

- **Representative Vector Selection (RVS)**: the normal and abnormal sentence embeddings (9 and 10
  states x 22 templates) are L2-normalised and reduced to one representative vector each by
  ``mean``, ``pca``, ``kde``, ``dbscan`` (the official scripts' choice: the mean of the largest
  DBSCAN cluster, eps 0.5 and 15 samples; eps 1.5 and 25 samples on VisA) or ``mean_shift``.
- **SDP**, the training-free Staged Dual-Path model:

  *Architecture surgery.* Beside the unchanged CLIP forward (the "original" path) every block also
  computes a v-v self-attention ``softmax(v v^T / sqrt(d_head)) v`` with the block's own weights
  and out-projection. The surgery path adds these outputs up with no residual and no MLP, and is
  reset at the first block of each of 4 stages (taps ``n_layers // 4 * (1, 2, 3, 4)``, i.e.
  3/6/9/12 on ViT-B-16+). At each stage end its tokens, with the class token taken from the
  original path, go through ``ln_post`` and ``proj``.

  *Feature surgery.* Per stage, with normalised features F and anchors T: class weights
  ``w = softmax(F_cls T) / mean``, the element-wise products ``F * T_c * w_c``, minus their mean
  over the two classes, summed over channels. The four stages are summed. The abnormal channel on
  the patch grid, upsampled bilinearly (``align_corners=False``) to S and smoothed with sigma 8, is
  the map (a signed similarity, within +-4, usually near 0).

  *Image score.* The paper fuses ``p_cls = softmax(100 F_cls T)[abnormal]`` and the map maximum
  ``p_max`` after min-max normalising each over the whole test set of a category; that needs a
  test set, so :meth:`SDP.dataset_scores` does it in evaluation. A single image gets a documented
  stand-in instead: ``0.5 p_cls + 0.5 sigmoid(p_max / map_score_scale)`` (``map_score_scale`` is a
  fixed constant, not calibrated on data; its ranking differs from the paper's score).

Faithfulness notes (see methods.md §3.7):

- The official dual path adds attention residuals to the original path in place, so the original
  tokens stored at a stage end also receive the *next* block's attention residual before they are
  read. This shifts the class token used in stages 1-3 (and SDP+'s features). ``reference_aliasing``
  (default True) reproduces it; False gives the clean stage-end tokens.
- The official code rounds every RVS vector but ``mean`` to fp16 and normalises it in fp16;
  ``round_text_fp16`` (default True) reproduces that, False keeps fp32 (norms then exactly 1).

- **SDP+** (:class:`SDPPlus`), SDP plus one trained ``Linear(C -> D)`` per stage on the stage-end
  original-path patch tokens (raw residual, no ``ln_post``; with ``reference_aliasing`` as above):
  ``q = normalize(Linear_s(x))``, ``logit = 100 q T``, reshaped to the grid, upsampled bilinearly
  (``align_corners=True``) to S, softmax over (normal, abnormal); the abnormal probabilities summed
  over the stages (``M_ft`` in [0, 4]) are added to the *unsmoothed* SDP map, then the sum is
  smoothed (sigma 8; the official scripts use sigma 2 for VisA). Image score as SDP with ``p_max``
  from the combined map. Trained (:mod:`zsad_core.training`) with ``sum_s [focal(P_s, G) +
  dice(P_s[abnormal], G)]``, Adam lr 1e-4, 5 epochs, batch 8, seed 42 (``train_SDP_plus.sh``). The
  authors' released ``train_on_{mvtec,visa}.pth`` load directly (``{"linear_layers": {"fc.<s>.weight",
  "fc.<s>.bias"}}``, the same parameter names as here).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import ClipBackbone, PlainPass
from ..losses import dice_loss, focal_loss
from ..postprocess import gaussian_blur, upsample_patch_maps
from ..prompts import CLIPAD_PROMPTS, PromptSet, reduce_mean_normalized, register_reducer_family, text_anchors
from ..registry import register_method
from ..types import AnomalyResult, MethodInfo
from .base import AnomalyModel, Detector, MethodConfig, ModelOutput, SharedPasses
from .learnable import CheckpointMismatchError, LearnableDetector, TrainingOutput

RVS_METHODS = ("mean", "pca", "kde", "dbscan", "mean_shift")


# -------------------------------------------------------------------------------------------- RVS
def _largest_cluster_mean(data: np.ndarray, labels: np.ndarray) -> np.ndarray:
    clustered = labels[labels >= 0]
    if clustered.size == 0:  # everything is noise: fall back to the plain mean
        return data.mean(0)
    return data[labels == np.bincount(clustered).argmax()].mean(0)


def representative_vector(
    embeddings: torch.Tensor,
    method: str = "dbscan",
    eps: float = 0.5,
    min_samples: int = 15,
    round_fp16: bool = False,
) -> torch.Tensor:
    """CLIP-AD's Representative Vector Selection.

    Args:
        embeddings: (P, D) sentence embeddings of one class (normal or abnormal), any norm.
        method: one of :data:`RVS_METHODS`.
        eps, min_samples: DBSCAN parameters.
        round_fp16: as the official ``encode_text_with_prompt_ensemble`` for every method but
            ``mean``: the vector is cast to fp16 (``torch.tensor(v, dtype=torch.float16)``) and
            normalised in fp16 (``v /= v.norm()``, both rounded to fp16), then used as fp32 here.
            ``mean`` is never rounded (the official code keeps it fp32).
    Returns:
        (D,) float32 unit vector; when rounded, its norm is within a few 1e-4 of 1 (fp16 precision).
    """
    unit = F.normalize(embeddings.float(), dim=-1)
    if method == "mean":
        return reduce_mean_normalized(unit)
    data = unit.cpu().double().numpy()
    if method == "pca":
        # CLIP-AD's pca(E.T, 1): the D coordinates are the samples, so each sentence is centred over its
        # own coordinates; the direction is the first left singular vector of the centred (D, P) matrix.
        # Their vector is the projection onto that direction (the direction times the singular value);
        # its scale matters only to the fp16 rounding.
        centred = data - data.mean(axis=1, keepdims=True)
        left, singular, _ = np.linalg.svd(centred.T, full_matrices=False)
        direction = left[:, 0] * singular[0]
        vector = direction if direction @ data.mean(0) >= 0 else -direction
    elif method == "kde":
        from sklearn.neighbors import KernelDensity

        density = np.exp(KernelDensity(kernel="gaussian", bandwidth=0.3).fit(data).score_samples(data))
        vector = (density[:, None] * data).sum(0) / density.sum()
    elif method == "dbscan":
        from sklearn.cluster import DBSCAN

        vector = _largest_cluster_mean(data, DBSCAN(eps=eps, min_samples=min_samples).fit(data).labels_)
    elif method == "mean_shift":
        from sklearn.cluster import MeanShift

        vector = _largest_cluster_mean(data, MeanShift(bandwidth=2).fit(data).labels_)
    else:
        raise ValueError(f"unknown RVS method {method!r}; choose from {RVS_METHODS}")
    if round_fp16:  # on the CPU, so the rounding does not depend on the device
        half = torch.from_numpy(vector).float().half()
        return (half / half.norm()).float().to(embeddings.device)
    return F.normalize(torch.from_numpy(vector).float(), dim=-1).to(embeddings.device)


def rvs_reducer_name(method: str, eps: float, min_samples: int, round_fp16: bool = False) -> str:
    """The text-reducer name of an RVS setting (:func:`rvs_reducer` reads it back).

    The name is part of the text feature cache key, so every setting that changes the vector is in it.
    """
    name = f"rvs-{method}" if method != "dbscan" else f"rvs-dbscan-eps{eps}-min{min_samples}"
    rounds = round_fp16 and method != "mean"
    return name + ("-fp16" if rounds else "")


_RVS_NAME = re.compile(
    r"rvs-(?:(?P<method>mean_shift|mean|pca|kde)|dbscan-eps(?P<eps>.+)-min(?P<min_samples>\d+))(?P<fp16>-fp16)?"
)


def rvs_reducer(name: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The reduction that an :func:`rvs_reducer_name` name spells, or None for another name."""
    match = _RVS_NAME.fullmatch(name)
    if match is None:
        return None
    settings: dict[str, Any] = {"method": match["method"] or "dbscan", "round_fp16": match["fp16"] is not None}
    if match["eps"] is not None:
        try:
            settings.update(eps=float(match["eps"]), min_samples=int(match["min_samples"]))
        except ValueError:
            return None
    return functools.partial(representative_vector, **settings)


register_reducer_family("rvs-", rvs_reducer)


# ------------------------------------------------------------------------------ staged dual path
@dataclass
class DualPathOutput:
    """Per-stage outputs of :func:`staged_dual_path`.

    Attributes:
        surgery: per stage, (B, 1+N, D) projected surgery-path tokens (CLS from the original path).
        original: per stage, (B, 1+N, C) original-path residual tokens at the stage end (as the
            reference stores them when ``reference_aliasing``).
    """

    surgery: list[torch.Tensor]
    original: list[torch.Tensor]


def staged_dual_path(
    backbone: ClipBackbone,
    pixels: torch.Tensor,
    stage_ends: Sequence[int],
    reference_aliasing: bool = True,
    plain: PlainPass | None = None,
) -> DualPathOutput:
    """The original CLIP path and the staged v-v surgery path side by side.

    The original path is the backbone's :meth:`~zsad_core.backbone.ClipBackbone.plain_pass`
    (shared with other methods when given); the surgery path reads each block's input from it.

    Args:
        backbone: the frozen CLIP.
        pixels: (B, 3, S, S) normalised images.
        stage_ends: 1-based block indices closing each stage, e.g. (3, 6, 9, 12); the first stage
            starts at block 1, each next one right after the previous end.
        reference_aliasing: store stage-end original tokens as the official code ends up reading
            them (with the next block's attention residual added, for every stage but the last);
            see the module docstring.
        plain: the plain pass of ``pixels``, if already run.
    """
    stage_ends = sorted(stage_ends)
    if not stage_ends or stage_ends[-1] > backbone.num_layers or stage_ends[0] < 1:
        raise ValueError(f"stage ends {stage_ends} do not fit a {backbone.num_layers}-block image tower")
    plain = plain if plain is not None else backbone.plain_pass(pixels)
    stage_starts = {0} | {end for end in stage_ends[:-1]}  # 0-based indices of blocks that reset the path
    blocks = backbone.blocks
    surgery_tokens: list[torch.Tensor] = []
    original_tokens: list[torch.Tensor] = []
    # The official aliasing reads each stage end (but the last) after the next block's attention residual.
    aliased = {end + 1 for end in stage_ends[:-1]} if reference_aliasing else set()
    stream = plain.through(stage_ends[-1], keep=aliased)
    surgery_path = torch.zeros_like(stream[0])
    for index in range(stage_ends[-1]):
        block = blocks[index]
        value = backbone.attention_value(block, block.ln_1(stream[index]))
        value_attended = backbone.attention_output(block, F.scaled_dot_product_attention(value, value, value))
        surgery_path = value_attended if index in stage_starts else surgery_path + value_attended
        if index + 1 in stage_ends:
            original = plain.after_attention(index + 2) if index + 2 in aliased else stream[index + 1]
            original_tokens.append(original)
            surgery_tokens.append(surgery_path)
    surgery = [
        backbone.project_tokens(torch.cat([original[:, :1], tokens[:, 1:]], dim=1))
        for tokens, original in zip(surgery_tokens, original_tokens)
    ]
    return DualPathOutput(surgery=surgery, original=original_tokens)


def feature_surgery(features: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """CLIP-Surgery-style feature surgery for two classes, in closed form.

    ``sum_D(F * T_c * w_c - mean_c(F * T_c * w_c)) = w_c cos_c - mean_c(w_c cos_c)``, so the
    (B, 1+N, 2, D) product tensor of the reference never needs to exist.

    Args:
        features: (B, 1+N, D) L2-normalised tokens, CLS first.
        anchors: (D, 2) normal/abnormal text anchors.
    Returns:
        (B, 1+N, 2) similarities with the part common to both classes removed.
    """
    cosine = features @ anchors
    weights = cosine[:, :1].softmax(dim=-1)
    weights = weights / weights.mean(dim=-1, keepdim=True)
    weighted = cosine * weights
    return weighted - weighted.mean(dim=-1, keepdim=True)


def minmax(values: np.ndarray) -> np.ndarray:
    """Min-max normalise to [0, 1]; a constant array maps to zeros."""
    values = np.asarray(values, dtype=np.float64)
    span = values.max() - values.min() if values.size else 0.0
    return (values - values.min()) / span if span > 0 else np.zeros_like(values)


@dataclass(frozen=True)
class SDPConfig(MethodConfig):
    """SDP settings; defaults are the official ``test_SDP.sh`` (MVTec AD) configuration.

    Attributes:
        layers: stage-end blocks (1-based); None = ``n_layers // 4 * (1, 2, 3, 4)``.
        rvs: text reduction, one of :data:`RVS_METHODS`.
        rvs_eps, rvs_min_samples: DBSCAN parameters (the official VisA runs use 1.5 and 25).
        reference_aliasing: reproduce the official in-place aliasing (module docstring).
        map_score_scale: scale of the sigmoid on the map maximum in the single-image score.
        round_text_fp16: round the representative vectors to fp16 and normalise them in fp16, as
            the official code does for every RVS but ``mean`` (:func:`representative_vector`);
            False keeps them fp32.

    ``resize`` defaults to the official preprocessing (Pillow's bicubic on the 8-bit image;
    :mod:`zsad_core.preprocess`).
    """

    model: str = "ViT-B-16-plus-240:laion400m_e31"
    image_size: int = 240
    sigma: float = 8.0
    resize: str = "pil-bicubic"
    layers: tuple[int, ...] | None = None
    rvs: str = "dbscan"
    rvs_eps: float = 0.5
    rvs_min_samples: int = 15
    reference_aliasing: bool = True
    map_score_scale: float = 0.01
    round_text_fp16: bool = True


class SDPModel(AnomalyModel):
    """SDP's torch model: ``forward(pixels, anchors)`` with anchors (D, 2), the RVS vectors."""

    config: SDPConfig
    text_logit_scale = 100.0

    @property
    def stage_ends(self) -> tuple[int, ...]:
        return tuple(self.config.layers) if self.config.layers else self.backbone.default_layers()

    def dual_path(self, pixels: torch.Tensor, passes: SharedPasses | None = None) -> DualPathOutput:
        """:func:`staged_dual_path` of ``pixels``, shared through ``passes`` (SDP+ reuses SDP's)."""
        passes = passes or SharedPasses()
        stage_ends, aliasing = self.stage_ends, self.config.reference_aliasing
        return passes.get(
            self.backbone,
            pixels,
            f"dual path {stage_ends} aliasing={aliasing}",
            lambda: staged_dual_path(self.backbone, pixels, stage_ends, aliasing, passes.plain(self.backbone, pixels)),
        )

    def surgery_similarity(
        self, pixels: torch.Tensor, anchors: torch.Tensor, passes: SharedPasses | None = None
    ) -> tuple[torch.Tensor, DualPathOutput]:
        """Summed feature-surgery similarities over the stages, (B, 1+N, 2), and the raw path outputs."""
        paths = self.dual_path(pixels, passes)
        similarity = sum(feature_surgery(F.normalize(s.float(), dim=-1), anchors) for s in paths.surgery)
        return similarity, paths

    @staticmethod
    def class_embedding(paths: DualPathOutput) -> torch.Tensor:
        """(B, D) unit embedding of the last stage's class token (what ``p_cls`` compares with the text)."""
        return F.normalize(paths.surgery[-1][:, 0].float(), dim=-1)

    def class_probability(self, paths: DualPathOutput, anchors: torch.Tensor) -> torch.Tensor:
        """(B,) ``softmax(100 * cos(global, T))[abnormal]`` from the last stage's class token."""
        return (self.text_logit_scale * self.class_embedding(paths) @ anchors).softmax(dim=-1)[:, 1]

    def unsmoothed_map(self, similarity: torch.Tensor) -> torch.Tensor:
        """(B, 1+N, 2) summed similarities -> (B, S, S) abnormal-channel map, upsampled, not smoothed."""
        grid = self.backbone.grid_size
        patch_map = similarity[:, 1:, 1].reshape(-1, grid, grid)
        return upsample_patch_maps(patch_map, self.config.image_size)

    def scored(self, maps: torch.Tensor, paths: DualPathOutput, anchors: torch.Tensor) -> ModelOutput:
        """Smoothed (B, S, S) maps -> the output with the single-image stand-in score (module docstring)."""
        p_cls = self.class_probability(paths, anchors)
        p_max = maps.flatten(1).amax(dim=1)
        single = 0.5 * p_cls + 0.5 * torch.sigmoid(p_max / self.config.map_score_scale)
        return ModelOutput(
            scores=single,
            maps=maps,
            extras={"p_cls": p_cls, "p_max": p_max},
            embeddings=self.class_embedding(paths),
        )

    def forward(self, pixels: torch.Tensor, text: torch.Tensor, passes: SharedPasses | None = None) -> ModelOutput:
        similarity, paths = self.surgery_similarity(pixels, text, passes)
        return self.scored(gaussian_blur(self.unsmoothed_map(similarity), self.config.sigma), paths, text)


@register_method("sdp")
class SDP(Detector):
    """CLIP-AD's training-free Staged Dual-Path model. See the module docstring."""

    info = MethodInfo(
        id="sdp",
        name="CLIP-AD SDP",
        paper="Chen et al., CLIP-AD: A Language-Guided Staged Dual-Path Model for Zero-shot Anomaly "
        "Detection, arXiv 2311.00453 (2023)",
        training_free=True,
        default_model=SDPConfig.model,
        image_size=SDPConfig.image_size,
        map_range=(-4.0, 4.0),
        description="representative text vectors, staged v-v surgery path, feature surgery",
    )
    config_class = SDPConfig
    default_prompts = CLIPAD_PROMPTS
    config: SDPConfig
    model: SDPModel

    text_score_name = "p_cls, the class-token part of the image score (the map maximum is the other part)"
    text_logit_scale = SDPModel.text_logit_scale

    def build_model(self) -> SDPModel:
        return SDPModel(self.backbone, self.config)

    @property
    def stage_ends(self) -> tuple[int, ...]:
        return self.model.stage_ends

    @property
    def text_reducer(self) -> str:
        config = self.config
        return rvs_reducer_name(config.rvs, config.rvs_eps, config.rvs_min_samples, config.round_text_fp16)

    def _prepare_text(self, class_name: str, prompts: PromptSet) -> torch.Tensor:
        return text_anchors(self.backbone, class_name, prompts, reducer=self.text_reducer, method_id="clipad")

    def dataset_scores(self, results: Sequence[AnomalyResult]) -> np.ndarray:
        """The paper's image score: ``minmax(p_cls) + minmax(p_max)`` over one category's test set."""
        p_cls = np.array([r.extras["p_cls"] for r in results])
        p_max = np.array([r.extras["p_max"] for r in results])
        return minmax(p_cls) + minmax(p_max)


# ------------------------------------------------------------------------------------------- SDP+
SDP_PLUS_INIT_SEED = 20231101  # fixed seed of the untrained linear layers (reproducible detect)


class StageProjections(nn.Module):
    """SDP+'s trained part: one ``Linear(C -> D)`` per stage, named ``fc.<stage>`` as in the reference.

    Initialised like ``nn.Linear`` (uniform in +-1/sqrt(C)) from a fixed seed, so an untrained
    detector is reproducible.
    """

    def __init__(self, width: int, embed_dim: int, stages: int, seed: int = SDP_PLUS_INIT_SEED) -> None:
        super().__init__()
        self.fc = nn.ModuleList(nn.Linear(width, embed_dim) for _ in range(stages))
        generator = torch.Generator().manual_seed(seed)
        bound = 1.0 / width**0.5
        with torch.no_grad():
            for layer in self.fc:
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, tokens: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per stage, (B, N, C) patch tokens -> (B, N, D) L2-normalised projections."""
        if len(tokens) != len(self.fc):
            raise ValueError(f"expected {len(self.fc)} stages of tokens, got {len(tokens)}")
        return [F.normalize(layer(x.float()), dim=-1) for layer, x in zip(self.fc, tokens)]


class SDPPlusModel(SDPModel):
    """SDP+'s torch model: SDP plus the trained :class:`StageProjections` (``learned``)."""

    config: SDPPlusConfig

    def __init__(self, backbone: ClipBackbone, config: SDPPlusConfig, learned: StageProjections) -> None:
        super().__init__(backbone, config)
        self.learned = learned

    def stage_probabilities(self, original: Sequence[torch.Tensor], anchors: torch.Tensor) -> list[torch.Tensor]:
        """Per stage, (B, 2, S, S) softmax probabilities (normal, abnormal) of the trained layers.

        Args:
            original: per stage, (B, 1+N, C) original-path tokens (:attr:`DualPathOutput.original`).
            anchors: (D, 2) text anchors, or (B, D, 2) one set per image.
        """
        grid = self.backbone.grid_size
        projected = self.learned([tokens[:, 1:] for tokens in original])
        probabilities = []
        for features in projected:
            logits = 100.0 * features @ anchors.to(features.dtype)  # (B, N, 2)
            logits = logits.transpose(1, 2).reshape(len(features), 2, grid, grid)
            upsampled = upsample_patch_maps(logits, self.config.image_size, align_corners=True)
            probabilities.append(upsampled.softmax(dim=1))
        return probabilities

    def forward(self, pixels: torch.Tensor, text: torch.Tensor, passes: SharedPasses | None = None) -> ModelOutput:
        similarity, paths = self.surgery_similarity(pixels, text, passes)
        fine_tuned = sum(probs[:, 1] for probs in self.stage_probabilities(paths.original, text))
        maps = gaussian_blur(self.unsmoothed_map(similarity) + fine_tuned, self.config.sigma)
        return self.scored(maps, paths, text)


@dataclass(frozen=True)
class SDPPlusConfig(SDPConfig):
    """SDP+ settings; defaults are the official ``test_SDP_plus.sh`` MVTec AD configuration.

    Attributes:
        checkpoint: trained linear layers: a ``.safetensors`` file from ``zsad train``, a
            released-weights name (``sdp-plus-mvtec``, ``sdp-plus-visa``; :mod:`zsad_core.weights`)
            or the authors' ``train_on_*.pth``. None keeps the seeded initialisation (untrained).
        sigma: 8 as in the official MVTec/medical runs; they use 2 on VisA.
        map_score_scale: the single-image stand-in score uses ``sigmoid(p_max / map_score_scale)``;
            the SDP+ map lies in about [-4, 8] (SDP's within +-4 plus up to 4), hence 1.0 here.
    """

    checkpoint: str | None = None
    map_score_scale: float = 1.0


@register_method("sdp_plus")
class SDPPlus(LearnableDetector, SDP):
    """CLIP-AD's SDP+: SDP plus one trained linear layer per stage. See the module docstring."""

    info = MethodInfo(
        id="sdp_plus",
        name="CLIP-AD SDP+",
        paper=SDP.info.paper,
        training_free=False,
        default_model=SDPPlusConfig.model,
        image_size=SDPPlusConfig.image_size,
        map_range=(-4.0, 8.0),
        description="SDP plus one linear layer per stage trained on auxiliary data (focal + dice)",
    )
    config_class = SDPPlusConfig
    config: SDPPlusConfig
    model: SDPPlusModel
    default_optimizer: ClassVar[dict[str, Any]] = {"name": "adam", "lr": 1e-4}
    default_epochs: ClassVar[int] = 5
    default_batch_size: ClassVar[int] = 8
    default_seed: ClassVar[int] = 42
    default_mosaic_prob: ClassVar[float] = 0.0

    def build_model(self) -> SDPPlusModel:
        stages = len(SDPModel(self.backbone, self.config).stage_ends)
        learned = StageProjections(self.backbone.width, self.backbone.embed_dim, stages).to(self.backbone.device)
        return SDPPlusModel(self.backbone, self.config, learned)

    def setting_metadata(self) -> dict[str, str]:
        return {**super().setting_metadata(), "reference_aliasing": json.dumps(self.config.reference_aliasing)}

    @property
    def tap_layers(self) -> tuple[int, ...]:
        return self.stage_ends

    # ------------------------------------------------------------------------------------ training
    def training_forward(self, pixels: torch.Tensor, class_names: Sequence[str]) -> TrainingOutput:
        with torch.autocast(device_type=pixels.device.type, enabled=False):  # cached anchors stay fp32
            anchors = torch.stack([self._prepare_text(name, self.default_prompts) for name in class_names])
        with torch.no_grad():
            paths = staged_dual_path(self.backbone, pixels, self.stage_ends, self.config.reference_aliasing)
        return TrainingOutput(layer_probs=self.model.stage_probabilities(paths.original, anchors), image_probs=None)

    def training_loss(self, output: TrainingOutput, masks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``sum_s [focal(P_s, G) + dice(P_s[abnormal], G)]`` (no normal-channel dice, no image loss)."""
        masks = masks.float()
        total = masks.new_zeros(())
        for probs in output.layer_probs:
            probs = probs.float()
            total = total + focal_loss(probs, masks) + dice_loss(probs[:, 1], masks)
        return total

    def convert_foreign_state_dict(self, state_dict: dict) -> dict[str, torch.Tensor]:
        """The authors' ``train.py`` checkpoints: ``{"linear_layers": {"fc.<stage>.weight"/"bias": ...}}``."""
        inner = state_dict.get("linear_layers", state_dict)
        if not isinstance(inner, dict) or not inner or not all(str(k).startswith("fc.") for k in inner):
            raise CheckpointMismatchError(
                "not an SDP+ checkpoint: expected the CLIP-AD train.py layout {'linear_layers': {'fc.0.weight', "
                f"'fc.0.bias', ...}}, found keys {sorted(map(str, state_dict))[:6]}"
            )
        return dict(inner)
