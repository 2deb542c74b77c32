"""Prompt sets: user words and templates, errors, sentence counts, the anchor cache, anchors vs plain CLIP."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F

from zsad_core import create_detector
from zsad_core.backbone import create_backbone
from zsad_core.prompts import (
    ADACLIP_PROMPTS,
    CLIPAD_PROMPTS,
    MAX_SENTENCES,
    TEXT_FEATURE_CACHE,
    WINCLIP_PROMPTS,
    PromptError,
    PromptSet,
    clear_text_caches,
    text_anchors,
)


def test_plain_words_become_states_and_whitespace_is_normalised() -> None:
    prompts = PromptSet(("good", "  {} without   scratch "), ("cracked",), ("a photo of a {}.",))
    assert prompts.normal_states == ("good {}", "{} without scratch")
    assert prompts.abnormal_states == ("cracked {}",)
    normal, abnormal = prompts.sentences("  metal   nut ")
    assert normal == ["a photo of a good metal nut.", "a photo of a metal nut without scratch."]
    assert abnormal == ["a photo of a cracked metal nut."]


def test_a_single_string_is_one_prompt_not_a_list_of_letters() -> None:
    prompts = PromptSet("good", "cracked", "a photo of a {}.")
    assert prompts.normal_states == ("good {}",) and prompts.templates == ("a photo of a {}.",)
    overridden = WINCLIP_PROMPTS.with_overrides(abnormal_states="scratched", templates="a {}")
    assert overridden.abnormal_states == ("scratched {}",) and overridden.templates == ("a {}",)
    assert overridden.normal_states == WINCLIP_PROMPTS.normal_states


@pytest.mark.parametrize("template", ["a photo of a thing.", "a {} and a {}.", "a {0}.", "a {{}}.", "a } {}."])
def test_templates_need_exactly_one_placeholder(template: str) -> None:
    with pytest.raises(PromptError, match="template"):
        PromptSet(("good",), ("bad",), (template,))


@pytest.mark.parametrize(
    "normal, abnormal, templates, problem",
    [
        ((), ("bad",), ("{}",), "normal states is empty"),
        (("good",), (), ("{}",), "abnormal states is empty"),
        (("good",), ("bad",), (), "templates is empty"),
        (("good", "   "), ("bad",), ("{}",), "empty state"),
        (("{} and {}",), ("bad",), ("{}",), "at most once"),
        (("good {",), ("bad",), ("{}",), "at most once"),
    ],
)
def test_malformed_prompt_sets(normal, abnormal, templates, problem: str) -> None:
    with pytest.raises(PromptError, match=problem):
        PromptSet(normal, abnormal, templates)


@pytest.mark.parametrize("class_name, problem", [("   ", "empty"), ("bottle {}", "braces")])
def test_bad_class_names(class_name: str, problem: str) -> None:
    with pytest.raises(PromptError, match=problem):
        WINCLIP_PROMPTS.sentences(class_name)


def test_too_many_sentences() -> None:
    templates = tuple(f"photo {index} of {{}}" for index in range(MAX_SENTENCES // 2 + 1))
    with pytest.raises(PromptError, match="limit"):
        PromptSet(("good",), ("bad",), templates)


@pytest.mark.parametrize(
    "prompts, normal_count, abnormal_count",
    [(WINCLIP_PROMPTS, 7 * 22, 4 * 22), (CLIPAD_PROMPTS, 9 * 22, 10 * 22), (ADACLIP_PROMPTS, 7 * 4, 5 * 4)],
)
def test_sentence_counts_are_templates_times_states(prompts: PromptSet, normal_count: int, abnormal_count: int) -> None:
    normal, abnormal = prompts.sentences("bottle")
    assert (len(normal), len(abnormal)) == (normal_count, abnormal_count)
    assert len(normal) == len(prompts.templates) * len(prompts.normal_states)
    assert len(set(normal)) == len(normal) and len(set(abnormal)) == len(abnormal)
    # state-major: the first block of sentences is the first state in every template
    first_state = prompts.normal_states[0].format("bottle")
    assert normal[: len(prompts.templates)] == [template.format(first_state) for template in prompts.templates]


def test_paper_prompt_lists() -> None:
    assert len(WINCLIP_PROMPTS.templates) == 22 and len(set(WINCLIP_PROMPTS.templates)) == 22
    assert sorted(CLIPAD_PROMPTS.templates) == sorted(WINCLIP_PROMPTS.templates)  # same 22, CLIP-AD's order
    assert CLIPAD_PROMPTS.templates[12:14] == ("a photo of the {}.", "a photo of a {}.")
    assert "{}" in WINCLIP_PROMPTS.normal_states and "{} with contamination" in CLIPAD_PROMPTS.abnormal_states
    assert ADACLIP_PROMPTS.templates[0] == "a bad photo of a {}."


# -------------------------------------------------------------------------------- detector prepare
def test_prepare_overrides_parts_and_refuses_bad_prompts() -> None:
    detector = create_detector("winclip", model="zsad-tiny", image_size=64)
    detector.prepare("bottle", normal_states=["good"], templates=["a photo of a {}."])
    assert detector.category == "bottle"
    assert detector.prompts.normal_states == ("good {}",)
    assert detector.prompts.abnormal_states == WINCLIP_PROMPTS.abnormal_states
    assert detector.text_features.shape == (32, 2)
    with pytest.raises(PromptError, match="longer than"):
        detector.prepare("bottle", abnormal_states=[" ".join(["broken"] * 80)])
    with pytest.raises(PromptError, match="empty"):
        detector.prepare("bottle", abnormal_states=[""])
    with pytest.raises(PromptError, match="template"):
        detector.prepare("bottle", templates=["no placeholder"])
    with pytest.raises(PromptError, match="empty"):
        detector.prepare(" ")
    assert detector.category == "bottle"  # a failed prepare leaves the previous category in place


def test_text_feature_cache_hits_and_misses() -> None:
    detector = create_detector("winclip", model="zsad-tiny", image_size=64)
    prompts = PromptSet(("good", "fine"), ("cracked",), ("a photo of a {}.", "a close-up photo of the {}."))
    detector.prepare("cache test object", prompts)
    first = detector.text_features
    hits, misses = TEXT_FEATURE_CACHE.hits, TEXT_FEATURE_CACHE.misses
    detector.prepare("cache test object", prompts)
    assert (TEXT_FEATURE_CACHE.hits, TEXT_FEATURE_CACHE.misses) == (hits + 1, misses)
    assert torch.equal(detector.text_features, first)
    detector.prepare("cache test object", prompts.with_overrides(abnormal_states=["scratched"]))
    assert (TEXT_FEATURE_CACHE.hits, TEXT_FEATURE_CACHE.misses) == (hits + 1, misses + 1)
    assert not torch.equal(detector.text_features, first)
    detector.prepare("another cache test object", prompts)  # another class name: another entry
    assert TEXT_FEATURE_CACHE.misses == misses + 2
    # another backbone geometry or method must not share entries
    other = create_detector("sdp", model="zsad-tiny", image_size=64, rvs="mean")
    other.prepare("cache test object", prompts)
    assert TEXT_FEATURE_CACHE.misses == misses + 3


def test_unknown_reducer() -> None:
    with pytest.raises(PromptError, match="unknown text reduction"):
        text_anchors(create_backbone("zsad-tiny"), "bottle", WINCLIP_PROMPTS, reducer="median")


# ------------------------------------------------------------------------ anchors vs a naive encoder
def _reduce(embeddings: torch.Tensor, reducer: str) -> torch.Tensor:
    if reducer == "mean":  # normalise each sentence, average, normalise
        return F.normalize(F.normalize(embeddings, dim=-1).mean(0), dim=-1)
    return F.normalize(embeddings.mean(0), dim=-1)  # "mean_raw": average raw embeddings, normalise


def test_anchors_equal_naive_per_sentence_open_clip_encoding() -> None:
    """Anchors from the truncated, batched text forward equal one full 77-token encode_text per sentence."""
    backbone = create_backbone("zsad-tiny")
    tokenizer = open_clip.get_tokenizer("zsad-tiny")
    normal, abnormal = ADACLIP_PROMPTS.sentences("metal nut")
    with torch.no_grad():
        naive = {
            name: torch.cat([backbone.model.encode_text(tokenizer([sentence])) for sentence in sentences])
            for name, sentences in (("normal", normal), ("abnormal", abnormal))
        }
    assert tokenizer([normal[0]]).shape == (1, 77)
    clear_text_caches()  # compute, do not fetch
    for reducer in ("mean", "mean_raw"):
        anchors = text_anchors(backbone, "metal nut", ADACLIP_PROMPTS, reducer=reducer, method_id="naive-check")
        assert anchors.shape == (32, 2) and anchors.dtype == torch.float32
        torch.testing.assert_close(anchors[:, 0], _reduce(naive["normal"], reducer), rtol=0, atol=1e-5)
        torch.testing.assert_close(anchors[:, 1], _reduce(naive["abnormal"], reducer), rtol=0, atol=1e-5)
        torch.testing.assert_close(anchors.norm(dim=0), torch.ones(2))


def test_winclip_anchors_equal_full_context_encoding() -> None:
    backbone = create_backbone("zsad-tiny")
    tokenizer = open_clip.get_tokenizer("zsad-tiny")
    normal, abnormal = WINCLIP_PROMPTS.sentences("bottle")
    with torch.no_grad():
        embeddings = backbone.model.encode_text(tokenizer(normal + abnormal))  # all 77 positions
    detector = create_detector("winclip", model="zsad-tiny", image_size=64).prepare("bottle")
    anchors = detector.text_features
    torch.testing.assert_close(anchors[:, 0], _reduce(embeddings[: len(normal)], "mean_raw"), rtol=0, atol=1e-5)
    torch.testing.assert_close(anchors[:, 1], _reduce(embeddings[len(normal) :], "mean_raw"), rtol=0, atol=1e-5)


def test_rvs_reducers_are_resolved_by_name_without_registering() -> None:
    from zsad_core.methods.clipad import representative_vector, rvs_reducer_name
    from zsad_core.prompts import REDUCERS, get_reducer

    before = dict(REDUCERS)
    for method in ("mean", "pca", "kde", "dbscan", "mean_shift"):
        for rounds in (False, True):
            name = rvs_reducer_name(method, 0.25, 7, rounds)
            reducer = get_reducer(name)
            expected = {"method": method, "round_fp16": rounds and method != "mean"}
            if method == "dbscan":
                expected.update(eps=0.25, min_samples=7)
            assert reducer.func is representative_vector and reducer.keywords == expected  # mean never rounds
    assert REDUCERS == before  # nothing registered per call
    for unknown in ("rvs-nope", "rvs-dbscan-epsx-min3", "nothing"):
        with pytest.raises(PromptError, match="unknown text reduction"):
            get_reducer(unknown)
