"""AdaCLIP (Cao et al., "AdaCLIP: Adapting CLIP with Hybrid Learnable Prompts for Zero-Shot Anomaly
Detection", ECCV 2024, arXiv 2407.15795; code: caoyunkang/AdaCLIP). See methods.md §2.

A frozen CLIP (ViT-L-14-336, OpenAI weights run with plain GELU, at 518 px) plus learned parts,
all in :class:`AdaCLIPParameters` (``detector.learned``):

- **Prompting layers.** In the first J blocks of both towers, M learned tokens per block, each the
  sum of a *static* token (a parameter per block) and a *dynamic* token (generated from the image).
  Image tower: the tokens are appended after the patch tokens before block 0 (no positional
  embedding) and replace the last M tokens before blocks 1..J-1; they keep flowing through the
  later blocks and are dropped from the taps. Text tower: block 0 sees the sentence's own word
  embeddings; before blocks 1..J-1 the hidden states at positions 1..M (the first M word tokens
  after ``<SOT>``) are overwritten. ``prompt_type`` picks static ("S"), dynamic ("D") or both
  ("SD"); ``branches`` picks the image ("V") and/or text ("L") tower.
- **Dynamic Prompt Generator.** ``g``, the frozen *un-prompted* global image embedding
  ``ln_post(CLS) @ proj``, goes through M separate linear maps per tower (one per prompt token);
  the same dynamic tokens are added at every prompted block.
- **Projections.** One ``Linear(C_v -> D)`` per tap layer on the raw residual stream (patch tokens
  only), one ``Linear(D -> D)`` on the prompted pass's pooled embedding.

Text anchors: the class name ('-' -> ' ') in 7 normal and 5 abnormal states x 4 templates
(:data:`~zsad_core.prompts.ADACLIP_PROMPTS`); each sentence embedding is normalised, averaged per
class, normalised: ``T`` (D, 2). With image-dependent text prompts (dynamic prompts and the text
branch on) ``T`` is recomputed for every image, each image with its own dynamic tokens, so a batch
of B images gives exactly what B single-image calls give (the authors' code only runs batch 1).

Map: ``logit_l = 100 F_l T`` per tap layer (``F_l`` the normalised projected patch tokens),
reshaped to the patch grid, upsampled bilinearly (``align_corners=True``) to S, averaged over the
layers, softmax over (normal, abnormal); the abnormal probability, Gaussian-smoothed (sigma 4).

Image score (Hybrid Semantic Fusion, the authors' *code* version): the ``min(N, 5K)`` patches with
the highest ``softmax(mean_l logit_l)[abnormal]`` (patch resolution), their 4 layers' projected
tokens concatenated, KMeans with K clusters; each cluster's centre is the mean of all its rows over
all layers, the centres are averaged with equal weight and normalised (``h``);
``f = normalize(alpha h + (1 - alpha) f_cls)`` and the score is ``softmax(100 f T)[abnormal]``.
Without HSF the score is ``softmax(100 f_cls T)[abnormal]``.

Paper <-> code discrepancies (methods.md §2.12), and which one this follows:

1. HSF: the code version above (the paper picks the single most anomalous cluster).
2. The DPG uses M separate linear layers (the code), not one.
3. Text prompts start at the 2nd text block and overwrite word tokens; image prompts are appended.
4. OpenAI weights with GELU (``quick_gelu=False``), as the authors ran them.
5. The positional embedding is resized to 518 px bicubically *without* antialiasing (what
   :mod:`zsad_core.backbone` does by default, as the authors' loader does).

Deviations from the authors' code (checked against it number by number on random weights in
``tests/test_adaclip.py``, with ``tests/fixtures/reference/adaclip_authors.npz``):

- Batches: each image gets its own dynamic text prompts and text pass (the authors broadcast
  one image's prompts over a batch, which is why their batch size must be 1).
- KMeans gets a fixed ``random_state`` (``hsf_seed``); the authors' has none and draws from
  numpy's global RNG (seeded once with 111 in their scripts; ``hsf_seed=None`` does the same).
  Clusters left empty by KMeans (only possible with duplicate points) are skipped instead of
  giving NaN, and K is lowered to the number of selected patches when fewer.
- The inserted prompt tokens are not rounded to fp16 (the authors cast them with ``.half()`` even
  on CPU); ``round_prompts_fp16=True`` reproduces the rounding, which moves patch probabilities by
  ~1e-4 and can change the HSF top-k set and clusters.
- The map is ``p_abnormal``; the code writes ``(p_abnormal + 1 - p_normal) / 2``, the same number.

Training (:meth:`AdaCLIP.training_forward`, :meth:`AdaCLIP.training_loss`, methods.md §2.9):
per-layer softmax maps of the upsampled logits (no averaging) and the image probabilities the
authors' trainer uses, i.e. *with* HSF when ``use_hsf`` (gradients flow through the cluster means;
the KMeans labels are constants); loss = focal(image) + sum over layers of focal(map) +
dice(abnormal, mask) + dice(normal, 1 - mask). AdamW, lr 0.01, betas (0.5, 0.999), 5 epochs,
batch 1, seed 111, 2x2 mosaic with probability 0.2 on MVTec-format data.

The authors' released ``.pth`` files load directly (:meth:`AdaCLIP.convert_foreign_state_dict`
maps their key names, see :data:`AUTHORS_KEY_PREFIXES`).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import ClipBackbone
from ..losses import dice_loss, focal_loss
from ..postprocess import gaussian_blur, upsample_patch_maps
from ..prompts import ADACLIP_PROMPTS, PromptSet, sentence_embeddings, text_anchors
from ..registry import register_method
from ..types import MethodInfo
from .base import AnomalyModel, MethodConfig, ModelOutput, PreparedText, SharedPasses
from .learnable import CheckpointMismatchError, LearnableDetector, TrainingOutput

LOGIT_SCALE = 100.0  # hard-coded by the authors (the model's own logit_scale is ignored)
PROMPT_TYPES = ("S", "D", "SD")
BRANCHES = ("", "V", "L", "VL")

# The authors' checkpoint key prefixes (method/trainer.py saves ``clip_model.<part>...``) -> ours.
AUTHORS_KEY_PREFIXES: dict[str, str] = {
    "text_prompter.static_prompts.": "text_static_prompts.",
    "visual_prompter.static_prompts.": "visual_static_prompts.",
    "patch_token_layer.head.": "patch_projections.",
    "cls_token_layer.head.0.": "global_projection.",
    "dynamic_visual_prompt_generator.head.": "visual_prompt_generator.",
    "dynamic_text_prompt_generator.head.": "text_prompt_generator.",
}


# ----------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class AdaCLIPConfig(MethodConfig):
    """AdaCLIP settings; defaults are the authors' code (methods.md §2.2).

    Attributes:
        layers: tap layers (1-based); None = ``n_layers // 4 * (1, 2, 3, 4)`` (6/12/18/24 on ViT-L).
        prompt_length: M, learned tokens per prompted block.
        prompt_depth: J, number of prompted blocks (0 = no prompting).
        prompt_type: "S" static, "D" dynamic (from the image), "SD" both (hybrid).
        branches: towers that get prompts: "V" image, "L" text, "VL" both, "" none.
        use_hsf: image score by Hybrid Semantic Fusion (else the projected global embedding alone).
        hsf_clusters: K, KMeans clusters.
        hsf_topk_factor: HSF clusters the ``min(N, factor * K)`` most anomalous patches.
        hsf_alpha: weight of the HSF embedding against the global one.
        hsf_seed: KMeans ``random_state``; None = numpy's global RNG, as the authors' code.
        hsf_kmeans: "sklearn" (the authors' KMeans, on the host) or "torch" (fixed-iteration Lloyd
            on the device, initialised from the most anomalous patches; exportable; other clusters).
        seed: seed of the learned parts' initialisation (static prompts N(0, 0.02), linear layers
            PyTorch's default).
        round_prompts_fp16: round inserted prompt tokens to fp16 as the authors' code does.
        checkpoint: trained parameters to load (a file or a released-weights name).

    ``resize`` defaults to the authors' preprocessing (Pillow's bicubic on the 8-bit image;
    :mod:`zsad_core.preprocess`).
    """

    model: str = "ViT-L-14-336:openai"
    image_size: int = 518
    quick_gelu: bool = False
    sigma: float = 4.0
    batch_size: int = 8
    resize: str = "pil-bicubic"
    layers: tuple[int, ...] | None = None
    prompt_length: int = 5
    prompt_depth: int = 4
    prompt_type: str = "SD"
    branches: str = "VL"
    use_hsf: bool = True
    hsf_clusters: int = 20
    hsf_topk_factor: int = 5
    hsf_alpha: float = 0.2
    hsf_seed: int | None = 111
    hsf_kmeans: str = "sklearn"
    seed: int = 111
    round_prompts_fp16: bool = False
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prompt_type not in PROMPT_TYPES:
            raise ValueError(
                f"prompt_type must be one of {PROMPT_TYPES} (static, dynamic, both), got {self.prompt_type!r}"
            )
        if self.branches not in BRANCHES:
            raise ValueError(f"branches must be one of {BRANCHES} (V image, L text), got {self.branches!r}")
        if self.prompt_length < 1:
            raise ValueError(f"prompt_length must be at least 1, got {self.prompt_length}")
        if self.prompt_depth < 0:
            raise ValueError(f"prompt_depth must be 0 or more, got {self.prompt_depth}")
        if self.hsf_clusters < 1 or self.hsf_topk_factor < 1:
            raise ValueError(
                f"hsf_clusters and hsf_topk_factor must be at least 1, got {self.hsf_clusters}, {self.hsf_topk_factor}"
            )
        if self.hsf_kmeans not in KMEANS_BACKENDS:
            raise ValueError(f"hsf_kmeans must be one of {KMEANS_BACKENDS}, got {self.hsf_kmeans!r}")
        if not 0.0 <= self.hsf_alpha <= 1.0:
            raise ValueError(f"hsf_alpha must lie in [0, 1], got {self.hsf_alpha}")
        if self.layers is not None and (len(self.layers) == 0 or min(self.layers) < 1):
            raise ValueError(f"layers must be a non-empty list of 1-based block indices, got {self.layers}")


# ----------------------------------------------------------------------------------- learned parts
class AdaCLIPParameters(nn.Module):
    """All of AdaCLIP's trained parameters (the frozen CLIP is not here).

    Parameter names (shapes for ViT-L-14-336: C_v = 1024, C_t = D = 768, M = 5, J = 4, 4 taps):

    - ``visual_static_prompts.{j}`` (M, C_v), j < J: when "V" in branches and "S" in prompt_type.
    - ``text_static_prompts.{j}`` (M, C_t), j < J (``.0`` is never used, as in the authors' code):
      when "L" in branches and "S" in prompt_type.
    - ``visual_prompt_generator.{m}`` Linear(D -> C_v), m < M: when "D" in prompt_type and "V" in branches.
    - ``text_prompt_generator.{m}`` Linear(D -> C_t), m < M: when "D" in prompt_type and "L" in branches.
    - ``patch_projections.{i}`` Linear(C_v -> D), one per tap layer.
    - ``global_projection`` Linear(D -> D).

    With the defaults that is 10,665,472 parameters on ViT-L-14-336.
    """

    def __init__(
        self,
        *,
        vision_width: int,
        text_width: int,
        embed_dim: int,
        num_taps: int,
        prompt_length: int = 5,
        prompt_depth: int = 4,
        prompt_type: str = "SD",
        branches: str = "VL",
        seed: int = 111,
    ) -> None:
        super().__init__()
        if prompt_type not in PROMPT_TYPES or branches not in BRANCHES:
            raise ValueError(f"unknown prompt_type {prompt_type!r} or branches {branches!r}")
        self.prompt_length = prompt_length
        self.prompt_depth = prompt_depth
        self.static = "S" in prompt_type and prompt_depth > 0
        self.dynamic = "D" in prompt_type and prompt_depth > 0
        self.visual_prompted = "V" in branches and prompt_depth > 0
        self.text_prompted = "L" in branches and prompt_depth > 0
        # Each part is drawn from its own seed (seed + part number), so a part's initial values do
        # not depend on which other parts a setting builds (e.g. "S" and "SD" share static prompts).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.visual_static_prompts = self._static_prompts(self.visual_prompted, vision_width)
            torch.manual_seed(seed + 1)
            self.text_static_prompts = self._static_prompts(self.text_prompted, text_width)
            torch.manual_seed(seed + 2)
            self.visual_prompt_generator = self._generator(self.visual_prompted, embed_dim, vision_width)
            torch.manual_seed(seed + 3)
            self.text_prompt_generator = self._generator(self.text_prompted, embed_dim, text_width)
            torch.manual_seed(seed + 4)
            self.patch_projections = nn.ModuleList(nn.Linear(vision_width, embed_dim) for _ in range(num_taps))
            torch.manual_seed(seed + 5)
            self.global_projection = nn.Linear(embed_dim, embed_dim)

    def _static_prompts(self, enabled: bool, width: int) -> nn.ParameterList | None:
        if not (enabled and self.static):
            return None
        prompts = nn.ParameterList(
            nn.Parameter(torch.empty(self.prompt_length, width)) for _ in range(self.prompt_depth)
        )
        for prompt in prompts:
            nn.init.normal_(prompt, std=0.02)
        return prompts

    def _generator(self, enabled: bool, embed_dim: int, width: int) -> nn.ModuleList | None:
        if not (enabled and self.dynamic):
            return None
        return nn.ModuleList(nn.Linear(embed_dim, width) for _ in range(self.prompt_length))

    @property
    def needs_global_embedding(self) -> bool:
        """Whether the dynamic prompts (hence the un-prompted global embedding) are used."""
        return self.visual_prompt_generator is not None or self.text_prompt_generator is not None

    @staticmethod
    def _generate(generator: nn.ModuleList | None, global_embedding: torch.Tensor) -> torch.Tensor | None:
        if generator is None:
            return None
        return torch.stack([linear(global_embedding) for linear in generator], dim=1)

    def dynamic_prompts(self, global_embedding: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(B, D) frozen global embedding -> dynamic visual (B, M, C_v) and text (B, M, C_t) tokens.

        Either is None when that tower has no dynamic prompts.
        """
        global_embedding = global_embedding.float()
        return (
            self._generate(self.visual_prompt_generator, global_embedding),
            self._generate(self.text_prompt_generator, global_embedding),
        )

    @staticmethod
    def _combine(static: nn.ParameterList | None, block: int, dynamic: torch.Tensor | None) -> torch.Tensor:
        if static is not None and dynamic is not None:
            return static[block].unsqueeze(0) + dynamic
        if static is not None:
            return static[block].unsqueeze(0)
        if dynamic is not None:
            return dynamic
        raise RuntimeError("a prompted tower has neither static nor dynamic prompts")

    def visual_prompt(self, block: int, dynamic: torch.Tensor | None) -> torch.Tensor:
        """Tokens inserted before image block ``block`` (0-based, < J): (B or 1, M, C_v)."""
        return self._combine(self.visual_static_prompts, block, dynamic)

    def text_prompt(self, block: int, dynamic: torch.Tensor | None) -> torch.Tensor:
        """Tokens written over positions 1..M before text block ``block`` (1 <= block < J): (B or 1, M, C_t)."""
        return self._combine(self.text_static_prompts, block, dynamic)


def convert_authors_state_dict(state_dict: dict) -> dict:
    """Rename the authors' checkpoint keys (``clip_model.text_prompter.static_prompts.0``, ...) to ours.

    Keys may carry a ``clip_model.`` and/or ``module.`` prefix. Keys that match none of
    :data:`AUTHORS_KEY_PREFIXES` are kept unchanged, so a strict load names them as unexpected.
    """
    converted = {}
    for key, value in state_dict.items():
        bare = re.sub(r"^(module\.)?(clip_model\.)?", "", key)
        for theirs, ours in AUTHORS_KEY_PREFIXES.items():
            if bare.startswith(theirs):
                converted[ours + bare[len(theirs) :]] = value
                break
        else:
            converted[key] = value
    return converted


# --------------------------------------------------------------------------------------------- HSF
KMEANS_BACKENDS = ("sklearn", "torch")


@dataclass
class HSFResult:
    """Output of :func:`hybrid_semantic_fusion`.

    Attributes:
        embedding: (B, D) normalised mean of the cluster centres (``h``); differentiable.
        indices: (B, k) selected patch indices, most anomalous first.
        labels: (B, k) cluster labels of those patches.
    """

    embedding: torch.Tensor
    indices: torch.Tensor
    labels: torch.Tensor


def _nearest_centre(data: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(B, k, F) rows, (B, K, F) centres -> (B, k) index of the nearest centre (squared Euclidean)."""
    distances = (centres * centres).sum(-1).unsqueeze(1) - 2.0 * data @ centres.transpose(1, 2)
    return distances.argmin(dim=-1)


def torch_kmeans(data: torch.Tensor, clusters: int, iterations: int = 30) -> torch.Tensor:
    """Lloyd's k-means with a fixed number of iterations, on the device and exportable.

    The initial centres are the first ``clusters`` rows (for HSF: the most anomalous patches), so
    the result is deterministic; a cluster left empty keeps its previous centre.

    Args:
        data: (B, k, F) rows to cluster, ``clusters <= k``.
    Returns:
        (B, k) long labels.
    """
    centres = data[:, :clusters]
    for _ in range(iterations):
        one_hot = F.one_hot(_nearest_centre(data, centres), clusters).to(data.dtype)  # (B, k, K)
        counts = one_hot.sum(1).unsqueeze(-1)  # (B, K, 1)
        means = one_hot.transpose(1, 2) @ data / counts.clamp_min(1.0)
        centres = torch.where(counts > 0, means, centres)
    return _nearest_centre(data, centres)


def _sklearn_kmeans(data: torch.Tensor, clusters: int, seed: int | None) -> torch.Tensor:
    """scikit-learn's KMeans per image (the authors' choice), on the host: (B, k, F) -> (B, k) labels."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    labels = []
    for rows in data.detach().float().cpu().numpy():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # fewer distinct points than clusters
            labels.append(KMeans(n_clusters=clusters, n_init="auto", random_state=seed).fit_predict(rows))
    return torch.from_numpy(np.stack(labels)).long().to(data.device)


def hybrid_semantic_fusion(
    patch_features: Sequence[torch.Tensor],
    patch_probs: torch.Tensor,
    clusters: int = 20,
    topk_factor: int = 5,
    seed: int | None = 111,
    kmeans: str = "sklearn",
) -> HSFResult:
    """AdaCLIP's HSF, code version: the mean of the k-means centres of the most anomalous patches.

    Args:
        patch_features: per tap layer, (B, N, D) normalised projected patch tokens.
        patch_probs: (B, N) patch-level abnormal probability (``softmax(mean_l logit_l)[abnormal]``).
        clusters: K; lowered to k (the number of selected patches) when larger.
        topk_factor: k = min(N, topk_factor * K) patches are clustered.
        seed: scikit-learn KMeans ``random_state`` (None: numpy's global RNG).
        kmeans: "sklearn" (the authors' KMeans, on the host) or "torch" (:func:`torch_kmeans`).
    Each centre is the mean of its patches' rows over all layers; clusters left empty are skipped.
    """
    if kmeans not in KMEANS_BACKENDS:
        raise ValueError(f"unknown k-means backend {kmeans!r}; choose from {KMEANS_BACKENDS}")
    stacked = torch.stack(list(patch_features), dim=1)  # (B, L, N, D)
    batch, num_layers, num_patches, dim = stacked.shape
    k = min(num_patches, topk_factor * clusters)
    num_clusters = min(clusters, k)
    top = torch.topk(patch_probs, k=k, dim=1).indices  # (B, k)
    selected = stacked.gather(2, top[:, None, :, None].expand(batch, num_layers, k, dim))  # (B, L, k, D)
    rows = selected.transpose(1, 2).reshape(batch, k, num_layers * dim)
    if kmeans == "torch":
        labels = torch_kmeans(rows.detach().float(), num_clusters)
    else:
        labels = _sklearn_kmeans(rows, num_clusters, seed)
    one_hot = F.one_hot(labels, num_clusters).to(selected.dtype)  # (B, k, K)
    counts = one_hot.sum(1)  # (B, K)
    centres = torch.einsum("bkc,blkd->bcd", one_hot, selected) / (counts * num_layers).clamp_min(1.0).unsqueeze(-1)
    present = (counts > 0).to(selected.dtype)
    embedding = (centres * present.unsqueeze(-1)).sum(1) / present.sum(1, keepdim=True)
    return HSFResult(F.normalize(embedding, dim=-1), top, labels)


# ------------------------------------------------------------------------------------ text and data
@dataclass(frozen=True)
class AdaCLIPText:
    """The text side of one category (what :meth:`AdaCLIP._prepare_text` returns).

    Attributes:
        class_name: the class name as put into the prompts ('-' replaced by ' ').
        prompts: the prompt set.
        token_ids: (P, L) token ids, normal sentences first, cut after the longest sentence's
            end-of-text token (at least 1 + M positions).
        num_normal: number of normal sentences.
        fixed_anchors: (D, 2) anchors when they do not depend on the learned parts (text branch
            not prompted), else None.
    """

    class_name: str
    prompts: PromptSet
    token_ids: torch.Tensor
    num_normal: int
    fixed_anchors: torch.Tensor | None


@dataclass
class AdaCLIPFeatures:
    """Intermediate results of one forward pass (for inspection and tests).

    Attributes:
        global_embedding: (B, D) frozen un-prompted global embedding (DPG input), or None.
        dynamic_visual, dynamic_text: (B, M, C) dynamic prompt tokens, or None.
        taps: per tap layer, (B, N, C_v) raw patch tokens of the prompted pass.
        pooled: (B, D) ``ln_post(CLS) @ proj`` of the prompted pass.
        patch_features: per tap layer, (B, N, D) normalised projected patch tokens F_l.
        global_feature: (B, D) normalised projected global embedding f_cls.
        text: (B, D, 2) text anchors for each image, columns (normal, abnormal).
        sentences: (B, P, D) unit sentence embeddings behind ``text`` when they depend on the image
            (dynamic text prompts), else None.
    """

    global_embedding: torch.Tensor | None
    dynamic_visual: torch.Tensor | None
    dynamic_text: torch.Tensor | None
    taps: list[torch.Tensor]
    pooled: torch.Tensor
    patch_features: list[torch.Tensor]
    global_feature: torch.Tensor
    text: torch.Tensor
    sentences: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------- detector
class AdaCLIPModel(AnomalyModel):
    """AdaCLIP's torch model: ``forward(pixels, text)`` with ``text`` an :class:`AdaCLIPText`.

    Holds the frozen backbone, the trained :class:`AdaCLIPParameters` (``learned``) and the tap
    layers. With image-dependent text prompts the text tower runs inside ``forward``, once per
    image. The HSF image score clusters with scikit-learn's KMeans on the host by default (as the
    authors); ``hsf_kmeans="torch"`` keeps it on the device (see :func:`torch_kmeans`).
    """

    config: AdaCLIPConfig

    def __init__(
        self, backbone: ClipBackbone, config: AdaCLIPConfig, learned: AdaCLIPParameters, tap_layers: tuple[int, ...]
    ) -> None:
        super().__init__(backbone, config)
        self.learned = learned
        self.tap_layers = tap_layers
        self._static_text_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------------------------- text
    def prompted_text_pass(
        self, texts: Sequence[AdaCLIPText], dynamic_text: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Text anchors with prompts: one text pass over all sentences of all ``texts``.

        Args:
            texts: one entry per prompt set (image, or class when the prompts do not depend on the image).
            dynamic_text: (len(texts), M, C_t) dynamic tokens of each entry, or None (static only).
        Returns:
            (len(texts), D, 2) anchors, and (len(texts), P, D) unit sentence embeddings (all ``texts``
            have the same prompts here: one category per call).
        """
        learned, length = self.learned, self.config.prompt_length
        counts = [len(text.token_ids) for text in texts]  # python ints: no host read, exportable
        width = max(text.token_ids.shape[1] for text in texts)
        ids = torch.cat([F.pad(text.token_ids, (0, width - text.token_ids.shape[1])) for text in texts]).to(self.device)
        per_block: dict[int, torch.Tensor] = {}
        for block in range(1, self.config.prompt_depth):
            prompt = learned.text_prompt(block, dynamic_text)  # (len(texts) or 1, M, C_t)
            prompt = prompt.expand(len(texts), -1, -1) if prompt.shape[0] == 1 else prompt
            per_block[block] = torch.cat([prompt[i : i + 1].expand(n, -1, -1) for i, n in enumerate(counts)])

        def insert_prompts(block: int, x: torch.Tensor) -> torch.Tensor:
            if block not in per_block:
                return x
            tokens = self._as_inserted(per_block[block], x.dtype)
            return torch.cat([x[:, :1], tokens, x[:, 1 + length :]], dim=1)

        embeddings = self.backbone.text_forward(ids, hook=insert_prompts, min_length=width).float()
        embeddings = F.normalize(embeddings, dim=-1)
        anchors, sentences = [], []
        for text, chunk in zip(texts, embeddings.split(counts)):
            normal = F.normalize(chunk[: text.num_normal].mean(0), dim=-1)
            abnormal = F.normalize(chunk[text.num_normal :].mean(0), dim=-1)
            anchors.append(torch.stack([normal, abnormal], dim=1))
            sentences.append(chunk)
        same_size = len({len(chunk) for chunk in sentences}) == 1
        return torch.stack(anchors), torch.stack(sentences) if same_size else torch.empty(0)

    def static_text_pass(self, text: AdaCLIPText) -> tuple[torch.Tensor, torch.Tensor]:
        """(D, 2) anchors and (P, D) sentence embeddings with static text prompts only; cached while
        the prompts are unchanged."""
        if torch.is_grad_enabled():
            anchors, sentences = self.prompted_text_pass([text], None)
            return anchors[0], sentences[0]
        params = self.learned.text_static_prompts
        state = tuple((p.data_ptr(), p._version) for p in params) if params is not None else ()
        key = (text.class_name, text.prompts, state)
        cached = self._static_text_cache.get(key)
        if cached is None:
            if len(self._static_text_cache) >= 64:
                self._static_text_cache.clear()
            anchors, sentences = self.prompted_text_pass([text], None)
            cached = self._static_text_cache[key] = (anchors[0], sentences[0])
        return cached

    def static_text_anchors(self, text: AdaCLIPText) -> torch.Tensor:
        """(D, 2) anchors with static text prompts only (see :meth:`static_text_pass`)."""
        return self.static_text_pass(text)[0]
    def text_features(
        self, texts: Sequence[AdaCLIPText], dynamic_text: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text anchors for each image of a batch.

        Args:
            texts: B entries, the text side of each image's class.
            dynamic_text: (B, M, C_t) dynamic text tokens, or None.
        Returns:
            (B, D, 2) normalised anchors, columns (normal, abnormal), and, when they depend on the
            image, the (B, P, D) unit sentence embeddings they were reduced from (else None).
        """
        if not self.learned.text_prompted:
            return torch.stack([text.fixed_anchors for text in texts]).to(self.device), None
        if dynamic_text is None:
            unique: dict[tuple, torch.Tensor] = {}
            for text in texts:
                key = (text.class_name, text.prompts)
                if key not in unique:
                    unique[key] = self.static_text_anchors(text)
            return torch.stack([unique[(text.class_name, text.prompts)] for text in texts]), None
        return self.prompted_text_pass(texts, dynamic_text)

    # ------------------------------------------------------------------------------------ image
    def _as_inserted(self, tokens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.config.round_prompts_fp16:
            tokens = tokens.half()
        return tokens.to(dtype)

    def prompted_image_pass(
        self, pixels: torch.Tensor, dynamic_visual: torch.Tensor | None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The image tower with the visual prompts (or plain, when the image branch is off).

        Args:
            pixels: (B, 3, S, S) normalised images.
            dynamic_visual: (B, M, C_v) dynamic tokens, or None.
        Returns:
            taps: per tap layer, (B, N, C_v) residual-stream patch tokens (CLS and prompts dropped).
            pooled: (B, D) ``ln_post(CLS) @ proj``.
        """
        backbone, learned = self.backbone, self.learned
        length, depth = self.config.prompt_length, self.config.prompt_depth
        layers = set(self.tap_layers)
        x = backbone.visual.ln_pre(backbone.embed_patches(pixels))
        num_patches = x.shape[1] - 1
        taps: list[torch.Tensor] = []
        for index, block in enumerate(backbone.blocks):
            if learned.visual_prompted and index < depth:
                prompt = self._as_inserted(learned.visual_prompt(index, dynamic_visual), x.dtype)
                prompt = prompt.expand(x.shape[0], -1, -1)
                x = torch.cat([x if index == 0 else x[:, :-length], prompt], dim=1)
            x = backbone.block_forward(block, x)
            if index + 1 in layers:
                taps.append(x[:, 1 : 1 + num_patches])
        return taps, backbone.pool(x)

    def extract_features(
        self, pixels: torch.Tensor, texts: Sequence[AdaCLIPText], passes: SharedPasses | None = None
    ) -> AdaCLIPFeatures:
        """Everything up to the similarities: DPG, prompted image and text passes, projections.

        Args:
            pixels: (B, 3, S, S) normalised images.
            texts: B entries, the text side of each image.
            passes: passes of ``pixels`` shared with other methods (the un-prompted plain pass).
        """
        if len(texts) != pixels.shape[0]:
            raise ValueError(f"{pixels.shape[0]} images but {len(texts)} class texts")
        learned = self.learned
        global_embedding = dynamic_visual = dynamic_text = None
        if learned.needs_global_embedding:
            with torch.no_grad():
                global_embedding = (passes or SharedPasses()).plain(self.backbone, pixels).pooled.float()
            dynamic_visual, dynamic_text = learned.dynamic_prompts(global_embedding)
        taps, pooled = self.prompted_image_pass(pixels, dynamic_visual)
        patch_features = [
            F.normalize(projection(tap.float()), dim=-1) for projection, tap in zip(learned.patch_projections, taps)
        ]
        global_feature = F.normalize(learned.global_projection(pooled.float()), dim=-1)
        text, sentences = self.text_features(texts, dynamic_text)
        return AdaCLIPFeatures(
            global_embedding=global_embedding,
            dynamic_visual=dynamic_visual,
            dynamic_text=dynamic_text,
            taps=taps,
            pooled=pooled,
            patch_features=patch_features,
            global_feature=global_feature,
            text=text,
            sentences=sentences,
        )

    # ------------------------------------------------------------------------------ similarities
    @staticmethod
    def patch_logits(features: AdaCLIPFeatures) -> list[torch.Tensor]:
        """Per tap layer, (B, N, 2) logits ``100 F_l T``."""
        return [LOGIT_SCALE * torch.bmm(f, features.text) for f in features.patch_features]

    def upsampled_logits(self, logits: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per tap layer, (B, 2, S, S) logits, bilinear with ``align_corners=True``."""
        grid = self.backbone.grid_size
        return [
            upsample_patch_maps(
                layer.transpose(1, 2).reshape(layer.shape[0], 2, grid, grid), self.config.image_size, True
            )
            for layer in logits
        ]

    def image_embedding(
        self, features: AdaCLIPFeatures, logits: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, HSFResult | None]:
        """(B, D) unit image embedding of the image score: HSF-fused when ``use_hsf``, else ``f_cls``."""
        config = self.config
        if not config.use_hsf:
            return features.global_feature, None
        patch_probs = torch.stack(list(logits)).mean(0).softmax(dim=-1)[..., 1]
        fusion = hybrid_semantic_fusion(
            features.patch_features,
            patch_probs,
            config.hsf_clusters,
            config.hsf_topk_factor,
            config.hsf_seed,
            config.hsf_kmeans,
        )
        mixed = config.hsf_alpha * fusion.embedding + (1.0 - config.hsf_alpha) * features.global_feature
        return F.normalize(mixed, dim=-1), fusion

    def image_probabilities(
        self, features: AdaCLIPFeatures, logits: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, HSFResult | None]:
        """(B, 2) image-level (normal, abnormal) probabilities, with HSF when ``use_hsf``."""
        image_feature, fusion = self.image_embedding(features, logits)
        scores = LOGIT_SCALE * torch.bmm(image_feature.unsqueeze(1), features.text).squeeze(1)
        return scores.softmax(dim=-1), fusion

    # ---------------------------------------------------------------------------------- forward
    def forward(self, pixels: torch.Tensor, text: AdaCLIPText, passes: SharedPasses | None = None) -> ModelOutput:
        features = self.extract_features(pixels, [text] * pixels.shape[0], passes)
        logits = self.patch_logits(features)
        averaged = torch.stack(self.upsampled_logits(logits)).mean(0)  # (B, 2, S, S)
        maps = gaussian_blur(averaged.softmax(dim=1)[:, 1], self.config.sigma)
        image_feature, _ = self.image_embedding(features, logits)
        image_probs = (LOGIT_SCALE * torch.bmm(image_feature.unsqueeze(1), features.text)).squeeze(1).softmax(dim=-1)
        global_probs = (LOGIT_SCALE * torch.bmm(features.global_feature.unsqueeze(1), features.text)).softmax(dim=-1)
        return ModelOutput(
            scores=image_probs[:, 1],
            maps=maps,
            extras={"global_score": global_probs[:, 0, 1]},
            embeddings=image_feature,
            sentence_features=features.sentences,
        )


@register_method("adaclip")
class AdaCLIP(LearnableDetector):
    """AdaCLIP: hybrid static/dynamic prompts in both CLIP towers, projections, HSF image score."""

    info = MethodInfo(
        id="adaclip",
        name="AdaCLIP",
        paper="Cao et al., AdaCLIP: Adapting CLIP with Hybrid Learnable Prompts for Zero-Shot Anomaly "
        "Detection, ECCV 2024 (arXiv 2407.15795)",
        training_free=False,
        default_model=AdaCLIPConfig.model,
        image_size=AdaCLIPConfig.image_size,
        map_range=(0.0, 1.0),
        description="static + image-conditioned prompts in both towers, learned projections, "
        "hybrid semantic fusion image score",
    )
    config_class = AdaCLIPConfig
    default_prompts = ADACLIP_PROMPTS
    default_optimizer = {"name": "adamw", "lr": 0.01, "betas": (0.5, 0.999)}
    default_epochs = 5
    default_batch_size = 1
    default_seed = 111
    default_mosaic_prob = 0.2
    config: AdaCLIPConfig
    model: AdaCLIPModel

    def build_model(self) -> AdaCLIPModel:
        config, backbone = self.config, self.backbone
        layers = tuple(int(layer) for layer in config.layers) if config.layers else backbone.default_layers()
        if max(layers) > backbone.num_layers:
            raise ValueError(f"tap layers {layers} do not fit a {backbone.num_layers}-block image tower")
        text_blocks = len(backbone.text_blocks)
        if config.prompt_depth > min(backbone.num_layers, text_blocks):
            raise ValueError(
                f"prompt_depth {config.prompt_depth} is deeper than the towers ({backbone.num_layers} image, "
                f"{text_blocks} text blocks)"
            )
        context = int(backbone.model.positional_embedding.shape[0])
        if config.prompt_length + 1 >= context:
            raise ValueError(f"prompt_length {config.prompt_length} does not fit the {context}-token text context")
        learned = AdaCLIPParameters(
            vision_width=backbone.width,
            text_width=backbone.text_width,
            embed_dim=backbone.embed_dim,
            num_taps=len(layers),
            prompt_length=config.prompt_length,
            prompt_depth=config.prompt_depth,
            prompt_type=config.prompt_type,
            branches=config.branches,
            seed=config.seed,
        ).to(backbone.device)
        return AdaCLIPModel(backbone, config, learned, layers)

    # ----------------------------------------------------------------------------------- settings
    def setting_metadata(self) -> dict[str, str]:
        config = self.config
        return {
            **super().setting_metadata(),
            "prompt_length": str(config.prompt_length),
            "prompt_depth": str(config.prompt_depth),
            "prompt_type": config.prompt_type,
            "branches": config.branches,
            "use_hsf": "true" if config.use_hsf else "false",
            "hsf_clusters": str(config.hsf_clusters),
            "hsf_topk_factor": str(config.hsf_topk_factor),
            "hsf_alpha": repr(float(config.hsf_alpha)),
        }

    def convert_foreign_state_dict(self, state_dict: dict) -> dict[str, torch.Tensor]:
        """Map the authors' ``.pth`` keys to :class:`AdaCLIPParameters` names.

        The authors' model always builds both dynamic generators when ``prompt_type`` has "D", even
        for a tower without prompts; those unused generators are dropped here when this detector's
        ``branches`` leaves that tower out.
        """
        keys = list(state_dict)
        if not any(any(part in key for part in AUTHORS_KEY_PREFIXES) for key in keys):
            raise CheckpointMismatchError(
                f"adaclip: unknown checkpoint format (keys {sorted(keys)[:6]}...); expected a .safetensors file "
                "written by zsad or the authors' AdaCLIP .pth (keys like 'clip_model.text_prompter.static_prompts.0')"
            )
        converted = convert_authors_state_dict(state_dict)
        for name, module in (
            ("visual_prompt_generator.", self.learned.visual_prompt_generator),
            ("text_prompt_generator.", self.learned.text_prompt_generator),
        ):
            if module is None:
                converted = {key: value for key, value in converted.items() if not key.startswith(name)}
        return {key: value.float() if isinstance(value, torch.Tensor) else value for key, value in converted.items()}

    # ------------------------------------------------------------------------------------- text
    def _text_for(self, class_name: str, prompts: PromptSet) -> AdaCLIPText:
        name = " ".join(class_name.replace("-", " ").split())
        normal, abnormal = prompts.sentences(name)
        fixed = None
        if not self.learned.text_prompted:
            fixed = text_anchors(self.backbone, name, prompts, reducer="mean", method_id="adaclip")
        token_ids = self.backbone.tokenize(normal + abnormal)
        # Cut to the longest sentence (or the inserted prompts): the causal tower gives the same
        # features, and the forward needs no host read of the ids (exportable).
        length = max(int(token_ids.argmax(dim=-1).max()) + 1, 1 + self.config.prompt_length)
        return AdaCLIPText(
            class_name=name,
            prompts=prompts,
            token_ids=token_ids[:, :length],
            num_normal=len(normal),
            fixed_anchors=fixed,
        )

    def _prepare_text(self, class_name: str, prompts: PromptSet) -> AdaCLIPText:
        return self._text_for(class_name, prompts)


    text_reducer = "mean"
    text_logit_scale = LOGIT_SCALE

    @property
    def text_score_name(self) -> str:  # type: ignore[override]
        if self.config.use_hsf:
            return "image score (the HSF-fused image embedding held fixed)"
        return "image score"

    def sentence_features(self, prepared: PreparedText) -> torch.Tensor:
        """(P, D) sentence embeddings of the category when they do not depend on the image."""
        text: AdaCLIPText = prepared.features
        if self.learned.text_prompted:
            return self.model.static_text_pass(text)[1]
        return sentence_embeddings(self.backbone, text.class_name, text.prompts)


    # --------------------------------------------------------------------------------- training
    def training_forward(self, pixels: torch.Tensor, class_names: Sequence[str]) -> TrainingOutput:
        """Per-layer softmax maps (B, 2, S, S) and image probabilities (B, 2), as the authors' trainer.

        The text side of each image uses the paper's prompts (:data:`ADACLIP_PROMPTS`) with that
        image's class name.
        """
        if len(class_names) != pixels.shape[0]:
            raise ValueError(f"{pixels.shape[0]} images but {len(class_names)} class names")
        texts: dict[str, AdaCLIPText] = {}
        for name in class_names:
            if name not in texts:
                with torch.no_grad():
                    texts[name] = self._text_for(name, self.default_prompts)
        features = self.model.extract_features(pixels, [texts[name] for name in class_names])
        logits = self.model.patch_logits(features)
        layer_probs = [layer.softmax(dim=1) for layer in self.model.upsampled_logits(logits)]
        image_probs, _ = self.model.image_probabilities(features, logits)
        return TrainingOutput(layer_probs=layer_probs, image_probs=image_probs)

    def training_loss(self, output: TrainingOutput, masks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """focal(image) + sum_l [focal(P_l, G) + dice(P_l[abnormal], G) + dice(P_l[normal], 1 - G)]."""
        target = (masks > 0.5).float()
        if output.image_probs is None:
            raise ValueError("AdaCLIP's loss needs image probabilities")
        loss = focal_loss(output.image_probs, (labels > 0.5).long())
        for probs in output.layer_probs:
            loss = loss + focal_loss(probs, target.long())
            loss = loss + dice_loss(probs[:, 1], target) + dice_loss(probs[:, 0], 1.0 - target)
        return loss
