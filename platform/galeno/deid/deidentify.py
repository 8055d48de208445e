"""De-identification: the MEDDOCAN-trained NER model and the rules, their spans merged, each replaced by ``[LABEL]``.

:class:`Deidentifier` is what the corpus job's first step, ``jobs/deidentify.py``, Serve's
``POST /deidentify`` and the leak-rate benchmark run. A missed identifier is a leak and an extra mask
costs a little text, so model and rule spans are **united**: overlapping spans become one span
covering both (the label of the longer one), never a choice of one over the other.

Offsets are Python string indices into the text given. Nothing here logs a text or a span's
text: only counts by label leave this module in logs, manifests and MLflow.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

from galeno.deid.rules import Span, find_all

log = logging.getLogger(__name__)

#: MEDDOCAN's sex label: the patient's sex is clinical content, not an identifier (the leak rate of
#: docs/deid.md excludes it too), so it is kept by default.
SEX = "SEXO_SUJETO_ASISTENCIA"


@dataclass
class DeidConfig:
    """De-identification of clinical text before anything else sees it (docs/deid.md)."""

    model: str = ""
    """The de-identification NER model (``--deidentify``): models:/galeno-ner-meddocan-deid@champion, a
    fine-tuning output folder or a Hugging Face folder; ``rules`` for the rules alone. Empty: no
    de-identification."""
    rules: bool = True
    """Also apply the high-recall rules for structured identifiers (dates, phones, e-mails, IDs, ...)."""
    keep_labels: list[str] = field(default_factory=lambda: [SEX])
    """Labels found but not replaced (the patient's sex is clinical content, not an identifier)."""
    min_score: float = 0.0
    """Model entities scoring below this are ignored (0: every entity the model tags)."""
    max_length: int = 512
    """Sub-tokens per model window (capped by the model's positions); longer sentences slide."""
    stride: int = 32
    """Words shared by consecutive windows of a long sentence."""
    batch_size: int = 8
    """Documents per model call."""
    forward_batch_size: int = 32
    """Windows per forward pass."""

    def __post_init__(self) -> None:
        if not 0 <= self.min_score < 1:
            raise ValueError("deid.min_score must be in [0, 1)")
        if self.max_length < 8 or self.stride < 0 or self.batch_size < 1 or self.forward_batch_size < 1:
            raise ValueError("deid: max_length >= 8, stride >= 0, batch_size and forward_batch_size >= 1")

    @property
    def enabled(self) -> bool:
        return bool(self.model)

    @property
    def uses_model(self) -> bool:
        return bool(self.model) and self.model != "rules"

    def describe(self) -> str:
        """What runs, for logs and reports: ``models:/…@champion and the rules``, or ``rules``."""
        return f"{self.model} and the rules" if self.rules and self.uses_model else self.model


def unite(spans: Iterable[Span]) -> list[Span]:
    """Overlapping (or touching-inside) spans merged into one covering span, in text order; the
    merged span takes the label of its longest part (the first of equal ones)."""
    merged: list[list[Any]] = []  # [start, end, best span]
    for s in sorted(spans, key=lambda s: (s.start, -s.end)):
        if merged and s.start < merged[-1][1]:
            group = merged[-1]
            group[1] = max(group[1], s.end)
            if s.end - s.start > group[2].end - group[2].start:
                group[2] = s
        else:
            merged.append([s.start, s.end, s])
    return [Span(best.label, start, end, "", best.rule) for start, end, best in merged]


def mask(text: str, spans: Sequence[Span]) -> str:
    """``text`` with each span (non-overlapping, in text order) replaced by ``[LABEL]``."""
    out, at = [], 0
    for s in spans:
        out += [text[at:s.start], f"[{s.label}]"]
        at = s.end
    out.append(text[at:])
    return "".join(out)


@dataclass
class Result:
    """One text de-identified: the masked text, the replaced spans (offsets into the input; their
    ``text`` empty unless asked for) and the spans found but kept (``keep_labels``)."""

    text: str
    spans: list[Span]
    kept: list[Span]

    def counts(self) -> dict[str, int]:
        return dict(Counter(s.label for s in self.spans))


class Deidentifier:
    """The model loaded once (a Ray actor, a Serve replica, a job), then texts de-identified in batches."""

    def __init__(self, cfg: DeidConfig, model_dir: Optional[str] = None, *, loaded=None, want_gpu: bool = False):
        self.cfg = cfg
        self.loaded = loaded
        if self.loaded is None and cfg.uses_model:
            if not model_dir:
                raise ValueError("deid.model names a model: give its resolved folder")
            from galeno.inference.loading import load_ner, local_source

            self.loaded = load_ner(local_source(model_dir), cfg.max_length, want_gpu=want_gpu)

    def model_spans(self, texts: Sequence[str]) -> list[list[Span]]:
        """The model's entities of each text, as spans (rule name ``model``)."""
        if self.loaded is None:
            return [[] for _ in texts]
        from galeno.inference.token_classification import predict_entities

        out: list[list[Span]] = []
        for i in range(0, len(texts), self.cfg.batch_size):
            part = list(texts[i:i + self.cfg.batch_size])
            found = predict_entities(self.loaded, [(part, "first")], stride=self.cfg.stride,
                                     chunk=self.cfg.forward_batch_size)[0]
            out += [[Span(e["label"], e["start"], e["end"], "", "model") for e in ents
                     if e["score"] >= self.cfg.min_score] for ents in found]
        return out

    def found(self, texts: Sequence[str]) -> list[list[Span]]:
        """Every span the model and the rules find in each text, as found (overlaps not yet united)."""
        model = self.model_spans(texts)
        return [[*m, *(find_all(t) if self.cfg.rules else [])] for t, m in zip(texts, model)]

    def __call__(self, texts: Sequence[str], *, with_text: bool = False) -> list[Result]:
        """Each text de-identified. ``with_text``: the spans carry the text they replaced (for a caller
        that sent the text, e.g. Serve's answer; never for anything that is stored or logged).

        The spans to replace are united first. A kept label's span (the patient's sex) never shields an
        identifier: where it overlaps a replaced span, the identifier is masked whole and the kept span
        is left out of ``kept``."""
        keep = set(self.cfg.keep_labels)
        out = []
        for text, found in zip(texts, self.found(texts)):
            replaced = unite(s for s in found if s.label not in keep)
            kept = [s for s in unite(s for s in found if s.label in keep)
                    if all(s.end <= r.start or s.start >= r.end for r in replaced)]
            if with_text:
                replaced, kept = ([Span(s.label, s.start, s.end, text[s.start:s.end], s.rule) for s in group]
                                  for group in (replaced, kept))
            out.append(Result(mask(text, replaced), replaced, kept))
        return out
