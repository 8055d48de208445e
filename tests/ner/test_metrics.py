"""Entity-level metrics against hand-computed cases, including where conlleval and strict IOB2 differ."""

from __future__ import annotations

import pytest
from galeno.ner.data import Entity
from galeno.ner.metrics import bio_spans, entity_scores, span_scores


@pytest.mark.parametrize(("tags", "default", "strict"), [
    (["I-X", "I-X", "O", "B-Y"], [("X", 0, 2), ("Y", 3, 4)], [("Y", 3, 4)]),
    (["B-X", "I-Y"], [("X", 0, 1), ("Y", 1, 2)], [("X", 0, 1)]),
    (["B-X", "I-X", "B-X", "O"], [("X", 0, 2), ("X", 2, 3)], [("X", 0, 2), ("X", 2, 3)]),
    (["B-X", "I-X", "I-Y", "I-X"], [("X", 0, 2), ("Y", 2, 3), ("X", 3, 4)], [("X", 0, 2)]),
    (["O", "I-X"], [("X", 1, 2)], []),
    (["B-X", "O", "I-X", "I-X"], [("X", 0, 1), ("X", 2, 4)], [("X", 0, 1)]),
    ([], [], []),
])
def test_bio_spans_default_and_strict(tags, default, strict):
    assert bio_spans(tags, "default") == default
    assert bio_spans(tags, "strict") == strict


def test_bio_spans_rejects_bad_tags_and_modes():
    with pytest.raises(ValueError, match="not a BIO tag"):
        bio_spans(["B-X", "E-X"])
    with pytest.raises(ValueError, match="not a BIO tag"):
        bio_spans(["B-"])
    with pytest.raises(ValueError, match="unknown mode"):
        bio_spans(["O"], "lenient")


def test_modes_differ_on_a_stray_inside_tag():
    gold = [["B-X", "I-X", "O", "B-Y"]]
    pred = [["I-X", "I-X", "O", "B-Y"]]
    default = entity_scores(gold, pred, "default")
    assert (default["precision"], default["recall"], default["f1"]) == (1.0, 1.0, 1.0)
    strict = entity_scores(gold, pred, "strict")
    # strict: the prediction holds only Y; X is missed.
    assert strict["predicted"] == 1 and strict["support"] == 2 and strict["correct"] == 1
    assert strict["precision"] == 1.0
    assert strict["recall"] == 0.5
    assert strict["f1"] == pytest.approx(2 / 3)
    assert strict["per_type"]["X"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                       "support": 1, "predicted": 0, "correct": 0}
    assert strict["per_type"]["Y"]["f1"] == 1.0


def test_type_change_inside_an_entity():
    gold = [["B-X", "I-X"]]
    pred = [["B-X", "I-Y"]]
    default = entity_scores(gold, pred)
    assert default["predicted"] == 2 and default["correct"] == 0
    assert default["per_type"]["Y"]["predicted"] == 1 and default["per_type"]["Y"]["support"] == 0
    strict = entity_scores(gold, pred, "strict")
    assert strict["predicted"] == 1 and strict["correct"] == 0  # X[0,1) has the wrong end
    assert strict["precision"] == strict["recall"] == strict["f1"] == 0.0


def test_micro_and_per_type_counts_over_sentences():
    gold = [["B-DRUG", "I-DRUG", "O", "B-PROT"], ["O", "B-DRUG", "O"], ["B-PROT", "O"]]
    pred = [["B-DRUG", "I-DRUG", "O", "B-DRUG"], ["O", "B-DRUG", "O"], ["O", "B-PROT"]]
    scores = entity_scores(gold, pred, "strict")
    # gold: DRUG(0,0-2) PROT(0,3) DRUG(1,1) PROT(2,0); pred: DRUG(0,0-2) DRUG(0,3) DRUG(1,1) PROT(2,1)
    assert (scores["support"], scores["predicted"], scores["correct"]) == (4, 4, 2)
    assert scores["precision"] == scores["recall"] == scores["f1"] == 0.5
    drug, prot = scores["per_type"]["DRUG"], scores["per_type"]["PROT"]
    assert (drug["support"], drug["predicted"], drug["correct"]) == (2, 3, 2)
    assert drug["precision"] == pytest.approx(2 / 3) and drug["recall"] == 1.0
    assert drug["f1"] == pytest.approx(0.8)
    assert (prot["support"], prot["predicted"], prot["correct"]) == (2, 1, 0)
    assert prot["f1"] == 0.0


def test_entities_in_different_sentences_do_not_match():
    scores = entity_scores([["B-X"], ["O"]], [["O"], ["B-X"]])
    assert scores["correct"] == 0 and scores["support"] == 1 and scores["predicted"] == 1


def test_empty_and_mismatched_inputs():
    empty = entity_scores([["O", "O"]], [["O", "O"]])
    assert empty["precision"] == empty["recall"] == empty["f1"] == 0.0
    assert empty["per_type"] == {}
    with pytest.raises(ValueError, match="2 gold sentences"):
        entity_scores([["O"], ["O"]], [["O"]])
    with pytest.raises(ValueError, match="sentence 0"):
        entity_scores([["O"]], [["O", "O"]])


def test_span_scores_need_exact_doc_offsets_and_label():
    gold = [Entity("a", 0, 5, "NAME", "Pedro"), Entity("a", 10, 15, "DATE", "2016."),
            Entity("b", 0, 5, "NAME", "Laura")]
    pred = [Entity("a", 0, 5, "NAME", "Pedro"),     # right
            Entity("a", 10, 14, "DATE", "2016"),    # one character short
            Entity("c", 0, 5, "NAME", "Laura"),     # wrong document
            Entity("b", 0, 5, "DATE", "Laura")]     # wrong label
    scores = span_scores(gold, pred)
    assert (scores["support"], scores["predicted"], scores["correct"]) == (3, 4, 1)
    assert scores["precision"] == 0.25
    assert scores["recall"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(2 * 0.25 * (1 / 3) / (0.25 + 1 / 3))
    assert scores["per_type"]["NAME"]["correct"] == 1 and scores["per_type"]["NAME"]["predicted"] == 2
    assert scores["per_type"]["DATE"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                          "support": 1, "predicted": 2, "correct": 0}
    assert span_scores(gold, gold)["f1"] == 1.0
