"""Training the learned parts of AdaCLIP and SDP+ on auxiliary data (``python -m zsad_core train``).

The loop works for any :class:`~zsad_core.methods.learnable.LearnableDetector` through its
interface only (``training_forward``, ``training_loss``, ``learned`` and the class defaults), so a
new learnable method trains without changes here.

Data (methods.md §2.9, §3.5, §6.3): the *test split* of each auxiliary dataset, with its masks
(``"mvtec:/data/mvtec_anomaly_detection"``, ``"colondb:/data/ColonDB"``...). Several datasets are
concatenated. Images go through the same preprocessing as detection
(:func:`zsad_core.preprocess.load_image` + :func:`~zsad_core.preprocess.images_to_batch` at the
method's size, with the method's ``resize`` policy), masks through :func:`zsad_core.data.load_mask` at S x S (all zero for normal
images), class names through ``dataset.prompt_name(category)``. With probability ``mosaic_prob``
(AdaCLIP: 0.2, MVTec-format data only; methods.md §2.9) a sample is replaced by a 2 x 2 mosaic of
four random images of its category with their masks, downscaled to S.

Recipe: the method's optimiser (``default_optimizer``: Adam lr 1e-4 for SDP+, AdamW lr 0.01
betas (0.5, 0.999) for AdaCLIP), a constant learning rate (as both references), its epochs, batch
size and seed, each overridable. On CUDA, mixed precision (``torch.autocast`` fp16 with a
``GradScaler``) is on by default; on the CPU it is off.

Reproducibility: the data order of epoch ``e`` is a permutation drawn from ``(seed, e)`` and the
augmentation of the ``i``-th sample of epoch ``e`` from ``(seed, e, i)``, so neither depends on
what ran before; torch's global generator is seeded with ``seed`` too (for methods that draw
random numbers in their forward pass). Same seed, same data, same device: same parameters.
Images are decoded by a :class:`torch.utils.data.DataLoader` (``num_workers`` processes, default
``min(2, CPUs)``; :func:`step_loader`) whose items are keyed by ``(epoch, position)``, so the number
of workers does not change a single number.

Files: ``out`` (a ``.safetensors`` file) is written at the end with only the learned parameters
and metadata (settings, training data, steps, seed, zsad version; see
:mod:`zsad_core.methods.learnable`). Every ``checkpoint_every`` steps and at each epoch end a
resumable state ``out + ".state.pt"`` is written (learned parameters, optimiser and scaler state,
step, epoch, RNG states, the epoch's data order, the loss history), made of tensors and plain
Python values only, so it loads with ``torch.load(weights_only=True)``. ``resume=True`` continues
from it and ends with the same parameters as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import pickle
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .data import load_mask, open_dataset, split_data_specs
from .data.masks import check_mask_size, resize_mask
from .files import write_bytes_atomic
from .methods.learnable import LearnableDetector
from .preprocess import ImageError, check_resize_policy, images_to_batch, load_image

logger = logging.getLogger(__name__)

STATE_FORMAT = "zsad-train-state-v1"
DEFAULT_CHECKPOINT_EVERY = 500
MOSAIC_FORMATS = ("mvtec",)  # AdaCLIP applies the mosaic to MVTec AD only
_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
# settings of a run that a resumed run must share (epochs and steps may grow)
_RESUME_KEYS = (
    "method",
    "settings",
    "data",
    "seed",
    "batch_size",
    "optimizer",
    "mosaic_prob",
    "limit",
    "amp",
    "resize",
)


# ------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class TrainingSample:
    """One auxiliary image.

    Attributes:
        image_path: the image file.
        mask_path: its ground-truth mask, or None (normal image).
        label: 0 normal, 1 anomalous.
        class_name: the name put into prompts (``dataset.prompt_name(category)``).
        group: (dataset index, category): mosaic partners come from the same group.
        mosaic_allowed: the sample's dataset is MVTec-format (mosaic augmentation applies).
    """

    image_path: Path
    mask_path: Path | None
    label: int
    class_name: str
    group: tuple[int, str]
    mosaic_allowed: bool


def collect_training_samples(specs: Sequence[str], limit: int | None = None, seed: int = 0) -> list[TrainingSample]:
    """Every test image (with its mask) of the auxiliary datasets, concatenated in dataset order.

    Args:
        specs: dataset specs such as ``"mvtec:/data/mvtec_anomaly_detection"``.
        limit: at most this many images per category of each dataset, a random subset drawn
            from ``seed`` (None: all).
        seed: seed of that subset.
    Raises:
        ValueError: a dataset without pixel masks (image-level-only sets cannot train the maps),
            an empty dataset, or a malformed spec.
    """
    samples: list[TrainingSample] = []
    for index, spec in enumerate(specs):
        dataset = open_dataset(spec)
        if not dataset.has_masks:
            raise ValueError(
                f"dataset {spec!r} has no pixel masks; training needs ground-truth masks "
                "(image-level-only sets such as HeadCT or BrainMRI cannot be used)"
            )
        if len(dataset) == 0:
            raise ValueError(f"dataset {spec!r} has no images")
        for category, items in dataset.samples.items():
            chosen = list(items)
            if limit is not None and len(chosen) > limit:
                rng = np.random.default_rng([seed, index, len(samples)])
                chosen = [chosen[i] for i in sorted(rng.choice(len(chosen), size=limit, replace=False))]
            for sample in chosen:
                if sample.label == 1 and sample.mask_path is None:
                    raise ValueError(f"dataset {spec!r}: anomalous image {sample.image_path} has no mask")
                samples.append(
                    TrainingSample(
                        image_path=Path(sample.image_path),
                        mask_path=Path(sample.mask_path) if sample.mask_path is not None else None,
                        label=int(sample.label),
                        class_name=dataset.prompt_name(category),
                        group=(index, category),
                        mosaic_allowed=dataset.name in MOSAIC_FORMATS,
                    )
                )
    if not samples:
        raise ValueError(f"no training images in {list(specs)}")
    return samples


def mosaic(pixels: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """2 x 2 mosaic of four images and their masks, scaled back to S x S.

    Args:
        pixels: (4, 3, S, S) normalised images (top-left, top-right, bottom-left, bottom-right).
        masks: (4, S, S) float {0, 1} masks.
    Returns:
        (3, S, S) image (the normalised tensors resized bicubic, antialiased) and (S, S) {0, 1} mask
        (bilinear, binarised at 0.5, as :func:`zsad_core.data.load_mask`).
    """
    size = pixels.shape[-1]
    top = torch.cat([pixels[0], pixels[1]], dim=-1)
    bottom = torch.cat([pixels[2], pixels[3]], dim=-1)
    image = torch.cat([top, bottom], dim=-2)[None]
    mask = torch.cat([torch.cat([masks[0], masks[1]], dim=-1), torch.cat([masks[2], masks[3]], dim=-1)], dim=-2)
    image = F.interpolate(image, size=(size, size), mode="bicubic", align_corners=False, antialias=True)[0]
    mask = F.interpolate(mask[None, None].float(), size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    return image, (mask > 0.5).float()


class TrainingData:
    """Batches of (pixels, masks, labels, class names) with a deterministic order and augmentation.

    Args:
        samples: from :func:`collect_training_samples`.
        image_size: S.
        mean, std: the backbone's normalisation.
        mosaic_prob: probability of the mosaic for samples that allow it.
        seed: seed of the order and the augmentation.
        resize: the resize policy (:data:`~zsad_core.preprocess.RESIZE_POLICIES`); :func:`train`
            passes the method's, so training sees the pixels detection will.
    """

    def __init__(
        self,
        samples: Sequence[TrainingSample],
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        mosaic_prob: float = 0.0,
        seed: int = 0,
        resize: str = "tensor-bicubic",
    ) -> None:
        if not 0.0 <= mosaic_prob <= 1.0:
            raise ValueError(f"mosaic probability must lie in [0, 1], got {mosaic_prob}")
        self.samples = list(samples)
        self.image_size = int(image_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.mosaic_prob = float(mosaic_prob)
        self.seed = int(seed)
        self.resize = check_resize_policy(resize)
        self.groups: dict[tuple[int, str], list[int]] = {}
        self.unreadable: dict[int, str] = {}  # sample index -> why it cannot be used (named once, then skipped)
        for index, sample in enumerate(self.samples):
            self.groups.setdefault(sample.group, []).append(index)

    def __len__(self) -> int:
        return len(self.samples)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """(N,) int64 permutation of the samples for ``epoch``, drawn from ``(seed, epoch)``."""
        return torch.from_numpy(np.random.default_rng([self.seed, epoch]).permutation(len(self.samples)))

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(3, S, S) normalised image and (S, S) float mask of sample ``index``.

        A sample whose image or mask cannot be used (unreadable, mask of another size) is recorded in
        :attr:`unreadable` and replaced, then and in every later epoch, by the next usable sample, so
        the run goes on (the trainer names each one in a warning once and reports the count). The
        replacement depends only on which samples are unusable, so every worker process picks the same.
        """
        for offset in range(len(self.samples)):
            candidate = (index + offset) % len(self.samples)
            if candidate in self.unreadable:
                continue
            try:
                return self._load_sample(self.samples[candidate])
            except (ImageError, OSError, ValueError) as error:
                self.unreadable[candidate] = str(error)
        raise ValueError(f"none of the {len(self.samples)} training images can be read")

    def _load_sample(self, sample: TrainingSample) -> tuple[torch.Tensor, torch.Tensor]:
        size = (self.image_size, self.image_size)
        image = load_image(sample.image_path)
        pixels, _ = images_to_batch([image], self.image_size, self.mean, self.std, self.resize)
        if sample.mask_path is None:
            mask = load_mask(None, size=size)
        else:
            mask = load_mask(sample.mask_path)
            check_mask_size(mask, (image.height, image.width), sample.mask_path, sample.image_path)
            mask = resize_mask(mask, size)
        return pixels[0], torch.from_numpy(mask.astype(np.float32))

    def item(self, index: int, epoch: int, position: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Sample ``index`` as the ``position``-th of ``epoch``: possibly replaced by a mosaic."""
        sample = self.samples[index]
        if self.mosaic_prob > 0 and sample.mosaic_allowed:
            rng = np.random.default_rng([self.seed, epoch, position, 1])
            if rng.random() < self.mosaic_prob:
                group = self.groups[sample.group]
                partners = rng.choice(group, size=4, replace=len(group) < 4)
                loaded = [self.load(int(i)) for i in partners]
                image, mask = mosaic(torch.stack([p for p, _ in loaded]), torch.stack([m for _, m in loaded]))
                label = int(max(self.samples[int(i)].label for i in partners) or mask.any())
                return image, mask, label
        image, mask = self.load(index)
        return image, mask, sample.label

    def batch(
        self, indices: Sequence[int], epoch: int, first_position: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
        """(B, 3, S, S) pixels, (B, S, S) masks, (B,) labels and B class names."""
        items = [
            (*self.item(int(i), epoch, first_position + k), self.samples[int(i)].class_name, {})
            for k, i in enumerate(indices)
        ]
        pixels, masks, labels, names, _ = collate_items(items)
        return pixels, masks, labels, names


class StepItems(torch.utils.data.Dataset):
    """:class:`TrainingData` indexed by ``(epoch, position)``: the ``position``-th sample of ``epoch``'s
    order (:meth:`TrainingData.epoch_order`), augmented as :meth:`TrainingData.item` draws it.

    Each item also carries the samples found unusable while loading it (``{index: why}``), so that
    the main process learns of them whichever worker process loaded it.
    """

    def __init__(self, data: TrainingData) -> None:
        self.data = data
        self._order_epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.data)

    def order(self, epoch: int) -> torch.Tensor:
        """``epoch``'s order (the last one is kept)."""
        if epoch != self._order_epoch:
            self._order_epoch, self._order = epoch, self.data.epoch_order(epoch)
        return self._order

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int, str, dict[int, str]]:
        epoch, position = key
        index = int(self.order(epoch)[position])
        known = set(self.data.unreadable)
        image, mask, label = self.data.item(index, epoch, position)
        found = {i: why for i, why in self.data.unreadable.items() if i not in known}
        return image, mask, label, self.data.samples[index].class_name, found


class StepBatches:
    """The batches of ``(epoch, position)`` keys of optimiser steps ``first_step .. total_steps - 1``.

    Step ``s`` is batch ``s % batches_per_epoch`` of epoch ``s // batches_per_epoch``: positions
    ``b * batch_size`` up to the end of the epoch's order (the last batch of an epoch may be smaller).
    """

    def __init__(self, num_samples: int, batch_size: int, first_step: int, total_steps: int) -> None:
        self.num_samples, self.batch_size = num_samples, batch_size
        self.first_step, self.total_steps = first_step, total_steps
        self.batches_per_epoch = math.ceil(num_samples / batch_size)

    def __len__(self) -> int:
        return max(0, self.total_steps - self.first_step)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.first_step, self.total_steps):
            epoch, batch = divmod(step, self.batches_per_epoch)
            end = min((batch + 1) * self.batch_size, self.num_samples)
            yield [(epoch, position) for position in range(batch * self.batch_size, end)]


def collate_items(
    items: list[tuple[torch.Tensor, torch.Tensor, int, str, dict[int, str]]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str], dict[int, str]]:
    """(B, 3, S, S) pixels, (B, S, S) masks, (B,) labels, B class names and the unusable samples found."""
    found: dict[int, str] = {}
    for item in items:
        found.update(item[4])
    pixels = torch.stack([item[0] for item in items])
    masks = torch.stack([item[1] for item in items])
    labels = torch.tensor([item[2] for item in items], dtype=torch.long)
    return pixels, masks, labels, [item[3] for item in items], found


def default_num_workers() -> int:
    """Image-decoding worker processes of :func:`train` by default: ``min(2, CPUs)``."""
    return min(2, os.cpu_count() or 1)


def _seed_worker(_worker_id: int) -> None:
    """Seed a worker's global generators from its DataLoader seed (items draw from their own seeds anyway)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    torch.manual_seed(seed)


def step_loader(
    data: TrainingData, batch_size: int, first_step: int, total_steps: int, num_workers: int, seed: int
) -> torch.utils.data.DataLoader:
    """Batches of steps ``first_step .. total_steps - 1``, decoded by ``num_workers`` processes (0: here).

    The order and augmentation come from ``(seed, epoch, position)`` only, so any ``num_workers``
    gives the same batches; the loader's own generator is seeded from ``seed`` and leaves torch's
    global generator alone (a plain DataLoader draws its base seed from it).
    """
    return torch.utils.data.DataLoader(
        StepItems(data),
        batch_sampler=StepBatches(len(data), batch_size, first_step, total_steps),
        collate_fn=collate_items,
        num_workers=num_workers,
        worker_init_fn=_seed_worker if num_workers else None,
        generator=torch.Generator().manual_seed(seed),
    )


# ------------------------------------------------------------------------------------ optimiser
def build_optimizer(parameters, spec: dict[str, Any]) -> torch.optim.Optimizer:
    """``{"name": "adam" | "adamw" | "sgd", "lr": ..., **kwargs}`` -> optimiser over ``parameters``."""
    spec = dict(spec)
    name = str(spec.pop("name", "adam")).lower()
    if name not in _OPTIMIZERS:
        raise ValueError(f"unknown optimiser {name!r}; choose from {sorted(_OPTIMIZERS)}")
    if "betas" in spec:
        spec["betas"] = tuple(spec["betas"])
    return _OPTIMIZERS[name](parameters, **spec)


def state_path_for(out: str | os.PathLike) -> Path:
    """The resumable-state file beside the checkpoint ``out``."""
    return Path(str(out) + ".state.pt")


def _save_state(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` the resumable state to ``path`` atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def _report_unreadable(data: TrainingData, found: dict[int, str], reported: set[int]) -> None:
    """Record in ``data.unreadable`` the unusable samples a batch found, each named in a warning once."""
    for index, why in sorted(found.items()):
        data.unreadable.setdefault(index, why)
        if index not in reported:
            reported.add(index)
            warnings.warn(f"training: skipping {data.samples[index].image_path}: {why}", stacklevel=3)


def _cpu_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().cpu().clone() for name, value in module.state_dict().items()}


# ---------------------------------------------------------------------------------------- train
def train(
    method: str | LearnableDetector,
    data: str | Sequence[str],
    out: str | os.PathLike,
    model: str | None = None,
    image_size: int | None = None,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
    device: str | None = None,
    amp: bool | None = None,
    resume: bool = False,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    mosaic_prob: float | None = None,
    progress: bool = True,
    limit: int | None = None,
    precision: str | None = None,
    num_workers: int | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Train a learnable method's parameters on auxiliary data and save them to ``out``.

    Args:
        method: a learnable method id (``"sdp_plus"``, ``"adaclip"``) or a detector built already
            (then ``model``, ``image_size``, ``device``, ``precision`` and ``settings`` must be unset).
        data: dataset spec(s), e.g. ``["mvtec:/data/mvtec", "colondb:/data/ColonDB"]``.
        out: the ``.safetensors`` checkpoint to write.
        model, image_size, device, precision, settings: passed to :func:`zsad_core.create_detector`.
        epochs: passes over the data (default: the method's).
        steps: stop after this many optimiser steps in total instead (overrides ``epochs``).
        batch_size, lr, seed: default: the method's (seed: AdaCLIP 111, SDP+ 42).
        amp: fp16 autocast + GradScaler; default on for CUDA; refused (with a warning) on the CPU.
        resume: continue from ``out + ".state.pt"``.
        checkpoint_every: write the resumable state every N steps (and at each epoch end).
        mosaic_prob: mosaic probability for MVTec-format data (default: the method's).
        progress: show a tqdm bar with the loss.
        limit: at most this many images per category (a seeded random subset), for quick runs.
        num_workers: processes decoding the images (default :func:`default_num_workers`; 0: in this
            process). The results do not depend on it.
    Returns:
        Summary dict: ``steps``, ``epochs`` (completed, fractional), ``final_loss``,
        ``last_epoch_loss`` (mean over the last epoch's steps), ``losses`` (per step),
        ``images``, ``seed``, ``out``, ``state``, ``seconds``, ``seconds_per_step``.
    Raises:
        ValueError: a training-free method, bad numbers, data without masks, a resume state from
            another run; FileNotFoundError: ``resume`` without a state file, missing datasets.
    """
    from . import __version__
    from .registry import create_detector

    if isinstance(method, LearnableDetector):
        if model is not None or image_size is not None or device is not None or precision is not None or settings:
            raise ValueError("pass model, image_size, device, precision and settings when creating the detector")
        detector = method
    else:
        detector = create_detector(
            method, model=model, image_size=image_size, device=device, precision=precision, **settings
        )
        if not isinstance(detector, LearnableDetector):
            raise ValueError(f"method {method!r} has no trained parameters (it is training-free); nothing to train")
    cls = type(detector)
    specs = [data] if isinstance(data, (str, os.PathLike)) else [str(spec) for spec in data]
    specs = [os.fspath(spec) for spec in specs]
    if not specs:
        raise ValueError("no training data given; pass at least one dataset spec like 'mvtec:/data/mvtec'")
    out = Path(out)
    if out.suffix.lower() != ".safetensors":
        raise ValueError(f"the checkpoint must be a .safetensors file, got {str(out)!r}")
    seed = cls.default_seed if seed is None else int(seed)
    epochs = cls.default_epochs if epochs is None else int(epochs)
    batch_size = cls.default_batch_size if batch_size is None else int(batch_size)
    mosaic_prob = cls.default_mosaic_prob if mosaic_prob is None else float(mosaic_prob)
    for name, value in (("epochs", epochs), ("batch size", batch_size), ("checkpoint_every", checkpoint_every)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    num_workers = default_num_workers() if num_workers is None else int(num_workers)
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    optimizer_spec = dict(cls.default_optimizer)
    if lr is not None:
        if not lr > 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        optimizer_spec["lr"] = float(lr)
    on_cuda = detector.device.type == "cuda"
    use_amp = on_cuda if amp is None else bool(amp)
    if use_amp and not on_cuda:
        warnings.warn("mixed precision (AMP) needs CUDA; training in fp32 on the CPU", UserWarning, stacklevel=2)
        use_amp = False

    samples = collect_training_samples(specs, limit=limit, seed=seed)
    mean, std = detector.backbone.mean_std
    resize = detector.config.resize
    dataset = TrainingData(
        samples, detector.config.image_size, mean, std, mosaic_prob=mosaic_prob, seed=seed, resize=resize
    )
    batches_per_epoch = math.ceil(len(dataset) / batch_size)
    total_steps = int(steps) if steps is not None else epochs * batches_per_epoch

    run_config = {
        "method": detector.method_id,
        "settings": json.dumps(detector.setting_metadata(), sort_keys=True),
        "data": specs,
        "seed": seed,
        "batch_size": batch_size,
        "optimizer": json.dumps(optimizer_spec, sort_keys=True),
        "mosaic_prob": mosaic_prob,
        "limit": limit,
        "amp": use_amp,
        "resize": resize,
    }
    learned = detector.learned
    learned.requires_grad_(True)
    optimizer = build_optimizer(learned.parameters(), optimizer_spec)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    torch.manual_seed(seed)
    if on_cuda:
        torch.cuda.manual_seed_all(seed)

    state_path = state_path_for(out)
    step, losses = 0, []
    if resume:
        step, losses = _restore_state(state_path, run_config, detector, optimizer, scaler)
        logger.info("resumed %s at step %d", state_path, step)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write_state(epoch: int, order: torch.Tensor) -> None:
        rng = {"torch": torch.get_rng_state()}
        if on_cuda:
            rng["cuda"] = torch.cuda.get_rng_state_all()
        _save_state(
            state_path,
            {
                "format": STATE_FORMAT,
                "zsad_version": __version__,
                "config": run_config,
                "step": step,
                "epoch": epoch,
                "batches_per_epoch": batches_per_epoch,
                "order": order,
                "learned": _cpu_state_dict(learned),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rng,
                "losses": list(losses),
            },
        )

    from tqdm.auto import tqdm

    bar = tqdm(
        total=total_steps,
        initial=min(step, total_steps),
        disable=not progress,
        unit="step",
        desc=f"train {detector.method_id}",
    )
    learned.train()
    began = time.perf_counter()
    first_step = step
    order_epoch, order = -1, torch.empty(0, dtype=torch.long)
    reported: set[int] = set()
    loader = step_loader(dataset, batch_size, step, total_steps, num_workers, seed)
    try:
        for pixels, masks, labels, names, found in loader:
            epoch = step // batches_per_epoch
            if epoch != order_epoch:
                order_epoch, order = epoch, dataset.epoch_order(epoch)
            _report_unreadable(dataset, found, reported)
            pixels = pixels.to(detector.device)
            masks, labels = masks.to(detector.device), labels.to(detector.device)
            with torch.autocast(device_type=detector.device.type, dtype=torch.float16, enabled=use_amp):
                output = detector.training_forward(pixels, names)
                loss = detector.training_loss(output, masks, labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            value = float(loss.detach())
            if not math.isfinite(value) and not use_amp:
                raise FloatingPointError(f"training loss became {value} at step {step}; try a lower learning rate")
            losses.append(value)
            bar.set_postfix(loss=f"{value:.4f}", epoch=epoch + 1, refresh=False)
            bar.update(1)
            if step % checkpoint_every == 0 or step % batches_per_epoch == 0 or step == total_steps:
                write_state(epoch, order)
    finally:
        bar.close()
        learned.eval()
    elapsed = time.perf_counter() - began

    detector.trained = True
    last_epoch = losses[-batches_per_epoch:] if losses else []
    summary = {
        "method": detector.method_id,
        "steps": step,
        "epochs": step / batches_per_epoch,
        "final_loss": losses[-1] if losses else float("nan"),
        "last_epoch_loss": float(np.mean(last_epoch)) if last_epoch else float("nan"),
        "losses": losses,
        "images": len(dataset),
        "unreadable": dict(sorted((str(dataset.samples[i].image_path), why) for i, why in dataset.unreadable.items())),
        "batch_size": batch_size,
        "seed": seed,
        "out": str(out),
        "state": str(state_path),
        "seconds": elapsed,
        "seconds_per_step": elapsed / max(1, step - first_step),
    }
    detector.save_checkpoint(
        out,
        extra_metadata={
            "training_data": specs,
            "training_images": len(dataset),
            "training_steps": step,
            "training_epochs": round(step / batches_per_epoch, 4),
            "training_seed": seed,
            "training_batch_size": batch_size,
            "training_optimizer": optimizer_spec,
            "training_mosaic_prob": mosaic_prob,
            "training_resize": resize,
            "training_limit": limit,
            "training_amp": use_amp,
            "training_final_loss": summary["final_loss"],
        },
    )
    return summary


def _restore_state(
    path: Path,
    run_config: dict[str, Any],
    detector: LearnableDetector,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> tuple[int, list[float]]:
    """Load a resumable state into the detector, optimiser and scaler; returns (step, losses)."""
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: no training state at {path} (it is written during training)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
        raise ValueError(
            f"cannot resume: {path} is not a readable zsad training state ({_first_line(error)}); "
            "delete it to start afresh"
        ) from error
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"cannot resume: {path} is not a zsad training state; delete it to start afresh")
    saved = state.get("config") if isinstance(state.get("config"), dict) else {}
    for key in _RESUME_KEYS:
        if saved.get(key) != run_config[key]:
            raise ValueError(
                f"cannot resume from {path}: setting {key!r} differs (state: {saved.get(key)!r}, "
                f"now: {run_config[key]!r}); resume with the same settings or start afresh"
            )
    try:
        detector.learned.load_state_dict(state["learned"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        return int(state["step"]), [float(v) for v in state["losses"]]
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ValueError(
            f"cannot resume: {path} is damaged or from another version ({_first_line(error)}); delete it to start afresh"
        ) from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]


# ------------------------------------------------------------------------------------------- CLI
def _method_from_args(args: argparse.Namespace) -> str:
    method = args.method_option or args.method
    if not method or (args.method and args.method_option and args.method != args.method_option):
        raise ValueError("name exactly one learnable method: `train adaclip ...` or `train --method adaclip ...`")
    return method


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``train`` command's arguments to ``parser``."""
    parser.add_argument("method", nargs="?", help="learnable method id: sdp_plus or adaclip")
    parser.add_argument("--method", dest="method_option", help="the same, as an option (--method adaclip)")
    parser.add_argument(
        "--data",
        "-d",
        required=True,
        nargs="+",
        action="extend",
        metavar="FORMAT:PATH",
        help="auxiliary dataset spec(s), test split with masks, e.g. mvtec:/data/mvtec colondb:/data/ColonDB",
    )
    parser.add_argument("--out", "-o", required=True, help="checkpoint to write (.safetensors)")
    parser.add_argument("--model", help="backbone model string (default: the method's paper backbone)")
    parser.add_argument("--image-size", type=int, help="input side S (default: the method's)")
    parser.add_argument("--epochs", type=int, help="passes over the data (default: the method's, 5)")
    parser.add_argument("--steps", type=int, help="stop after this many optimiser steps instead")
    parser.add_argument("--batch-size", type=int, help="images per step (default: the method's)")
    parser.add_argument("--lr", type=float, help="learning rate (default: the method's)")
    parser.add_argument("--seed", type=int, help="seed (default: the method's: SDP+ 42, AdaCLIP 111)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), help="backbone precision")
    parser.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fp16 mixed precision (default: on with CUDA, off on the CPU)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT.state.pt")
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=DEFAULT_CHECKPOINT_EVERY,
        help=f"write the resumable state every N steps and at epoch ends (default {DEFAULT_CHECKPOINT_EVERY})",
    )
    parser.add_argument("--mosaic-prob", type=float, help="2x2 mosaic probability on MVTec-format data")
    parser.add_argument("--limit", type=int, help="at most N images per category (quick runs)")
    parser.add_argument(
        "--num-workers",
        type=int,
        help="processes decoding the images (default: min(2, CPUs); 0: none); the results do not depend on it",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run_train(args: argparse.Namespace) -> int:
    """Run ``train`` from parsed arguments; prints a summary; returns the exit status."""
    from .backbone import ModelSpecError, WeightsNotFoundError
    from .methods.learnable import CheckpointMismatchError

    try:
        summary = train(
            _method_from_args(args),
            split_data_specs(args.data),
            args.out,
            model=args.model,
            image_size=args.image_size,
            epochs=args.epochs,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            device=args.device,
            amp=args.amp,
            resume=args.resume,
            checkpoint_every=args.checkpoint_every,
            mosaic_prob=args.mosaic_prob,
            progress=not args.no_progress,
            limit=args.limit,
            precision=args.precision,
            num_workers=args.num_workers,
        )
    except (ValueError, FileNotFoundError, WeightsNotFoundError, ModelSpecError, CheckpointMismatchError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"trained {summary['method']}: {summary['steps']} steps ({summary['epochs']:.2f} epochs) on "
        f"{summary['images']} images, final loss {summary['final_loss']:.4f}, last-epoch mean "
        f"{summary['last_epoch_loss']:.4f}, {summary['seconds_per_step']:.2f} s/step\n"
        f"checkpoint: {summary['out']}\nresumable state: {summary['state']}"
    )
    if summary["unreadable"]:
        print(
            f"{len(summary['unreadable'])} image(s) skipped (unreadable, or a mask of another size): "
            + ", ".join(summary["unreadable"]),
            file=sys.stderr,
        )
    return 0
