"""Peak memory and output size of ``zsad detect`` on a batch of huge pictures (docs/reliability.md).

Writes ``--count`` smooth JPEGs (or PNGs) of ``--megapixels`` each into a scratch folder, runs the
CLI on them in one batch in a child process (tiny random model, CPU), and prints the child's peak
resident memory (``ru_maxrss``), its wall time and the bytes it wrote, once per ``--max-map-pixels``
value given (0 = maps at full size, the behaviour before the cap).

    python scripts/detect_memory.py --count 8 --megapixels 90 --max-map-pixels 16777216
    python scripts/detect_memory.py --count 2 --megapixels 90 --max-map-pixels 0 16777216

A measurement, not a test: the figures depend on the machine; the test suite checks the behaviour.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def picture_size(megapixels: float) -> tuple[int, int]:
    """(width, height) of a 4:3 picture of about ``megapixels`` MP."""
    height = int(math.sqrt(megapixels * 1e6 * 3 / 4))
    return int(height * 4 / 3), height


def write_pictures(folder: Path, count: int, megapixels: float, fmt: str) -> list[Path]:
    """``count`` smooth pictures of about ``megapixels`` MP, 4:3, one in memory at a time."""
    width, height = picture_size(megapixels)
    paths = []
    for index in range(count):
        seed = np.random.default_rng(index).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        picture = Image.fromarray(seed).resize((width, height), Image.Resampling.BILINEAR)
        path = folder / f"huge_{index:02d}.{fmt}"
        picture.save(path, quality=90) if fmt == "jpg" else picture.save(path, compress_level=1)
        paths.append(path)
        del picture
    return paths


def run_detect(images: Path, out: Path, max_map_pixels: int, batch_size: int) -> tuple[float, float, int, int]:
    """(peak RSS in GiB, seconds, bytes written, exit status) of one CLI run in a child process."""
    command = [
        sys.executable, "-m", "zsad_core", "detect", str(images), "--category", "object", "--methods", "sdp",
        "--model", "zsad-tiny", "--device", "cpu", "--batch-size", str(batch_size),
        "--max-map-pixels", str(max_map_pixels), "--out", str(out),
    ]  # fmt: skip
    began = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own resource usage, not the other children's
    seconds = time.perf_counter() - began
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode not in (0, 1):
        sys.stderr.write(child.stderr.read().decode(errors="replace"))
    written = sum(path.stat().st_size for path in out.iterdir()) if out.is_dir() else 0
    return usage.ru_maxrss / 2**20, seconds, written, child.returncode  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=8, help="pictures in the batch (default 8)")
    parser.add_argument("--megapixels", type=float, default=90.0, help="size of each picture (default 90)")
    parser.add_argument("--format", choices=("jpg", "png"), default="jpg")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-map-pixels", type=int, nargs="+", default=[4096 * 4096])
    args = parser.parse_args()
    os.environ.setdefault("ZSAD_MAX_IMAGE_PIXELS", str(int(args.megapixels * 1.1e6)))
    with tempfile.TemporaryDirectory(prefix="zsad-memory-") as scratch:
        folder = Path(scratch) / "images"
        folder.mkdir()
        paths = write_pictures(folder, args.count, args.megapixels, args.format)
        size = "x".join(str(side) for side in picture_size(args.megapixels))
        on_disk = sum(path.stat().st_size for path in paths) / 2**20
        print(
            f"{args.count} {args.format.upper()} pictures of {size} ({on_disk:.0f} MiB on disk), batch {args.batch_size}"
        )
        print("| --max-map-pixels | peak RSS (GiB) | seconds | written (MiB) | exit |")
        print("|---|---|---|---|---|")
        for cap in args.max_map_pixels:
            out = Path(scratch) / f"out-{cap}"
            peak, seconds, written, status = run_detect(folder, out, cap, args.batch_size)
            print(f"| {cap:,} | {peak:.2f} | {seconds:.1f} | {written / 2**20:.0f} | {status} |")


if __name__ == "__main__":
    main()
