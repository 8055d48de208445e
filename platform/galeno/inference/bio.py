"""BIO tags to entity spans, in both of seqeval's readings (see :mod:`galeno.ner.metrics`).

* ``default`` follows conlleval: an ``I-X`` after ``O`` or after another type starts an entity.
* ``strict`` is seqeval's IOB2 mode: an entity starts only at ``B-X``.
"""

from __future__ import annotations

from collections.abc import Sequence

MODES = ("default", "strict")


def split_tag(tag: str) -> tuple[str, str]:
    """``("B", "DRUG")`` of ``B-DRUG``, ``("O", "")`` of ``O``; anything else is an error."""
    if tag == "O":
        return "O", ""
    if tag[:2] in ("B-", "I-") and len(tag) > 2:
        return tag[0], tag[2:]
    raise ValueError(f"not a BIO tag: {tag!r} (expected O, B-TYPE or I-TYPE)")


def bio_spans(tags: Sequence[str], mode: str = "default") -> list[tuple[str, int, int]]:
    """Entities of one tag sequence as ``(type, first token, end token exclusive)``, in order."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    spans: list[tuple[str, int, int]] = []
    start, label = -1, ""
    for i, tag in enumerate([*tags, "O"]):
        prefix, kind = split_tag(tag)
        if start >= 0 and not (prefix == "I" and kind == label):
            spans.append((label, start, i))
            start = -1
        if prefix == "B" or (prefix == "I" and start < 0 and mode == "default"):
            start, label = i, kind
    return spans


def as_bio(label: str) -> str:
    """A model's label as a BIO tag; a bare type (``DRUG``) counts as inside that type."""
    return label if label == "O" or label[:2] in ("B-", "I-") else f"I-{label}"
