"""The record every corpus step sees, and the one contract a cleaning step follows.

A reader yields :class:`Document` objects. A *predicate* looks at one document or one
sentence and returns ``None`` to keep it or a short reason string (``"too_short"``,
``"lang_pt"``, ``"near_duplicate"``) to drop it (datatrove's idea, kept tiny). Reasons are
data: they are counted per source and end up in the manifest and in MLflow.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

#: A sentence predicate: ``None`` keeps the sentence, a string drops it with that reason.
SentencePredicate = Callable[[str], Optional[str]]


@dataclass
class Document:
    """One input document on its way through the corpus stage."""

    id: str
    """Stable id, unchanged from input to output (``<source>:<file>:<line>`` when the input has none)."""
    source: str
    """Name of the source (corpus) the document came from."""
    text: str
    """Full text; readers give it decoded but otherwise raw."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Reader metadata (file, url, language tag, ...); JSON-serialisable."""
    reason: Optional[str] = None
    """Why the whole document was dropped (``None`` while it is kept)."""
    duplicate_of: Optional[str] = None
    """For duplicates: id of the kept copy."""
    bad_bytes: int = 0
    """Undecodable input bytes replaced by U+FFFD while decoding (counted, never silently ignored)."""
    sentences: list[str] = field(default_factory=list)
    """Kept sentences in original order (filled by the splitter, pruned by filters)."""
    sentence_drops: Counter = field(default_factory=Counter)
    """Per-reason count of sentences dropped from this document."""
    n_sentences_in: int = 0
    n_words_in: int = 0
    lang: Optional[str] = None
    lang_score: float = 0.0

    def reject(self, reason: str, duplicate_of: Optional[str] = None) -> "Document":
        """Drop the whole document with ``reason`` (its sentences are counted as gone with it)."""
        self.reason = reason
        self.duplicate_of = duplicate_of
        self.sentences = []
        return self

    def apply(self, predicate: SentencePredicate) -> None:
        """Run one sentence predicate over the kept sentences, counting each drop reason."""
        kept = []
        for sentence in self.sentences:
            why = predicate(sentence)
            if why is None:
                kept.append(sentence)
            else:
                self.sentence_drops[why] += 1
        self.sentences = kept


# --- Between the per-shard (local) phase and the global (dedup) phase, documents travel as
# Arrow rows with exactly these columns. ``key`` sorts documents by the keep rule
# (source priority, then source name, then id): whenever copies compete, the smallest key wins.
ROW_COLUMNS = (
    "key", "id", "source", "priority", "meta", "reason", "duplicate_of",
    "sentences", "sentence_drops", "n_sentences_in", "n_words_in", "bad_bytes",
    "lang", "lang_score",
)


def document_key(priority: int, source: str, doc_id: str) -> str:
    """Sort key of the keep rule: lower priority number first, then source, then id."""
    return f"{priority:05d}\x1f{source}\x1f{doc_id}"


def to_row(doc: Document, priority: int) -> dict[str, Any]:
    import json

    return {
        "key": document_key(priority, doc.source, doc.id),
        "id": doc.id,
        "source": doc.source,
        "priority": priority,
        "meta": json.dumps(doc.meta, ensure_ascii=False, sort_keys=True),
        "reason": doc.reason,
        "duplicate_of": doc.duplicate_of,
        "sentences": list(doc.sentences),
        "sentence_drops": json.dumps(dict(sorted(doc.sentence_drops.items()))),
        "n_sentences_in": doc.n_sentences_in,
        "n_words_in": doc.n_words_in,
        "bad_bytes": doc.bad_bytes,
        "lang": doc.lang,
        "lang_score": float(doc.lang_score),
    }


def from_row(row: dict[str, Any]) -> Document:
    import json

    return Document(
        id=row["id"], source=row["source"], text="\n".join(row["sentences"]),
        meta=json.loads(row["meta"]), reason=row["reason"], duplicate_of=row["duplicate_of"],
        bad_bytes=int(row["bad_bytes"]), sentences=list(row["sentences"]),
        sentence_drops=Counter(json.loads(row["sentence_drops"])),
        n_sentences_in=int(row["n_sentences_in"]), n_words_in=int(row["n_words_in"]),
        lang=row["lang"], lang_score=float(row["lang_score"]),
    )
