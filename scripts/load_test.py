"""The app under load, on loopback: N concurrent ``gradio_client`` clients x M requests to ``/detect``.

    python scripts/load_test.py --clients 16 --requests 10                 # latency under a crowd
    python scripts/load_test.py --clients 4 --requests 50 --side 512       # memory over 200 requests

Starts ``app.py`` in a child process on 127.0.0.1 (a free port, ``--model``: the embedded
``zsad-toy`` by default, every method it can run), then runs the clients, each in its own session
with its own pictures (distinct sizes and textures), category and abnormal-state prompt. Every
answer is checked against its own request (no cross-talk between sessions): the category, the
image names, the prompt, the size of every map in the results ZIP, and the same score each time
the same picture is sent. The server's resident memory (VmRSS of the child) is sampled every
``--interval`` seconds; a least-squares line through the samples taken after the first
``--settle`` fraction of requests gives its growth in MB per 100 requests.

Prints a summary and, with ``--json``, writes every figure (docs/reliability.md quotes them).
Exit status 1 when a request failed, an answer was someone else's, or the memory slope passed
``--max-slope``. Nothing leaves the machine: the server listens on loopback only.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper", "fabric",
)  # fmt: skip


@dataclass(frozen=True)
class ClientJob:
    """One client's inputs: two pictures of its own sizes, a category and a prompt of its own."""

    index: int
    pictures: tuple[Path, Path]
    sizes: tuple[tuple[int, int], tuple[int, int]]  # (height, width) of each picture
    category: str
    state: str  # the client's own abnormal state: it must come back in the answer's prompts


@dataclass
class LoadReport:
    """What a run measured (seconds, MB)."""

    clients: int
    requests_per_client: int
    model: str
    methods: str
    side: int
    answered: int = 0
    failed: list[str] = field(default_factory=list)
    cross_talk: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    rss_samples: list[tuple[float, int, float]] = field(default_factory=list)  # (seconds, requests done, MB)
    rss_start_mb: float = 0.0
    rss_end_mb: float = 0.0
    rss_max_mb: float = 0.0
    slope_mb_per_100: float = 0.0
    late_slope_mb_per_100: float = 0.0  # over the second half of the requests only
    settle_requests: int = 0  # requests before the slope fit starts
    machine: str = ""

    @property
    def requests(self) -> int:
        return self.clients * self.requests_per_client

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q)) if self.latencies_s else float("nan")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(model: str, app_args: Sequence[str] = (), timeout_s: float = 600.0) -> tuple[subprocess.Popen, str]:
    """``app.py --model MODEL`` in a child process on 127.0.0.1; returns (process, url) once it answers.

    Raises:
        RuntimeError: the server exited or did not answer within ``timeout_s`` (its output is in the message).
    """
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    cache = tempfile.TemporaryDirectory(prefix="zsad-load-gradio-")  # its own: other Gradio apps' files are safe
    env["GRADIO_TEMP_DIR"] = cache.name
    log = tempfile.TemporaryFile(mode="w+")
    command = [sys.executable, str(REPO_ROOT / "app.py"), "--model", model, "--host", "127.0.0.1"]
    command += ["--port", str(port), "--no-warmup", *app_args]
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    process.log, process.cache = log, cache  # type: ignore[attr-defined]  # kept until stop_server
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url + "gradio_api/info", timeout=5) as answer:
                if answer.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.5)
    log.seek(0)
    output = log.read()[-3000:]
    stop_server(process)
    raise RuntimeError(f"the app did not start ({' '.join(command)}):\n{output}")


def stop_server(process: subprocess.Popen) -> None:
    """Stop the child started by :func:`start_server` (this process's own child, by its id): Ctrl-C
    first, so the app closes and removes its files, then SIGTERM, then SIGKILL."""
    for stop in (lambda: process.send_signal(signal.SIGINT), process.terminate, process.kill):
        if process.poll() is not None:
            break
        stop()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            continue
    process.log.close()  # type: ignore[attr-defined]
    process.cache.cleanup()  # type: ignore[attr-defined]


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def make_jobs(folder: Path, clients: int, side: int) -> list[ClientJob]:
    """Each client's own two pictures (distinct sizes near ``side`` and textures), category and prompt."""
    jobs = []
    for index in range(clients):
        paths, sizes = [], []
        for copy in range(2):
            height, width = side + 4 * index + 2 * copy, side + 40 - 2 * index + copy
            rng = np.random.default_rng(1000 * index + copy)
            pixels = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
            picture = Image.fromarray(pixels).resize((width, height), Image.Resampling.BICUBIC)
            path = folder / f"client{index:02d}_{copy}.png"
            picture.save(path)
            paths.append(path)
            sizes.append((height, width))
        category = CATEGORIES[index % len(CATEGORIES)] + ("" if index < len(CATEGORIES) else f" {index}")
        jobs.append(ClientJob(index, (paths[0], paths[1]), (sizes[0], sizes[1]), category, f"flaw number {index}"))
    return jobs


def check_answer(job: ClientJob, copy: int, payload: dict, archive_path: str) -> list[str]:
    """Every way the answer could be another request's; empty when it is this request's own."""
    problems = []
    name = job.pictures[copy].name
    if payload.get("category") != job.category:
        problems.append(f"category {payload.get('category')!r}, sent {job.category!r}")
    rows = payload.get("results", [])
    if not rows or {row["image"] for row in rows} != {name}:
        problems.append(f"images {sorted({row['image'] for row in rows})}, sent {name}")
    failed = [f"{row['method']}: {row['error']}" for row in rows if row["status"] != "ok"]
    if failed:
        problems.append(f"failed methods {failed}")
    for method, used in payload.get("settings", {}).get("methods", {}).items():
        if not any(job.state in state for state in used["abnormal_states"]):
            problems.append(f"{method} ran prompts {used['abnormal_states']}, sent {job.state!r}")
    with zipfile.ZipFile(archive_path) as archive:
        maps = [entry for entry in archive.namelist() if entry.startswith("maps/")]
        for entry in maps:
            shape = np.load(io.BytesIO(archive.read(entry))).shape
            if shape != job.sizes[copy]:
                problems.append(f"{entry} is {shape}, the picture sent is {job.sizes[copy]}")
        if len(maps) != len(rows):
            problems.append(f"{len(maps)} maps for {len(rows)} results")
    return problems


class Counter:
    """Requests finished so far, counted from several threads."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.value += 1


def run_client(url: str, job: ClientJob, requests: int, methods: str, report: LoadReport, done: Counter) -> None:
    """One session: ``requests`` calls alternating the client's two pictures; results into ``report``."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    scores: dict[tuple[int, str], float] = {}
    prompts = json.dumps({"abnormal_states": [job.state, "scratched"]})
    try:
        for number in range(requests):
            copy = number % 2
            began = time.perf_counter()
            try:
                payload, archive = client.predict(
                    [handle_file(str(job.pictures[copy]))], job.category, methods, "", prompts, api_name="/detect"
                )
            except Exception as error:  # noqa: BLE001 - every failure is counted and reported
                report.failed.append(f"client {job.index} request {number}: {type(error).__name__}: {error}")
                continue
            finally:
                done.add()
            report.latencies_s.append(time.perf_counter() - began)
            report.answered += 1
            problems = check_answer(job, copy, payload, archive)
            for row in payload.get("results", []):
                if row["status"] == "ok":
                    # the same picture and prompts give the same score in every request of this session
                    expected = scores.setdefault((copy, row["method"]), row["score"])
                    if abs(row["score"] - expected) > 1e-6:
                        problems.append(f"{row['method']} scored {row['score']} then {expected} on one picture")
            report.cross_talk += [f"client {job.index} request {number}: {p}" for p in problems]
    finally:
        client.close()


def fit_slope(samples: Sequence[tuple[float, int, float]], settle: int) -> float:
    """Least-squares growth of RSS in MB per 100 requests, over samples after ``settle`` requests."""
    kept = [(done, mb) for _, done, mb in samples if done >= settle]
    if len({done for done, _ in kept}) < 2:
        return float("nan")
    done, mb = np.array(kept, dtype=np.float64).T
    return float(np.polyfit(done, mb, 1)[0] * 100)


def run_load(
    url: str,
    pid: int,
    clients: int,
    requests: int,
    *,
    model: str = "",
    methods: str = "",
    side: int = 96,
    interval: float = 1.0,
    settle: float = 0.2,
) -> LoadReport:
    """``clients`` concurrent sessions x ``requests`` calls to ``/detect`` on the server at ``url``
    (process ``pid``, whose RSS is sampled every ``interval`` seconds)."""
    report = LoadReport(clients, requests, model, methods or "(every method available)", side)
    report.machine = f"{platform.machine()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"
    done = Counter()
    finished = threading.Event()

    def sample() -> None:
        began = time.monotonic()
        while True:
            report.rss_samples.append((time.monotonic() - began, done.value, rss_mb(pid)))
            if finished.wait(interval):
                report.rss_samples.append((time.monotonic() - began, done.value, rss_mb(pid)))
                return

    with tempfile.TemporaryDirectory(prefix="zsad-load-") as folder:
        jobs = make_jobs(Path(folder), clients, side)
        sampler = threading.Thread(target=sample, daemon=True)
        began = time.perf_counter()
        sampler.start()
        with ThreadPoolExecutor(max_workers=clients) as pool:
            futures = [pool.submit(run_client, url, job, requests, methods, report, done) for job in jobs]
            for future in futures:
                future.result()
        report.wall_s = time.perf_counter() - began
        finished.set()
        sampler.join()
    settle_requests = report.settle_requests = int(settle * report.requests)
    settled = [mb for _, d, mb in report.rss_samples if d >= settle_requests] or [report.rss_samples[-1][2]]
    report.rss_start_mb, report.rss_end_mb = settled[0], report.rss_samples[-1][2]
    report.rss_max_mb = max(mb for _, _, mb in report.rss_samples)
    report.slope_mb_per_100 = fit_slope(report.rss_samples, settle_requests)
    report.late_slope_mb_per_100 = fit_slope(report.rss_samples, report.requests // 2)
    return report


def summary(report: LoadReport) -> str:
    """The figures as lines of text."""
    return "\n".join(
        [
            f"model {report.model}, methods {report.methods}, pictures ~{report.side} px, machine: {report.machine}",
            f"{report.clients} clients x {report.requests_per_client} requests = {report.requests}: "
            f"{report.answered} answered, {len(report.failed)} failed, {len(report.cross_talk)} wrong answers",
            f"latency per request (queue wait included): p50 {report.percentile(50):.2f} s, "
            f"p95 {report.percentile(95):.2f} s, max {max(report.latencies_s, default=float('nan')):.2f} s; "
            f"wall {report.wall_s:.1f} s ({report.answered / max(report.wall_s, 1e-9):.2f} requests/s, "
            f"{report.wall_s / max(report.answered, 1):.2f} s of server time per request)",
            f"server RSS: {report.rss_samples[0][2]:.0f} MB before the first request, {report.rss_start_mb:.0f} MB "
            f"once settled, {report.rss_end_mb:.0f} MB at the end, max {report.rss_max_mb:.0f} MB; "
            f"slope {report.slope_mb_per_100:+.2f} MB per 100 requests after the first {report.settle_requests}, "
            f"{report.late_slope_mb_per_100:+.2f} over the second half ({len(report.rss_samples)} samples)",
        ]
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16, help="concurrent sessions (default 16)")
    parser.add_argument("--requests", type=int, default=10, help="requests per client (default 10)")
    parser.add_argument("--model", default="zsad-toy", help="the app's model (default: the embedded zsad-toy)")
    parser.add_argument("--methods", default="", help="comma-separated method ids (default: every one available)")
    parser.add_argument("--side", type=int, default=96, help="pictures' approximate side in pixels (default 96)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between RSS samples (default 1)")
    parser.add_argument("--settle", type=float, default=0.2, help="fraction of requests before the slope fit")
    parser.add_argument("--max-slope", type=float, default=None, help="fail above this many MB per 100 requests")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument("app_args", nargs="*", help="more app.py flags after --, e.g. -- --concurrency 2")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.requests < 1:
        parser.error("--clients and --requests must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    queue = ["--queue-size", str(max(32, args.clients))]  # every client can wait: this measures latency
    process, url = start_server(args.model, [*queue, *args.app_args])
    try:
        report = run_load(
            url,
            process.pid,
            args.clients,
            args.requests,
            model=args.model,
            methods=args.methods,
            side=args.side,
            interval=args.interval,
            settle=args.settle,
        )
    finally:
        stop_server(process)
    print(summary(report))
    for line in (report.failed + report.cross_talk)[:20]:
        print("  " + line)
    if args.json:
        figures = {**asdict(report), "p50_s": report.percentile(50), "p95_s": report.percentile(95)}
        figures["command"] = " ".join(["python", "scripts/load_test.py", *(argv or sys.argv[1:])])
        args.json.write_text(json.dumps(figures, indent=1))
    too_steep = args.max_slope is not None and not report.slope_mb_per_100 <= args.max_slope
    return 1 if report.failed or report.cross_talk or too_steep else 0


if __name__ == "__main__":
    sys.exit(main())
