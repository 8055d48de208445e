"""Decontamination: evaluation sentences are caught whatever their format; others pass."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest

from galeno.config import field_docs
from galeno.corpus.decontam import DecontamConfig, Decontaminator, conll_sentences, tokens

LONG = ("El paciente de 45 años ingresó en urgencias por dolor abdominal intenso "
        "irradiado a la espalda y vómitos de repetición.")
SHORT = "Se pautó omeprazol 20 mg cada 24 horas."          # 8 words: matched whole
TINY = "Hemograma normal."                                  # below min_words: never matched
UNRELATED = ("La resonancia magnética mostró una lesión quística en el lóbulo temporal izquierdo "
             "sin captación de contraste.")


def _conll(sentences: list[str]) -> str:
    blocks = []
    for s in sentences:
        toks = re.findall(r"\w+|[^\w\s]", s)
        blocks.append("\n".join(f"{t}\t{'B-NORMALIZABLES' if t == 'omeprazol' else 'O'}" for t in toks))
    return "-DOCSTART-\tO\n\n" + "\n\n".join(blocks) + "\n"


def _detokenize(toks: list[str]) -> str:
    return re.sub(r" ([.,;:)%])", r"\1", " ".join(toks)).replace("( ", "(")


def test_config_validates_and_documents_fields():
    assert set(field_docs(DecontamConfig)) == {"paths", "ngram", "min_words"}
    assert DecontamConfig().paths == [] and DecontamConfig().ngram == 13
    for bad in ({"ngram": 0}, {"min_words": 0}):
        with pytest.raises(ValueError):
            DecontamConfig(**bad)
    with pytest.raises(FileNotFoundError):
        Decontaminator.from_config(DecontamConfig(paths=["/nonexistent/eval/*.conll"]))


def test_conll_and_text_eval_sets_catch_the_same_sentences(tmp_path: Path):
    conll = tmp_path / "dev.conll"
    conll.write_text(_conll([LONG, SHORT, TINY]), encoding="utf-8")
    brat = tmp_path / "brat"
    brat.mkdir()
    (brat / "case1.txt").write_text(f"Antecedentes sin interés.\n{LONG} {SHORT}\n{TINY}\n", encoding="utf-8")
    (brat / "case1.ann").write_text("T1\tNORMALIZABLES 10 19\tomeprazol " + UNRELATED + "\n", encoding="utf-8")

    for paths in ([str(conll)], [str(brat)], [str(tmp_path / "**" / "*.txt")]):
        d = Decontaminator.from_config(DecontamConfig(paths=paths))
        assert d.predicate(LONG) == "decontaminated"
        # Tokens compare equal whatever the spacing, case and punctuation of the corpus copy.
        assert d.predicate("EL PACIENTE de 45 años, ingresó en urgencias por dolor abdominal intenso irradiado") \
            == "decontaminated"
        assert d.predicate("Cuadro previo. " + LONG[:90]) == "decontaminated"  # shares a 13-gram
        assert d.predicate(SHORT) == "decontaminated"
        assert d.predicate("se PAUTÓ omeprazol 20 mg cada 24 horas") == "decontaminated"
        assert d.predicate(TINY) is None
        assert d.predicate("Se pautó omeprazol 40 mg cada 24 horas.") is None  # one word differs
        assert d.predicate(UNRELATED) is None  # .ann files are not evaluation text
        assert d(SHORT) == d.predicate(SHORT)
    assert Decontaminator.from_config(DecontamConfig(paths=[str(conll)])).n_eval_sentences == 3


def test_empty_config_keeps_everything():
    d = Decontaminator.from_config(DecontamConfig())
    assert d.n_ngrams == 0 and d.n_eval_sentences == 0 and d.predicate(LONG) is None


@pytest.mark.shared_data
def test_pharmaconer_dev_slice_is_caught_and_unrelated_text_passes(shared_data: Path, tmp_path: Path):
    dev = list(conll_sentences((shared_data / "pharmaconer" / "dev.conll").read_text(encoding="utf-8")))
    blocks = (shared_data / "pharmaconer" / "dev.conll").read_text(encoding="utf-8").strip().split("\n\n")
    (tmp_path / "dev_slice.conll").write_text("\n\n".join(blocks[:300]) + "\n", encoding="utf-8")
    d = Decontaminator.from_config(DecontamConfig(paths=[str(tmp_path / "dev_slice.conll")]))
    assert d.n_eval_sentences == 300 and d.n_ngrams > 2000

    inside = [_detokenize(s) for s in dev[:300] if len(tokens(" ".join(s))) >= 8]
    assert len(inside) > 200
    assert all(d.predicate(s) == "decontaminated" for s in inside)  # raw-text copies of eval sentences

    outside = [_detokenize(s) for s in dev[300:] if len(tokens(" ".join(s))) >= 8]
    leaked = sum(d.predicate(s) is not None for s in outside)
    assert leaked / len(outside) < 0.02  # other cases of the same corpus share no long n-gram

    xml = (shared_data / "scielo" / "es-health.bioc.xml").read_text(encoding="utf-8")
    titles = re.findall(r"<text>([^<]+)</text>", xml)[:2000]
    assert sum(d.predicate(t) is not None for t in titles) == 0

    # Shipped to Ray workers: the pickled predicate answers the same.
    clone = pickle.loads(pickle.dumps(d))
    assert clone.n_ngrams == d.n_ngrams
    assert [clone.predicate(s) for s in inside[:50] + outside[:50]] == [d.predicate(s) for s in inside[:50] + outside[:50]]


@pytest.mark.shared_data
def test_meddocan_brat_text_catches_pharmaconer_sentences(shared_data: Path):
    """The two corpora share SPACCC cases: brat text as the eval set finds CoNLL sentences."""
    d = Decontaminator.from_config(DecontamConfig(paths=[str(shared_data / "meddocan")]))
    dev = list(conll_sentences((shared_data / "pharmaconer" / "dev.conll").read_text(encoding="utf-8")))
    long = [_detokenize(s) for s in dev if len(tokens(" ".join(s))) >= 13]
    caught = sum(d.predicate(s) is not None for s in long) / len(long)
    assert caught > 0.6  # the data README: ~73% of PharmaCoNER sentences appear in MEDDOCAN
