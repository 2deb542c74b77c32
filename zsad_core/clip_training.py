"""Train a small CLIP of the project's own on generated images (issue 12's proving-ground backbone).

``python -m zsad_core train-clip --out DIR [--config FILE] [--steps N] [--seed N] [--max-minutes M]``
writes ``DIR`` as an open_clip model folder (``open_clip_config.json`` + ``open_clip_model.safetensors``),
usable everywhere as ``--model local-dir:DIR``. The model is a standard open_clip ``CLIP`` built
from a config of ours (:data:`DEFAULT_CONFIG`, ``clip_configs/zsad-toy.json``), so every method
loads and walks it unchanged.

Data: the generator's *training* categories only (:data:`zsad_core.data.synthetic.TRAIN_CATEGORIES`);
the held-out ones are never seen. A pool of samples is rendered once (good ones and every
applicable defect, exact masks); every step draws a batch of random crops (scale, aspect, flips,
quarter turns), each labelled *abnormal* when it holds defect pixels.

Captions combine a template, a state and the category, drawn from the same vocabulary the methods'
zero-shot prompts use, so their prompts mean something to the model: normal states ("flawless {}",
"{} without defect", plain "{}"), abnormal states, generic ("damaged {}", "{} with flaw") or
the defect's own words ("cracked {}", "{} with a hole"); the category is its display name or, with
probability ``generic_prob``, a generic word ("object", "surface"), so the normal/abnormal axis is
shared by all categories.

Loss, summed:

- ``clip``: image-caption contrastive loss with several positives: a caption is a positive of an
  image when it has the image's state (normal/abnormal) and names its category or a generic word.
- ``pair``: for each crop, ``softmax(s * cos(image, [normal caption, abnormal caption]))`` of its own
  category against its label (the two-class score every method computes).
- ``patch``: the same two-class softmax for every patch token (``ln_post`` and ``proj`` applied, as
  the methods read patch features), against the fraction of defect pixels under the patch (> 1/4:
  abnormal), classes weighted to balance. This is the patch-level alignment term the issue allows;
  the model stays a standard CLIP.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .files import replacing, write_text_atomic
from .prompts import ADACLIP_PROMPTS, CLIPAD_PROMPTS, WINCLIP_TEMPLATES

CONFIG_DIR = Path(__file__).resolve().parent / "clip_configs"
DEFAULT_CONFIG = CONFIG_DIR / "zsad-toy.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
CONFIG_FILE = "open_clip_config.json"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# The methods' own prompt vocabulary, so their zero-shot prompts mean something to the model.
TEMPLATES: tuple[str, ...] = tuple(dict.fromkeys(WINCLIP_TEMPLATES + ADACLIP_PROMPTS.templates))
NORMAL_STATES: tuple[str, ...] = ADACLIP_PROMPTS.normal_states  # "{}", "flawless {}", "{} without defect"...
ABNORMAL_STATES: tuple[str, ...] = CLIPAD_PROMPTS.abnormal_states[:7]  # "damaged {}" ... "{} with damage"
GENERIC_NAMES = ("object", "item", "surface", "part", "product")


@dataclass(frozen=True)
class ClipTrainingConfig:
    """Settings of :func:`train_clip` (all of them recorded in the output's metadata).

    Attributes:
        config: open_clip model config JSON (``{"embed_dim", "vision_cfg", "text_cfg"}``).
        seed: seed of the initial weights, the rendered pool and the batches.
        steps: optimiser steps (the learning rate follows a cosine over them).
        batch_size: crops per step.
        lr, weight_decay, warmup_steps: AdamW and its schedule (no decay on gains, biases, embeddings).
        pool_good, pool_defective: rendered samples per training category: good ones, and per
            applicable defect type.
        render_size: side of the rendered samples crops are taken from.
        min_crop_scale: smallest crop, as a fraction of the sample's area.
        generic_prob: probability that a caption names a generic word instead of the category.
        defect_word_prob: probability that an abnormal caption uses the defect's own words.
        patch_weight, pair_weight: weights of the patch and pair losses (the clip loss has 1).
        max_minutes: stop early after this wall time (None: run every step).
    """

    config: str = str(DEFAULT_CONFIG)
    seed: int = 0
    steps: int = 3000
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 150
    pool_good: int = 48
    pool_defective: int = 16
    render_size: int = 192
    min_crop_scale: float = 0.3
    generic_prob: float = 0.3
    defect_word_prob: float = 0.4
    patch_weight: float = 1.0
    pair_weight: float = 1.0
    max_minutes: float | None = None


# ------------------------------------------------------------------------------------------ model
def load_model_config(path: str | os.PathLike) -> dict[str, Any]:
    """An open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) from a JSON file."""
    config = json.loads(Path(path).read_text())
    missing = {"embed_dim", "vision_cfg", "text_cfg"} - set(config)
    if missing:
        raise ValueError(f"{path}: not an open_clip model config (missing {sorted(missing)})")
    return config


def build_clip(model_config: dict[str, Any], seed: int) -> torch.nn.Module:
    """A randomly initialised open_clip ``CLIP`` from ``model_config`` (the seed fixes the weights)."""
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return open_clip.CLIP(**model_config)


def save_model_folder(model: torch.nn.Module, model_config: dict[str, Any], out: Path, metadata: dict) -> Path:
    """Write ``out`` as an open_clip model folder (fp16 weights + config), atomically per file."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    image_size = model_config["vision_cfg"]["image_size"]
    folder_config = {
        "model_cfg": model_config,
        "preprocess_cfg": {"size": image_size, "mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic"},
    }
    write_text_atomic(out / CONFIG_FILE, json.dumps(folder_config, indent=2))
    tensors = {name: value.detach().to(torch.float16).contiguous() for name, value in model.state_dict().items()}
    with replacing(out / WEIGHTS_FILE) as temporary:
        save_file(tensors, str(temporary), metadata={key: json.dumps(value) for key, value in metadata.items()})
    return out


# ------------------------------------------------------------------------------------------- data
@dataclass
class Pool:
    """Rendered samples: (K, R, R, 3) uint8 images, (K, R, R) bool masks, and per sample its
    category and defect (None for good ones)."""

    images: np.ndarray
    masks: np.ndarray
    categories: list[str]
    defects: list[str | None]


def render_pool(config: ClipTrainingConfig, progress: bool = True) -> Pool:
    """Render the training categories' pool (deterministic for ``config.seed``)."""
    from tqdm.auto import tqdm

    from .data.synthetic import TRAIN_CATEGORIES, category_defects, render_sample

    jobs: list[tuple[str, int, str | None]] = []
    for category in TRAIN_CATEGORIES:
        jobs += [(category, index, None) for index in range(config.pool_good)]
        for defect in category_defects(category):
            jobs += [(category, index, defect) for index in range(config.pool_defective)]
    images = np.empty((len(jobs), config.render_size, config.render_size, 3), dtype=np.uint8)
    masks = np.empty((len(jobs), config.render_size, config.render_size), dtype=bool)
    for row, (category, index, defect) in enumerate(tqdm(jobs, desc="render", disable=not progress, leave=False)):
        # good samples and each defect draw from their own index range, so no two samples share a scene
        offset = 0 if defect is None else 10_000 * (1 + category_defects(category).index(defect))
        images[row], masks[row] = render_sample(category, offset + index, config.seed, config.render_size, defect)
    return Pool(images, masks, [job[0] for job in jobs], [job[2] for job in jobs])


def random_crops(
    pool: Pool, rows: np.ndarray, size: int, min_scale: float, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random square-ish crops of ``pool`` samples resized to ``size``.

    Returns:
        (B, 3, size, size) float images in [0, 1], and (B, size, size) float defect masks.
    """
    side = pool.images.shape[1]
    images, masks = [], []
    for row in rows:
        scale = rng.uniform(min_scale, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        height = int(round(min(side, side * math.sqrt(scale / aspect))))
        width = int(round(min(side, side * math.sqrt(scale * aspect))))
        top, left = rng.integers(0, side - height + 1), rng.integers(0, side - width + 1)
        image = torch.from_numpy(pool.images[row, top : top + height, left : left + width]).permute(2, 0, 1)
        mask = torch.from_numpy(pool.masks[row, top : top + height, left : left + width])
        quarter = int(rng.integers(0, 4))
        flip = bool(rng.integers(0, 2))
        image, mask = torch.rot90(image, quarter, (1, 2)), torch.rot90(mask, quarter, (0, 1))
        if flip:
            image, mask = image.flip(2), mask.flip(1)
        images.append(F.interpolate(image[None].float() / 255.0, size=(size, size), mode="bilinear", antialias=True))
        masks.append(F.interpolate(mask[None, None].float(), size=(size, size), mode="area"))
    return torch.cat(images).clamp(0, 1), torch.cat(masks)[:, 0]


def state_caption(
    category_words: str, abnormal: bool, defect: str | None, rng: random.Random, cfg: ClipTrainingConfig
) -> str:
    """One caption: template(state(category words))."""
    from .data.synthetic import DEFECT_INFO

    if abnormal and defect is not None and rng.random() < cfg.defect_word_prob:
        info = DEFECT_INFO[defect]
        state = f"{info.words} {{}}" if info.position == "before" else f"{{}} {info.words}"
    else:
        state = rng.choice(ABNORMAL_STATES if abnormal else NORMAL_STATES)
    return rng.choice(TEMPLATES).format(state.format(category_words))


# ------------------------------------------------------------------------------------------ train
def _normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def _parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.ndim < 2 or "embedding" in name or "logit_scale" in name or name.endswith("class_embedding"):
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _learning_rate(step: int, cfg: ClipTrainingConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def training_losses(
    backbone: Any,
    pixels: torch.Tensor,
    masks: torch.Tensor,
    labels: torch.Tensor,
    captions: list[str],
    caption_keys: list[tuple[str, bool]],
    image_keys: list[tuple[str, bool]],
    pair_captions: list[tuple[str, str]],
) -> dict[str, torch.Tensor]:
    """The three losses of the module docstring for one batch.

    Args:
        backbone: a :class:`zsad_core.backbone.ClipBackbone` around the model being trained.
        pixels: (B, 3, S, S) normalised crops.
        masks: (B, S, S) defect fractions of each pixel.
        labels: (B,) 1 for abnormal crops.
        captions: U distinct captions of the batch.
        caption_keys: per caption, (category or "*" for generic words, abnormal).
        image_keys: per crop, (category, abnormal).
        pair_captions: per crop, (normal caption, abnormal caption) of its own category.
    """
    model = backbone.model
    scale = model.logit_scale.exp().clamp(max=100.0)
    tokens = backbone.visual.ln_pre(backbone.embed_patches(pixels))
    for block in backbone.blocks:
        tokens = block(tokens)
    projected = F.normalize(backbone.project_tokens(tokens), dim=-1)  # (B, 1+N, D), ln_post + proj
    image = projected[:, 0]
    patches = projected[:, 1:]
    pairs = [text for pair in pair_captions for text in pair]
    text = F.normalize(backbone.text_forward(backbone.tokenize(captions + pairs)), dim=-1)
    caption_text, pair_text = text[: len(captions)], text[len(captions) :].view(len(pair_captions), 2, -1)

    positives = torch.tensor(
        [[c_abn == i_abn and c_cat in ("*", i_cat) for c_cat, c_abn in caption_keys] for i_cat, i_abn in image_keys],
        dtype=torch.float32,
    )
    logits = scale * image @ caption_text.T  # (B, U)
    image_to_text = -(positives / positives.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    covered = positives.sum(0) > 0
    text_to_image = (
        -((positives / positives.sum(0, keepdim=True).clamp(min=1)) * logits.log_softmax(0)).sum(0)[covered].mean()
    )
    clip_loss = 0.5 * (image_to_text + text_to_image)

    pair_logits = scale * torch.einsum("bd,bkd->bk", image, pair_text)
    pair_loss = F.cross_entropy(pair_logits, labels)

    grid = int(math.isqrt(patches.shape[1]))
    fractions = F.adaptive_avg_pool2d(masks[:, None], grid).flatten(1)  # (B, N) defect share per patch
    patch_labels = (fractions > 0.25).long()
    patch_logits = scale * torch.einsum("bnd,bkd->bnk", patches, pair_text)
    counts = torch.bincount(patch_labels.flatten(), minlength=2).float()
    weights = (counts.sum() / (2 * counts.clamp(min=1))).clamp(max=20.0)  # balance the rare abnormal patches
    patch_loss = F.cross_entropy(patch_logits.flatten(0, 1), patch_labels.flatten(), weight=weights)
    return {"clip": clip_loss, "pair": pair_loss, "patch": patch_loss}


def _code_revision() -> str:
    """The git commit of the code that trained (with ``+changes`` when the tree differs), or ""."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "zsad_core"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return commit + ("+changes" if dirty else "")


def train_clip(
    cfg: ClipTrainingConfig, out: str | os.PathLike, progress: bool = True, log_every: int = 100
) -> dict[str, Any]:
    """Train the model of ``cfg.config`` on the generator's training categories; write ``out``.

    ``progress`` draws a bar; without it a line of mean losses goes to stderr every ``log_every`` steps.

    Returns:
        A summary: steps run, seconds, the last losses, the output folder.
    """
    import open_clip

    from . import __version__
    from .backbone import BackboneSpec, ClipBackbone
    from .data.synthetic import CATEGORY_INFO, TRAIN_CATEGORIES

    started = time.perf_counter()
    revision = _code_revision()  # the code that trains, read before anything can change it
    out = Path(out)
    model_config = load_model_config(cfg.config)
    size = int(model_config["vision_cfg"]["image_size"])
    model = build_clip(model_config, cfg.seed)
    tokenizer = open_clip.get_tokenizer("ViT-B-16")  # the standard CLIP BPE, as every open_clip CLIP config
    backbone = ClipBackbone(model, BackboneSpec(model=f"train:{out}"), tokenizer)
    model.train().requires_grad_(True)  # the wrapper freezes the model it is given; here it learns
    pool = render_pool(cfg, progress)
    rng = np.random.default_rng(cfg.seed)
    words = random.Random(cfg.seed)
    optimiser = torch.optim.AdamW(_parameter_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    defective = np.flatnonzero(np.array([defect is not None for defect in pool.defects]))
    good = np.flatnonzero(np.array([defect is None for defect in pool.defects]))
    history: list[dict[str, float]] = []
    from tqdm.auto import tqdm

    bar = tqdm(range(cfg.steps), desc="train-clip", disable=not progress)
    steps_run = 0
    for step in bar:
        if cfg.max_minutes is not None and time.perf_counter() - started > 60 * cfg.max_minutes:
            break
        half = cfg.batch_size // 2
        rows = np.concatenate([rng.choice(defective, half), rng.choice(good, cfg.batch_size - half)])
        crops, masks = random_crops(pool, rows, size, cfg.min_crop_scale, rng)
        labels = (masks.flatten(1).sum(1) >= 4.0).long()  # at least a few defect pixels: abnormal
        captions: dict[str, tuple[str, bool]] = {}
        image_keys, pairs = [], []
        for row, label in zip(rows, labels.tolist()):
            category = pool.categories[row]
            display = CATEGORY_INFO[category].display
            generic = words.random() < cfg.generic_prob
            name = words.choice(GENERIC_NAMES) if generic else display
            text = state_caption(name, bool(label), pool.defects[row], words, cfg)
            captions.setdefault(text, ("*" if generic else category, bool(label)))
            image_keys.append((category, bool(label)))
            pairs.append(
                (state_caption(display, False, None, words, cfg), state_caption(display, True, None, words, cfg))
            )
        losses = training_losses(
            backbone, _normalise(crops), masks, labels, list(captions), list(captions.values()), image_keys, pairs
        )
        total = losses["clip"] + cfg.pair_weight * losses["pair"] + cfg.patch_weight * losses["patch"]
        for group in optimiser.param_groups:
            group["lr"] = _learning_rate(step, cfg)
        optimiser.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        steps_run = step + 1
        record = {name: float(value.detach()) for name, value in losses.items()}
        history.append(record)
        bar.set_postfix({name: f"{value:.3f}" for name, value in record.items()}, refresh=False)
        if not progress and log_every and steps_run % log_every == 0:  # a log line where no bar is drawn
            recent = {name: np.mean([h[name] for h in history[-log_every:]]) for name in record}
            print(
                f"step {steps_run}/{cfg.steps} {time.perf_counter() - started:.0f}s "
                + " ".join(f"{name} {value:.3f}" for name, value in recent.items()),
                file=sys.stderr,
                flush=True,
            )
    bar.close()
    model.eval()
    seconds = time.perf_counter() - started
    last = {name: float(np.mean([h[name] for h in history[-50:]])) for name in history[-1]} if history else {}
    metadata = {
        "format": "zsad-clip-v1",
        "zsad_version": __version__,
        "code_revision": revision,
        "training": {**asdict(cfg), "config": Path(cfg.config).name},
        "training_categories": list(TRAIN_CATEGORIES),
        "steps_run": steps_run,
        "seconds": round(seconds, 1),
        "final_losses": last,
        "command": " ".join(["python", "-m", "zsad_core", *sys.argv[1:]]) if sys.argv[1:2] == ["train-clip"] else "",
    }
    save_model_folder(model, model_config, out, metadata)
    (out / "training.json").write_text(json.dumps({**metadata, "history": history}, indent=1))
    return {"out": str(out), "steps": steps_run, "seconds": seconds, "losses": last}


# -------------------------------------------------------------------------------------------- CLI
def add_train_clip_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    defaults = ClipTrainingConfig()
    parser.add_argument("--out", required=True, help="output folder (an open_clip model folder: use local-dir:OUT)")
    parser.add_argument("--config", default=defaults.config, help="open_clip model config JSON (default: zsad-toy)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help=f"optimiser steps (default {defaults.steps})")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="crops per step")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of weights, data and batches")
    parser.add_argument("--pool-good", type=int, default=defaults.pool_good, help="good samples per category")
    parser.add_argument(
        "--pool-defective", type=int, default=defaults.pool_defective, help="samples per category and defect"
    )
    parser.add_argument("--max-minutes", type=float, default=None, help="stop after this many minutes")
    return parser


def run_train_clip(args: argparse.Namespace) -> int:
    for name in ("steps", "batch_size", "pool_good", "pool_defective"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.batch_size < 2:
        raise ValueError("--batch-size must be at least 2 (half defective, half good crops)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    cfg = replace(
        ClipTrainingConfig(),
        config=args.config,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        pool_good=args.pool_good,
        pool_defective=args.pool_defective,
        max_minutes=args.max_minutes,
    )
    summary = train_clip(cfg, out, progress=sys.stderr.isatty())
    print(json.dumps(summary, indent=2))
    print(f"use it with --model local-dir:{out}", file=sys.stderr)
    return 0
