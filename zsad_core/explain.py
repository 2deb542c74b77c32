"""Which prompt words matter: how much each normal and abnormal state moves an image's text score.

Every method compares an image embedding ``e`` with two text anchors reduced from the sentence
embeddings of the normal and the abnormal states (each state times every template). Its *text
score* is ``softmax(s * [e . t_normal, e . t_abnormal])[abnormal]`` with the method's logit scale
``s``: the image score itself for WinCLIP and AdaCLIP, and the class-token part ``p_cls`` of SDP's
and SDP+'s score. For each state this module reports, from what the detection already computed
(:class:`~zsad_core.types.PromptEvidence`, kept by ``detect(..., with_evidence=True)``; no image or
text pass is repeated):

- ``similarity``: the cosine between ``e`` and the state's own direction (the normalised mean of
  its normalised template sentences), i.e. how well that phrase alone describes the image;
- ``score_without``: the text score with that state's sentences left out of its anchor (reduced
  with the method's own reduction, e.g. CLIP-AD's DBSCAN representative vector);
- ``effect = text_score - score_without``: how much that state raises the score. An abnormal state
  with a large positive effect is a word that makes the image look defective; a normal state with a
  large negative effect is a word that makes it look normal. A state alone in its class cannot be
  left out (its effect is None).

The image embedding is held fixed: where it depends on the text (AdaCLIP's HSF picks patches by
their text similarity; SDP's map part of the score) that dependence is not replayed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .prompts import reduce_anchors
from .types import AnomalyResult, PromptEvidence


@dataclass(frozen=True)
class StateContribution:
    """One prompt state's part in an image's text score (see the module docstring).

    Attributes:
        kind: "normal" or "abnormal".
        state: the state phrase, ``{}`` standing for the class name (e.g. "{} with crack").
        similarity: cosine between the image embedding and the state's own direction.
        score_without: the text score without this state, or None when it is the only one of its kind.
        effect: ``text_score - score_without`` (positive: the state raises the score), or None.
    """

    kind: str
    state: str
    similarity: float
    score_without: float | None
    effect: float | None


@dataclass(frozen=True)
class PromptExplanation:
    """Every state's contribution to one image's text score.

    Attributes:
        text_score: the score with all states (see ``score_name``).
        score_name: what the text score is for the method that made it.
        contributions: one per state, normal states first, in prompt order.
    """

    text_score: float
    score_name: str
    contributions: tuple[StateContribution, ...]

    def ranked(self) -> list[StateContribution]:
        """Contributions by decreasing size of effect (states without an effect last)."""
        return sorted(self.contributions, key=lambda c: -abs(c.effect) if c.effect is not None else float("inf"))

    def rows(self) -> list[dict[str, Any]]:
        """JSON- and table-friendly rows, ranked as :meth:`ranked`."""
        return [asdict(contribution) for contribution in self.ranked()]


def text_score(
    image_embedding: torch.Tensor, sentences: torch.Tensor, num_normal: int, reducer: str, logit_scale: float
) -> float:
    """``softmax(logit_scale * e . anchors)[abnormal]`` with anchors reduced from ``sentences``.

    Args:
        image_embedding: (D,) unit image embedding.
        sentences: (P, D) sentence embeddings, the first ``num_normal`` rows normal.
        reducer: text reduction name (:data:`zsad_core.prompts.REDUCERS`).
        logit_scale: factor on the cosines.
    """
    anchors = reduce_anchors(sentences, num_normal, reducer)
    logits = logit_scale * (image_embedding.float() @ anchors)
    return float(logits.softmax(dim=-1)[1])


def explain_prompts(source: AnomalyResult | PromptEvidence) -> PromptExplanation:
    """Each state's similarity to the image and leave-one-out effect on its text score.

    Args:
        source: a result of ``detect(..., with_evidence=True)``, or its evidence.
    Raises:
        ValueError: a result detected without evidence.
    """
    evidence = source.evidence if isinstance(source, AnomalyResult) else source
    if evidence is None:
        raise ValueError("this result has no prompt evidence: detect it with detect(..., with_evidence=True)")
    sentences = torch.from_numpy(np.ascontiguousarray(evidence.sentence_features, dtype=np.float32))
    embedding = torch.from_numpy(np.ascontiguousarray(evidence.image_embedding, dtype=np.float32))
    per_state = evidence.templates_per_state
    num_normal = len(evidence.normal_states) * per_state
    expected_rows = num_normal + len(evidence.abnormal_states) * per_state
    if sentences.shape[0] != expected_rows:
        raise ValueError(f"evidence holds {sentences.shape[0]} sentences, its prompts make {expected_rows}")
    full = text_score(embedding, sentences, num_normal, evidence.reducer, evidence.logit_scale)
    states = [("normal", state) for state in evidence.normal_states]
    states += [("abnormal", state) for state in evidence.abnormal_states]
    contributions = []
    for index, (kind, state) in enumerate(states):
        rows = slice(index * per_state, (index + 1) * per_state)
        direction = F.normalize(F.normalize(sentences[rows], dim=-1).mean(0), dim=-1)
        similarity = float(embedding @ direction)
        alone = len(evidence.normal_states if kind == "normal" else evidence.abnormal_states) == 1
        without: float | None = None
        if not alone:
            keep = torch.ones(len(sentences), dtype=torch.bool)
            keep[rows] = False
            kept_normal = num_normal - (per_state if kind == "normal" else 0)
            without = text_score(embedding, sentences[keep], kept_normal, evidence.reducer, evidence.logit_scale)
        contributions.append(
            StateContribution(
                kind=kind,
                state=state,
                similarity=similarity,
                score_without=without,
                effect=None if without is None else full - without,
            )
        )
    return PromptExplanation(text_score=full, score_name=evidence.score_name, contributions=tuple(contributions))
