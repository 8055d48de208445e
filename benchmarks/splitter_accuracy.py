"""Sentence splitters on clinical Spanish: accuracy on the hand-made gold set, speed on MEDDOCAN.

    python benchmarks/splitter_accuracy.py

Compares :class:`galeno.corpus.sentences.ClinicalSentenceSplitter`, plain syntok and a
naive regex (``(?<=[.!?])\\s+``). Each gold paragraph (format: see
``tests/corpus/test_sentences.py``) is joined into the text a real document would have,
every splitter splits it, and each predicted sentence is located in the text (ignoring
whitespace) to get character offsets. A *boundary* is the offset where a sentence other
than the first starts; precision, recall and F1 are over boundaries pooled across
paragraphs, *exact* is the share of gold sentences whose span a splitter reproduces.
Throughput is sentences per CPU-second (``time.process_time``, so other load on the
machine counts less) on the MEDDOCAN train brat texts when ``../shared/data`` exists.
Prints a Markdown table. ``tests/corpus/test_sentences.py`` imports :func:`load_gold`
and :func:`evaluate` from here, so the test asserts the numbers this prints.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
GOLD = REPO / "tests" / "corpus" / "data" / "clinical_sentences_gold.txt"
SHARED_DATA = Path(os.environ.get("GALENO_SHARED_DATA", REPO.parent / "shared" / "data"))

Splitter = Callable[[str], list[str]]


def load_gold(path: Path = GOLD) -> list[tuple[str, list[str]]]:
    """(document text, gold sentences) per paragraph of the gold file.

    A paragraph whose first sentence has no terminal punctuation (a header such as
    ``DATOS DEL PACIENTE`` or ``Antecedentes personales:``) is line-structured and joined
    with newlines; any other paragraph is prose and joined with single spaces.
    """
    documents = []
    for paragraph in path.read_text(encoding="utf-8").split("\n\n"):
        sentences = [line.strip() for line in paragraph.splitlines() if line.strip()]
        if sentences:
            separator = " " if sentences[0][-1] in ".!?…\"»)" else "\n"
            documents.append((separator.join(sentences), sentences))
    return documents


def spans(text: str, sentences: list[str]) -> list[tuple[int, int]]:
    """Character span of each sentence in ``text``, matched in order ignoring whitespace."""
    offsets = [i for i, ch in enumerate(text) if not ch.isspace()]
    squeezed = "".join(text[i] for i in offsets)
    found, cursor = [], 0
    for sentence in sentences:
        needle = "".join(sentence.split())
        at = squeezed.find(needle, cursor) if needle else -1
        if at < 0:
            continue  # a splitter that rewrites text; its sentence counts as wrong
        found.append((offsets[at], offsets[at + len(needle) - 1] + 1))
        cursor = at + len(needle)
    return found


def evaluate(split: Splitter, documents: list[tuple[str, list[str]]]) -> dict[str, float]:
    """Sentences found, boundary precision/recall/F1 and exact-sentence accuracy."""
    n_gold = n_found = true_boundaries = predicted_boundaries = gold_boundaries = exact = 0
    for text, gold_sentences in documents:
        predicted = split(text)
        gold_spans = spans(text, gold_sentences)
        predicted_spans = spans(text, predicted)
        gold_starts = {start for start, _ in gold_spans[1:]}
        predicted_starts = {start for start, _ in predicted_spans[1:]}
        n_gold += len(gold_sentences)
        n_found += len(predicted)
        gold_boundaries += len(gold_starts)
        predicted_boundaries += len(predicted_starts)
        true_boundaries += len(gold_starts & predicted_starts)
        exact += len(set(gold_spans) & set(predicted_spans))
    precision = true_boundaries / predicted_boundaries if predicted_boundaries else 0.0
    recall = true_boundaries / gold_boundaries if gold_boundaries else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"gold": n_gold, "found": n_found, "precision": precision, "recall": recall,
            "f1": f1, "exact": exact / n_gold if n_gold else 0.0}


def throughput(split: Splitter, texts: list[str], repeats: int = 3) -> tuple[int, float, float]:
    """(sentences found, sentences per CPU-second, chars per CPU-second), best of ``repeats``."""
    best = float("inf")
    n_sentences = 0
    for _ in range(repeats):
        start = time.process_time()
        n_sentences = sum(len(split(text)) for text in texts)
        best = min(best, time.process_time() - start)
    best = max(best, 1e-9)
    return n_sentences, n_sentences / best, sum(map(len, texts)) / best


def syntok_split(text: str) -> list[str]:
    from syntok import segmenter

    return ["".join(map(str, sentence)).strip()
            for paragraph in segmenter.analyze(text) for sentence in paragraph]


_NAIVE = re.compile(r"(?<=[.!?])\s+")


def naive_split(text: str) -> list[str]:
    return [piece.strip() for piece in _NAIVE.split(text) if piece.strip()]


def main() -> None:
    from galeno.corpus.sentences import ClinicalSentenceSplitter

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gold", type=Path, default=GOLD)
    parser.add_argument("--meddocan", type=Path, default=SHARED_DATA / "meddocan" / "train" / "brat")
    args = parser.parse_args()

    splitters: dict[str, Splitter] = {
        "galeno ClinicalSentenceSplitter": ClinicalSentenceSplitter().split,
        "syntok 1.4 (plain)": syntok_split,
        "naive regex `(?<=[.!?])\\s+`": naive_split,
    }
    documents = load_gold(args.gold)
    texts = [p.read_text(encoding="utf-8-sig") for p in sorted(args.meddocan.glob("*.txt"))] \
        if args.meddocan.is_dir() else []

    print(f"Gold: {sum(len(s) for _, s in documents)} sentences in {len(documents)} paragraphs "
          f"({args.gold.relative_to(REPO) if args.gold.is_relative_to(REPO) else args.gold}).")
    if texts:
        print(f"Speed: {len(texts)} MEDDOCAN train documents, {sum(map(len, texts)):,} chars, "
              "one core, CPU time.")
    print()
    print("| splitter | sentences found / gold | boundary P | boundary R | boundary F1 "
          "| exact sentences | MEDDOCAN sentences | sentences/s | kchars/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, split in splitters.items():
        m = evaluate(split, documents)
        speed = "| – | – | – "
        if texts:
            n, per_s, chars_s = throughput(split, texts)
            speed = f"| {n:,} | {per_s:,.0f} | {chars_s / 1e3:,.0f} "
        print(f"| {name} | {m['found']} / {m['gold']} | {m['precision']:.3f} | {m['recall']:.3f} "
              f"| {m['f1']:.3f} | {m['exact']:.3f} {speed}|")


if __name__ == "__main__":
    main()
