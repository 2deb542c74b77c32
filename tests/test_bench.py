"""``zsad bench`` on a tiny model: the JSON report's fields and their internal consistency (no timing
assertions: the numbers themselves depend on the machine and its load)."""

from __future__ import annotations

import json

import pytest
import torch

from zsad_core import create_backbone
from zsad_core.bench import count_flops, plain_pass
from zsad_core.cli import main

METHODS = ("winclip", "sdp", "sdp_plus", "adaclip")
REPEATS = 2


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    argv = ["bench", "--model", "zsad-tiny", "--size", "64", "--methods", ",".join(METHODS)]
    argv += ["--repeats", str(REPEATS), "--warmup", "0", "--batch", "1,2", "--json", str(out)]
    assert main(argv) == 0
    return json.loads(out.read_text())


def test_report_covers_every_method_and_the_machine(report: dict) -> None:
    assert [entry["method"] for entry in report["results"]] == list(METHODS)
    assert {"cpu", "cpu_count", "torch_threads", "torch"} <= set(report["machine"])
    assert report["peak_matmul"]["precision"] == "fp32" and report["peak_matmul"]["flops_per_s"] > 0
    for entry in report["results"]:
        assert (entry["model"], entry["image_size"], entry["precision"], entry["device"]) == ("zsad-tiny", 64, "fp32", "cpu")
        assert entry["floor_passes"] and entry["attention"]
        assert entry["peak_rss_mb"] > 0 and entry["cuda_max_allocated_mb"] is None


def test_report_is_internally_consistent(report: dict) -> None:
    for entry in report["results"]:
        latency, floor = entry["latency_s"], entry["floor_s"]
        for timing in (latency, floor):
            assert len(timing["runs"]) == REPEATS
            assert min(timing["runs"]) <= timing["median"] <= timing["p95"] <= max(timing["runs"])
        assert entry["ratio_to_floor"] == pytest.approx(latency["median"] / floor["median"], rel=1e-12)
        assert entry["achieved_flops_per_s"] == pytest.approx(entry["flops_per_image"] / latency["median"], rel=1e-12)
        assert entry["fraction_of_peak"] == pytest.approx(
            entry["achieved_flops_per_s"] / entry["peak_matmul_flops_per_s"], rel=1e-12
        )
        assert [row["batch"] for row in entry["throughput"]] == [1, 2]
        for row in entry["throughput"]:
            assert row["images_per_s"] == pytest.approx(row["batch"] / row["seconds_median"], rel=1e-12)
        first = entry["first_request_s"]
        assert first["known_over_warm"] == pytest.approx(first["known_category"] / latency["median"], rel=1e-12)
        assert all(value > 0 for value in entry["text_prepare_s"].values())
        # the method runs at least the passes of its floor (WinCLIP, SDP: exactly those, plus scoring)
        assert entry["flops_per_image"] >= entry["floor_flops_per_image"] > 0


def test_flop_count_includes_the_fused_attention_kernel() -> None:
    """The plain pass of zsad-tiny at 64 px, counted by hand: FlopCounterMode alone misses the fused
    nn.MultiheadAttention kernel of every block (its projections and attention)."""
    backbone = create_backbone("zsad-tiny", image_size=64)
    width, layers, tokens = backbone.width, backbone.num_layers, 1 + backbone.grid_size**2
    assert (width, layers, tokens) == (64, 8, 17)
    per_block = tokens * 24 * width * width + 4 * tokens * tokens * width  # qkv + out + attention + MLP (4x)
    pool = 2 * width * backbone.embed_dim
    with torch.no_grad():
        counted = count_flops(lambda: plain_pass(backbone, torch.randn(1, tokens, width)))
    assert counted == layers * per_block + pool


def test_side_by_side_is_reported_with_identical_maps(report: dict) -> None:
    together = report["side_by_side"]
    assert together["methods"] == list(METHODS) and together["identical_maps"] is True
    assert together["ratio"] == pytest.approx(together["together_s"]["median"] / together["one_by_one_s"]["median"])
    assert len(together["together_s"]["runs"]) == len(together["one_by_one_s"]["runs"]) == REPEATS
