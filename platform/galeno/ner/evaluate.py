"""Scoring a token-classification model on annotated data (``jobs/evaluate_ner.py``).

Entity-level micro precision/recall/F1 in both seqeval modes — ``default`` (conlleval, what the
published bsc-bio-ehr-es table used) and ``strict`` (IOB2) — overall and per type; for brat and
i2b2 XML data also exact character-span P/R/F1, the shared tasks' official metric. Predictions
can be written back as brat ``.ann`` files or as a token/gold/predicted table.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from galeno.inference.loading import load_ner, local_source
from galeno.inference.token_classification import predict_tags
from galeno.ner.data import NERDocument, sentences_to_entities, write_brat
from galeno.ner.metrics import entity_scores, f_beta, span_scores

log = logging.getLogger(__name__)


def score(docs: Sequence[NERDocument], predicted: Sequence[Sequence[str]], fmt: str) -> dict[str, Any]:
    """Entity scores of ``predicted`` tags (one sequence per sentence of ``docs``, in order)."""
    sentences = [s for d in docs for s in d.sentences]
    gold = [s.tags for s in sentences]
    result: dict[str, Any] = {mode: entity_scores(gold, predicted, mode) for mode in ("default", "strict")}
    if fmt in ("brat", "i2b2xml"):
        result["span"] = span_scores([e for d in docs for e in (d.annotated or d.entities)],
                                     sentences_to_entities(sentences, predicted))
    return result


def evaluate(model_dir: str, docs: Sequence[NERDocument], fmt: str, *, max_length: int = 512, stride: int = 32,
             batch_size: int = 32, device: str = "", quantize: str = "", dtype: str = "",
             runtime: str = "torch") -> tuple[dict[str, Any], list[list[str]]]:
    """Predict every sentence of ``docs`` with the model in ``model_dir`` and score it; ``quantize="int8"``,
    ``dtype="bfloat16"`` or ``runtime="onnxruntime"`` score the model as a Serve replica with that
    setting runs it: through the inference layer that Serve replicas and the registered model run."""
    loaded = load_ner(local_source(model_dir), max_length, want_gpu=True, quantize=quantize, dtype=dtype,
                      runtime=runtime, device=device)  # max_length capped by the model's positions
    sentences = [s for d in docs for s in d.sentences]
    predicted = predict_tags(loaded, sentences, "first", stride=stride, chunk=batch_size)[0]
    return score(docs, predicted, fmt), predicted


def write_predictions_brat(docs: Sequence[NERDocument], predicted: Sequence[Sequence[str]], out_dir: str | Path) -> int:
    """One ``.txt`` + ``.ann`` pair per document with the predicted entities; returns the number of files."""
    sentences = [s for d in docs for s in d.sentences]
    by_doc: dict[str, list] = defaultdict(list)
    for entity in sentences_to_entities(sentences, predicted):
        by_doc[entity.doc_id].append(entity)
    for doc in docs:
        write_brat(doc, by_doc.get(doc.id, []), out_dir)
    return len(docs)


def write_predictions_table(docs: Sequence[NERDocument], predicted: Sequence[Sequence[str]], path: str | Path) -> Path:
    """token TAB gold TAB predicted, a blank line between sentences (CoNLL-style, for reading and diffing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sentences = [s for d in docs for s in d.sentences]
    with open(path, "w", encoding="utf-8") as fh:
        for sentence, tags in zip(sentences, predicted):
            for token, gold, pred in zip(sentence.tokens, sentence.tags, tags):
                fh.write(f"{token.text}\t{gold}\t{pred}\n")
            fh.write("\n")
    return path


def summary(result: dict[str, Any]) -> dict[str, float]:
    """The headline numbers as flat metrics (``dev_f1`` is seqeval default mode)."""
    default = result["default"]
    out = {"dev_f1": default["f1"], "dev_precision": default["precision"], "dev_recall": default["recall"],
           "dev_f2": f_beta(default["precision"], default["recall"], 2.0), "dev_f1_strict": result["strict"]["f1"]}
    if "span" in result:
        out["dev_span_f1"] = result["span"]["f1"]
    return out


def dump(result: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
