"""The app's limits, its faults and the files it serves, against the app running in-process on loopback.

The server is started by ``app.launch`` with small limits (3 images, 40,000 pixels, 300 kB per
file, a queue of 1, one job at a time) on the embedded zsad-toy (its 128-px input keeps requests
fast), and driven through ``gradio_client`` and plain HTTP.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import struct
import sys
import threading
import time
import warnings
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, make_image
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(REPO_ROOT))  # app.py lives at the repository root (the Space's app_file)

gradio_client = pytest.importorskip("gradio_client")
import app as zsad_app  # noqa: E402
from zsad_core.compare import ComparisonRun  # noqa: E402
from zsad_core.methods.base import Detector  # noqa: E402
from zsad_core.types import AnomalyResult  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
SECRET = "zsad-secret-4f1c9"  # the content of a file the server must never send
WAIT_S = 300  # for a request on a loaded machine; usually a second


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` pixels, with no pixel data (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(demo, url, folder of inputs, folder outside everything the server may send)."""
    folder = tmp_path_factory.mktemp("inputs")
    make_image(60, 90, seed=1).save(folder / "small.png")
    make_image(70, 80, seed=2).save(folder / "other.png")
    make_image(250, 250, seed=3).save(folder / "large.png")  # 62,500 pixels: over the 40,000 limit
    (folder / "bomb.png").write_bytes(_png_header(100_000, 100_000))
    (folder / "notes.png").write_text("this is text, not a picture")
    (folder / "empty.png").write_bytes(b"")
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "heavy.png")  # ~360 kB of noise: over the 300 kB upload limit
    private = tmp_path_factory.mktemp("private")
    (private / "secret.txt").write_text(SECRET)
    settings = zsad_app.AppSettings(
        model="zsad-toy",
        warmup=False,
        max_images=3,
        max_pixels=40_000,
        max_file_size="300kb",
        queue_size=1,
        concurrency=1,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        demo = zsad_app.build_demo(settings)
    _, url, _ = zsad_app.launch(demo, "127.0.0.1", None, False, prevent_thread_lock=True, ssr_mode=False, quiet=True)
    yield demo, url, folder, private
    demo.close()


@pytest.fixture
def client(served):
    connection = gradio_client.Client(served[1], verbose=False)
    yield connection
    connection.close()


def _detect(client, folder: Path, *names: str, methods: str = "sdp") -> dict:
    files = [gradio_client.handle_file(str(folder / name)) for name in names]
    payload, _ = client.predict(files, "bottle", methods, "", "", api_name="/detect")
    return payload


def _rows(payload: dict) -> dict[tuple[str, str], dict]:
    return {(row["image"], row["method"]): row for row in payload["results"]}


# ------------------------------------------------------------------------------------------ limits
def test_limits_come_from_flags_then_environment_then_defaults(monkeypatch) -> None:
    for _, variable, _ in zsad_app.LIMITS:
        monkeypatch.delenv(variable, raising=False)
    defaults = zsad_app.AppSettings(model="m")
    limits = {name: getattr(defaults, name) for name, _, _ in zsad_app.LIMITS}
    assert limits == {  # the documented defaults (docs/reliability.md): changing one is a decision
        "max_images": 16,
        "max_pixels": 50_000_000,
        "max_side": 2048,
        "max_file_size": "25mb",
        "max_seconds": 300.0,
        "queue_size": 32,
        "concurrency": 1,
    }
    monkeypatch.setenv("ZSAD_MAX_SECONDS", "12.5")
    monkeypatch.setenv("ZSAD_QUEUE_SIZE", "5")
    settings = zsad_app.settings_from_args(zsad_app.parse_args(["--model", "zsad-tiny", "--queue-size", "7"]))
    assert (settings.max_seconds, settings.queue_size, settings.max_images) == (12.5, 7, 16)
    args = zsad_app.parse_args(["--max-pixels", "1000", "--max-file-size", "1mb", "--concurrency", "2"])
    assert (args.max_pixels, args.max_file_size, args.concurrency) == (1000, "1mb", 2)
    monkeypatch.setenv("ZSAD_MAX_IMAGES", "many")
    with pytest.raises(ValueError, match="ZSAD_MAX_IMAGES must be a whole number, got 'many'"):
        zsad_app.AppSettings(model="m")
    monkeypatch.delenv("ZSAD_MAX_IMAGES")
    with pytest.raises(ValueError, match="concurrency must be positive"):
        zsad_app.AppSettings(model="m", concurrency=0)
    with pytest.raises(ValueError, match="max_file_size must be like '25mb'"):
        zsad_app.AppSettings(model="m", max_file_size="huge")


def test_served_limits_are_the_settings(served) -> None:
    demo, _, _, _ = served
    assert demo.max_file_size == 300 * 1024 and demo._queue.max_size == 1
    assert demo.allowed_paths == zsad_app._example_files()  # the example pictures, nothing else
    assert all(Path(path).parent == zsad_app.ASSETS and path.endswith(".png") for path in demo.allowed_paths)
    models = [fn for fn in demo.fns.values() if fn.concurrency_id == "models"]
    assert len(models) == 3 and {fn.concurrency_limit for fn in models} == {1}


def test_bad_and_oversized_images_are_reported_and_the_others_kept(served, client) -> None:
    _, _, folder, _ = served
    payload = _detect(client, folder, "small.png", "bomb.png", "other.png")
    rows = _rows(payload)
    assert rows[("small.png", "sdp")]["status"] == rows[("other.png", "sdp")]["status"] == "ok"
    assert rows[("bomb.png", "sdp")]["error"] == (  # refused by its header, before Pillow decodes anything
        f"bomb.png: declares more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels, beyond what can be decoded safely"
    )
    payload = _detect(client, folder, "large.png", "notes.png", "empty.png")
    errors = {row["image"]: row["error"] for row in payload["results"]}
    assert errors["large.png"] == "large.png: 250x250 pixels is more than this server's limit of 40,000 per image"
    assert errors["notes.png"].startswith("notes.png: not an image file")
    assert "empty" in errors["empty.png"]
    assert len(payload["problems"]) == 3


def test_too_many_images_and_too_large_uploads_are_refused_with_a_message(served, client) -> None:
    _, _, folder, _ = served
    with pytest.raises(Exception, match="4 images is more than this server's limit of 3 per request"):
        _detect(client, folder, "small.png", "other.png", "small.png", "other.png")
    with pytest.raises(Exception, match="heavy.png exceeds the maximum file size of 307200 bytes"):
        _detect(client, folder, "heavy.png")  # gradio_client reads the limit from the server first
    direct = httpx.post(  # the server refuses it too, when a caller skips that check
        f"{served[1]}gradio_api/upload", files={"files": ("heavy.png", (folder / "heavy.png").read_bytes())}, timeout=60
    )
    assert direct.status_code == 413 and "maximum allowed size" in direct.text
    assert _rows(_detect(client, folder, "small.png"))[("small.png", "sdp")]["status"] == "ok"  # still serving


def test_a_request_past_its_time_limit_answers_with_what_it_has(served, client, monkeypatch) -> None:
    demo, _, folder, _ = served
    app = demo.zsad_app
    monkeypatch.setattr(app, "settings", dataclasses.replace(app.settings, max_seconds=0.5))
    detect = Detector.run_batch

    def slow(self, *args, **kwargs):
        time.sleep(0.6)  # longer than the whole limit: after one image the time is up, whatever the load
        return detect(self, *args, **kwargs)

    monkeypatch.setattr(Detector, "run_batch", slow)
    payload = _detect(client, folder, "small.png", "other.png", methods="winclip,sdp")
    rows = payload["results"]
    # The first image may start before the limit (all methods run on it together); nothing after it.
    assert {row["image"] for row in rows if row["status"] == "ok"} <= {"small.png"} and len(rows) == 4
    assert payload["problems"] == ["stopped at the time limit of 0.5 s per request: the rest was not run"]
    assert any(row["error"] == "not run: the time limit was reached" for row in rows)
    monkeypatch.undo()
    assert all(row["status"] == "ok" for row in _detect(client, folder, "small.png", "other.png")["results"])


def test_a_full_queue_answers_at_once_and_the_queued_requests_finish(served, monkeypatch) -> None:
    _, url, folder, _ = served
    entered, release = threading.Event(), threading.Event()
    detect = Detector.run_batch

    def held(self, *args, **kwargs):
        entered.set()
        release.wait(WAIT_S)
        return detect(self, *args, **kwargs)

    monkeypatch.setattr(Detector, "run_batch", held)
    clients = [gradio_client.Client(url, verbose=False) for _ in range(3)]
    try:
        files = [gradio_client.handle_file(str(folder / "small.png"))]
        running = clients[0].submit(files, "cup", "sdp", "", "", api_name="/detect")
        assert entered.wait(WAIT_S), "the first request never reached the model"
        waiting = clients[1].submit(files, "cup", "sdp", "", "", api_name="/detect")
        deadline = time.monotonic() + WAIT_S
        while waiting.status().code != gradio_client.utils.Status.IN_QUEUE and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(Exception, match="Queue is full"):
            clients[2].predict(files, "cup", "sdp", "", "", api_name="/detect")
        release.set()
        for job in (running, waiting):
            payload, _ = job.result(timeout=WAIT_S)
            assert payload["results"][0]["status"] == "ok"
    finally:
        release.set()
        for connection in clients:
            connection.close()


def _alive() -> dict[str, int]:
    """How many results, comparisons and detectors (of every method) exist in this process."""

    def family(kind: type) -> set[type]:
        return {kind}.union(*(family(sub) for sub in kind.__subclasses__()))

    kinds = {member: kind.__name__ for kind in (ComparisonRun, AnomalyResult, Detector) for member in family(kind)}
    gc.collect()
    counts = dict.fromkeys(kinds.values(), 0)
    for thing in gc.get_objects():
        name = kinds.get(type(thing))
        if name is not None:
            counts[name] += 1
    return counts


def test_requests_leave_nothing_behind(served, client) -> None:
    """The memory a request uses is freed after it: no results, no prepared detector copies (the
    pool keeps the detectors it built, and only those). A leak per request fails here whatever the load."""
    _, _, folder, _ = served
    _detect(client, folder, "small.png", methods="winclip,sdp")  # builds (or reuses) the pooled detectors
    before = _alive()
    for _ in range(2):
        _detect(client, folder, "small.png", "other.png", methods="winclip,sdp")
    assert _alive() == before


# ------------------------------------------------------------------------------------------ faults
def test_out_of_memory_and_a_raising_model_leave_the_app_serving(served, client, monkeypatch) -> None:
    _, _, folder, _ = served
    detect = Detector.run_batch

    def out_of_memory_in_sdp(self, *args, **kwargs):
        if self.info.id == "sdp":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return detect(self, *args, **kwargs)

    monkeypatch.setattr(Detector, "run_batch", out_of_memory_in_sdp)
    payload = _detect(client, folder, "small.png", methods="winclip,sdp")
    rows = _rows(payload)
    assert rows[("small.png", "winclip")]["status"] == "ok"  # the other method's result is kept
    assert rows[("small.png", "sdp")]["error"].startswith("out of memory: try fewer or smaller images")

    def broken(*args, **kwargs):
        raise RuntimeError("the model fell over")

    monkeypatch.setattr(zsad_app, "run_comparison", broken)  # outside the per-image guard: the whole request
    with pytest.raises(Exception, match="RuntimeError: the model fell over"):
        _detect(client, folder, "small.png")

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.undo()
    monkeypatch.setattr(zsad_app, "write_archive", exhausted)
    with pytest.raises(Exception, match="out of memory: try fewer or smaller images"):
        _detect(client, folder, "small.png")
    monkeypatch.undo()
    rows = _rows(_detect(client, folder, "small.png", "other.png", methods="winclip,sdp"))
    assert len(rows) == 4 and all(row["status"] == "ok" for row in rows.values())


# ------------------------------------------------------------------------------------- file serving
def _refused(url: str, path: str) -> None:
    answer = httpx.get(url + path, timeout=60)
    assert answer.status_code in (400, 403, 404), f"{path} answered {answer.status_code}"
    assert SECRET not in answer.text and "root:" not in answer.text


def test_the_server_sends_only_its_own_files(served, tmp_path) -> None:
    demo, url, _, private = served
    secret = private / "secret.txt"
    cache = Path(demo.GRADIO_CACHE)
    cache.mkdir(parents=True, exist_ok=True)
    link_folder = cache / "zsad-test-links"
    link_folder.mkdir(exist_ok=True)
    (link_folder / "link.txt").unlink(missing_ok=True)
    (link_folder / "link.txt").symlink_to(secret)  # a symlink inside the served cache, pointing out of it
    example = Path(demo.allowed_paths[0])
    relative_up = os.path.relpath(secret, example.parent)
    attempts = [
        f"{prefix}{target}"
        for prefix in ("gradio_api/file=", "file=", "gradio_api/file/")
        for target in (
            str(secret),
            "/etc/passwd",
            f"{example.parent}/{relative_up}",
            f"{example.parent}/../app.py",
            str(REPO_ROOT / "app.py"),
            str(zsad_app.ASSETS / "README.md"),  # in the examples' folder, but not an example
            str(link_folder / "link.txt"),
            f"{example.parent}/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
            f"http://127.0.0.1:{httpx.URL(url).port}/gradio_api/info",  # the server fetching from itself
        )
    ]
    attempts += ["static/../../app.py", "static/%2e%2e/%2e%2e/app.py", "assets/%2e%2e/%2e%2e/app.py"]
    for attempt in attempts:
        _refused(url, attempt)
    assert httpx.get(f"{url}gradio_api/file={example}", timeout=60).status_code == 200  # the examples are served
    (link_folder / "link.txt").unlink()


def test_uploads_and_requests_cannot_name_server_paths(served, monkeypatch) -> None:
    demo, url, _, private = served
    escape = Path(demo.GRADIO_CACHE).parent / "zsad-escaped.txt"
    upload = httpx.post(
        f"{url}gradio_api/upload", files={"files": ("../../zsad-escaped.txt", b"payload")}, timeout=60
    )
    assert upload.status_code == 200
    stored = Path(upload.json()[0]).resolve()
    assert stored.is_relative_to(Path(demo.GRADIO_CACHE).resolve()) and not escape.exists()
    # an API call naming a server file instead of uploading one is refused before any handler reads it
    reads = []
    monkeypatch.setattr(zsad_app.ZsadApp, "compute", lambda *args, **kwargs: reads.append(args))
    data = [[{"path": str(private / "secret.txt"), "meta": {"_type": "gradio.FileData"}}], "cup", "sdp", "", ""]
    event = httpx.post(f"{url}gradio_api/call/detect", json={"data": data}, timeout=60).json()["event_id"]
    stream = httpx.get(f"{url}gradio_api/call/detect/{event}", timeout=WAIT_S).text
    assert "event: error" in stream and SECRET not in stream and not reads
