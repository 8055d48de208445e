"""Decontamination: drop corpus sentences that overlap an evaluation set.

A model pretrained on a corpus that contains the evaluation sentences it is later
fine-tuned and scored on reports inflated numbers. Following GPT-3 (Brown et al. 2020,
appendix C) and the Pile, a corpus sentence is contaminated when it shares a word 13-gram
with any evaluation sentence; evaluation sentences shorter than 13 words (but not trivially
short) are matched whole instead. PharmaCoNER and MEDDOCAN come from the same SPACCC case
reports, so this is not hypothetical: most PharmaCoNER sentences occur verbatim in MEDDOCAN.

Both sides use the same words: lowercase Unicode ``\\w+`` tokens, so the tokens of a CoNLL
file and the raw text of a brat ``.txt`` compare equal whatever the spacing and punctuation.
The evaluation sets are small; their n-gram hashes (xxh64) live in a set in memory and the
:class:`Decontaminator` is pickled to every Ray worker.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_GLOB_CHARS = re.compile(r"[*?[]")
_CONLL_SUFFIXES = (".conll", ".conllu", ".tsv", ".bio", ".iob", ".iob2")
_TEXT_SUFFIXES = (".txt",)
_CONLL_LINE = re.compile(r"^\S+\t")

REASON = "decontaminated"


@dataclass
class DecontamConfig:
    """Evaluation sets whose sentences must not leak into the pretraining corpus."""

    paths: list[str] = field(default_factory=list)
    """Evaluation sets: CoNLL files (token<TAB>tag), brat folders or .txt files, plain text; folders and globs allowed."""
    ngram: int = 13
    """A corpus sentence sharing a word n-gram of this length with an evaluation set is dropped."""
    min_words: int = 8
    """Evaluation sentences shorter than ``ngram`` but at least this long are matched whole."""

    def __post_init__(self) -> None:
        if self.ngram < 1:
            raise ValueError(f"decontaminate.ngram must be >= 1, got {self.ngram}")
        if self.min_words < 1:
            raise ValueError(f"decontaminate.min_words must be >= 1, got {self.min_words}")


def tokens(text: str) -> list[str]:
    """Lowercase ``\\w+`` words: the unit both sides are compared in."""
    return _WORD.findall(text.lower())


def _hash(words: Iterable[str]) -> int:
    import xxhash

    return xxhash.xxh64_intdigest(" ".join(words).encode("utf-8"))


# --------------------------------------------------------------------------- reading eval sets
def expand_paths(paths: Iterable[str]) -> list[str]:
    """Files named by ``paths`` (files, folders walked recursively, globs); sorted, deduplicated."""
    files: set[str] = set()
    for pattern in paths:
        matches = sorted(glob.glob(pattern, recursive=True)) if _GLOB_CHARS.search(pattern) else [pattern]
        found = False
        for path in matches:
            if os.path.isdir(path):
                for root, _, names in os.walk(path):
                    for name in names:
                        if name.lower().endswith(_CONLL_SUFFIXES + _TEXT_SUFFIXES):
                            files.add(os.path.join(root, name))
                            found = True
            elif os.path.isfile(path):
                files.add(path)
                found = True
        if not found:
            raise FileNotFoundError(f"decontaminate: no evaluation file matches {pattern!r}")
    return sorted(files)


def _is_conll(path: str, text: str) -> bool:
    if path.lower().endswith(_CONLL_SUFFIXES):
        return True
    lines = [line for line in text.splitlines()[:200] if line.strip()]
    return bool(lines) and sum(bool(_CONLL_LINE.match(line)) for line in lines) >= 0.95 * len(lines)


def conll_sentences(text: str) -> Iterator[list[str]]:
    """Sentences of a CoNLL file as token lists (first column; blank lines separate sentences)."""
    sentence: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            if sentence:
                yield sentence
            sentence = []
            continue
        token = line.split("\t", 1)[0].strip() if "\t" in line else line.split()[0]
        if token.startswith("-DOCSTART-"):
            continue
        sentence.append(token)
    if sentence:
        yield sentence


def text_sentences(text: str) -> Iterator[str]:
    """Lines of a text file, split further after ``.``, ``!`` or ``?`` followed by space."""
    for line in text.splitlines():
        for piece in _SENTENCE_END.split(line):
            if piece.strip():
                yield piece


# --------------------------------------------------------------------------- the predicate
class Decontaminator:
    """Sentence predicate: ``"decontaminated"`` when a sentence overlaps an evaluation set."""

    def __init__(self, ngrams: Iterable[int], short: Iterable[int], *, ngram: int, min_words: int,
                 n_eval_sentences: int, files: Iterable[str] = ()):
        self.ngram = ngram
        self.min_words = min_words
        self._ngrams = frozenset(ngrams)
        self._short = frozenset(short)
        self._n_eval_sentences = n_eval_sentences
        self.files = tuple(files)

    @classmethod
    def from_config(cls, cfg: DecontamConfig) -> "Decontaminator":
        """Read every evaluation file once: CoNLL per sentence; brat/plain text as one token stream."""
        n, ngrams, short, n_sentences = cfg.ngram, set(), set(), 0
        files = expand_paths(cfg.paths)

        def add_short(words: list[str]) -> None:
            if cfg.min_words <= len(words) < n:
                short.add(_hash(words))

        for path in files:
            with open(path, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
            if _is_conll(path, text):
                for sentence in conll_sentences(text):
                    words = tokens(" ".join(sentence))
                    n_sentences += bool(words)
                    ngrams.update(_hash(words[i:i + n]) for i in range(len(words) - n + 1))
                    add_short(words)
            else:
                # n-grams may cross sentence boundaries here: harmless, and it needs no splitter.
                words = tokens(text)
                ngrams.update(_hash(words[i:i + n]) for i in range(len(words) - n + 1))
                for sentence in text_sentences(text):
                    words = tokens(sentence)
                    n_sentences += bool(words)
                    add_short(words)
        return cls(ngrams, short, ngram=n, min_words=cfg.min_words, n_eval_sentences=n_sentences,
                   files=files)

    @property
    def n_eval_sentences(self) -> int:
        """Evaluation sentences read (CoNLL sentences, text lines/sentences with a word)."""
        return self._n_eval_sentences

    @property
    def n_ngrams(self) -> int:
        """Distinct evaluation n-grams held."""
        return len(self._ngrams)

    def predicate(self, sentence: str) -> Optional[str]:
        words = tokens(sentence)
        n = self.ngram
        if len(words) >= n:
            if any(_hash(words[i:i + n]) in self._ngrams for i in range(len(words) - n + 1)):
                return REASON
        elif len(words) >= self.min_words and _hash(words) in self._short:
            return REASON
        return None

    __call__ = predicate

    def __repr__(self) -> str:
        return (f"Decontaminator({len(self.files)} files, {self.n_eval_sentences} sentences, "
                f"{self.n_ngrams} {self.ngram}-grams, {len(self._short)} short sentences)")
