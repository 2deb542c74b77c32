"""Text prompts: the papers' state words and templates, user prompts, reductions, a feature cache.

A :class:`PromptSet` is normal states, abnormal states and templates. A state holds ``{}`` where
the class name goes (``"{} with a crack"``); a state without ``{}`` is put before the class name
(``"scratched"`` -> ``"scratched {}"``), so users can type plain words. A template holds ``{}``
where the state phrase goes (``"a photo of a {}."``). Sentences are every template applied to every
state: ``template.format(state.format(class_name))``.

Text anchors (the normal and abnormal text features, (D, 2)) are reduced from the sentence
embeddings by one of :data:`REDUCERS` and cached per (backbone, method, class name, prompts,
reducer), so a detector prepared twice for the same category encodes its prompts once. The sentence
embeddings and the anchors are also kept on disk (:mod:`zsad_core.disk_cache`), so a new process
answers a known category without a text pass or a reduction.
"""

from __future__ import annotations

import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .disk_cache import cached_text_tensor, encode_text_cached

if TYPE_CHECKING:
    from .backbone import ClipBackbone

MAX_SENTENCES = 4096


class PromptError(ValueError):
    """A prompt that cannot be used (empty, overlong, malformed template)."""


def clean_text(text: str, what: str = "text") -> str:
    """``text`` with control characters (newlines, tabs, escapes, NUL...) turned into spaces and runs of
    whitespace collapsed to one, so categories and prompts print on one line and nothing invisible
    reaches the tokenizer or results.json. Unicode letters and emoji are kept.

    Raises:
        PromptError: ``text`` is not a string (the message says what it is).
    """
    if not isinstance(text, str):
        raise PromptError(f"{what} must be a string, got {type(text).__name__} {text!r}")
    visible = "".join(" " if unicodedata.category(character) == "Cc" else character for character in text)
    return " ".join(visible.split())


def _as_state(word: str) -> str:
    word = clean_text(word, "a prompt state")
    if not word:
        raise PromptError("empty state word")
    if word.count("{}") > 1 or "{" in word.replace("{}", "") or "}" in word.replace("{}", ""):
        raise PromptError(f"a state may hold '{{}}' (the class name) at most once: {word!r}")
    return word if "{}" in word else f"{word} {{}}"


def _as_template(template: str) -> str:
    template = clean_text(template, "a prompt template")
    if template.count("{}") != 1 or "{" in template.replace("{}", "") or "}" in template.replace("{}", ""):
        raise PromptError(f"a template must hold '{{}}' (the state phrase) exactly once: {template!r}")
    return template


def _as_tuple(values: str | Sequence[str]) -> tuple[str, ...]:
    # one string is one prompt, not a sequence of one-letter prompts
    return (values,) if isinstance(values, str) else tuple(values)


@dataclass(frozen=True)
class PromptSet:
    """Normal states, abnormal states and templates (tuples, so a PromptSet can key a cache)."""

    normal_states: tuple[str, ...]
    abnormal_states: tuple[str, ...]
    templates: tuple[str, ...]

    def __post_init__(self) -> None:
        for name in ("normal_states", "abnormal_states", "templates"):
            values = _as_tuple(getattr(self, name))
            if not values:
                raise PromptError(f"{name.replace('_', ' ')} is empty")
            clean = _as_template if name == "templates" else _as_state
            object.__setattr__(self, name, tuple(clean(value) for value in values))
        count = len(self.templates) * (len(self.normal_states) + len(self.abnormal_states))
        if count > MAX_SENTENCES:
            raise PromptError(f"{count} prompt sentences is more than the limit of {MAX_SENTENCES}")

    def with_overrides(
        self,
        normal_states: Sequence[str] | None = None,
        abnormal_states: Sequence[str] | None = None,
        templates: Sequence[str] | None = None,
    ) -> PromptSet:
        """A copy with the given parts replaced (``None`` keeps the default part)."""
        changes = {
            name: _as_tuple(value)
            for name, value in (
                ("normal_states", normal_states),
                ("abnormal_states", abnormal_states),
                ("templates", templates),
            )
            if value is not None
        }
        return replace(self, **changes)

    def sentences(self, class_name: str) -> tuple[list[str], list[str]]:
        """(normal sentences, abnormal sentences) for ``class_name``, template-major within a state."""
        class_name = clean_text(class_name, "the category / class name")
        if not class_name:
            raise PromptError("empty category / class name")
        if "{" in class_name or "}" in class_name:
            raise PromptError(f"class name must not contain braces: {class_name!r}")

        def build(states: tuple[str, ...]) -> list[str]:
            return [template.format(state.format(class_name)) for state in states for template in self.templates]

        return build(self.normal_states), build(self.abnormal_states)


# WinCLIP (Jeong et al. 2023): compositional prompt ensemble, 7 normal and 4 abnormal states and the
# 22 templates of the paper (anomalib's list has 21: one duplicate 'jpeg corrupted ... the', no
# 'a cropped photo of a'; pass those lists to reproduce anomalib exactly).
WINCLIP_TEMPLATES = (
    "a cropped photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
)
WINCLIP_PROMPTS = PromptSet(
    normal_states=(
        "{}",
        "flawless {}",
        "perfect {}",
        "unblemished {}",
        "{} without flaw",
        "{} without defect",
        "{} without damage",
    ),
    abnormal_states=("damaged {}", "{} with flaw", "{} with defect", "{} with damage"),
    templates=WINCLIP_TEMPLATES,
)

# CLIP-AD (Chen et al. 2023), util/prompt_ensemble.py: 9 normal and 10 abnormal states and the 22
# WinCLIP templates in CLIP-AD's own order (the "a photo of ..." ones differ in order). Order does not
# change a mean, but it does change which cluster DBSCAN gives a border point, so RVS follows the code.
CLIPAD_TEMPLATES = WINCLIP_TEMPLATES[:12] + (
    "a photo of the {}.",
    "a photo of a {}.",
    "a photo of a large {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "a photo of a small {}.",
) + WINCLIP_TEMPLATES[18:]
CLIPAD_PROMPTS = PromptSet(
    normal_states=(
        "flawless {}",
        "perfect {}",
        "unblemished {}",
        "{} without flaw",
        "{} without defect",
        "{} without damage",
        "{} without scratch",
        "{} without crack",
        "{} without contamination",
    ),
    abnormal_states=(
        "damaged {}",
        "imperfect {}",
        "blemished {}",
        "broken {}",
        "{} with flaw",
        "{} with defect",
        "{} with damage",
        "{} with scratch",
        "{} with crack",
        "{} with contamination",
    ),
    templates=CLIPAD_TEMPLATES,
)

# AdaCLIP (Cao et al. 2024), method/adaclip.py: 7 normal and 5 abnormal states, 4 templates.
ADACLIP_PROMPTS = PromptSet(
    normal_states=(
        "{}",
        "flawless {}",
        "perfect {}",
        "unblemished {}",
        "{} without flaw",
        "{} without defect",
        "{} without damage",
    ),
    abnormal_states=("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage"),
    templates=(
        "a bad photo of a {}.",
        "a low resolution photo of the {}.",
        "a bad photo of the {}.",
        "a cropped photo of the {}.",
    ),
)


# --------------------------------------------------------------------------------------- reducers
def reduce_mean_normalized(embeddings: torch.Tensor) -> torch.Tensor:
    """Normalise each sentence embedding, average, normalise (AdaCLIP, April-GAN, CLIP-AD 'mean')."""
    return F.normalize(F.normalize(embeddings, dim=-1).mean(0), dim=-1)


def reduce_mean_raw(embeddings: torch.Tensor) -> torch.Tensor:
    """Average the raw embeddings, then normalise (WinCLIP as anomalib implements it)."""
    return F.normalize(embeddings.mean(0), dim=-1)


Reducer = Callable[[torch.Tensor], torch.Tensor]
REDUCERS: dict[str, Reducer] = {"mean": reduce_mean_normalized, "mean_raw": reduce_mean_raw}


#: name prefix -> resolver of the parameterised reductions whose names start with it (e.g. "rvs-").
REDUCER_FAMILIES: dict[str, Callable[[str], Reducer | None]] = {}


def register_reducer(name: str, reducer: Reducer) -> None:
    """Make a reduction usable by name (call it once, at import)."""
    REDUCERS[name] = reducer


def register_reducer_family(prefix: str, resolve: Callable[[str], Reducer | None]) -> None:
    """Make parameterised reductions usable by name: ``resolve(name)`` gives the reduction that a name
    starting with ``prefix`` spells, or None (e.g. CLIP-AD's RVS settings; called once, at import)."""
    REDUCER_FAMILIES[prefix] = resolve


def get_reducer(name: str) -> Reducer:
    """The reduction called ``name`` (:data:`REDUCERS`, then :data:`REDUCER_FAMILIES`); nothing is registered."""
    reducer = REDUCERS.get(name)
    for prefix, resolve in REDUCER_FAMILIES.items():
        if reducer is None and name.startswith(prefix):
            reducer = resolve(name)
    if reducer is None:
        known = sorted(REDUCERS) + [f"{prefix}..." for prefix in sorted(REDUCER_FAMILIES)]
        raise PromptError(f"unknown text reduction {name!r}; known: {known}")
    return reducer


# ------------------------------------------------------------------------------------------ cache
class TextFeatureCache:
    """A small thread-safe LRU cache of text anchors."""

    def __init__(self, max_entries: int = 256) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get_or_compute(self, key: tuple, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key]
        value = compute()
        with self._lock:
            self.misses += 1
            self._entries[key] = value
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0


TEXT_FEATURE_CACHE = TextFeatureCache()
# Raw sentence embeddings, shared by every method and reducer on one backbone: anchors are reduced
# from them, and prompt explanations (:mod:`zsad_core.explain`) re-reduce them without a text pass.
SENTENCE_CACHE = TextFeatureCache(max_entries=64)


def clear_text_caches() -> None:
    """Forget every cached anchor and sentence embedding (the next prepare re-encodes its prompts)."""
    TEXT_FEATURE_CACHE.clear()
    SENTENCE_CACHE.clear()


def sentence_embeddings(backbone: ClipBackbone, class_name: str, prompts: PromptSet) -> torch.Tensor:
    """Raw (not normalised) embeddings of ``prompts.sentences(class_name)``, normal sentences first.

    Looked up in memory (:data:`SENTENCE_CACHE`), then on disk (:mod:`zsad_core.disk_cache`), and only
    then computed by the text tower.

    Returns:
        (P, D) float32 tensor on the backbone's device, rows in the order of
        :meth:`PromptSet.sentences` (state-major: all templates of the first state, then the next).
    """
    normal, abnormal = prompts.sentences(class_name)
    key = (backbone.key, " ".join(class_name.split()), prompts)
    return SENTENCE_CACHE.get_or_compute(key, lambda: encode_text_cached(backbone, normal + abnormal))


def reduce_anchors(embeddings: torch.Tensor, num_normal: int, reducer: str) -> torch.Tensor:
    """(P, D) sentence embeddings, normal rows first -> (D, 2) anchors (normal, abnormal) by ``reducer``."""
    reduce = get_reducer(reducer)
    return torch.stack([reduce(embeddings[:num_normal]), reduce(embeddings[num_normal:])], dim=1).float()


def text_anchors(
    backbone: ClipBackbone,
    class_name: str,
    prompts: PromptSet,
    reducer: str = "mean",
    method_id: str = "",
) -> torch.Tensor:
    """Normal and abnormal text anchors, each reduced from its sentence cloud and L2-normalised.

    Returns:
        (D, 2) float32 tensor on the backbone's device: column 0 normal, column 1 abnormal.
    """
    get_reducer(reducer)  # an unknown name fails here, before any text is encoded
    normal, abnormal = prompts.sentences(class_name)
    key = (backbone.key, method_id, " ".join(class_name.split()), prompts, reducer)

    def reduce() -> torch.Tensor:
        return reduce_anchors(sentence_embeddings(backbone, class_name, prompts), len(normal), reducer)

    def compute() -> torch.Tensor:  # a reducer is known by its name, which holds its settings (e.g. RVS eps)
        extra = {"kind": "anchors", "reducer": reducer, "num_normal": str(len(normal))}
        return cached_text_tensor(backbone, normal + abnormal, reduce, **extra)

    return TEXT_FEATURE_CACHE.get_or_compute(key, compute)
