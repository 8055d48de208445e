"""How well de-identification protects: leak rate and precision against gold PHI spans (MEDDOCAN brat).

A gold PHI string is **protected** when every one of its non-space characters lies inside a replaced
span, whatever label the span got (a name masked as ``[CALLE]`` is still masked); otherwise it
**leaks** (``untouched`` counts the leaks of which no character was masked). The leak rate is
leaks / gold strings, per type and overall with the patient's sex excluded (not an identifier).
Precision: replaced spans that overlap some gold PHI span / all replaced spans.

``python benchmarks/deid_eval.py`` runs it for the rules alone, the model alone and both.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from galeno.deid.deidentify import SEX


@dataclass(frozen=True)
class Gold:
    label: str
    start: int
    end: int


def read_brat_gold(folder: str | Path) -> list[tuple[str, str, list[Gold]]]:
    """``(document id, text, gold spans)`` for each ``NAME.txt`` + ``NAME.ann`` of ``folder``, sorted by name.
    Offsets are into the text read with ``newline=""`` (brat counts ``\\r`` too)."""
    out = []
    for txt in sorted(Path(folder).glob("*.txt")):
        with open(txt, encoding="utf-8", newline="") as fh:
            text = fh.read()
        spans = []
        ann = txt.with_suffix(".ann")
        for line in ann.read_text(encoding="utf-8").splitlines() if ann.exists() else []:
            if not line.startswith("T"):
                continue
            _, info, _ = line.split("\t", 2)
            label, where = info.split(" ", 1)
            for piece in where.split(";"):  # discontinuous spans: each piece must be masked
                start, end = piece.split()
                spans.append(Gold(label, int(start), int(end)))
        out.append((txt.stem, text, spans))
    return out


def _covered(text: str, gold: Gold, masked: Sequence[tuple[int, int]]) -> tuple[bool, bool]:
    """(every non-space character of ``gold`` masked, any masked)."""
    need = [i for i in range(gold.start, gold.end) if not text[i].isspace()]
    hit = [any(s <= i < e for s, e in masked) for i in need]
    return all(hit), any(hit)


def score(documents: Iterable[tuple[str, list[Gold], Sequence[tuple[str, int, int]]]]) -> dict:
    """Leak rate per type and overall (sex excluded) and precision, from ``(text, gold, replaced)`` per
    document; ``replaced`` holds ``(label, start, end)``."""
    gold_n, leaked, untouched = Counter(), Counter(), Counter()
    predicted = correct = 0
    for text, gold, replaced in documents:
        masked = [(s, e) for _, s, e in replaced]
        for g in gold:
            whole, some = _covered(text, g, masked)
            gold_n[g.label] += 1
            if not whole:
                leaked[g.label] += 1
                untouched[g.label] += not some
        for _, s, e in replaced:
            predicted += 1
            correct += any(s < g.end and g.start < e for g in gold)
    identifiers = [t for t in gold_n if t != SEX]
    n = sum(gold_n[t] for t in identifiers)
    leaks = sum(leaked[t] for t in identifiers)
    return {
        "gold": n, "leaked": leaks, "untouched": sum(untouched[t] for t in identifiers),
        "leak_rate": leaks / n if n else 0.0, "recall": 1 - leaks / n if n else 1.0,
        "replaced": predicted, "precision": correct / predicted if predicted else 1.0,
        "per_type": {t: {"gold": gold_n[t], "leaked": leaked[t], "untouched": untouched[t],
                         "leak_rate": leaked[t] / gold_n[t]} for t in sorted(gold_n)},
    }
