"""zsad in the browser: upload images, say what they show, compare every method's anomaly heatmap.

    python app.py [--model NAME] [--host H] [--port N] [--share] [--device D] [--precision P]

Also the Hugging Face Space's ``app_file``. This file is only the page: every computation (models,
maps, colour scales, masks, prompt explanations, the results archive) lives in ``zsad_core`` and is
tested there. Named API endpoints for ``gradio_client``: ``/detect`` and ``/explain`` (README).
Limits per request and of the queue: :class:`AppSettings` (flags and environment variables,
docs/reliability.md).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import tempfile
import time
import traceback
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
from PIL import Image

from zsad_core import __version__, get_method, list_methods
from zsad_core.archive import score_rows, write_archive
from zsad_core.availability import (
    PAPER_MODELS,
    available_models,
    hub_reachable,
    is_random_weights,
    method_status,
    model_status,
)
from zsad_core.backbone import list_project_models
from zsad_core.compare import ComparisonRun, DetectorPool, failure_message, run_comparison
from zsad_core.explain import explain_prompts
from zsad_core.prompts import PromptError, PromptSet
from zsad_core.visualize import (
    DEFAULT_CMAP,
    colorbar_strip,
    display_ranges,
    overlay,
    relative_threshold,
    threshold_mask,
    threshold_overlay,
)

try:  # ZeroGPU Spaces: run the decorated function on a GPU; elsewhere (package absent) a no-op
    import spaces

    gpu = spaces.GPU
except ImportError:

    def gpu(function: Any) -> Any:
        return function


HERE = Path(__file__).resolve().parent
ASSETS = HERE / "assets"
PAPER = "paper"  # the model choice "each method on its paper backbone"
SCALES = {
    "shared (each method's range on these images, 0-1)": "per_method",
    "own scale per map": "per_image",
}
ARCHIVE_LIFETIME_S = 3600  # results ZIPs and Gradio's copies of files are removed after an hour
SESSION_LIFETIME_S = 3600  # a session's maps are dropped an hour after its last run


# ------------------------------------------------------------------------------------ settings
def _limit(variable: str, default: Any) -> Any:
    """A limit field of :class:`AppSettings`: environment variable ``variable`` when set, else ``default``
    (its type decides how the variable is read; a malformed value is an error naming the variable)."""
    kind = type(default)

    def read() -> Any:
        text = os.environ.get(variable, "").strip()
        if not text:
            return default
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"{variable} must be a {'whole ' if kind is int else ''}number, got {text!r}") from None

    return field(default_factory=read, metadata={"variable": variable})


@dataclass(frozen=True)
class AppSettings:
    """How the page is served, and its limits (each also read from its environment variable; each
    a flag of ``python app.py``, ``--max-images`` for ``max_images``; docs/reliability.md).

    Attributes:
        model: the backbone selected when the page opens (a model string or ``"paper"``).
        device, precision: where and how the models run ("auto": fp16 on CUDA, bf16 on CPUs with native
            bf16, fp32 otherwise; see :func:`zsad_core.backbone.resolve_precision`).
        warmup: run each method once at start-up, to load it and to measure seconds per image.
        max_images: images per request; more is refused with a message.
        max_pixels: pixels per image as its file declares; larger files are reported without being
            decoded, the request's other images go on.
        max_side: larger pictures are reduced to this longer side (bounds the maps kept per session).
        max_file_size: bytes per uploaded file, as Gradio reads it ("25mb" = 25 x 1024**2); a larger
            upload is refused by the server before it is stored.
        max_seconds: seconds of model work per request, checked before each image (all methods run on
            it together): the results so far are returned with a message, and the worker is free.
        queue_size: requests waiting at most; one more is refused at once ("Queue is full").
        concurrency: model requests run at the same time; the rest wait in the queue. Detectors are
            shared read-only, so more than one is safe; it pays only with spare cores or GPU memory.
    """

    model: str
    device: str | None = None
    precision: str | None = "auto"
    warmup: bool = True
    max_images: int = _limit("ZSAD_MAX_IMAGES", 16)
    max_pixels: int = _limit("ZSAD_MAX_PIXELS", 50_000_000)
    max_side: int = _limit("ZSAD_MAX_SIDE", 2048)
    max_file_size: str = _limit("ZSAD_MAX_FILE_SIZE", "25mb")
    max_seconds: float = _limit("ZSAD_MAX_SECONDS", 300.0)
    queue_size: int = _limit("ZSAD_QUEUE_SIZE", 32)
    concurrency: int = _limit("ZSAD_CONCURRENCY", 1)

    def __post_init__(self) -> None:
        for name, _, _ in LIMITS:
            value = getattr(self, name)
            if not isinstance(value, str) and not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        try:
            gr.utils._parse_file_size(self.max_file_size)
        except Exception as error:  # noqa: BLE001 - Gradio's own parser decides what it accepts
            raise ValueError(
                f"max_file_size must be like '25mb' or a number of bytes, got {self.max_file_size!r}"
            ) from error


# (setting, environment variable, command-line flag) of every limit
LIMITS = tuple(
    (item.name, item.metadata["variable"], "--" + item.name.replace("_", "-"))
    for item in fields(AppSettings)
    if "variable" in item.metadata
)


def default_model(requested: str | None = None, downloadable: bool | None = None) -> str:
    """The best model present: ``requested`` (``--model`` or ``ZSAD_MODEL``), then the papers'
    backbones when all are on disk or can be downloaded, then the best other one available (the
    project's own last). ``downloadable`` None: ask the Hub whether it answers (instant when offline)."""
    requested = requested or os.environ.get("ZSAD_MODEL")
    if requested:
        return requested
    downloadable = hub_reachable() if downloadable is None else downloadable
    if all(model_status(model, downloadable=downloadable).available for model in PAPER_MODELS):
        return PAPER
    return available_models(downloadable=downloadable)[0].model


def model_choices(current: str, downloadable: bool = False) -> list[tuple[str, str]]:
    """(label, value) pairs for the model menu."""
    choices = []
    papers = [model_status(model, downloadable=downloadable) for model in PAPER_MODELS]
    if all(status.available for status in papers):
        fetched = "; downloaded on first use" if any(status.download for status in papers) else ""
        choices.append((f"paper backbones (each method's own{fetched})", PAPER))
    for status in available_models(extra=(current,) if current != PAPER else (), downloadable=downloadable):
        label = status.model + ("  (random weights: maps mean nothing)" if status.random_weights else "")
        label += "  (downloaded on first use)" if status.download else ""
        choices.append((label, status.model))
    if current not in [value for _, value in choices]:
        choices.append((f"{current}  (not available here)", current))
    return choices


def _model_arg(model: str) -> str | None:
    return None if model == PAPER else model


# --------------------------------------------------------------------------------------- the app
class ZsadApp:
    """The page and its handlers; one instance per server, shared read-only by all sessions."""

    def __init__(self, settings: AppSettings) -> None:
        self.settings = settings
        self.pool = DetectorPool(max_detectors=8, device=settings.device, precision=settings.precision)
        self.method_ids = [info.id for info in list_methods()]
        self.names = {info.id: info.name for info in list_methods()}
        self.detect_calls = 0  # model runs served (the threshold redraw must never add one)
        self.downloadable = hub_reachable()  # asked once: offline, nothing waits for a download
        self.archive_dir = Path(tempfile.mkdtemp(prefix="zsad-archives-"))
        # removed with the app, or at the latest when Python exits (Gradio serves its own copies of them)
        weakref.finalize(self, shutil.rmtree, self.archive_dir, ignore_errors=True)

    # --------------------------------------------------------------------------------- text
    def model_note(self, model: str) -> str:
        """Markdown: which model runs, whether its maps mean anything, device and seconds per image."""
        pool = self.pool
        lines = [
            f"**Model:** `{model if model != PAPER else 'paper backbones'}` on **{pool.device}** ({pool.precision})."
        ]
        models = [model] if model != PAPER else [get_method(m).info.default_model for m in self.method_ids]
        if model in list_project_models():
            lines.append(
                f"`{model}` is the project's own small CLIP, trained on generated images only (offline default; "
                "see the README). It finds defects on its generated categories; real CLIP weights in `weights/` "
                "do far better on real photos."
            )
        if any(is_random_weights(m) for m in models):
            lines.append(
                "⚠️ **This model has random weights** (no pretrained CLIP is on this host): the app works "
                "end to end, but its maps and scores **mean nothing**. Put real weights in `weights/` "
                "(see weights/README.md) for real detections."
            )
        timings = []
        for method in self.method_ids:
            seconds = pool.expected_seconds(method, _model_arg(model) or get_method(method).info.default_model)
            if seconds is not None:
                timings.append(f"{self.names[method]} ≈ {seconds:.2f} s")
        if timings:
            lines.append("Expected time per image here (measured): " + ", ".join(timings) + ".")
        else:
            lines.append("Expected time per image: measured after the first run.")
        return "  \n".join(lines)

    def method_menus(self, model: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, Any]]]:
        """Component settings for the runnable-methods group, the unavailable group and each
        checkpoint menu, for ``model`` (used to build them, and as updates when the model changes)."""
        statuses = [method_status(m, _model_arg(model), downloadable=self.downloadable) for m in self.method_ids]
        runnable = [(f"{s.name}", s.method) for s in statuses if s.available]
        blocked = [(f"{s.name}: {s.reason}", s.method) for s in statuses if not s.available]
        chosen = [value for _, value in runnable]  # every method that can run: the page is for comparing them
        checkpoints = {}
        for status in statuses:
            if not get_method(status.method).info.training_free:
                options = [(choice.label, choice.source) for choice in status.checkpoints]
                checkpoints[status.method] = {
                    "choices": options,
                    "value": options[0][1] if options else None,
                    "interactive": bool(options),
                    "info": None if options else "not available: " + status.explanation,
                }
        return (
            {"choices": runnable, "value": chosen},
            {"choices": blocked, "value": [], "visible": bool(blocked)},
            checkpoints,
        )

    # --------------------------------------------------------------------------- computation
    @staticmethod
    def _lines(text: str | None) -> list[str] | None:
        values = [line.strip() for line in (text or "").splitlines() if line.strip()]
        return values or None

    def compute(
        self,
        images: Sequence[tuple[str, Any]],
        category: str,
        methods: Sequence[str],
        model: str,
        checkpoints: dict[str, str | None],
        prompts: tuple[list[str] | None, list[str] | None, list[str] | None],
        progress: Any = None,
    ) -> ComparisonRun:
        """Every method on every image (the one function that runs models)."""
        self.detect_calls += 1
        normal, abnormal, templates = prompts
        return _compute_on_device(
            self, images, category, list(methods), model, checkpoints, normal, abnormal, templates, progress
        )

    def warm_up(self, model: str) -> None:
        """Load every available method on ``model`` and time one image, so the page can say seconds per image."""
        picture = Image.new("RGB", (256, 256), (128, 128, 128))
        methods = [
            m for m in self.method_ids if method_status(m, _model_arg(model), downloadable=self.downloadable).available
        ]
        if methods:
            run_comparison(self.pool, [("warm-up", picture)], methods, "object", model=_model_arg(model))

    def new_archive_path(self, name: str) -> Path:
        """A fresh path for a results ZIP in the app's own folder; archives older than an hour are removed."""
        now = time.time()
        for folder in self.archive_dir.iterdir():
            if now - folder.stat().st_mtime > ARCHIVE_LIFETIME_S:
                shutil.rmtree(folder, ignore_errors=True)
        return Path(tempfile.mkdtemp(dir=self.archive_dir)) / name  # one folder each: names stay readable

    def checked_count(self, items: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        """``items`` when there is at least one and no more than the limit; else :class:`gr.Error`."""
        if not items:
            raise gr.Error("Add at least one image (upload, drop, paste or webcam).")
        if len(items) > self.settings.max_images:
            raise gr.Error(
                f"{len(items)} images is more than this server's limit of {self.settings.max_images} per request."
            )
        return items

    def api_request(
        self, files: list[str] | None, prompt_json: str
    ) -> tuple[list[tuple[str, str]], tuple[list[str] | None, list[str] | None, list[str] | None]]:
        """Check an API call's images and prompt overrides; raise :class:`gr.Error` naming the problem."""
        items = self.checked_count([(Path(f).name, f) for f in (files or [])])
        try:
            overrides = json.loads(prompt_json) if (prompt_json or "").strip() else {}
        except json.JSONDecodeError as error:
            raise gr.Error(f"prompts must be a JSON object: {error}") from error
        parts = ("normal_states", "abnormal_states", "templates")
        if not isinstance(overrides, dict) or set(overrides) - set(parts):
            raise gr.Error(f"prompts must be a JSON object with any of {', '.join(parts)}")
        for part, values in overrides.items():
            if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
                raise gr.Error(f"prompts: {part} must be a list of strings")
        normal, abnormal, templates = (overrides.get(part) for part in parts)
        return items, (normal, abnormal, templates)

    # ------------------------------------------------------------------------------ rendering
    def render(self, run: ComparisonRun | None, scale_label: str, threshold: float) -> tuple[Any, ...]:
        """Results gallery, colour bar, score table and chart from stored results (no model runs)."""
        if run is None:
            return [], None, None, None
        mode = SCALES.get(scale_label, "per_method")
        ranges = display_ranges([image.results for image in run.images], mode)
        gallery: list[tuple[Image.Image, str]] = []
        for image, image_ranges in zip(run.images, ranges):
            if image.picture is None:
                continue
            gallery.append((image.picture, image.name))
            for method in run.methods:
                result = image.results.get(method)
                if result is None:
                    continue
                low, high = image_ranges[method]
                drawn = threshold_overlay(image.picture, result, low, high, threshold, cmap=DEFAULT_CMAP)
                gallery.append((drawn, f"{self.names[method]} {result.score:.3g}"))
        if mode == "per_method":
            label = "shared relative scale: 0 = the method's lowest value on these images, 1 = its highest"
            bar = colorbar_strip(0.0, 1.0, DEFAULT_CMAP, label)
        else:
            bar = colorbar_strip(0.0, 1.0, DEFAULT_CMAP, "own scale: 0 = the map's lowest value, 1 = its highest")
        table = self.score_table(run)
        chart = table[table["status"] == "ok"][["image", "method", "score"]].copy()
        chart["bar"] = chart["image"] + " · " + chart["method"]  # one bar per image and method, never stacked
        row = gr.update(value=gallery, columns=min(5, 1 + len(run.succeeded_methods)))  # one image per row
        return row, bar, table, chart

    def inspect(
        self,
        run: ComparisonRun | None,
        image_name: str | None,
        method_name: str | None,
        scale_label: str,
        threshold: float,
    ) -> tuple[Any, Any]:
        """For one image (no model runs): input-vs-overlay slider of one method, and every method's
        mask of the pixels above the threshold."""
        if run is None:
            return None, None
        mode = SCALES.get(scale_label, "per_method")
        ranges = display_ranges([image.results for image in run.images], mode)
        chosen = next(
            ((image, r) for image, r in zip(run.images, ranges) if image.name == image_name and image.results),
            next(((image, r) for image, r in zip(run.images, ranges) if image.results), (None, None)),
        )
        image, image_ranges = chosen
        if image is None:
            return None, None
        annotations = []
        for method, result in image.results.items():
            low, high = image_ranges[method]
            mask = threshold_mask(result, relative_threshold(low, high, threshold))
            annotations.append((mask.astype("float32"), self.names[method]))
        method = self.method_id(method_name)
        method = method if method in image.results else next(iter(image.results))
        low, high = image_ranges[method]
        return (image.picture, overlay(image.picture, image.results[method], low, high)), (image.picture, annotations)

    def method_id(self, name: str | None) -> str | None:
        """Method id from its display name (ids pass through)."""
        return next((m for m, shown in self.names.items() if shown == name), name)

    def score_table(self, run: ComparisonRun) -> pd.DataFrame:
        """Scores for the page: method names, values to 4 significant digits (the download keeps all)."""
        columns = ["image", "method", "status", "score", "seconds", "map_min", "map_max", "error"]
        frame = pd.DataFrame(score_rows(run), columns=columns)
        frame["method"] = [self.names.get(m, m) for m in frame["method"]]
        for column in ("score", "seconds", "map_min", "map_max"):
            frame[column] = [None if pd.isna(v) else float(f"{v:.4g}") for v in frame[column]]
        return frame

    def explanation(self, run: ComparisonRun | None, image_name: str, method_name: str) -> tuple[Any, Any, str]:
        """Prompt-word table and chart for one image and method, from the stored evidence."""
        if run is None:
            return None, None, "Run a detection first."
        method = self.method_id(method_name)
        image = next((i for i in run.images if i.name == image_name), None)
        if image is None or method not in image.results:
            return None, None, f"No result of {method_name} on {image_name}."
        explanation = explain_prompts(image.results[method])
        frame = pd.DataFrame(explanation.rows()).round(4)
        frame["state"] = [state.replace("{}", run.category) for state in frame["state"]]
        chart = frame.dropna(subset=["effect"])[["state", "effect", "kind"]]
        note = (
            f"**{method_name}** on **{image_name}**: text score {explanation.text_score:.4g} "
            f"({explanation.score_name}). *effect* = score with all states − score without that state: positive "
            "means the phrase pushes the image towards *abnormal*. *similarity* = cosine between the image "
            "and the phrase."
        )
        return frame, chart, note


def _compute_on_device(
    app: ZsadApp,
    images: Sequence[tuple[str, Any]],
    category: str,
    methods: list[str],
    model: str,
    checkpoints: dict[str, str | None],
    normal: list[str] | None,
    abnormal: list[str] | None,
    templates: list[str] | None,
    progress: Any,
) -> ComparisonRun:
    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress(fraction, desc=message)

    return run_comparison(
        app.pool,
        images,
        methods,
        category,
        model=_model_arg(model),
        checkpoints=checkpoints,
        normal_states=normal,
        abnormal_states=abnormal,
        templates=templates,
        max_side=app.settings.max_side,
        max_pixels=app.settings.max_pixels,
        time_limit=app.settings.max_seconds,
        downloadable=app.downloadable,
        progress=report,
    )


_compute_on_device = gpu(_compute_on_device)  # the one inference function ZeroGPU runs on a GPU


def _answered(handler: Callable[..., Any]) -> Callable[..., Any]:
    """A model-running handler whose failures all reach the user as one readable message
    (:class:`gr.Error`) instead of Gradio's generic "Error", and leave the worker serving: an
    out-of-memory error, a model raising, a bad prompt. The traceback goes to the server's log."""

    @functools.wraps(handler)  # keeps the signature Gradio reads (its Progress injection)
    def answered(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as error:  # noqa: BLE001 - every failure becomes a message; the server goes on
            if not isinstance(error, PromptError):
                traceback.print_exc()
            raise gr.Error(failure_message(error)) from error

    return answered


# -------------------------------------------------------------------------------------- inputs
def _gallery_files(gallery: Any) -> list[tuple[str, Any]]:
    """Gradio gallery value -> [(display name, path)]."""
    items = []
    for index, entry in enumerate(gallery or []):
        source = entry[0] if isinstance(entry, (tuple, list)) else entry
        if isinstance(source, dict):
            source = source.get("path") or source.get("name")
        name = Path(str(source)).name if isinstance(source, (str, os.PathLike)) else f"image-{index + 1}.png"
        items.append((name, source))
    return items


def _examples() -> list[list[Any]]:
    listing = ASSETS / "examples.json"
    if not listing.is_file():
        return []
    entries = json.loads(listing.read_text())
    return [
        [[str(ASSETS / entry["file"])], entry["category"]] for entry in entries if (ASSETS / entry["file"]).is_file()
    ]


def _example_files() -> list[str]:
    """The example pictures' paths: the only files outside Gradio's cache the server may send."""
    return [path for files, _ in _examples() for path in files]


def _prompt_texts(method: str) -> tuple[str, str, str]:
    prompts: PromptSet = get_method(method).default_prompts
    return "\n".join(prompts.normal_states), "\n".join(prompts.abnormal_states), "\n".join(prompts.templates)


# ---------------------------------------------------------------------------------------- page
def build_demo(settings: AppSettings) -> gr.Blocks:
    """The page. Handlers close over one :class:`ZsadApp` (also reachable as ``demo.zsad_app``)."""
    app = ZsadApp(settings)
    if settings.warmup:
        try:
            app.warm_up(settings.model)
        except Exception as error:  # noqa: BLE001 - a failed warm-up only means no timing estimate
            print(f"warm-up skipped: {error}")
    learnable = [m for m in app.method_ids if not get_method(m).info.training_free]
    first_method = app.method_ids[0]

    cache_lifetime = (ARCHIVE_LIFETIME_S, ARCHIVE_LIFETIME_S)  # (check every, delete older than) seconds
    with gr.Blocks(title="zsad: zero-shot anomaly detection", delete_cache=cache_lifetime) as demo:
        run_state = gr.State(None, time_to_live=SESSION_LIFETIME_S)  # the maps behind the threshold redraw
        gr.Markdown(
            "# zsad: zero-shot anomaly detection with CLIP\n"
            "Upload pictures of something, say what it is, and compare where WinCLIP, CLIP-AD (SDP, SDP+) and "
            "AdaCLIP find anomalies. No training on your object: the models only read its name."
        )
        note = gr.Markdown(app.model_note(settings.model), elem_id="model-note")
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                gallery_in = gr.Gallery(
                    label="Images",
                    type="filepath",
                    sources=["upload", "clipboard", "webcam"],
                    file_types=["image"],
                    interactive=True,
                    columns=3,
                    height=260,
                    object_fit="contain",
                    elem_id="inputs",
                )
                gr.Markdown("Upload, drop, paste or take (webcam) one or several images.", elem_classes="hint")
                category = gr.Textbox(
                    label="What is it?", placeholder="e.g. bottle, metal nut, fabric", elem_id="category"
                )
                runnable, blocked, checkpoint_settings = app.method_menus(settings.model)
                methods = gr.CheckboxGroup(label="Methods", elem_id="methods", **runnable)
                unavailable = gr.CheckboxGroup(
                    label="Not available here", interactive=False, elem_id="unavailable-methods", **blocked
                )
                with gr.Accordion("Model and checkpoints", open=False):
                    model = gr.Dropdown(
                        choices=model_choices(settings.model, app.downloadable),
                        value=settings.model,
                        label="Backbone",
                        elem_id="model",
                    )
                    checkpoint_menus = {
                        method: gr.Dropdown(
                            label=f"{app.names[method]} checkpoint",
                            elem_id=f"checkpoint-{method}",
                            **checkpoint_settings[method],
                        )
                        for method in learnable
                    }
                with gr.Accordion("Prompts (advanced)", open=False):
                    gr.Markdown(
                        "One phrase per line. `{}` stands for the category (a state without it goes before the "
                        "name); a template holds `{}` for the state phrase. Left as they are, each method uses "
                        "its own paper prompts; once edited, these lists are used by every method."
                    )
                    prompt_source = gr.Dropdown(
                        choices=[(app.names[m], m) for m in app.method_ids],
                        value=first_method,
                        label="Start from the prompts of",
                        elem_id="prompt-source",
                    )
                    custom = gr.Checkbox(value=False, label="Use these prompts for every method", elem_id="custom")
                    defaults = _prompt_texts(first_method)
                    normal_box = gr.Textbox(value=defaults[0], lines=5, label="Normal states", elem_id="normal")
                    abnormal_box = gr.Textbox(value=defaults[1], lines=5, label="Abnormal states", elem_id="abnormal")
                    template_box = gr.Textbox(value=defaults[2], lines=5, label="Templates", elem_id="templates")
                    reset = gr.Button("Reset to the paper prompts", size="sm", elem_id="reset-prompts")
                run_button = gr.Button("Detect anomalies", variant="primary", elem_id="run")
                examples = _examples()
                if examples:
                    gr.Examples(examples, inputs=[gallery_in, category], label="Examples (generated by zsad)")
            with gr.Column(scale=2, min_width=480):
                messages = gr.Markdown(elem_id="messages")
                with gr.Row():
                    scale = gr.Radio(
                        choices=list(SCALES), value=next(iter(SCALES)), label="Colour scale", elem_id="scale"
                    )
                    threshold = gr.Slider(
                        0.0, 1.0, value=0.7, step=0.01, label="Threshold (on the colour scale)", elem_id="threshold"
                    )
                gallery_out = gr.Gallery(
                    label="Input and each method's map (name and image score)",
                    show_label=False,
                    columns=4,
                    format="png",
                    height="auto",
                    object_fit="contain",
                    elem_id="results",
                )
                colorbar = gr.Image(label="Colour bar", format="png", height=90, interactive=False, elem_id="colorbar")
                gr.Markdown(
                    "*Why a relative scale:* the methods' maps live in different units (WinCLIP: probabilities "
                    "near 0.5, SDP: signed similarities near 0), so one absolute scale paints most of them flat. "
                    "The shared scale maps each method's lowest and highest value on the images shown to 0 and 1: "
                    "maps of one method stay comparable across images, and each method shows its structure. The "
                    "raw values are in the table and the download."
                )
                with gr.Tabs():
                    with gr.Tab("Scores"):
                        scores = gr.Dataframe(label="Scores and seconds per image", elem_id="scores")
                        chart = gr.BarPlot(
                            x="bar",
                            y="score",
                            color="method",
                            label="Image scores",
                            x_title="image · method",
                            x_label_angle=-30,
                            elem_id="chart",
                        )
                    with gr.Tab("One image"):
                        with gr.Row():
                            slider_image = gr.Dropdown(label="Image", elem_id="slider-image")
                            slider_method = gr.Dropdown(label="Method", elem_id="slider-method")
                        slider = gr.ImageSlider(label="Input | overlay", format="png", max_height=420, elem_id="slider")
                        masks = gr.AnnotatedImage(
                            label="Pixels above the threshold, per method", format="png", height=420, elem_id="masks"
                        )
                    with gr.Tab("Prompt words"):
                        with gr.Row():
                            explain_image = gr.Dropdown(label="Image", elem_id="explain-image")
                            explain_method = gr.Dropdown(label="Method", elem_id="explain-method")
                        explain_note = gr.Markdown(elem_id="explain-note")
                        explain_table = gr.Dataframe(label="Each state phrase, by size of effect", elem_id="explain")
                        explain_chart = gr.BarPlot(
                            x="state",
                            y="effect",
                            color="kind",
                            sort="-y",
                            x_label_angle=-35,
                            label="Effect on the score",
                            elem_id="explain-chart",
                        )
                download = gr.DownloadButton("Download everything (ZIP)", visible=False, elem_id="download")

        # ---------------------------------------------------------------------- handlers
        def on_model(chosen: str) -> list[Any]:
            runnable, blocked, menus = app.method_menus(chosen)
            updates = [gr.update(**runnable), gr.update(**blocked), *[gr.update(**menus[m]) for m in learnable]]
            return [app.model_note(chosen), *updates]

        @_answered
        def run(
            gallery: Any,
            category_text: str,
            chosen: list[str],
            chosen_model: str,
            scale_label: str,
            level: float,
            use_custom: bool,
            normal: str,
            abnormal: str,
            template: str,
            *checkpoint_values: Any,
            progress: gr.Progress = gr.Progress(),  # noqa: B008 - how Gradio injects its progress tracker
        ) -> list[Any]:
            files = app.checked_count(_gallery_files(gallery))
            if not chosen:
                raise gr.Error("Choose at least one method.")
            if not (category_text or "").strip():
                raise gr.Error("Say what the images show (the category), e.g. 'bottle'.")
            prompts = (ZsadApp._lines(normal), ZsadApp._lines(abnormal), ZsadApp._lines(template))
            if not use_custom:
                prompts = (None, None, None)
            checkpoints = dict(zip(learnable, checkpoint_values))
            result = app.compute(files, category_text, chosen, chosen_model, checkpoints, prompts, progress)
            problems = result.messages()
            for problem in problems:
                gr.Warning(problem)
            timings = result.seconds_per_image()
            summary = ", ".join(f"{app.names[m]} {s:.2f} s/image" for m, s in timings.items())
            text = f"Done: {len(result.images)} image(s), {summary or 'no results'}."
            if problems:
                text += "\n\n**Problems:**\n" + "\n".join(f"- {p}" for p in problems)
            names = [image.name for image in result.images if image.results]
            method_names = [app.names[m] for m in result.succeeded_methods]
            archive = app.new_archive_path(f"zsad-{time.strftime('%Y%m%d-%H%M%S')}.zip")
            write_archive(
                result,
                archive,
                scale=SCALES.get(scale_label, "per_method"),
                extra_settings={"app": {"gradio": gr.__version__, "zsad": __version__}},
            )
            rendered = app.render(result, scale_label, level)
            inspected = app.inspect(result, None, None, scale_label, level)
            first_name = names[0] if names else None
            first_method_name = method_names[0] if method_names else None
            table, chart_frame, explain_text = (
                app.explanation(result, first_name, first_method_name) if names else (None, None, "")
            )
            return [
                result,
                text,
                app.model_note(chosen_model),
                *rendered,
                *inspected,
                gr.update(choices=names, value=first_name),
                gr.update(choices=method_names, value=first_method_name),
                gr.update(choices=names, value=first_name),
                gr.update(choices=method_names, value=first_method_name),
                table,
                chart_frame,
                explain_text,
                gr.update(value=str(archive), visible=True),
            ]

        def redraw(
            state: ComparisonRun | None, scale_label: str, level: float, image_name: str, method_name: str
        ) -> list[Any]:
            return [
                *app.render(state, scale_label, level),
                *app.inspect(state, image_name, method_name, scale_label, level),
            ]

        def reset_prompts(method: str) -> list[Any]:
            return [*_prompt_texts(method), False]

        model_outputs = [note, methods, unavailable, *checkpoint_menus.values()]
        model.change(on_model, inputs=model, outputs=model_outputs, api_visibility="private")
        render_outputs = [gallery_out, colorbar, scores, chart, slider, masks]
        run_button.click(
            run,
            inputs=[
                gallery_in,
                category,
                methods,
                model,
                scale,
                threshold,
                custom,
                normal_box,
                abnormal_box,
                template_box,
                *checkpoint_menus.values(),
            ],
            outputs=[
                run_state,
                messages,
                note,
                *render_outputs,
                slider_image,
                slider_method,
                explain_image,
                explain_method,
                explain_table,
                explain_chart,
                explain_note,
                download,
            ],
            api_name="compare",
            api_visibility="undocumented",  # the page's own call; scripts use /detect
            concurrency_limit=settings.concurrency,
            concurrency_id="models",
        )
        for control in (threshold, scale):
            control.change(
                redraw,
                inputs=[run_state, scale, threshold, slider_image, slider_method],
                outputs=render_outputs,
                api_name="redraw",
                api_visibility="undocumented",
                trigger_mode="always_last",
                concurrency_limit=4,
                concurrency_id="redraw",
                show_progress="hidden",
            )
        for control in (slider_image, slider_method):
            control.change(
                app.inspect,
                inputs=[run_state, slider_image, slider_method, scale, threshold],
                outputs=[slider, masks],
                api_visibility="private",
            )
        for control in (explain_image, explain_method):
            control.change(
                app.explanation,
                inputs=[run_state, explain_image, explain_method],
                outputs=[explain_table, explain_chart, explain_note],
                api_visibility="private",
            )
        for box in (normal_box, abnormal_box, template_box):
            box.input(lambda: True, outputs=custom, api_visibility="private")
        reset.click(
            reset_prompts,
            inputs=prompt_source,
            outputs=[normal_box, abnormal_box, template_box, custom],
            api_visibility="private",
        )
        prompt_source.change(
            reset_prompts,
            inputs=prompt_source,
            outputs=[normal_box, abnormal_box, template_box, custom],
            api_visibility="private",
        )

        # ------------------------------------------------------------------ API endpoints
        api_files = gr.File(file_count="multiple", visible=False)
        api_category = gr.Textbox(visible=False)
        api_methods = gr.Textbox(visible=False)
        api_model = gr.Textbox(visible=False)
        api_prompts = gr.Textbox(visible=False)
        api_json = gr.JSON(visible=False)
        api_zip = gr.File(visible=False)
        api_method = gr.Textbox(visible=False)

        @_answered
        def api_detect(
            files: list[str] | None, category_text: str, method_list: str, model_name: str, prompt_json: str
        ) -> tuple[dict, str | None]:
            """Run methods on images; returns the scores (JSON) and the results ZIP.

            Args:
                files: image files.
                category_text: what the images show, e.g. "bottle".
                method_list: comma-separated method ids ("" = every method available here).
                model_name: backbone ("" = the page's default, "paper" = each method's paper backbone).
                prompt_json: "" or a JSON object with any of normal_states, abnormal_states, templates (lists).
            """
            chosen_model = model_name or app.settings.model
            chosen = [m.strip() for m in (method_list or "").split(",") if m.strip()] or [
                m
                for m in app.method_ids
                if method_status(m, _model_arg(chosen_model), downloadable=app.downloadable).available
            ]
            unknown = [m for m in chosen if m not in app.method_ids]
            if unknown:
                raise gr.Error(f"unknown method(s) {unknown}; known: {app.method_ids}")
            items, prompts = app.api_request(files, prompt_json)
            result = app.compute(items, category_text or "", chosen, chosen_model, {}, prompts)
            archive = app.new_archive_path("zsad-results.zip")
            write_archive(result, archive, extra_settings={"app": {"gradio": gr.__version__, "zsad": __version__}})
            payload = {
                "category": result.category,
                "results": score_rows(result),
                "problems": result.messages(),
                "settings": result.settings,
            }
            return json.loads(json.dumps(payload, default=str)), str(archive)

        @_answered
        def api_explain(
            files: list[str] | None, category_text: str, method: str, model_name: str, prompt_json: str
        ) -> dict:
            """How much each prompt state moves one image's score, for one method."""
            chosen_model = model_name or app.settings.model
            if method not in app.method_ids:
                raise gr.Error(f"unknown method {method!r}; known: {app.method_ids}")
            items, prompts = app.api_request(files, prompt_json)
            items = items[:1]
            result = app.compute(items, category_text or "", [method], chosen_model, {}, prompts)
            outcome = result.images[0]
            if method not in outcome.results:
                raise gr.Error("; ".join(result.messages()) or "no result")
            explanation = explain_prompts(outcome.results[method])
            return {
                "method": method,
                "image": outcome.name,
                "score": outcome.results[method].score,
                "text_score": explanation.text_score,
                "score_name": explanation.score_name,
                "states": explanation.rows(),
            }

        api_button = gr.Button(visible=False)
        api_button.click(
            api_detect,
            inputs=[api_files, api_category, api_methods, api_model, api_prompts],
            outputs=[api_json, api_zip],
            api_name="detect",
            concurrency_limit=settings.concurrency,
            concurrency_id="models",
        )
        api_button.click(
            api_explain,
            inputs=[api_files, api_category, api_method, api_model, api_prompts],
            outputs=api_json,
            api_name="explain",
            concurrency_limit=settings.concurrency,
            concurrency_id="models",
        )
    demo.zsad_app = app  # type: ignore[attr-defined]  # tests reach the handlers' state through it
    return demo


def launch(demo: gr.Blocks, host: str | None, port: int | None, share: bool, **kwargs: Any) -> Any:
    """Queue and serve with the app's limits (:class:`AppSettings`); the only files served besides
    Gradio's own cache of uploads and results are the example pictures."""
    settings: AppSettings = demo.zsad_app.settings  # type: ignore[attr-defined]
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=settings.concurrency)
    return demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        max_file_size=settings.max_file_size,
        allowed_paths=_example_files(),
        **kwargs,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default=None, help="backbone to start with (default: $ZSAD_MODEL, else the best present)"
    )
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME"), help="address to serve on")
    parser.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT, else 7860)")
    parser.add_argument("--share", action="store_true", help="also make a public gradio.live link")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when present)")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="default auto: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32",
    )
    parser.add_argument("--no-warmup", action="store_true", help="skip the start-up run that measures each method")
    limits = parser.add_argument_group("limits (default: the environment variable named, else the value shown)")
    factories = {item.name: item.default_factory for item in fields(AppSettings)}
    for name, variable, flag in LIMITS:
        current = factories[name]()  # type: ignore[misc]  # reads the environment
        limits.add_argument(flag, dest=name, type=type(current), default=None, help=f"${variable}, now {current}")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> AppSettings:
    """The app's settings from the command line; limits not given come from the environment or defaults."""
    limits = {name: getattr(args, name) for name, _, _ in LIMITS if getattr(args, name) is not None}
    return AppSettings(
        model=default_model(args.model),
        device=args.device,
        precision=args.precision,
        warmup=not args.no_warmup,
        **limits,
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    port = args.port or (int(os.environ["GRADIO_SERVER_PORT"]) if os.environ.get("GRADIO_SERVER_PORT") else None)
    launch(build_demo(settings_from_args(args)), args.host, port, args.share)


if __name__ == "__main__":
    main()
