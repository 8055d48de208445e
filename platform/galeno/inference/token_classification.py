"""Token classification: words or raw texts in, BIO tags or entities with character offsets out.

The one NER predictor. Fine-tuning's dev scoring and ``jobs/evaluate_ner.py`` call
:func:`predict_tags` on annotated sentences; Serve replicas, batch prediction and the registered
MLflow model call :func:`predict_entities` on raw text, which cuts the text into sentences and
words as training did (:func:`galeno.inference.text.split_text`) and then runs the same
:func:`predict_tags`. Sentences longer than the model's window are encoded with sliding windows
(:func:`galeno.inference.align.encode_sentences`) and the windows' word predictions are stitched
back (:func:`galeno.inference.align.stitch`), so a long note is never truncated.

Entities are read from the word labels as BIO (seqeval's default mode: an ``I-X`` after no ``X``
opens an entity); ``start``/``end`` are the character offsets of the first word's start and the
last word's end in the input, so ``text == input[start:end]``. Offsets count Unicode code points
(Python string indices), as a JSON string decodes.

Aggregation strategies; the entity score is always the mean of its words' scores:

* ``first``: a word's label is the argmax of its first sub-token's probabilities (what the model
  was trained on: labels sit on first sub-tokens); its score is that probability.
* ``simple`` (default): the same as ``first``. In Hugging Face's pipeline ``simple`` labels every
  sub-token on its own and may cut a word in two; here words come from the training-time
  tokenisation and only first sub-tokens carry trained labels, so that split cannot happen.
* ``average``: the probabilities of all of a word's sub-tokens are averaged; label and score
  are the argmax of the average.
* ``max``: the word takes the label and probability of its single most confident sub-token.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

from galeno.corpus.normalize import normalize_mapped
from galeno.inference.align import encode_sentences, stitch
from galeno.inference.bio import bio_spans
from galeno.inference.forward import forward_probs
from galeno.inference.loading import Loaded
from galeno.inference.text import Sentence, split_text

#: Ways to turn sub-token probabilities into a word's label (module docstring).
AGGREGATIONS = ("simple", "first", "average", "max")
_SLOT = {"simple": 0, "first": 0, "average": 1, "max": 2}


def _word_values(window: dict[str, Any], probs) -> list[Any]:
    """Per word of ``window``: (first sub-token probs, mean probs, probs of the most confident sub-token)."""
    positions: dict[int, list[int]] = {}
    for k, w in enumerate(window["word_ids"]):
        if w is not None:
            positions.setdefault(w - window["word_start"], []).append(k)
    out: list[Any] = [None] * window["n_words"]
    for w, where in positions.items():
        rows = probs[where]
        out[w] = (rows[0], rows.mean(0), rows[int(rows.max(1).argmax())])
    return out


def predict_tags(loaded: Loaded, sentences: Sequence[Sentence], strategy: Union[str, Sequence[str]] = "first", *,
                 stride: int, chunk: int = 32, overhead_tokens: int = 0) -> tuple[list[list[str]], list[list[float]]]:
    """Per sentence, a BIO tag and a score per word; ``strategy`` is one name or one per sentence.

    The sentences' own tags are ignored. A word that got no sub-token is ``O`` with score 0.
    """
    strategies = [strategy] * len(sentences) if isinstance(strategy, str) else list(strategy)
    unknown = set(strategies) - set(AGGREGATIONS)
    if unknown or len(strategies) != len(sentences):
        raise ValueError(f"aggregation strategies must be among {AGGREGATIONS}, one per sentence: {sorted(unknown)}")
    blank = [Sentence(s.doc_id, s.tokens, ["O"] * len(s.tokens), s.start, s.text) for s in sentences]
    windows = encode_sentences(loaded.tokenizer, blank, {"O": 0}, loaded.max_length, stride)
    probs = forward_probs(loaded, [w["input_ids"] for w in windows], chunk, overhead_tokens=overhead_tokens)
    per_word = stitch(windows, [_word_values(w, p) for w, p in zip(windows, probs)], default=None)
    labels = loaded.extra["labels"]
    tags: list[list[str]] = [[] for _ in sentences]
    scores: list[list[float]] = [[] for _ in sentences]
    for n, values in enumerate(per_word):
        slot = _SLOT[strategies[n]]
        for v in values:
            if v is None:  # a word with no sub-token
                tags[n].append("O")
                scores[n].append(0.0)
                continue
            best = int(v[slot].argmax())
            tags[n].append(labels[best])
            scores[n].append(float(v[slot][best]))
    missing = [n for n, s in enumerate(sentences) if len(tags[n]) != len(s.tokens)]
    if missing:
        raise RuntimeError(f"{len(missing)} sentences got no prediction (first: {missing[0]})")
    return tags, scores


def entities(sentence: Sentence, tags: Sequence[str], scores: Sequence[float], text: str) -> list[dict[str, Any]]:
    """The entities of one tagged sentence of ``text``: ``{label, text, start, end, score}``."""
    out = []
    for label, first, last in bio_spans(tags, "default"):
        start, end = sentence.tokens[first].start, sentence.tokens[last - 1].end
        out.append({"label": label, "text": text[start:end], "start": start, "end": end,
                    "score": sum(scores[first:last]) / (last - first)})
    return out


def _in_caller_text(found: list[dict[str, Any]], text: str, seen: str,
                    bounds: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
    """Entities found in the model's view ``seen`` of ``text``, with offsets and text in ``text``."""
    if seen is text or seen == text:
        return found
    for e in found:
        e["start"], e["end"] = bounds[e["start"]][0], bounds[e["end"] - 1][1]
        e["text"] = text[e["start"]:e["end"]]
    return found


def predict_entities(loaded: Loaded, items: Sequence[tuple[Sequence[str], str]], *, stride: int,
                     chunk: int = 32, overhead_tokens: int = 0) -> list[list[list[dict[str, Any]]]]:
    """For each ``(texts, aggregation_strategy)``: per text, its entities ``{label, text, start, end, score}``.

    Several requests (items) share the forward passes; each keeps its own strategy. The model reads
    each text normalised as the corpus stage normalises (``normalize_mapped``: NFC, invisible and
    control characters dropped, exotic spaces and ligatures spelled plainly), so ``fibrino`` +
    U+0301 + ``geno`` is the word it learned; offsets and ``text`` are into the caller's text, and a
    span never starts or ends inside a grapheme cluster.
    """
    texts = [(i, text) for i, (group, _) in enumerate(items) for text in group]
    # The model reads each text normalised as the corpus was (NFC, no invisible characters, ...);
    # spans are mapped back to whole grapheme clusters of the caller's text.
    views = [normalize_mapped(text) for _, text in texts]
    sentences, owner = [], []  # owner[n]: index into texts of sentence n
    for k, (seen, _) in enumerate(views):
        found = split_text("request", seen, loaded.extra["splitter"])
        sentences += found
        owner += [k] * len(found)
    tags, scores = predict_tags(loaded, sentences, [items[texts[k][0]][1] for k in owner],
                                stride=stride, chunk=chunk, overhead_tokens=overhead_tokens)
    found_per_text: list[list[dict[str, Any]]] = [[] for _ in texts]
    for n, sentence in enumerate(sentences):
        k = owner[n]
        found_per_text[k] += _in_caller_text(entities(sentence, tags[n], scores[n], views[k][0]), texts[k][1], *views[k])
    out: list[list[list[dict[str, Any]]]] = []
    k = 0
    for group, _ in items:
        out.append(found_per_text[k:k + len(group)])
        k += len(group)
    return out


def predict_texts(loaded: Loaded, texts: Sequence[str], strategy: str = "simple", *, stride: int = 32,
                  chunk: int = 32, overhead_tokens: int = 0) -> list[list[dict[str, Any]]]:
    """The entities of each of ``texts``, all with one ``strategy``."""
    return predict_entities(loaded, [(texts, strategy)], stride=stride, chunk=chunk,
                            overhead_tokens=overhead_tokens)[0]
