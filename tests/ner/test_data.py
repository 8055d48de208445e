"""NER readers on the real corpora, the documented rules on a hand-made brat file, BIO round trips."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest
from galeno.corpus.sentences import ClinicalSentenceSplitter
from galeno.ner.data import (
    Entity,
    make_document,
    read_brat,
    read_conll,
    read_i2b2_xml,
    read_ner,
    sentences_to_entities,
    write_brat,
)
from galeno.ner.metrics import bio_spans

REPO = Path(__file__).resolve().parents[2]


def _spans(doc) -> list[tuple[int, int, str, str]]:
    return [(e.start, e.end, e.label, e.text) for e in doc.entities]


def _check_offsets(doc) -> None:
    for sentence in doc.sentences:
        assert doc.text[sentence.start:sentence.end] == sentence.text
        assert len(sentence.tags) == len(sentence.tokens)
        for token in sentence.tokens:
            assert doc.text[token.start:token.end] == token.text
    for entity in doc.entities:
        assert doc.text[entity.start:entity.end] == entity.text


# --------------------------------------------------------------------------- CoNLL


def test_pharmaconer_dev_matches_the_published_counts(shared_data):
    docs, stats = read_conll(shared_data / "pharmaconer" / "dev.conll")
    assert stats == {"documents": 1, "sentences": 1046, "tokens": 27784, "entities": 563}
    (doc,) = docs
    assert doc.id == "dev"
    assert Counter(e.label for e in doc.entities) == {"NORMALIZABLES": 338, "PROTEINAS": 220,
                                                     "NOTNORMALIZABLES": 5}
    _check_offsets(doc)
    assert doc.sentences[0].words[:3] == ["Contaba", "con", "TAC"]
    assert read_ner(shared_data / "pharmaconer" / "dev.conll")[1] == stats  # format from the extension


def test_conll_bad_lines_are_skipped_counted_and_logged(tmp_path, caplog):
    path = tmp_path / "bad.conll"
    path.write_text("-DOCSTART-\tO\n\nEl\tO\nácido\tI-DRUG\nfólico\tI-DRUG\nmal\tX-DRUG\n"
                    "tres\tcampos\tO\nsolo\n\n-DOCSTART-\tO\nHb\tB-PROT\n.\tO\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="galeno.ner.data"):
        docs, stats = read_conll(path)
    assert stats["malformed"] == 3 and stats["bio_repaired"] == 1
    assert "skipped 3 malformed line(s), the first at line 6" in caplog.text
    assert [d.id for d in docs] == ["bad:1", "bad:2"]
    assert docs[0].text == "El ácido fólico"
    assert docs[0].sentences[0].tags == ["O", "B-DRUG", "I-DRUG"]
    assert _spans(docs[0]) == [(3, 15, "DRUG", "ácido fólico")]
    assert _spans(docs[1]) == [(0, 2, "PROT", "Hb")]


# --------------------------------------------------------------------------- brat and XML


def test_meddocan_dev_brat_and_xml_give_the_same_entities(brat_dev, meddocan_dev):
    brat_docs, brat_stats = brat_dev
    xml_docs, xml_stats = read_i2b2_xml(meddocan_dev / "xml")
    assert len(brat_docs) == len(xml_docs) == 250
    assert brat_stats["annotations"] == xml_stats["annotations"] == 5801  # the data README's count
    for b, x in zip(brat_docs, xml_docs):
        assert b.id == x.id
        assert b.text == x.text
        assert _spans(b) == _spans(x)
    assert brat_stats == xml_stats
    assert any(d.text.startswith("\ufeff") for d in brat_docs)  # offsets count the BOM
    assert "text_mismatch" not in brat_stats


def test_meddocan_dev_rules_account_for_every_annotation(brat_dev):
    docs, stats = brat_dev
    dropped = sum(stats.get(k, 0) for k in ("out_of_range", "text_mismatch", "empty", "duplicate",
                                            "overlap", "malformed"))
    assert stats["entities"] == sum(len(d.entities) for d in docs)
    assert stats["annotations"] == stats["entities"] + dropped
    assert stats["sentences"] == sum(len(d.sentences) for d in docs)
    assert stats["cross_sentence"] > 0 and stats["merged_sentences"] >= stats["cross_sentence"]
    for doc in docs:  # after merging, every entity lies inside one sentence
        for entity in doc.entities:
            assert sum(s.start <= entity.start and entity.end <= s.end for s in doc.sentences) == 1


def test_meddocan_dev_bio_round_trip_gives_back_every_span(brat_dev):
    docs, _ = brat_dev
    for doc in docs:
        _check_offsets(doc)
        tags = [s.tags for s in doc.sentences]
        assert all(bio_spans(t, "strict") == bio_spans(t, "default") for t in tags)  # well-formed IOB2
        assert sentences_to_entities(doc.sentences, tags) == doc.entities


ANN_RULES = """\
T1\tNOMBRE 10 28\tPedro García López
T2\tNOMBRE 10 15\tPedro
T3\tNOMBRE 10 28\tPedro García López
T4\tCALLE 41 59\tC/ Sauce 3. Bajo A
R1\tRel Arg1:T1 Arg2:T4
#1\tAnnotatorNotes T1\tnota
T5\tFECHAS 72 74;101 108\t17 de 2016
T6\tTERRITORIO 119 125\tMadrid
T7\tNOMBRE 10 15\tLaura
T8\tPAIS 9999 10005\tEspaña
T9\tNOMBRE diez 15\tPedro
T10
T11\tPAIS 133 140\tEspaña\x20
T12\tPAIS 141 142\t
"""
TEXT_RULES = ("Paciente: Pedro García López.\n"        # 0-29
              "Domicilio: C/ Sauce 3. Bajo A.\n"       # 30-60
              "Ingresa el 17 de junio y el 20 de junio de 2016.\n"  # 61-109
              "CP: 28035Madrid.\n"                     # 110-126
              "País: España .\n")                      # 127-141


def test_brat_rules_on_a_hand_made_document(tmp_path, caplog):
    (tmp_path / "doc.txt").write_text(TEXT_RULES, encoding="utf-8")
    (tmp_path / "doc.ann").write_text(ANN_RULES, encoding="utf-8")
    # The splitter does cut the street address after "3." (the case the merge rule is for).
    assert 41 < ClinicalSentenceSplitter().boundaries(TEXT_RULES)[2] < 59
    with caplog.at_level(logging.WARNING, logger="galeno.ner.data"):
        (doc,), stats = read_ner(tmp_path / "doc.ann")  # an .ann path reads its .txt pair
    assert "skipped 2 malformed line(s)" in caplog.text
    assert _spans(doc) == [
        (10, 28, "NOMBRE", "Pedro García López"),
        (41, 59, "CALLE", "C/ Sauce 3. Bajo A"),
        (72, 108, "FECHAS", "17 de junio y el 20 de junio de 2016"),  # covering span
        (119, 125, "TERRITORIO", "Madrid"),
        (133, 139, "PAIS", "España"),                                 # trailing space trimmed
    ]
    assert stats == {"annotations": 12, "documents": 1, "entities": 5, "sentences": 5,
                     "tokens": sum(len(s.tokens) for s in doc.sentences),
                     "overlap": 1, "duplicate": 1, "text_mismatch": 1, "out_of_range": 1,
                     "malformed": 2, "ignored_annotation": 2, "discontinuous": 1, "trimmed": 1,
                     "empty": 1, "cross_sentence": 1, "merged_sentences": 1, "split_tokens": 1}
    street = next(s for s in doc.sentences if "Sauce" in s.text)
    assert street.text == "Domicilio: C/ Sauce 3. Bajo A."
    cp = next(s for s in doc.sentences if s.text.startswith("CP"))
    assert list(zip(cp.words, cp.tags)) == [("CP", "O"), (":", "O"), ("28035", "O"),
                                            ("Madrid", "B-TERRITORIO"), (".", "O")]
    _check_offsets(doc)
    assert sentences_to_entities(doc.sentences, [s.tags for s in doc.sentences]) == doc.entities


def test_overlap_keeps_the_longest_then_the_earliest():
    text = "ácido acetilsalicílico 100 mg"
    entities = [Entity("d", 0, 5, "A", "ácido"), Entity("d", 6, 22, "B", "acetilsalicílico"),
                Entity("d", 0, 22, "C", "ácido acetilsalicílico"), Entity("d", 18, 26, "D", "ílico 10"),
                Entity("d", 23, 29, "E", "100 mg"), Entity("d", 26, 29, "F", " mg")]
    doc, stats = make_document("d", text, entities)
    # C (22 chars) beats A and B inside it and D across its end; E (6) beats F (3, then 2 trimmed).
    assert [(e.label, e.start, e.end) for e in doc.entities] == [("C", 0, 22), ("E", 23, 29)]
    assert stats["overlap"] == 4 and stats["trimmed"] == 1
    later_longer, _ = make_document("d", "ab cd efgh", [Entity("d", 0, 5, "SHORT", ""), Entity("d", 3, 10, "LONG", "")])
    assert [e.label for e in later_longer.entities] == ["LONG"]
    tied, _ = make_document("d", "ab cd ef", [Entity("d", 3, 8, "LATE", ""), Entity("d", 0, 5, "EARLY", "")])
    assert [e.label for e in tied.entities] == ["EARLY"]


def test_raw_text_gives_all_o_sentences():
    text = "\ufeffVarón de 53 años.\nTAC: normal (10x10 cm.)."
    doc, stats = make_document("raw", text, [])
    assert stats["entities"] == 0 and doc.entities == []
    assert [s.words for s in doc.sentences] == [["Varón", "de", "53", "años", "."],
                                                ["TAC", ":", "normal", "(", "10x10", "cm", ".", ")", "."]]
    assert all(tag == "O" for s in doc.sentences for tag in s.tags)
    _check_offsets(doc)


def test_write_brat_reads_back_the_same_documents(brat_dev, tmp_path):
    docs, _ = brat_dev
    chosen = list({d.id: d for d in docs[:2] + [d for d in docs if d.text.startswith("\ufeff")][:2]}.values())
    assert len(chosen) == 4
    for doc in chosen:
        predicted = sentences_to_entities(doc.sentences, [s.tags for s in doc.sentences])
        ann = write_brat(doc, predicted, tmp_path)
        assert ann == tmp_path / f"{doc.id}.ann"
        assert ann.read_text(encoding="utf-8").startswith("T1\t")
    again, stats = read_brat(tmp_path)
    assert stats["annotations"] == stats["entities"] == sum(len(d.entities) for d in chosen)
    by_id = {d.id: d for d in again}
    for doc in chosen:
        assert by_id[doc.id].text == doc.text
        assert _spans(by_id[doc.id]) == _spans(doc)


def test_read_ner_detects_formats_from_the_repo_sample():
    sample = REPO / "data" / "sample"
    brat_docs, brat_stats = read_ner(sample / "meddocan" / "dev" / "brat")
    assert brat_stats["documents"] == len(brat_docs) > 0 and brat_stats["entities"] > 0
    xml_folder = sample / "meddocan" / "train" / "xml"
    xml_docs, _ = read_ner(xml_folder)
    brat_twins, _ = read_brat(min((sample / "meddocan" / "train" / "brat").glob("*.txt")))
    assert xml_docs[0].id == brat_twins[0].id
    assert _spans(xml_docs[0]) == _spans(brat_twins[0])
    _, conll_stats = read_ner(sample / "pharmaconer" / "dev.conll")
    assert conll_stats["sentences"] == 200
    with pytest.raises(ValueError, match="cannot tell"):
        read_ner(sample / "README.md")
    with pytest.raises(ValueError, match="unknown NER format"):
        read_ner(sample / "pharmaconer" / "dev.conll", "bioc")
    with pytest.raises(FileNotFoundError):
        read_brat(sample / "nothing-here" / "*.txt")
