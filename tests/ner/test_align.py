"""Subword alignment on a pretrained WordPiece (BERT) and a byte-level BPE (RoBERTa) tokenizer."""

from __future__ import annotations

import itertools

import pytest
from galeno.inference.align import (
    IGNORE,
    encode_sentences,
    label_map,
    stitch,
    window_stats,
    word_predictions,
)
from galeno.inference.text import Sentence, Token

TOKENIZERS = ["bert_tokenizer", "roberta_tokenizer"]


def _sentence(words: list[str], tags: list[str]) -> Sentence:
    tokens, offset = [], 0
    for word in words:
        tokens.append(Token(word, offset, offset + len(word)))
        offset += len(word) + 1
    return Sentence("doc", tokens, tags, 0, " ".join(words))


def _label2id(sentences) -> dict[str, int]:
    return {label: i for i, label in enumerate(label_map(s.tags for s in sentences))}


def test_label_map_is_o_then_b_and_i_per_sorted_type():
    assert label_map(["O", "I-PROT", "B-DRUG", "O"]) == ["O", "B-DRUG", "I-DRUG", "B-PROT", "I-PROT"]
    assert label_map([["B-X"], ["O", "I-A"]]) == ["O", "B-A", "I-A", "B-X", "I-X"]
    assert label_map([]) == ["O"]
    with pytest.raises(ValueError, match="not a BIO tag"):
        label_map(["S-X"])


@pytest.mark.parametrize("name", TOKENIZERS)
def test_label_on_first_subtoken_only(name, request, sample_sentences):
    tokenizer = request.getfixturevalue(name)
    sentences = sample_sentences[:60]
    label2id = _label2id(sentences)
    windows = encode_sentences(tokenizer, sentences, label2id, max_length=512, stride=8)
    assert [w["sentence"] for w in windows] == list(range(len(sentences)))  # all fit: one window each
    continued = 0
    for window in windows:
        sentence = sentences[window["sentence"]]
        tokens = tokenizer.convert_ids_to_tokens(window["input_ids"])
        assert window["word_ids"][0] is None and window["word_ids"][-1] is None  # <s>/[CLS] ... </s>/[SEP]
        assert len(window["labels"]) == len(window["input_ids"]) == len(window["attention_mask"])
        labelled = set()
        for position, (w, label) in enumerate(zip(window["word_ids"], window["labels"])):
            first = w is not None and window["word_ids"][position - 1] != w
            if first:
                assert label == label2id[sentence.tags[w]]
                assert not tokens[position].startswith("##")           # WordPiece: a word start
                assert name != "roberta_tokenizer" or tokens[position].startswith("Ġ")  # prefix space
                labelled.add(w)
            else:
                assert label == IGNORE
                continued += w is not None
        assert labelled == set(range(len(sentence.words)))  # every word has exactly one label
    assert continued > 100  # the sample has plenty of words cut into several sub-tokens
    assert any(label > 0 for w in windows for label in w["labels"])


def test_byte_level_bpe_without_prefix_space_is_refused(roberta_dir, sample_sentences):
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(roberta_dir)
    with pytest.raises(ValueError, match="add_prefix_space=True"):
        encode_sentences(plain, sample_sentences[:2], _label2id(sample_sentences[:2]), 64, 4)


@pytest.mark.parametrize("name", TOKENIZERS)
def test_sliding_window_covers_every_word_and_stitches_back(name, request, sample_sentences):
    tokenizer = request.getfixturevalue(name)
    long = _sentence([w for s in sample_sentences[:12] for w in s.words],
                     [t for s in sample_sentences[:12] for t in s.tags])
    short = sample_sentences[12]
    sentences = [short, long, short]
    assert len(long.words) > 3 * 32
    label2id = _label2id(sentences)
    id2label = {i: label for label, i in label2id.items()}
    windows = encode_sentences(tokenizer, sentences, label2id, max_length=32, stride=6)
    stats = window_stats(windows)
    assert stats["sentences"] == 3 and stats["split_sentences"] == 1 and stats["truncated_words"] == 0
    assert stats["windows"] == len(windows) > 2 + len(long.words) // 32
    long_windows = [w for w in windows if w["sentence"] == 1]
    for before, after in itertools.pairwise(long_windows):
        overlap = before["word_start"] + before["n_words"] - after["word_start"]
        assert 0 < overlap <= 6 and after["word_start"] + after["n_words"] > before["word_start"] + before["n_words"]
    for window in windows:
        assert len(window["input_ids"]) <= 32
    # A model that is always right: each sub-token predicts its word's gold label.
    predictions = [word_predictions(w, [0 if i is None else label2id[sentences[w["sentence"]].tags[i]]
                                        for i in w["word_ids"]]) for w in windows]
    stitched = stitch(windows, predictions, default=-1)
    assert [[id2label[i] for i in tags] for tags in stitched] == [s.tags for s in sentences]


def test_stitch_prefers_the_window_farther_from_a_cut():
    # 10 words in windows [0, 6) and [4, 10); each window predicts its own name for every word.
    windows = [{"sentence": 0, "word_start": 0, "n_words": 6}, {"sentence": 0, "word_start": 4, "n_words": 6}]
    stitched = stitch(windows, [["a"] * 6, ["b"] * 6])
    # word 4 is 1 word from the cut at the end of "a" but on the cut at the start of "b";
    # word 5 the other way round. Words 0-3 and 6-9 are seen by one window only.
    assert stitched == [["a", "a", "a", "a", "a", "b", "b", "b", "b", "b"]]
    # A tie (word 4 is 1 word from a cut in [0, 6) and in [3, 10)) goes to the earlier window;
    # a word no window predicted gets the default.
    windows = [{"sentence": 0, "word_start": 0, "n_words": 6}, {"sentence": 0, "word_start": 3, "n_words": 7},
               {"sentence": 1, "word_start": 0, "n_words": 2}]
    stitched = stitch(windows, [["a"] * 6, ["b"] * 7, [None, "c"]], default="O")
    assert stitched[0][3:6] == ["a", "a", "b"] and stitched[1] == ["O", "c"]
    with pytest.raises(ValueError, match="2 words, 1 predictions"):
        stitch(windows, [["a"] * 6, ["b"] * 7, ["c"]])


def test_a_word_longer_than_a_window_keeps_its_label(bert_tokenizer):
    long_word = "x".join("qzkvw"[i % 5] * 3 for i in range(20))  # 79 characters, many WordPiece pieces
    assert len(bert_tokenizer.tokenize(long_word)) > 16
    sentence = _sentence(["El", long_word, "fármaco"], ["O", "B-DRUG", "O"])
    label2id = _label2id([sentence])
    windows = encode_sentences(bert_tokenizer, [sentence], label2id, max_length=16, stride=2)
    assert window_stats(windows)["truncated_words"] == 1
    middle = next(w for w in windows if w["word_start"] == 1)
    assert middle["n_words"] == 1 and len(middle["input_ids"]) == 16
    assert middle["labels"][1] == label2id["B-DRUG"]
    assert stitch(windows, [word_predictions(w, w["labels"]) for w in windows]) == [
        [label2id["O"], label2id["B-DRUG"], label2id["O"]]]


def test_unknown_tags_and_bad_lengths_are_errors(bert_tokenizer):
    sentence = _sentence(["Hb", "baja"], ["B-PROT", "O"])
    with pytest.raises(ValueError, match="B-PROT"):
        encode_sentences(bert_tokenizer, [sentence], {"O": 0}, 32, 4)
    with pytest.raises(ValueError, match="no room"):
        encode_sentences(bert_tokenizer, [sentence], {"O": 0, "B-PROT": 1, "I-PROT": 2}, 2, 4)
