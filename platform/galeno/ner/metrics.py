"""Entity-level NER metrics: micro precision/recall/F1 overall and per entity type.

Two ways to read entities out of BIO tags, matching the two modes of seqeval
(https://github.com/chakki-works/seqeval), which is not a dependency:

* ``default`` follows conlleval (CoNLL-2000's scorer, and seqeval's default mode): an
  ``I-X`` after ``O`` or after a tag of another type starts a new entity, so ill-formed
  predictions still yield entities.
* ``strict`` is seqeval's ``mode="strict", scheme=IOB2``: an entity starts only at ``B-X``
  and runs over the ``I-X`` that follow; an ``I-`` without a matching ``B-`` belongs to no
  entity.

``I-X I-X O B-Y`` gives ``X[0,2) Y[3,4)`` by default but only ``Y[3,4)`` when strict;
``B-X I-Y`` gives ``X[0,1) Y[1,2)`` by default but only ``X[0,1)`` when strict.

:func:`span_scores` compares character spans instead (``doc_id, start, end, label``), the
way MEDDOCAN and PharmaCoNER are officially scored on brat files. Every score is a plain
dict: ``precision``, ``recall``, ``f1``, ``support`` (gold entities), ``predicted``,
``correct``, and ``per_type`` with the same keys for each entity type.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from galeno.inference.bio import MODES, bio_spans

if TYPE_CHECKING:
    from galeno.ner.data import Entity

__all__ = ["MODES", "bio_spans", "entity_scores", "prf", "span_scores"]

def prf(correct: int, predicted: int, support: int) -> dict[str, Any]:
    precision = correct / predicted if predicted else 0.0
    recall = correct / support if support else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1,
            "support": support, "predicted": predicted, "correct": correct}


def f_beta(precision: float, recall: float, beta: float) -> float:
    """F-beta: recall weighs beta times as much as precision (F1 at beta 1)."""
    b2 = beta * beta
    return (1 + b2) * precision * recall / (b2 * precision + recall) if precision + recall else 0.0


def _score(gold: Iterable[tuple[str, Hashable]], pred: Iterable[tuple[str, Hashable]]) -> dict[str, Any]:
    """Micro and per-type scores of ``(type, key)`` items; equal keys of the same type match."""
    gold_counts, pred_counts = Counter(gold), Counter(pred)
    hits = gold_counts & pred_counts
    types = sorted({t for t, _ in gold_counts} | {t for t, _ in pred_counts})

    def total(counts: Counter, kind: str | None = None) -> int:
        return sum(n for (t, _), n in counts.items() if kind is None or t == kind)

    scores = prf(total(hits), total(pred_counts), total(gold_counts))
    scores["per_type"] = {t: prf(total(hits, t), total(pred_counts, t), total(gold_counts, t))
                          for t in types}
    return scores


def _tagged_entities(sequences: Sequence[Sequence[str]], mode: str) -> list[tuple[str, Hashable]]:
    return [(label, (n, start, end)) for n, tags in enumerate(sequences)
            for label, start, end in bio_spans(tags, mode)]


def entity_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]],
                  mode: str = "default") -> dict[str, Any]:
    """Entity-level scores of predicted BIO tag sequences against gold ones (one per sentence)."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    for n, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {n}: {len(g)} gold tags but {len(p)} predicted")
    return _score(_tagged_entities(gold, mode), _tagged_entities(pred, mode))


def span_scores(gold: Iterable[Entity], pred: Iterable[Entity]) -> dict[str, Any]:
    """Exact character-span scores: an entity is right when doc, start, end and label all match."""
    return _score(((e.label, (e.doc_id, e.start, e.end)) for e in gold),
                  ((e.label, (e.doc_id, e.start, e.end)) for e in pred))
