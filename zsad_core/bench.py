"""``python -m zsad_core bench``: how fast each method runs here, and how far it is from its floor.

Per method, on one backbone, device and precision, all measured in the same run:

- ``latency_s``: one image through :meth:`Detector.detect` (decode, resize, model, map back), median
  and 95th percentile of ``--repeats`` runs after ``--warmup`` runs;
- ``throughput``: images per second at each ``--batch`` size;
- ``floor_s``: the bare backbone forward passes the method needs, built from the backbone's public
  pieces (:mod:`zsad_core.backbone`) and timed alone the same way; ``ratio_to_floor`` is
  ``latency_s.median / floor_s.median``. The passes per method are listed in ``floor_passes``:

  ========== ================================================================================
  winclip    the plain pass, and every window sequence (1 + k*k tokens) of every scale
  sdp        the dual path (the block's q-k-v and v-v attention, one MLP) to the last stage,
             and the token projection of each stage
  sdp_plus   as sdp, plus the trained linear layer of each stage
  adaclip    the un-prompted pass (dynamic prompts), the image pass with the prompt tokens,
             and, with dynamic text prompts, the text pass over every sentence
  ========== ================================================================================

- ``flops_per_image`` (:class:`torch.utils.flop_counter.FlopCounterMode`, plus the fused
  ``nn.MultiheadAttention`` kernel it does not count), ``achieved_flops_per_s`` = flops / latency,
  and ``fraction_of_peak`` = achieved / ``peak_matmul_flops_per_s``, the device's rate on a large
  square matmul in the same precision, timed interleaved with the latency (``peak_matmul`` at the
  top is the best of a few products at the start, for reference);
- ``text_prepare_s``: preparing a category ``cold`` (text tower, no cache), from the ``disk``
  cache (what a new process does for a known category) and ``warm`` (memory cache);
- ``first_request_s``: prepare plus one image, for a ``new_category`` and for a ``known_category``
  in a new process (memory cleared, disk cache filled); ``known_over_warm`` divides the latter by
  the warm single-image latency;
- ``attention``: the attention kernels the method called (aten op names, recorded while it ran);
- ``peak_rss_mb`` (the process's peak so far; it only grows) and, on CUDA, ``cuda_max_allocated_mb``.

The numbers that are compared (latency, floor, first requests, text preparation) are timed
interleaved, one run of each in turn, so a change of the machine's load shifts them alike.
Weights do not matter for timing: random weights (``--model ViT-L-14-336``) time like trained ones.
The disk cache lives in a temporary folder for the run, so the user's cache is neither read nor filled.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from .backbone import ClipBackbone, resolve_device, resolve_precision
from .disk_cache import CACHE_DIR_ENV, DISK_CACHE_ENV
from .methods.base import detect_together
from .prompts import clear_text_caches
from .registry import create_detector, list_methods

DEFAULT_BATCHES = (1, 8)
PEAK_MATMUL_SIDE = {"cpu": 1024, "cuda": 8192}
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

Floor = Callable[[torch.Tensor], Any]


# ------------------------------------------------------------------------------------------ timing
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    runs: dict[str, tuple[Callable[[], Any] | None, Callable[[], Any]]],
    repeats: int,
    warmup: int,
    device: torch.device,
) -> dict[str, list[float]]:
    """Wall-clock seconds of each named ``(setup, run)``: ``warmup`` untimed rounds, then ``repeats``
    rounds that call every ``setup`` (untimed, may be None) and ``run`` (timed) in turn."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(warmup + repeats):
        for name, (setup, run) in runs.items():
            if setup is not None:
                setup()
            _synchronize(device)
            began = time.perf_counter()
            run()
            _synchronize(device)
            if round_index >= warmup:
                seconds[name].append(time.perf_counter() - began)
    return seconds


def summarize(seconds: Sequence[float]) -> dict[str, Any]:
    """Median and 95th percentile (linear interpolation) of timings, with the runs themselves."""
    values = np.asarray(seconds, dtype=np.float64)
    return {"median": float(np.median(values)), "p95": float(np.percentile(values, 95)), "runs": list(map(float, values))}


def matmul_run(device: torch.device, precision: str) -> tuple[Callable[[], Any], int]:
    """One square n x n matmul in ``precision`` on ``device``, and its FLOPs (the device's peak probe)."""
    side = PEAK_MATMUL_SIDE["cuda" if device.type == "cuda" else "cpu"]
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(side, side, generator=generator).to(device, _DTYPES[precision]) for _ in range(2))
    return (lambda: a @ b), 2 * side**3


def peak_matmul(device: torch.device, precision: str, repeats: int = 5) -> dict[str, Any]:
    """The device's dense matmul rate in ``precision``: the best of ``repeats`` square n x n products."""
    run, flops = matmul_run(device, precision)
    seconds = time_interleaved({"matmul": (None, run)}, repeats, 2, device)["matmul"]
    side = PEAK_MATMUL_SIDE["cuda" if device.type == "cuda" else "cpu"]
    return {"precision": precision, "side": side, "flops_per_s": flops / min(seconds)}


# ------------------------------------------------------------------------------ counting and ops
def _mha_flops(query, key, value, embed_dim, num_head, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of the fused ``aten._native_multi_head_attention`` (batch-first (B, L, C) shapes)."""
    batch, q_len, k_len = query[0], query[1], key[1]
    projections = 2 * batch * (q_len + 2 * k_len) * embed_dim * embed_dim  # q, k, v in-projections
    attention = 2 * 2 * batch * q_len * k_len * embed_dim  # q k^T and (weights) v
    return projections + attention + 2 * batch * q_len * embed_dim * embed_dim  # out-projection


def count_flops(run: Callable[[], Any]) -> int:
    """FLOPs of one call of ``run`` (matmuls, convolutions and attention)."""
    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten._native_multi_head_attention: _mha_flops}) as counter:
        run()
    return int(counter.get_total_flops())


class _AttentionOps(TorchDispatchMode):
    """Records the aten attention kernels called while active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if "attention" in name:
            self.ops[name] = self.ops.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def attention_ops(run: Callable[[], Any]) -> dict[str, int]:
    """aten attention op name -> calls, for one call of ``run``."""
    with _AttentionOps() as recorder:
        run()
    return recorder.ops


# ------------------------------------------------------------------------------------------ floors
def plain_pass(backbone: ClipBackbone, tokens: torch.Tensor) -> torch.Tensor:
    """(B, L, C) embedded tokens through ``ln_pre``, every block and the pooling -> (B, D)."""
    x = backbone.visual.ln_pre(tokens)
    for block in backbone.blocks:
        x = backbone.block_forward(block, x)
    return backbone.pool(x)


def dual_path_pass(backbone: ClipBackbone, tokens: torch.Tensor, stage_ends: Sequence[int]) -> list[torch.Tensor]:
    """SDP's two paths through the blocks up to the last stage end: per block the plain block, and
    the v projection, v-v attention and out-projection of its input; returns each stage's (B, L, D)
    projected v-v tokens."""
    x = backbone.visual.ln_pre(tokens)
    value_path = torch.zeros_like(x)
    projected = []
    for index, block in enumerate(backbone.blocks[: max(stage_ends)]):
        v = backbone.attention_value(block, block.ln_1(x))
        value_path = value_path + backbone.attention_output(block, F.scaled_dot_product_attention(v, v, v))
        x = backbone.block_forward(block, x)
        if index + 1 in stage_ends:
            projected.append(backbone.project_tokens(value_path))
    return projected


def _stage_ends(detector: Any) -> tuple[int, ...]:
    return tuple(getattr(detector.config, "layers", None) or detector.backbone.default_layers())


def method_floor(detector: Any) -> tuple[Floor, list[str]]:
    """The bare backbone passes one (B, 3, S, S) batch needs with ``detector``'s method and settings,
    as a function of the pixels, and a description of each pass."""
    backbone, config, method = detector.backbone, detector.config, detector.method_id
    grid, width = backbone.grid_size, backbone.width
    if method == "winclip":
        scales = tuple(config.scales)

        def winclip_floor(pixels: torch.Tensor) -> None:
            tokens = backbone.embed_patches(pixels)
            plain_pass(backbone, tokens)
            for scale in scales:
                count = (grid - scale + 1) ** 2 * tokens.shape[0]
                plain_pass(backbone, tokens[:1, : 1 + scale * scale].expand(count, -1, -1))

        passes = [f"plain pass ({1 + grid * grid} tokens)"]
        passes += [f"{(grid - k + 1) ** 2} windows of {1 + k * k} tokens (scale {k})" for k in scales]
        return winclip_floor, passes
    if method in ("sdp", "sdp_plus"):
        stage_ends = _stage_ends(detector)
        head = torch.zeros(backbone.embed_dim, width, device=backbone.device)  # SDP+ runs its heads in fp32
        with_heads = method == "sdp_plus"

        def dual_path_floor(pixels: torch.Tensor) -> None:
            tokens = backbone.embed_patches(pixels)
            dual_path_pass(backbone, tokens, stage_ends)
            if with_heads:  # one Linear(C -> D) per stage on the patch tokens of the original path
                for _ in stage_ends:
                    F.linear(tokens[:, 1:].float(), head)

        passes = [f"dual path to block {max(stage_ends)} ({1 + grid * grid} tokens), stage projections {stage_ends}"]
        if with_heads:
            passes.append(f"{len(stage_ends)} linear heads {width} -> {backbone.embed_dim}")
        return dual_path_floor, passes
    if method == "adaclip":
        depth, length = config.prompt_depth, config.prompt_length
        dynamic = "D" in config.prompt_type and depth > 0
        visual = "V" in config.branches and depth > 0
        text = "L" in config.branches and depth > 0
        normal, abnormal = detector.prompts.sentences(detector.category)
        sentences = normal + abnormal
        ids = backbone.tokenize(sentences) if (text and dynamic) else None
        prompt_tokens = length if visual else 0

        def adaclip_floor(pixels: torch.Tensor) -> None:
            tokens = backbone.embed_patches(pixels)
            if dynamic:
                plain_pass(backbone, tokens)
            if prompt_tokens:
                tokens = torch.cat([tokens, tokens.new_zeros(tokens.shape[0], prompt_tokens, width)], dim=1)
            plain_pass(backbone, tokens)
            if ids is not None:
                for _ in range(pixels.shape[0]):
                    backbone.text_forward(ids, min_length=1 + length)

        passes = (["un-prompted pass (dynamic prompts)"] if dynamic else []) + [
            f"image pass ({1 + grid * grid + prompt_tokens} tokens)"
        ]
        if ids is not None:
            passes.append(f"text pass over {len(sentences)} sentences (dynamic text prompts)")
        return adaclip_floor, passes

    def plain_floor(pixels: torch.Tensor) -> None:
        plain_pass(backbone, backbone.embed_patches(pixels))

    return plain_floor, [f"plain pass (no floor known for {method!r})"]


# --------------------------------------------------------------------------------------- the run
@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore them."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _forget_text() -> None:
    """Forget in-memory text features, as in a new process that has loaded its model (the disk stays;
    the weights' fingerprint is taken while loading, see :func:`zsad_core.backbone.load_backbone`)."""
    clear_text_caches()


def _test_image(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _rss_mb() -> float:
    """The process's peak resident set size so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def bench_method(
    method: str,
    *,
    model: str | None,
    image_size: int | None,
    device: str,
    precision: str,
    batches: Sequence[int],
    repeats: int,
    warmup: int,
    category: str,
) -> dict[str, Any]:
    """Every measurement of the module docstring for one method (the disk cache must point at an
    empty temporary folder: the cold and new-category numbers assume a miss)."""
    detector = create_detector(method, model=model, image_size=image_size, device=device, precision=precision)
    torch_device = detector.device
    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)
    size = detector.config.image_size
    image = _test_image(size)

    prepared = detector.prepared(category)
    floor, floor_passes = method_floor(prepared)
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(torch_device)

    matmul, matmul_flops = matmul_run(torch_device, precision)

    def run_floor() -> None:
        with torch.no_grad():
            floor(pixels)

    def known_category() -> None:  # a new process: memory forgotten, the disk cache filled
        _forget_text()
        detector.prepared(category).detect(image)

    def from_disk() -> None:
        _forget_text()
        detector.prepared(category)

    # Quantities that are compared are timed interleaved, one run of each in turn, so that a change
    # in the machine's load (other processes) affects all of them alike.
    with _environment(**{DISK_CACHE_ENV: "0"}):  # cold: the text tower, no cache at all
        cold = time_interleaved({"cold": (clear_text_caches, lambda: detector.prepared(category))}, 3, 0, torch_device)
    new_names = [f"{category} {index}" for index in range(3)]  # never prepared before: disk misses
    new_category = time_interleaved(
        {"new": (_forget_text, lambda: detector.prepared(new_names.pop()).detect(image))}, 3, 0, torch_device
    )
    timed = time_interleaved(
        {
            "latency": (None, lambda: prepared.detect(image)),
            "floor": (None, run_floor),
            "matmul": (None, matmul),
            "known": (_forget_text, lambda: detector.prepared(category).detect(image)),
            "disk": (_forget_text, lambda: detector.prepared(category)),
            "warm": (None, lambda: detector.prepared(category)),
        },
        repeats,
        warmup,
        torch_device,
    )
    latency, floor_time = summarize(timed["latency"]), summarize(timed["floor"])
    known = float(np.median(timed["known"]))

    throughput = []
    for batch in batches:
        images = [_test_image(size, seed) for seed in range(batch)]

        def run_batch(images: list[np.ndarray] = images, batch: int = batch) -> None:
            prepared.detect(images, batch_size=batch)

        runs = time_interleaved({"batch": (None, run_batch)}, max(1, min(repeats, 3)), 1, torch_device)["batch"]
        seconds = float(np.median(runs))
        throughput.append({"batch": batch, "seconds_median": seconds, "images_per_s": batch / seconds})

    with torch.no_grad():
        floor_flops = count_flops(lambda: floor(pixels))
    flops = count_flops(lambda: prepared.detect(image))
    attention = attention_ops(lambda: prepared.detect(image))

    achieved = flops / latency["median"]
    peak = matmul_flops / float(np.median(timed["matmul"]))  # under the same load as the latency
    return {
        "method": method,
        "model": detector.config.model,
        "image_size": size,
        "device": str(torch_device),
        "precision": precision,
        "attention": attention,
        "latency_s": latency,
        "throughput": throughput,
        "floor_s": floor_time,
        "floor_passes": floor_passes,
        "ratio_to_floor": latency["median"] / floor_time["median"],
        "flops_per_image": flops,
        "floor_flops_per_image": floor_flops,
        "achieved_flops_per_s": achieved,
        "peak_matmul_flops_per_s": peak,
        "fraction_of_peak": achieved / peak,
        "text_prepare_s": {
            "cold": float(np.median(cold["cold"])),
            "disk": float(np.median(timed["disk"])),
            "warm": float(np.median(timed["warm"])),
        },
        "first_request_s": {
            "new_category": float(np.median(new_category["new"])),
            "known_category": known,
            "known_over_warm": known / latency["median"],
        },
        "peak_rss_mb": _rss_mb(),
        "cuda_max_allocated_mb": (
            torch.cuda.max_memory_allocated(torch_device) / 2**20 if torch_device.type == "cuda" else None
        ),
    }


def bench_side_by_side(
    methods: Sequence[str],
    *,
    model: str | None,
    image_size: int | None,
    device: str,
    precision: str,
    repeats: int,
    warmup: int,
    category: str,
) -> dict[str, Any]:
    """All ``methods`` on one image: :func:`~zsad_core.methods.base.detect_together` (shared passes)
    against the sum of each method's own ``detect``, timed interleaved, with the result equality checked."""
    detectors = [
        create_detector(method, model=model, image_size=image_size, device=device, precision=precision).prepared(
            category
        )
        for method in methods
    ]
    image = _test_image(detectors[0].config.image_size)
    runs = {
        "together": (None, lambda: detect_together(detectors, [image], 1)),
        "one_by_one": (None, lambda: [detector.detect(image) for detector in detectors]),
    }
    seconds = time_interleaved(runs, repeats, warmup, detectors[0].device)
    together = detect_together(detectors, [image], 1)
    identical = all(
        np.array_equal(together[detector.method_id][0].anomaly_map, detector.detect(image).anomaly_map)
        for detector in detectors
    )
    together_s, alone_s = summarize(seconds["together"]), summarize(seconds["one_by_one"])
    return {
        "methods": list(methods),
        "together_s": together_s,
        "one_by_one_s": alone_s,
        "ratio": together_s["median"] / alone_s["median"],
        "identical_maps": identical,
    }


def machine_description(device: str) -> dict[str, Any]:
    """CPU model, cores, torch threads and versions, and the GPU's name on CUDA."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None,
    }


def run_benchmark(
    methods: Sequence[str] | None = None,
    *,
    model: str | None = "zsad-toy",
    image_size: int | None = None,
    device: str | None = "cpu",
    precision: str | None = "fp32",
    batches: Sequence[int] = DEFAULT_BATCHES,
    repeats: int = 10,
    warmup: int = 2,
    category: str = "bottle",
) -> dict[str, Any]:
    """Benchmark ``methods`` (default: all registered) and return the report (see the module docstring)."""
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    methods = list(methods) if methods else [info.id for info in list_methods()]
    peak = peak_matmul(torch.device(device), precision)
    results = []
    with tempfile.TemporaryDirectory(prefix="zsad-bench-cache-") as folder, _environment(
        **{CACHE_DIR_ENV: folder, DISK_CACHE_ENV: "1"}
    ), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights, untrained heads: known, and the point here
        for method in methods:
            print(f"bench: {method} on {model or 'its paper backbone'}, {device}, {precision}", file=sys.stderr)
            results.append(
                bench_method(
                    method,
                    model=model,
                    image_size=image_size,
                    device=device,
                    precision=precision,
                    batches=batches,
                    repeats=repeats,
                    warmup=warmup,
                    category=category,
                )
            )
        side_by_side = None
        if len(methods) > 1 and model is not None:  # one backbone for all: the app's side-by-side view
            print(f"bench: {', '.join(methods)} side by side", file=sys.stderr)
            side_by_side = bench_side_by_side(
                methods,
                model=model,
                image_size=image_size,
                device=device,
                precision=precision,
                repeats=repeats,
                warmup=warmup,
                category=category,
            )
    report = {"machine": machine_description(device), "peak_matmul": peak, "results": results}
    return {**report, "side_by_side": side_by_side}


# -------------------------------------------------------------------------------------------- CLI
def format_report(report: dict[str, Any]) -> str:
    """The report as a Markdown table (times in milliseconds)."""
    headers = [
        "method", "model @ size", "prec", "latency ms (p95)", "floor ms", "x floor", "img/s by batch",
        "GFLOP/img", "% peak", "text ms cold/disk/warm", "1st req ms new/known", "known/warm", "RSS MB",
    ]  # fmt: skip
    rows = []
    for entry in report["results"]:
        text, first = entry["text_prepare_s"], entry["first_request_s"]
        rows.append(
            [
                entry["method"],
                f"{entry['model']} @{entry['image_size']}",
                entry["precision"],
                f"{entry['latency_s']['median'] * 1e3:.0f} ({entry['latency_s']['p95'] * 1e3:.0f})",
                f"{entry['floor_s']['median'] * 1e3:.0f}",
                f"{entry['ratio_to_floor']:.2f}",
                ", ".join(f"{row['batch']}: {row['images_per_s']:.2f}" for row in entry["throughput"]),
                f"{entry['flops_per_image'] / 1e9:.1f}",
                f"{100 * entry['fraction_of_peak']:.0f}",
                f"{text['cold'] * 1e3:.0f} / {text['disk'] * 1e3:.0f} / {text['warm'] * 1e3:.2f}",
                f"{first['new_category'] * 1e3:.0f} / {first['known_category'] * 1e3:.0f}",
                f"{first['known_over_warm']:.2f}",
                f"{entry['peak_rss_mb']:.0f}",
            ]
        )
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    machine, peak = report["machine"], report["peak_matmul"]
    lines.append(
        f"\n{machine['gpu'] or machine['cpu']}, {machine['cpu_count']} cores, {machine['torch_threads']} torch threads, "
        f"torch {machine['torch']}; {peak['precision']} matmul peak {peak['flops_per_s'] / 1e9:.0f} GFLOP/s "
        f"({peak['side']}^2)"
    )
    for entry in report["results"]:
        ops = ", ".join(f"{name} x{count}" for name, count in entry["attention"].items()) or "none"
        lines.append(f"{entry['method']}: attention {ops}; floor = {'; '.join(entry['floor_passes'])}")
    together = report.get("side_by_side")
    if together:
        lines.append(
            f"side by side ({', '.join(together['methods'])}, one image): together "
            f"{together['together_s']['median'] * 1e3:.0f} ms, one by one {together['one_by_one_s']['median'] * 1e3:.0f} "
            f"ms, ratio {together['ratio']:.2f}; identical maps: {together['identical_maps']}"
        )
    return "\n".join(lines)


def _batches(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected batch sizes like 1,8,32, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive batch sizes like 1,8,32, got {text!r}")
    return values


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``zsad bench``."""
    parser.add_argument("--methods", default=None, help="comma-separated method ids (default: every method)")
    parser.add_argument(
        "--model", default="zsad-toy", help="backbone for every method (default: zsad-toy; an architecture without "
        "a tag, e.g. ViT-L-14-336, times the paper size with random weights)"
    )  # fmt: skip
    parser.add_argument("--size", type=int, default=None, help="input side in pixels (default: each method's own)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    parser.add_argument(
        "--precision", default="fp32", choices=("fp32", "bf16", "fp16", "auto"), help="default: fp32"
    )
    parser.add_argument("--batch", type=_batches, default=list(DEFAULT_BATCHES), help="batch sizes (default: 1,8)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per measurement (default: 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before timing (default: 2)")
    parser.add_argument("--category", default="bottle", help="category name in the prompts (default: bottle)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's; 1 on a shared, busy machine)"
    )
    parser.add_argument("--json", default=None, metavar="OUT", help="also write the full report as JSON")


def run_bench(args: argparse.Namespace) -> int:
    """``zsad bench``: print the table, optionally write the JSON report."""
    from .cli import parse_methods

    if args.repeats < 1 or args.warmup < 0:
        raise ValueError("--repeats must be at least 1 and --warmup at least 0")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)  # this command's own process only
    methods = parse_methods(args.methods) if args.methods else None
    report = run_benchmark(
        methods,
        model=args.model,
        image_size=args.size,
        device=args.device,
        precision=args.precision,
        batches=args.batch,
        repeats=args.repeats,
        warmup=args.warmup,
        category=args.category,
    )
    print(format_report(report))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
    return 0
