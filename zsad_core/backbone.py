"""CLIP backbones through open_clip: loading, input-size override, and the pieces methods walk.

A model is named by one string (``--model`` on the CLI, ``model=`` in the API):

========================================  ==========================================================
``zsad-tiny``, ``zsad-tiny-14``           the project's tiny configs (``model_configs/``), random
                                          weights from a fixed seed: everything runs in seconds
``ViT-B-16-plus-240:laion400m_e31``       an open_clip architecture with a pretrained tag
``ViT-L-14-336:/path/to/weights.pt``      an architecture with a local checkpoint file
                                          (``.safetensors``, ``.bin``/``.pt`` state dict)
``hf-hub:org/repo``                       an open_clip model repository on the Hugging Face Hub
``local-dir:/path/to/folder``             a copy of such a repository on disk
``ViT-B-16``                              an architecture with no tag: random weights, with a
                                          warning that its scores mean nothing
========================================  ==========================================================

Pretrained tags are looked up, in order, in the local weights folders (``$ZSAD_WEIGHTS_DIR``, then
``weights/`` beside the package, then ``./weights``; see ``weights/README.md``), in the Hugging
Face cache, and only then downloaded. Offline, the error names the weights, every place looked in
and how to put the file there, instead of the hub client's retries and stack trace.

The input size can differ from the architecture's (e.g. ViT-L-14-336 at 518 px, as AdaCLIP runs
it). The positional embedding is then resized once, at load time, the way the method's reference
did it: bicubic, ``align_corners=False`` and, by default, *no* antialiasing (AdaCLIP's and
April-GAN's code; open_clip's own ``resize_pos_embed`` antialiases, which gives other values).

:class:`ClipBackbone` exposes the parts of the two towers that the methods need in order to walk
the blocks themselves (window sequences, a second attention path, learned tokens inserted between
blocks) without patching open_clip: patch embedding, the blocks, their attention projections,
pooling and projection, and a text forward with a per-block hook.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import nn

from .disk_cache import disk_cache_enabled, text_tower_fingerprint
from .hub import cache_description, hub_fetch

logger = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
PROJECT_MODELS_DIR = Path(__file__).resolve().parent / "pretrained"  # trained by the project, shipped inside
PACKAGE_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
WEIGHT_FILE_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

TextHook = Callable[[int, torch.Tensor], torch.Tensor]
# On the CPU, image sequences at least this long use scaled_dot_product_attention instead of the
# nn.MultiheadAttention fast path (SDPA / MHA time, one block, 1 thread: 0.96 at 577 tokens, 0.66 at
# 1370; `python -m zsad_core bench` reports the kernels a method ran).
CPU_SDPA_MIN_TOKENS = 1024


class WeightsNotFoundError(RuntimeError):
    """Pretrained weights are neither on disk nor downloadable; the message says where to put them."""


class ModelSpecError(ValueError):
    """A model name, tag, file or architecture that cannot be used."""


def list_tiny_models() -> list[str]:
    """Names of the project's own random-init configs (``zsad-tiny``, ...)."""
    return sorted(path.stem for path in MODEL_CONFIG_DIR.glob("*.json"))


# The project's tiny configs join open_clip's config registry once, when this module is imported:
# open_clip builds architectures from that registry only. Nothing here changes it later.
open_clip.add_model_config(MODEL_CONFIG_DIR)


class _RandomInitNotice(logging.Filter):
    """Drops open_clip's "initialized randomly" record (root logger): zsad warns itself where it matters."""

    def filter(self, record: logging.LogRecord) -> bool:
        from_open_clip = Path(record.pathname).is_relative_to(Path(open_clip.__file__).parent)
        return not (from_open_clip and "initialized randomly" in record.getMessage())


def list_project_models() -> list[str]:
    """Names of the project's own trained models shipped in the package (e.g. ``zsad-toy``)."""
    if not PROJECT_MODELS_DIR.is_dir():
        return []
    return sorted(
        folder.name
        for folder in PROJECT_MODELS_DIR.iterdir()
        if (folder / "open_clip_config.json").is_file() and (folder / WEIGHT_FILE_NAMES[0]).is_file()
    )


def project_model_dir(name: str) -> Path | None:
    """The folder of a shipped project model (an open_clip model folder), or None."""
    return PROJECT_MODELS_DIR / name if name in list_project_models() else None


def loadable_name(model: str) -> str:
    """What open_clip loads for ``model``: a shipped project model becomes ``local-dir:<its folder>``."""
    folder = project_model_dir(model.strip())
    return f"local-dir:{folder}" if folder is not None else model


def weights_dirs() -> list[Path]:
    """Folders searched for local weights, in order."""
    dirs = []
    if os.environ.get("ZSAD_WEIGHTS_DIR"):
        dirs.append(Path(os.environ["ZSAD_WEIGHTS_DIR"]).expanduser())
    dirs += [PACKAGE_WEIGHTS_DIR, Path.cwd() / "weights"]
    unique: list[Path] = []
    for folder in dirs:
        if folder.resolve() not in [d.resolve() for d in unique]:
            unique.append(folder)
    return unique


@dataclass(frozen=True)
class ParsedModelName:
    """A model string split into what open_clip needs."""

    name: str  # architecture name, or 'hf-hub:...' / 'local-dir:...'
    pretrained: str | None  # tag or file path; None for schemas and random init

    @property
    def is_schema(self) -> bool:
        return self.name.startswith(("hf-hub:", "local-dir:"))

    @property
    def is_file(self) -> bool:
        return self.pretrained is not None and (
            Path(self.pretrained).suffix.lower() in WEIGHT_SUFFIXES or os.sep in self.pretrained
        )


def parse_model_name(model: str) -> ParsedModelName:
    """Split ``ARCH[:TAG_OR_FILE]``, ``hf-hub:org/repo`` or ``local-dir:/path``."""
    model = model.strip()
    if not model:
        raise ModelSpecError("empty model name; try 'zsad-tiny' or 'ViT-B-16-plus-240:laion400m_e31'")
    if model.startswith(("hf-hub:", "local-dir:")):
        return ParsedModelName(model, None)
    arch, _, pretrained = model.partition(":")
    return ParsedModelName(arch, pretrained or None)


@dataclass(frozen=True)
class BackboneSpec:
    """Everything that identifies one loaded backbone; equal specs share one instance.

    Attributes:
        model: model string (see the module docstring).
        image_size: input side S in pixels, or None for the architecture's own.
        quick_gelu: force QuickGELU (OpenAI weights were trained with it; AdaCLIP's reference ran
            plain GELU on them, so this is a per-method setting).
        pos_embed_interpolation: mode used to resize the positional embedding to ``image_size``.
        pos_embed_antialias: antialias that resize (open_clip does; the methods' references don't).
        device: "cpu", "cuda", "cuda:1", ... (already resolved; see :func:`resolve_device`).
        precision: "fp32", "fp16" or "bf16".
        seed: seed of the random initialisation, for models without weights.
    """

    model: str
    image_size: int | None = None
    quick_gelu: bool = False
    pos_embed_interpolation: str = "bicubic"
    pos_embed_antialias: bool = False
    device: str = "cpu"
    precision: str = "fp32"
    seed: int = 0


def resolve_device(device: str | torch.device | None) -> str:
    """``None``/"auto" -> "cuda" when available, else "cpu"."""
    if device is None or str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelSpecError(f"device {device!r} was asked for but CUDA is not available on this machine")
    return device


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 beats fp32.

    Without it torch emulates bf16 through fp32 conversions, which is slower than fp32 itself.
    """
    cpu = getattr(torch, "cpu", None)
    probes = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(callable(probe) for probe in probes):
        return any(probe() for probe in probes)
    try:  # older torch: ask the kernel (Linux)
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str | None, device: str) -> str:
    """The precision to run in.

    ``None`` -> the reference precision, what evaluation and training use unless told otherwise:
    fp32 on CPU, fp16 on CUDA. ``"auto"`` -> the fastest one measured safe for inference on this
    device (maps and held-out AUROC within the tolerances of the README's Performance section):
    fp16 on CUDA, bf16 on CPUs with native bf16 (:func:`cpu_has_native_bf16`), fp32 otherwise.
    """
    if precision is None:
        return "fp16" if device.startswith("cuda") else "fp32"
    if precision == "auto":
        if device.startswith("cuda"):
            return "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if precision not in _PRECISIONS:
        raise ModelSpecError(f"precision must be one of {sorted(_PRECISIONS)} or 'auto', got {precision!r}")
    return precision


# ----------------------------------------------------------------------------------------- weights
def _local_weight_candidates(arch: str, tag: str) -> list[Path]:
    candidates = []
    for folder in weights_dirs():
        for name in WEIGHT_FILE_NAMES:
            candidates.append(folder / arch / tag / name)
        for suffix in WEIGHT_SUFFIXES:
            candidates.append(folder / f"{arch}-{tag}{suffix}")
    return candidates


def _hub_download(repo_id: str, filenames: Sequence[str], what: str, looked_in: list[str]) -> Path:
    """Fetch the first of ``filenames`` from a hub repo: cache first, then network if reachable."""
    looked_in.append(cache_description(repo_id))
    path = hub_fetch(repo_id, filenames)
    if path is not None:
        return path
    raise WeightsNotFoundError(
        f"Could not find the weights for {what}: they are not on this disk and the Hugging Face Hub "
        f"cannot be reached.\nLooked in:\n  - " + "\n  - ".join(looked_in) + "\n"
        "To use them offline, download them on a connected machine and either\n"
        f"  - copy the file '{filenames[0]}' of https://huggingface.co/{repo_id} to one of the "
        "weights paths above (see weights/README.md), or\n"
        "  - copy your Hugging Face cache (~/.cache/huggingface/hub) over, or\n"
        "  - pass the file directly: --model ARCH:/path/to/file.\n"
        "For tests and trying the tools without weights, use --model zsad-tiny."
    )


def local_pretrained_file(arch: str, tag: str) -> Path | None:
    """The weights of ``arch`` with pretrained ``tag`` when they are already on this disk, else None.

    Looks in the local weights folders and the Hugging Face cache only: no network, no download, so
    a page can ask it for every model it offers.
    """
    if tag not in open_clip.list_pretrained_tags_by_model(arch):
        return None
    for candidate in _local_weight_candidates(arch, tag):
        if candidate.is_file():
            return candidate
    repo_id = open_clip.get_pretrained_cfg(arch, tag).get("hf_hub", "").strip("/")
    if repo_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in WEIGHT_FILE_NAMES:
            cached = try_to_load_from_cache(repo_id, filename)
            if isinstance(cached, str):
                return Path(cached)
    return None


def resolve_pretrained_file(arch: str, tag: str) -> Path:
    """Path of the weights for ``arch`` with pretrained ``tag``: local folders, cache, then download."""
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if tag not in tags:
        raise ModelSpecError(
            f"open_clip has no pretrained tag {tag!r} for {arch!r}; known tags: {', '.join(tags) or 'none'}"
        )
    looked_in = []
    for candidate in _local_weight_candidates(arch, tag):
        if candidate.is_file():
            return candidate
        looked_in.append(str(candidate))
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    repo_id = cfg.get("hf_hub", "").strip("/")
    if not repo_id:
        raise WeightsNotFoundError(
            f"{arch}:{tag} has no Hugging Face Hub copy; download {cfg.get('url')} and place it at "
            f"{_local_weight_candidates(arch, tag)[0]}"
        )
    return _hub_download(repo_id, WEIGHT_FILE_NAMES, f"'{arch}' with pretrained tag '{tag}'", looked_in)


# ------------------------------------------------------------------------------------------ loading
def _create_open_clip_model(spec: BackboneSpec) -> nn.Module:
    parsed = parse_model_name(loadable_name(spec.model))
    common = dict(force_quick_gelu=spec.quick_gelu, precision="fp32", device="cpu")
    if parsed.is_schema:
        if parsed.name.startswith("hf-hub:"):
            # open_clip downloads the config and weights itself; check they can be had first.
            repo_id = parsed.name[len("hf-hub:"):]
            _hub_download(repo_id, ("open_clip_config.json",), f"'{parsed.name}' (config)", [])
            _hub_download(repo_id, WEIGHT_FILE_NAMES, f"'{parsed.name}'", [])
        elif not Path(parsed.name[len("local-dir:"):]).is_dir():
            raise ModelSpecError(f"{parsed.name}: no such folder")
        return open_clip.create_model(parsed.name, weights_only=True, **common)
    if parsed.name not in open_clip.list_models():
        raise ModelSpecError(
            f"unknown architecture {parsed.name!r}. Use an open_clip name (python -c \"import open_clip; "
            f"print(open_clip.list_models())\"), one of the project's tiny configs {list_tiny_models()}, "
            "'hf-hub:org/repo' or 'local-dir:/path'"
        )
    if parsed.pretrained is None:
        if parsed.name not in list_tiny_models():
            warnings.warn(
                f"{parsed.name!r} has no pretrained tag: it is built with RANDOM weights and its anomaly "
                f"scores mean nothing. Add a tag, e.g. one of "
                f"{open_clip.list_pretrained_tags_by_model(parsed.name)[:4]}",
                stacklevel=3,
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            notice = _RandomInitNotice()
            logging.getLogger().addFilter(notice)  # that record only, and only during this call
            try:
                return open_clip.create_model(parsed.name, **common)
            finally:
                logging.getLogger().removeFilter(notice)
    if parsed.is_file:
        path = Path(parsed.pretrained).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"checkpoint file {path} (from --model {spec.model!r}) does not exist")
    else:
        path = resolve_pretrained_file(parsed.name, parsed.pretrained)
    try:
        return open_clip.create_model(parsed.name, pretrained=str(path), weights_only=True, **common)
    except Exception as error:  # noqa: BLE001 - see below
        # A file for another architecture fails in load_state_dict (RuntimeError) or earlier in
        # open_clip's positional-embedding resizing (AssertionError); a file that is not a state dict
        # fails in safetensors (SafetensorError), torch.load (KeyError, UnpicklingError) or in
        # open_clip's key handling (StopIteration). All mean the same thing to the user.
        raise ModelSpecError(
            f"weights {path} cannot be loaded into architecture {parsed.name!r} "
            f"({type(error).__name__}: {error}). The file must be an open_clip/CLIP state dict "
            "(.safetensors, or a torch .bin/.pt/.pth state dict) made for this architecture."
        ) from error


def resize_positional_embedding(
    visual: VisionTransformer, image_size: int, mode: str = "bicubic", antialias: bool = False
) -> None:
    """Resize a ViT's positional-embedding grid in place for a new square input size."""
    patch = visual.patch_size[0]
    new_grid = image_size // patch
    old = visual.positional_embedding.data
    old_grid = int(round((old.shape[0] - 1) ** 0.5))
    if new_grid != old_grid:
        grid = old[1:].reshape(1, old_grid, old_grid, -1).permute(0, 3, 1, 2).float()
        kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
        grid = F.interpolate(grid, size=(new_grid, new_grid), mode=mode, antialias=antialias, **kwargs)
        grid = grid.permute(0, 2, 3, 1).reshape(new_grid * new_grid, -1).to(old.dtype)
        visual.positional_embedding = nn.Parameter(torch.cat([old[:1], grid]), requires_grad=False)
    visual.image_size = (image_size, image_size)
    visual.grid_size = (new_grid, new_grid)


class PlainPass:
    """The unchanged image-tower forward of one batch, run lazily (see :meth:`ClipBackbone.plain_pass`).

    Blocks run only as deep as a caller asks (:meth:`through`), and each only once, so methods that
    need the first blocks (SDP's stages on a deep tower) and methods that need them all (WinCLIP,
    AdaCLIP's global embedding) share the same computation.

    Attributes:
        embedded: (B, 1+N, C) patch embedding with class token and positional embedding, before ``ln_pre``.
        stream: ``stream[i]`` (B, 1+N, C) is the input of block i (0-based; ``stream[0]`` is
            ``ln_pre(embedded)``), as far as it has been run.
    """

    def __init__(self, backbone: ClipBackbone, pixels: torch.Tensor) -> None:
        self._backbone = backbone
        self.embedded = backbone.embed_patches(pixels)
        self.stream = [backbone.visual.ln_pre(self.embedded)]
        self._after_attention: dict[int, torch.Tensor] = {}
        self._pooled: torch.Tensor | None = None

    def through(self, depth: int, keep: Collection[int] = ()) -> list[torch.Tensor]:
        """The stream up to the output of block ``depth`` (1-based), running the blocks still missing.

        ``keep``: 1-based blocks whose state after the attention residual (before the MLP) is kept
        for :meth:`after_attention` while they run, so that it costs nothing.
        """
        backbone, blocks = self._backbone, self._backbone.blocks
        while len(self.stream) <= depth:
            number = len(self.stream)  # 1-based number of the block to run
            middle = backbone.attention_residual(blocks[number - 1], self.stream[-1])
            if number in keep:
                self._after_attention[number] = middle
            self.stream.append(backbone.mlp_residual(blocks[number - 1], middle))
        return self.stream

    def after_attention(self, number: int) -> torch.Tensor:
        """(B, 1+N, C) input of block ``number`` (1-based) plus its attention residual, before its MLP:
        kept by :meth:`through` or computed now from the stream (the same numbers either way)."""
        if number not in self._after_attention:
            stream = self.through(number - 1)
            self._after_attention[number] = self._backbone.attention_residual(
                self._backbone.blocks[number - 1], stream[number - 1]
            )
        return self._after_attention[number]

    @property
    def pooled(self) -> torch.Tensor:
        """(B, D) global embedding ``ln_post(CLS) @ proj`` after the last block, not normalised."""
        if self._pooled is None:
            self._pooled = self._backbone.pool(self.through(self._backbone.num_layers)[-1])
        return self._pooled


class ClipBackbone(nn.Module):
    """A frozen open_clip CLIP model plus the accessors the methods use to walk its blocks.

    Only ViT image towers with standard open_clip blocks (``ResidualAttentionBlock``, i.e. all OpenAI,
    LAION and DataComp CLIP ViTs) and the standard causal text tower are supported.
    """

    def __init__(self, model: nn.Module, spec: BackboneSpec, tokenizer: Callable) -> None:
        super().__init__()
        visual = getattr(model, "visual", None)
        if not isinstance(visual, VisionTransformer) or not hasattr(model, "token_embedding"):
            raise ModelSpecError(
                f"{spec.model}: only CLIP models with a ViT image tower and the standard text tower are "
                "supported (not ResNet, timm or Hugging Face text towers)"
            )
        if not all(isinstance(block, ResidualAttentionBlock) for block in visual.transformer.resblocks):
            raise ModelSpecError(f"{spec.model}: custom transformer blocks are not supported")
        if visual.attn_pool is not None or visual.pool_type != "tok" or visual.final_ln_after_pool:
            raise ModelSpecError(f"{spec.model}: only class-token pooling is supported")
        self.model = model.eval().requires_grad_(False)
        self.spec = spec
        self.tokenizer = tokenizer

    # ------------------------------------------------------------------ geometry and basic attributes
    @property
    def visual(self) -> VisionTransformer:
        return self.model.visual

    @property
    def key(self) -> str:
        """Identifies the weights and geometry, for caches of derived features."""
        return repr(self.spec)

    @property
    def device(self) -> torch.device:
        return self.visual.conv1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    @property
    def image_size(self) -> int:
        return int(self.visual.image_size[0])

    @property
    def patch_size(self) -> int:
        return int(self.visual.patch_size[0])

    @property
    def grid_size(self) -> int:
        """Patches per side (the grid is square)."""
        return int(self.visual.grid_size[0])

    @property
    def width(self) -> int:
        """Channels C of the image tower's residual stream."""
        return int(self.visual.conv1.out_channels)

    @property
    def embed_dim(self) -> int:
        """Dimension D of the joint image-text space."""
        return int(self.visual.proj.shape[1])

    @property
    def text_width(self) -> int:
        return int(self.model.token_embedding.embedding_dim)

    @property
    def blocks(self) -> nn.ModuleList:
        """The image tower's transformer blocks, in order."""
        return self.visual.transformer.resblocks

    @property
    def text_blocks(self) -> nn.ModuleList:
        return self.model.transformer.resblocks

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        cfg = getattr(self.visual, "preprocess_cfg", {}) or {}
        return (
            tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
            tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD)),
        )

    def default_layers(self) -> tuple[int, ...]:
        """The four usual tap layers, ``n_layers // 4 * (1, 2, 3, 4)`` (e.g. 6/12/18/24 for ViT-L)."""
        step = self.num_layers // 4
        return tuple(step * k for k in (1, 2, 3, 4))

    # ----------------------------------------------------------------------------------- image tower
    def embed_patches(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patch embedding with class token and positional embedding, before ``ln_pre``.

        Args:
            pixels: (B, 3, S, S) normalised images.
        Returns:
            (B, 1+N, C) tokens, CLS first, N = grid_size**2.
        """
        visual = self.visual
        x = visual.conv1(pixels.to(self.dtype))
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)

    def attention(self, block: ResidualAttentionBlock, hidden: torch.Tensor) -> torch.Tensor:
        """A block's self-attention of ``hidden`` (already ``ln_1``-normalised), (B, L, C) -> (B, L, C).

        The implementation is chosen by sequence length and device from measurements (README,
        Performance): on the CPU, sequences of at least :data:`CPU_SDPA_MIN_TOKENS` tokens run
        through ``scaled_dot_product_attention`` (0.66x the time of the MHA fast path at 1370
        tokens, about equal below 600); otherwise the block's own ``nn.MultiheadAttention``
        (which on CUDA dispatches to the same fused kernels). Both agree to fp32 rounding.
        """
        if hidden.device.type == "cpu" and hidden.shape[1] >= CPU_SDPA_MIN_TOKENS:
            q, k, v = self.attention_qkv(block, hidden)
            return self.attention_output(block, F.scaled_dot_product_attention(q, k, v))
        return block.attention(hidden)

    def attention_residual(self, block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
        """The first half of a block: ``x + ls_1(attention(ln_1(x)))``, (B, L, C) -> (B, L, C)."""
        return x + block.ls_1(self.attention(block, block.ln_1(x)))

    @staticmethod
    def mlp_residual(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
        """The second half of a block: ``x + ls_2(mlp(ln_2(x)))``, (B, L, C) -> (B, L, C)."""
        return x + block.ls_2(block.mlp(block.ln_2(x)))

    def block_forward(self, block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
        """One image-tower block, ``block(x)`` with :meth:`attention`'s choice of kernel: (B, L, C) -> (B, L, C)."""
        return self.mlp_residual(block, self.attention_residual(block, x))

    def plain_pass(self, pixels: torch.Tensor) -> PlainPass:
        """The unchanged image tower, block by block, keeping every residual stream; lazy (:class:`PlainPass`).

        Every method that needs the plain forward (WinCLIP's image pass, SDP's original path,
        AdaCLIP's un-prompted pass for its dynamic prompts) takes it from here, so methods run
        together can share one pass and get exactly what they get alone.

        Args:
            pixels: (B, 3, S, S) normalised images.
        """
        return PlainPass(self, pixels)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, C) final tokens -> (B, D) global embedding ``ln_post(tokens[:, 0]) @ proj``."""
        return self.visual.ln_post(tokens[:, 0]) @ self.visual.proj

    def project_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, C) -> (B, L, D): ``ln_post`` then ``proj`` applied to every token."""
        return self.visual.ln_post(tokens) @ self.visual.proj

    @staticmethod
    def attention_qkv(block: ResidualAttentionBlock, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The block's own q, k, v projections of ``hidden`` (already ``ln_1``-normalised).

        Args:
            hidden: (B, L, C).
        Returns:
            q, k, v, each (B, heads, L, C / heads).
        """
        attn = block.attn
        qkv = F.linear(hidden, attn.in_proj_weight, attn.in_proj_bias)
        batch, length, _ = hidden.shape
        qkv = qkv.reshape(batch, length, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    @staticmethod
    def attention_value(block: ResidualAttentionBlock, hidden: torch.Tensor) -> torch.Tensor:
        """Only the v projection of :meth:`attention_qkv` (a third of its work): (B, heads, L, C / heads)."""
        attn = block.attn
        width = hidden.shape[-1]
        bias = attn.in_proj_bias[2 * width :] if attn.in_proj_bias is not None else None
        value = F.linear(hidden, attn.in_proj_weight[2 * width :], bias)
        batch, length, _ = hidden.shape
        return value.reshape(batch, length, attn.num_heads, -1).transpose(1, 2)

    @staticmethod
    def attention_output(block: ResidualAttentionBlock, heads: torch.Tensor) -> torch.Tensor:
        """(B, heads, L, C/heads) per-head attention outputs -> (B, L, C) through the out-projection."""
        batch, _, length, _ = heads.shape
        merged = heads.transpose(1, 2).reshape(batch, length, -1)
        return block.attn.out_proj(merged)

    # ------------------------------------------------------------------------------------ text tower
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """(P,) sentences -> (P, context_length) token ids; refuses empty or overlong sentences."""
        from .prompts import PromptError

        texts = list(texts)
        for text in texts:
            if not text.strip():
                raise PromptError("empty prompt sentence")
        ids = self.tokenizer(texts)
        context = ids.shape[1]
        eot = ids.argmax(dim=-1)
        for text, position in zip(texts, eot):
            if position == context - 1:
                # Either it fills the context exactly or the tokenizer silently truncated it (and put
                # the end-of-text token last); one more position of context tells the two apart.
                longer = self.tokenizer([text], context_length=context + 1)
                if int(longer[0].argmax()) >= context:
                    raise PromptError(f"prompt longer than the text encoder's {context} tokens: {text[:80]!r}...")
        return ids

    def text_forward(self, ids: torch.Tensor, hook: TextHook | None = None, min_length: int = 0) -> torch.Tensor:
        """Text tower forward, walked block by block, over the shortest length that holds every EOT.

        The tower is causal, so positions after a sentence's end-of-text token cannot change its
        output; running only up to the longest sentence gives identical features, several times faster.

        Args:
            ids: (P, context_length) token ids from :meth:`tokenize`.
            hook: called as ``hook(block_index, x)`` before each block (0-based), returns the new x;
                used to insert learned tokens (AdaCLIP).
            min_length: run at least this many positions (e.g. to hold inserted tokens); ids no longer
                than this run as they are, with no read of their values on the host.
        Returns:
            (P, D) text embeddings, not normalised.
        """
        model = self.model
        if getattr(model, "text_pool_type", "argmax") != "argmax":
            raise ModelSpecError(f"{self.spec.model}: only argmax (EOT) text pooling is supported")
        ids = ids.to(self.device)
        eot = ids.argmax(dim=-1)
        if ids.shape[1] > min_length:  # (a host read; callers that export pass ids already cut to length)
            length = min(ids.shape[1], max(int(eot.max()) + 1, min_length))
        else:
            length = ids.shape[1]
        x = model.token_embedding(ids[:, :length]).to(self.dtype)
        x = x + model.positional_embedding[:length].to(self.dtype)
        mask = model.attn_mask[:length, :length].to(self.dtype) if model.attn_mask is not None else None
        for index, block in enumerate(self.text_blocks):
            if hook is not None:
                x = hook(index, x)
            x = block(x, attn_mask=mask)
        x = model.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), eot]
        projection = model.text_projection
        return projection(pooled) if isinstance(projection, nn.Linear) else pooled @ projection

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """(P,) sentences -> (P, D) float32 embeddings, not normalised."""
        ids = self.tokenize(texts)
        chunks = [self.text_forward(ids[i : i + batch_size]) for i in range(0, len(ids), batch_size)]
        return torch.cat(chunks).float()


# -------------------------------------------------------------------------------------------- cache
MAX_INPUT_SIZE = 2048  # model input side S; a ViT-L/14 at 2048 already attends over 21,316 tokens
_CACHE: dict[BackboneSpec, ClipBackbone] = {}
_CACHE_LOCK = threading.Lock()


def load_backbone(spec: BackboneSpec) -> ClipBackbone:
    """Build (or fetch from the cache) the backbone for ``spec``; one instance per spec."""
    if spec.image_size is not None and not 0 < spec.image_size <= MAX_INPUT_SIZE:
        raise ModelSpecError(
            f"image size {spec.image_size} is outside 1..{MAX_INPUT_SIZE} pixels (the papers use 240 to 518; "
            "memory grows with the fourth power of the size)"
        )
    with _CACHE_LOCK:
        if spec not in _CACHE:
            model = _create_open_clip_model(spec)
            if spec.image_size is not None:
                if spec.image_size < model.visual.patch_size[0]:
                    raise ModelSpecError(f"image size {spec.image_size} is smaller than one patch")
                resize_positional_embedding(
                    model.visual, spec.image_size, spec.pos_embed_interpolation, spec.pos_embed_antialias
                )
            model = model.to(device=spec.device, dtype=_PRECISIONS[spec.precision])
            tokenizer = open_clip.get_tokenizer(parse_model_name(loadable_name(spec.model)).name)
            backbone = ClipBackbone(model, spec, tokenizer)
            if disk_cache_enabled():  # while loading, so that no request pays for it
                text_tower_fingerprint(backbone)
            _CACHE[spec] = backbone
        return _CACHE[spec]


def create_backbone(
    model: str = "zsad-tiny",
    image_size: int | None = None,
    quick_gelu: bool = False,
    device: str | None = "cpu",
    precision: str | None = None,
    **spec_fields,
) -> ClipBackbone:
    """Convenience wrapper around :func:`load_backbone` that resolves device and precision."""
    device = resolve_device(device)
    spec = BackboneSpec(
        model=model,
        image_size=image_size,
        quick_gelu=quick_gelu,
        device=device,
        precision=resolve_precision(precision, device),
        **spec_fields,
    )
    return load_backbone(spec)


def clear_backbone_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()


def release_backbone(spec: BackboneSpec) -> bool:
    """Drop one backbone from the cache (a bounded model pool calls this); True when it was cached."""
    with _CACHE_LOCK:
        return _CACHE.pop(spec, None) is not None
