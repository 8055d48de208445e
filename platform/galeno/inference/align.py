"""Word tags to subword labels and back, for Hugging Face fast tokenizers.

Sentences come in as words (:class:`galeno.ner.data.Sentence` tokens) and are encoded with
``tokenizer(words, is_split_into_words=True)``; ``word_ids()`` says which word each sub-token
came from. Following the Hugging Face token-classification recipe, a word's label goes on
its **first** sub-token and every other sub-token, like the special tokens, gets -100 (ignored
by the loss); a prediction for a word is read from its first sub-token too.

Both vocabularies the project meets work this way: WordPiece (BERT) and byte-level BPE
(RoBERTa). A byte-level tokenizer must be loaded with ``add_prefix_space=True``: each word is
then encoded as it is inside running text (``Ġcon``), as in pretraining. Without it
transformers 5 silently encodes every word as if it opened the text, so
:func:`encode_sentences` checks that words and running text tokenize alike and refuses the
tokenizer otherwise.

Nothing is silently truncated. A sentence longer than ``max_length`` sub-tokens is covered by
a sliding window over **words**: each window holds as many whole words as fit, and the next
one starts ``stride`` words before the previous one ended (so the model sees context on both
sides of most words). Only a single word longer than a whole window loses sub-tokens, and
its first sub-token, which carries the label, is always kept (``truncated`` in the window).
:func:`stitch` puts window predictions back together: a word seen by several windows takes
the prediction of the window where it lies farthest from an edge that cuts the sentence
(a window edge at the sentence's own start or end cuts no context); ties go to the earlier
window.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from galeno.inference.text import Sentence

#: Label of the sub-tokens the loss ignores (PyTorch's cross-entropy ``ignore_index``).
IGNORE = -100


def label_map(tags: Iterable[str | Sequence[str]]) -> list[str]:
    """Labels for ``tags`` (tags, or tag sequences): ``O``, then ``B-T``, ``I-T`` per type ``T``, sorted.

    Every type gets both its ``B-`` and ``I-`` label, whichever of them ``tags`` holds;
    ``{label: i for i, label in enumerate(label_map(...))}`` is the ``label2id`` to train with.
    """
    types = set()
    for item in tags:
        for tag in [item] if isinstance(item, str) else item:
            if tag != "O":
                if tag[:2] not in ("B-", "I-") or len(tag) < 3:
                    raise ValueError(f"not a BIO tag: {tag!r}")
                types.add(tag[2:])
    return ["O"] + [f"{prefix}-{t}" for t in sorted(types) for prefix in "BI"]


def _check_tokenizer(tokenizer: Any) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("subword alignment needs a fast (Rust-backed) tokenizer for word_ids()")
    words = ["de", "la", "vena"]
    refused = ("this tokenizer encodes pre-split words differently from running text; "
               "load a byte-level BPE (RoBERTa) tokenizer with add_prefix_space=True")
    try:
        as_words = tokenizer(words, is_split_into_words=True, add_special_tokens=False)["input_ids"]
    except (AssertionError, ValueError) as err:  # transformers 4 refuses pre-split words without the prefix space
        raise ValueError(refused) from err
    as_text = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
    if as_words != as_text:
        raise ValueError(refused)


def _word_windows(counts: list[int], budget: int, stride: int) -> list[tuple[int, int]]:
    """``(start, end)`` word ranges, each within ``budget`` sub-tokens, overlapping by <= ``stride`` words."""
    n = len(counts)
    windows: list[tuple[int, int]] = []
    start = 0
    while True:
        end, total = start, 0
        while end < n and total + counts[end] <= budget:
            total += counts[end]
            end += 1
        end = max(end, min(start + 1, n))  # one word longer than the budget gets a window alone
        windows.append((start, end))
        if end >= n:
            return windows
        # Overlap by stride words, but always leave room for the next new word.
        nxt = max(end - stride, start + 1)
        while nxt < end and sum(counts[nxt:end + 1]) > budget:
            nxt += 1
        start = nxt


def _window(encoding: Any, k: int, n: int, sentence: Sentence, start: int, end: int,
            truncated: bool, label2id: dict[str, int]) -> dict[str, Any]:
    """Window ``k`` of a batch ``encoding``: words ``start:end`` of sentence ``n``."""
    word_ids = [None if w is None else start + w for w in encoding.word_ids(k)]
    labels = [IGNORE if w is None or (i and word_ids[i - 1] == w) else label2id[sentence.tags[w]]
              for i, w in enumerate(word_ids)]
    return {"input_ids": encoding["input_ids"][k], "attention_mask": encoding["attention_mask"][k],
            "labels": labels, "word_ids": word_ids, "sentence": n, "word_start": start,
            "n_words": end - start, "truncated": truncated}


def encode_sentences(tokenizer: Any, sentences: Sequence[Sentence], label2id: dict[str, int],
                     max_length: int = 512, stride: int = 32) -> list[dict[str, Any]]:
    """Model inputs for ``sentences``: one window per sentence, more for long ones, in order.

    Each window is a dict with ``input_ids``, ``attention_mask``, ``labels`` (the word's label
    id on its first sub-token, -100 elsewhere), ``word_ids`` (the sentence's word index of
    each sub-token, None for special tokens), ``sentence`` (index into ``sentences``),
    ``word_start`` and ``n_words`` (the window's words in the sentence) and ``truncated``.
    """
    _check_tokenizer(tokenizer)
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    if budget < 1 or stride < 0:
        raise ValueError(f"max_length {max_length} leaves no room for words, or stride {stride} < 0")
    for s in sentences:
        unknown = set(s.tags) - label2id.keys()
        if len(s.tags) != len(s.tokens) or unknown:
            raise ValueError(f"{s.doc_id}@{s.start}: {len(s.tokens)} tokens, {len(s.tags)} tags, "
                             f"tags not in label2id: {sorted(unknown)}")
    if not sentences:
        return []
    words = [s.words for s in sentences]
    # Whole sentences are encoded once: most fit and are their own window; only the words
    # of longer ones are encoded again, window by window.
    full = tokenizer(words, is_split_into_words=True, verbose=False)
    windows: list[dict[str, Any]] = []
    long: list[tuple[int, int, int, bool, int]] = []  # sentence, words start:end, truncated, slot
    for n, sentence in enumerate(sentences):
        if len(full["input_ids"][n]) <= max_length:
            windows.append(_window(full, n, n, sentence, 0, len(words[n]), False, label2id))
            continue
        counts = [0] * len(words[n])
        for w in full.word_ids(n):
            if w is not None:
                counts[w] += 1
        for a, b in _word_windows(counts, budget, stride):
            long.append((n, a, b, sum(counts[a:b]) > budget, len(windows)))
            windows.append({})  # filled below
    if long:
        parts = tokenizer([words[n][a:b] for n, a, b, _, _ in long], is_split_into_words=True,
                          truncation=True, max_length=max_length)
        for k, (n, a, b, truncated, slot) in enumerate(long):
            windows[slot] = _window(parts, k, n, sentences[n], a, b, truncated, label2id)
    return windows


def window_stats(windows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """How many windows, sentences, sentences split over several windows, and truncated words."""
    per_sentence: dict[int, int] = {}
    for w in windows:
        per_sentence[w["sentence"]] = per_sentence.get(w["sentence"], 0) + 1
    return {"windows": len(windows), "sentences": len(per_sentence),
            "split_sentences": sum(n > 1 for n in per_sentence.values()),
            "truncated_words": sum(w["truncated"] for w in windows)}


def word_predictions(window: dict[str, Any], token_predictions: Sequence[Any]) -> list[Any]:
    """Per word of ``window``, the prediction at its first sub-token (None for a word with none).

    ``token_predictions`` is aligned with ``window["input_ids"]`` (padding after it is ignored).
    """
    out: list[Any] = [None] * window["n_words"]
    previous = None
    for position, w in enumerate(window["word_ids"]):
        if w is not None and w != previous:
            out[w - window["word_start"]] = token_predictions[position]
        previous = w
    return out


def stitch(windows: Sequence[dict[str, Any]], predictions: Sequence[Sequence[Any]],
           default: Any = "O") -> list[list[Any]]:
    """Per sentence, one prediction per word, from per-window word predictions.

    ``predictions[k]`` holds window ``k``'s predictions for its ``n_words`` words (see
    :func:`word_predictions`). Overlaps are resolved as the module docstring says; a word no
    window predicted (None: the tokenizer gave it no sub-token) gets ``default``.
    """
    if len(windows) != len(predictions):
        raise ValueError(f"{len(windows)} windows but {len(predictions)} prediction lists")
    lengths: dict[int, int] = {}
    for w in windows:
        lengths[w["sentence"]] = max(lengths.get(w["sentence"], 0), w["word_start"] + w["n_words"])
    best = [[(-1.0, default)] * lengths.get(n, 0) for n in range(max(lengths, default=-1) + 1)]
    for window, values in zip(windows, predictions):
        n, a, size = window["sentence"], window["word_start"], window["n_words"]
        if len(values) != size:
            raise ValueError(f"window of sentence {n} at word {a}: {size} words, {len(values)} predictions")
        cut_left, cut_right = a > 0, a + size < lengths[n]
        for k, value in enumerate(values):
            distance = min(k if cut_left else math.inf, size - 1 - k if cut_right else math.inf)
            if value is not None and distance > best[n][a + k][0]:
                best[n][a + k] = (distance, value)
    return [[value for _, value in sentence] for sentence in best]
