"""The page in a real browser: upload, detect, redraw on the threshold, no JavaScript errors.

Drives Debian's Chromium (``/usr/bin/chromium``, never a downloaded browser) with Playwright against
the app served in-process on 127.0.0.1 with the tiny random-weight models. Skipped when Chromium or
Playwright is absent. ``ZSAD_SCREENSHOT=docs/screenshot.png python -m pytest tests/test_browser.py``
also writes the full-page screenshot the README shows.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 180_000  # a detection on a slow or loaded CPU; usually seconds


def _chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if path is None:
        pytest.skip("Chromium not installed (Debian: apt-get install chromium)")
    return path


def _example_pictures() -> list[Path]:
    """Two of the shipped example pictures (assets/): a scratched and a flawless striped fabric."""
    pictures = [REPO_ROOT / "assets" / "striped_fabric_scratch.png", REPO_ROOT / "assets" / "striped_fabric_good.png"]
    missing = [str(path) for path in pictures if not path.is_file()]
    assert not missing, f"shipped example pictures missing: {missing} (python assets/make_assets.py)"
    return pictures


def _image_sources(page, selector: str) -> list[str]:
    return page.eval_on_selector_all(selector, "nodes => nodes.map(n => n.getAttribute('src'))")


@pytest.mark.slow
@pytest.mark.browser
def test_page_in_chromium(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chromium = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry calls from the test server
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from app import AppSettings, build_demo, default_model

    pictures = _example_pictures()
    model = default_model(downloadable=False)  # the page's offline default: the embedded model
    demo = build_demo(AppSettings(model=model, warmup=False))
    methods = [label for label, _ in demo.zsad_app.method_menus(model)[0]["choices"]]  # every runnable one
    assert len(methods) >= 2, methods
    overlays_per_image = 1 + len(methods)  # the input, then one map per method
    results_images = "#results .grid-container img"

    demo.queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", ssr_mode=False, quiet=True)
    errors: list[str] = []
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(30_000)
                page.on("pageerror", lambda error: errors.append(f"pageerror: {error}"))
                # Every console error counts: the page loads only from 127.0.0.1, so there is no benign
                # third-party network noise to allow (a request aborted by closing the page logs none).
                page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
                page.goto(url)

                # Every method that can run here is ticked when the page opens.
                for name in methods:
                    box = page.locator("#methods").get_by_label(name, exact=True)  # "SDP" is not "SDP+"
                    box.wait_for()
                    if not box.is_checked():
                        box.check()
                    assert box.is_checked(), f"{name} is not ticked"

                page.locator("#inputs input[type=file]").set_input_files([str(p) for p in pictures])
                page.wait_for_function("n => document.querySelectorAll('#inputs img').length >= n", arg=len(pictures))
                page.locator("#category textarea, #category input").first.fill("striped fabric")

                started = time.perf_counter()
                page.locator("#run").click()
                wanted = overlays_per_image * len(pictures)
                page.wait_for_function(
                    "([selector, n]) => document.querySelectorAll(selector).length >= n",
                    arg=[results_images, wanted],
                    timeout=TIMEOUT_MS,
                )
                page.locator("#download").wait_for(state="visible", timeout=TIMEOUT_MS)
                detect_seconds = time.perf_counter() - started
                assert page.locator(results_images).count() == wanted
                assert "Done" in page.locator("#messages").inner_text()
                # gr.Warning / gr.Error toasts: a method that failed on an image, a rejected request
                toasts = page.locator(".toast-body.error, .toast-body.warning").all_inner_texts()
                assert not toasts, toasts
                assert page.locator("#colorbar img").count() >= 1, "no colour bar after the run"
                assert page.locator("#scores table").count() >= 1, "no score table after the run"
                assert not errors, errors

                # Moving the threshold redraws the overlays from the stored maps (new image files).
                before = _image_sources(page, results_images)
                number = page.locator("#threshold input[type=number]")
                number.fill("0.3")
                number.press("Enter")
                # (a map can lie wholly above or below both thresholds, so any overlay may be the one to change)
                page.wait_for_function(
                    "([selector, sources]) => { const nodes = [...document.querySelectorAll(selector)];"
                    " return nodes.length === sources.length"
                    " && nodes.some((node, i) => node.getAttribute('src') !== sources[i]); }",
                    arg=[results_images, before],
                    timeout=TIMEOUT_MS,
                )
                after = _image_sources(page, results_images)
                assert len(after) == len(before)
                assert after != before, "no overlay was redrawn"
                assert page.locator("#threshold input[type=range]").input_value() == "0.3"
                page.wait_for_timeout(500)  # let the redraw settle before the screenshot and the final check
                assert not errors, errors

                shots = [tmp_path / "screenshot.png"]
                if os.environ.get("ZSAD_SCREENSHOT"):
                    shots.append(Path(os.environ["ZSAD_SCREENSHOT"]))
                for shot in shots:
                    shot.parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(shot), full_page=True)
                    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
                    assert shot.stat().st_size > 20_000, f"{shot} is suspiciously small"
                print(f"detection in the browser: {detect_seconds:.1f} s; screenshot {shots[-1]}")
            finally:
                browser.close()
    finally:
        demo.close()
    assert demo.zsad_app.detect_calls == 1, "the threshold redraw ran the models again"
