"""Sentences and word tokens with exact character offsets: how every model input is cut into words.

Training data (``galeno.ner.data``) and prediction on raw text share these rules, so a model sees
at prediction time the words it was trained on. Sentences come from the corpus stage's
:class:`~galeno.corpus.sentences.ClinicalSentenceSplitter`; tokens are runs of letters and digits,
or any other single character that is not a space (:data:`TOKEN_PATTERN`).
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Optional

from galeno.corpus.sentences import ClinicalSentenceSplitter

#: Word tokens: a run of letters and digits, or one other character that is not a space.
#: U+FEFF (MEDDOCAN keeps byte-order marks as text) and U+200B are not tokens either.
TOKEN_PATTERN = re.compile(r"[^\W_]+|[^\s\ufeff\u200b]")


class Token(NamedTuple):
    """One word token: ``text == document.text[start:end]`` (a tuple: documents hold many)."""

    text: str
    start: int
    end: int


@dataclass
class Sentence:
    """A sentence of a document: its tokens, their BIO tags, and where it lies in the text."""

    doc_id: str
    tokens: list[Token]
    tags: list[str]
    start: int
    """Offset of the sentence (its first token) in the document text."""
    text: str
    """The document text from the first token's start to the last token's end."""

    @property
    def end(self) -> int:
        return self.start + len(self.text)

    @property
    def words(self) -> list[str]:
        return [t.text for t in self.tokens]


def tokenize(text: str, start: int, end: int, cuts: Sequence[int] = (),
             stats: Optional[Counter] = None) -> list[Token]:
    """Tokens of ``text[start:end]``, split at every offset in ``cuts`` (sorted) inside one
    (counted as ``split_tokens`` in ``stats``)."""
    matches = TOKEN_PATTERN.finditer(text, start, end)
    inside = cuts[bisect.bisect_right(cuts, start):bisect.bisect_left(cuts, end)]
    if not inside:
        return [Token(m.group(), m.start(), m.end()) for m in matches]
    tokens = []
    for match in matches:
        left = match.start()
        i = bisect.bisect_right(inside, left)
        while i < len(inside) and inside[i] < match.end():
            tokens.append(Token(text[left:inside[i]], left, inside[i]))
            if stats is not None:
                stats["split_tokens"] += 1
            left = inside[i]
            i += 1
        tokens.append(Token(text[left:match.end()], left, match.end()))
    return tokens


def sentences_in(doc_id: str, text: str, spans: Sequence[tuple[int, int]], cuts: Sequence[int] = (),
                 stats: Optional[Counter] = None) -> list[Sentence]:
    """Untagged (all-``O``) sentences of ``text``, one per ``(start, end)`` span that holds a token."""
    sentences = []
    for start, end in spans:
        tokens = tokenize(text, start, end, cuts, stats)
        if tokens:
            sentences.append(Sentence(doc_id, tokens, ["O"] * len(tokens), tokens[0].start,
                                      text[tokens[0].start:tokens[-1].end]))
    return sentences


def split_text(doc_id: str, text: str, splitter: Optional[ClinicalSentenceSplitter] = None) -> list[Sentence]:
    """The sentences and words of raw ``text``, as a document without entities is cut for training."""
    starts = (splitter or ClinicalSentenceSplitter()).boundaries(text)
    return sentences_in(doc_id, text, list(zip(starts, starts[1:] + [len(text)])))
