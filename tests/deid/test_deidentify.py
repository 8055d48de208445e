"""The de-identifier's merging and masking, and the leak-rate scoring, on hand-made and real MEDDOCAN spans."""

from __future__ import annotations

from pathlib import Path

import pytest

from galeno.deid.deidentify import DeidConfig, Deidentifier, mask, unite
from galeno.deid.evaluate import Gold, read_brat_gold, score
from galeno.deid.rules import Span


def test_overlapping_spans_are_united_under_the_longest_label():
    spans = [Span("FECHAS", 10, 20, "", "date"), Span("X", 15, 30, "", "model"), Span("Y", 40, 45, "", "model"),
             Span("PAIS", 44, 50, "", "country"), Span("Z", 60, 61, "", "model")]
    assert [(s.label, s.start, s.end) for s in unite(spans)] == [("X", 10, 30), ("PAIS", 40, 50), ("Z", 60, 61)]
    assert mask("0123456789", [Span("A", 2, 4, "", "r"), Span("B", 6, 7, "", "r")]) == "01[A]45[B]789"


def test_rules_alone_and_kept_labels():
    text = "Paciente varón, NHC 4521879, visto el 14/03/2021."
    deid = Deidentifier(DeidConfig(model="rules"))
    [result] = deid([text], with_text=True)
    assert result.text == "Paciente varón, NHC [ID_SUJETO_ASISTENCIA], visto el [FECHAS]."
    assert [(s.label, s.text) for s in result.spans] == [("ID_SUJETO_ASISTENCIA", "4521879"), ("FECHAS", "14/03/2021")]
    assert result.counts() == {"ID_SUJETO_ASISTENCIA": 1, "FECHAS": 1}
    [plain] = deid([text])
    assert all(s.text == "" for s in plain.spans)  # nothing that is stored carries the identifier


def test_a_kept_label_never_shields_an_identifier():
    """A kept span (the patient's sex) that overlaps an identifier does not keep it: the identifier is
    masked whole, and the kept span is dropped from ``kept``."""
    class Both(Deidentifier):
        def model_spans(self, texts):
            return [[Span("SEXO_SUJETO_ASISTENCIA", 0, 13, "", "model")] for _ in texts]

    text = "varón NHC 4521879 y más"
    [result] = Both(DeidConfig(model="rules"))([text])
    assert result.text == "varón NHC [ID_SUJETO_ASISTENCIA] y más" and result.kept == []
    [alone] = Both(DeidConfig(model="rules"))(["varón sin más datos"])
    assert alone.text == "varón sin más datos" and [s.label for s in alone.kept] == ["SEXO_SUJETO_ASISTENCIA"]


def test_rule_spans_that_overlap_are_united_not_dropped():
    """``find`` keeps one of two overlapping rule spans; the de-identifier unites them all."""
    text = "Médico: Servicio Dr. Luis  Pérez Gómez"
    [result] = Deidentifier(DeidConfig(model="rules"))([text])
    assert "Pérez" not in result.text and "Luis" not in result.text


def test_windows_line_endings_do_not_hide_header_fields():
    text = "Nombre: Pedro.\r\nApellidos: De Miguel Rivera.\r\nPaís: España.\r\nFecha: 14/03/2021\r\n"
    [result] = Deidentifier(DeidConfig(model="rules"))([text])
    assert result.text == ("Nombre: [NOMBRE_SUJETO_ASISTENCIA].\r\nApellidos: [NOMBRE_SUJETO_ASISTENCIA].\r\n"
                           "País: [PAIS].\r\nFecha: [FECHAS]\r\n")


def test_leak_rate_counts_a_string_leaked_unless_all_its_characters_are_masked():
    text = "Pedro de Miguel vive en Lugo."
    gold = [Gold("NOMBRE_SUJETO_ASISTENCIA", 0, 15), Gold("TERRITORIO", 24, 28), Gold("SEXO_SUJETO_ASISTENCIA", 0, 5)]
    # "Pedro" and "de Miguel" masked apart (the space between is not PHI): protected; Lugo untouched
    out = score([(text, gold, [("X", 0, 5), ("Y", 6, 15), ("Z", 16, 20)])])
    assert out["gold"] == 2 and out["leaked"] == 1 and out["untouched"] == 1  # sex left out of the total
    assert out["per_type"]["TERRITORIO"]["leak_rate"] == 1.0 and out["per_type"]["SEXO_SUJETO_ASISTENCIA"]["gold"] == 1
    assert out["precision"] == pytest.approx(2 / 3)  # "vive" is not PHI


def test_rules_on_real_meddocan_documents(shared_data: Path):
    folder = shared_data / "meddocan" / "dev" / "brat"
    if not folder.is_dir():
        pytest.skip(f"needs MEDDOCAN dev under {folder}")
    docs = read_brat_gold(folder)[:40]
    results = Deidentifier(DeidConfig(model="rules", keep_labels=[]))([t for _, t, _ in docs])
    scores = score((t, g, [(s.label, s.start, s.end) for s in r.spans]) for (_, t, g), r in zip(docs, results))
    # the rules alone protect the structured types (dates, IDs, e-mails) and the header fields
    assert scores["per_type"]["CORREO_ELECTRONICO"]["leak_rate"] <= 0.05
    assert scores["per_type"]["NOMBRE_SUJETO_ASISTENCIA"]["leak_rate"] <= 0.1
    assert scores["leak_rate"] < 0.4 and scores["precision"] > 0.97
