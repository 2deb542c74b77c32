"""Prompt explanations: hand-computed cases, and leave-one-out equal to re-running without the state."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import make_image
from conftest import tiny_settings as tiny

from zsad_core import create_detector, list_methods
from zsad_core.explain import explain_prompts
from zsad_core.types import PromptEvidence

UNTRAINED_OK = pytest.mark.filterwarnings("ignore:.*no checkpoint loaded:UserWarning")
METHOD_IDS = [info.id for info in list_methods()]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def evidence(sentences, normal=("n1", "n2"), abnormal=("a1", "a2"), reducer="mean", scale=10.0, per_state=1):
    return PromptEvidence(
        image_embedding=np.array([1.0, 0.0, 0.0], dtype=np.float32),
        sentence_features=np.asarray(sentences, dtype=np.float32),
        normal_states=tuple(f"{name} {{}}" for name in normal),
        abnormal_states=tuple(f"{name} {{}}" for name in abnormal),
        templates_per_state=per_state,
        reducer=reducer,
        logit_scale=scale,
        score_name="image score",
    )


# -------------------------------------------------------------------------------- hand-computed
def test_hand_computed_scores_similarities_and_effects() -> None:
    # e = x. Normal states y and x: anchor (x + y)/sqrt2, cos sqrt(.5). Abnormal x and z: the same cos.
    explanation = explain_prompts(evidence([[0, 1, 0], [1, 0, 0], [1, 0, 0], [0, 0, 1]]))
    assert explanation.text_score == pytest.approx(0.5, abs=1e-6)  # equal cosines: softmax of equal logits
    by_state = {c.state: c for c in explanation.contributions}
    assert [c.state for c in explanation.contributions] == ["n1 {}", "n2 {}", "a1 {}", "a2 {}"]
    assert [c.kind for c in explanation.contributions] == ["normal", "normal", "abnormal", "abnormal"]
    assert [by_state[s].similarity for s in ("n1 {}", "n2 {}", "a1 {}", "a2 {}")] == pytest.approx([0, 1, 1, 0])
    root_half = math.sqrt(0.5)
    # without n1 (y) the normal anchor is x itself: cos 1, so the score drops to sigmoid(10 (sqrt.5 - 1))
    without_n1 = sigmoid(10 * (root_half - 1))
    assert by_state["n1 {}"].score_without == pytest.approx(without_n1, abs=1e-6)
    assert by_state["n1 {}"].effect == pytest.approx(0.5 - without_n1, abs=1e-6)
    # without n2 (x) the normal anchor is y: cos 0
    assert by_state["n2 {}"].score_without == pytest.approx(sigmoid(10 * root_half), abs=1e-6)
    # without a1 (x) the abnormal anchor is z: cos 0 -> the score falls; without a2 it rises
    assert by_state["a1 {}"].effect == pytest.approx(0.5 - sigmoid(-10 * root_half), abs=1e-6)
    assert by_state["a2 {}"].effect == pytest.approx(0.5 - sigmoid(10 * (1 - root_half)), abs=1e-6)
    assert by_state["a1 {}"].effect > 0 > by_state["a2 {}"].effect  # the abnormal word that fits the image


def test_ranked_by_size_of_effect_and_a_lone_state_has_no_effect() -> None:
    explanation = explain_prompts(evidence([[0, 1, 0], [1, 0, 0], [0.6, 0.8, 0]], abnormal=("a1",)))
    lone = [c for c in explanation.contributions if c.kind == "abnormal"]
    assert len(lone) == 1 and lone[0].score_without is None and lone[0].effect is None
    ranked = explanation.ranked()
    effects = [abs(c.effect) for c in ranked if c.effect is not None]
    assert effects == sorted(effects, reverse=True) and ranked[-1].effect is None
    rows = explanation.rows()
    assert rows[0].keys() == {"kind", "state", "similarity", "score_without", "effect"}
    assert rows[-1]["effect"] is None


def test_templates_group_rows_per_state_and_the_reducer_is_the_methods() -> None:
    # two templates per state: rows 0-1 are n1, 2-3 n2, 4-5 a1, 6-7 a2
    rows = [[0, 1, 0], [0, 1, 0], [1, 0, 0], [3, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 1]]
    mean = explain_prompts(evidence(rows, per_state=2, reducer="mean"))
    raw = explain_prompts(evidence(rows, per_state=2, reducer="mean_raw"))
    assert mean.text_score == pytest.approx(0.5, abs=1e-6)  # each row normalised first: as the 1-template case
    # raw mean of the normal rows: (4, 2, 0)/4 -> cos 2/sqrt5; abnormal (2, 0, 2)/4 -> cos sqrt.5
    assert raw.text_score == pytest.approx(sigmoid(10 * (math.sqrt(0.5) - 2 / math.sqrt(5))), abs=1e-6)
    # the state's own direction is the normalised mean of its normalised rows: n2 -> x
    assert raw.contributions[1].similarity == pytest.approx(1.0)


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="4 sentences, its prompts make 5"):
        explain_prompts(evidence([[1, 0, 0]] * 4, abnormal=("a1", "a2", "a3")))
    detector = create_detector("winclip", **tiny("winclip")).prepare("bottle")
    with pytest.raises(ValueError, match="with_evidence=True"):
        explain_prompts(detector.detect(make_image(40, 50)))


# ------------------------------------------------------------------------------ every method
def _text_score_of(method_id: str, result) -> float:
    """What each method's text score is in its result (a new method must say)."""
    return {
        "winclip": result.score,
        "sdp": result.extras.get("p_cls"),
        "sdp_plus": result.extras.get("p_cls"),
        "adaclip": result.score,
    }[method_id]


@pytest.mark.parametrize("method_id", METHOD_IDS)
@UNTRAINED_OK
def test_text_score_is_the_methods_own(method_id: str) -> None:
    detector = create_detector(method_id, **tiny(method_id)).prepare("metal nut")
    results = detector.detect([make_image(40, 50, seed=1), make_image(33, 61, seed=2)], with_evidence=True)
    for result in results:
        explanation = explain_prompts(result)
        expected = _text_score_of(method_id, result)
        # the same cosines up to fp32 reordering (~1e-6), times the logit scale, through the softmax
        scale = result.evidence.logit_scale
        assert explanation.text_score == pytest.approx(expected, abs=scale * 1e-6 * 0.25 + 1e-7)
        assert len(explanation.contributions) == len(detector.prompts.normal_states) + len(
            detector.prompts.abnormal_states
        )
    evidence_a, evidence_b = (result.evidence for result in results)
    assert not np.array_equal(evidence_a.image_embedding, evidence_b.image_embedding)
    assert np.linalg.norm(evidence_a.image_embedding) == pytest.approx(1.0, abs=1e-5)


@UNTRAINED_OK
def test_static_sentence_features_are_shared_and_dynamic_ones_are_per_image() -> None:
    image_a, image_b = make_image(40, 50, seed=1), make_image(33, 61, seed=2)
    winclip = create_detector("winclip", **tiny("winclip")).prepare("bottle")
    first, second = winclip.detect([image_a, image_b], with_evidence=True)
    assert first.evidence.sentence_features is second.evidence.sentence_features  # one array per category
    adaclip = create_detector("adaclip", **tiny("adaclip")).prepare("bottle")  # dynamic text prompts ("SD", "VL")
    first, second = adaclip.detect([image_a, image_b], with_evidence=True)
    assert not np.allclose(first.evidence.sentence_features, second.evidence.sentence_features)


LEAVE_ONE_OUT_CASES = [
    ("winclip", {}, "abnormal_states", "score"),
    ("winclip", {}, "normal_states", "score"),
    ("sdp", {"rvs": "mean"}, "abnormal_states", "p_cls"),
    ("sdp", {}, "normal_states", "p_cls"),  # DBSCAN representative vectors, re-run without the state
    ("adaclip", {"use_hsf": False}, "abnormal_states", "score"),  # no HSF: the embedding does not depend on text
]


@pytest.mark.parametrize(("method_id", "settings", "part", "value"), LEAVE_ONE_OUT_CASES)
@UNTRAINED_OK
def test_leave_one_out_equals_running_without_the_state(method_id, settings, part, value) -> None:
    image = make_image(45, 52, seed=5)
    detector = create_detector(method_id, **tiny(method_id, **settings)).prepare("screw")
    result = detector.detect(image, with_evidence=True)
    states = list(getattr(detector.prompts, part))
    for index in (0, len(states) - 1):
        kept = states[:index] + states[index + 1 :]
        rerun = detector.prepared("screw", **{part: kept}).detect(image)
        observed = rerun.score if value == "score" else rerun.extras[value]
        contribution = next(
            c for c in explain_prompts(result).contributions if c.state == states[index] and part.startswith(c.kind)
        )
        scale = result.evidence.logit_scale
        assert contribution.score_without == pytest.approx(observed, abs=scale * 1e-6 * 0.25 + 1e-7)
