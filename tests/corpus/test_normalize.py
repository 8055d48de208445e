"""Encoding repair and Unicode normalisation (galeno.corpus.normalize)."""

from __future__ import annotations

import unicodedata

import pytest

from galeno.corpus.normalize import NormalizeConfig, normalize_text


def test_mojibake_is_repaired_and_counted():
    text, counts = normalize_text("InflamaciÃ³n aguda del pÃ¡ncreas")
    assert text == "Inflamación aguda del páncreas"
    assert counts["mojibake_fixed"] == 1


def test_mojibake_counts_changed_lines():
    text, counts = normalize_text("niÃ±o de 3 aÃ±os\nsin cambios\nDiagnÃƒÂ³stico: otitis")
    assert text == "niño de 3 años\nsin cambios\nDiagnóstico: otitis"  # doubly encoded line too
    assert counts["mojibake_fixed"] == 2


def test_windows_1252_quotes_read_as_latin1_are_repaired():
    assert normalize_text("refería \x93dolor\x94")[0] == "refería “dolor”"


def test_mojibake_left_alone_when_disabled():
    text, counts = normalize_text("InflamaciÃ³n", NormalizeConfig(fix_mojibake=False))
    assert text == "InflamaciÃ³n"
    assert "mojibake_fixed" not in counts


@pytest.mark.parametrize("clinical", [
    "Superficie corporal 1,8 m²",
    "Vitamina B12 500 µg/día",
    "½ comprimido c/12 h",
    "Leucocitos 10³/µl",
    "Tª 37,5 ± 0,3 ºC",
    "“comillas” «angulares» ‘simples’",
    "¿Dolor? ¡Sí! Nº 1ª 2.º",
])
def test_clean_clinical_text_is_kept_byte_for_byte(clinical):
    text, counts = normalize_text(clinical)
    assert text.encode("utf-8") == clinical.encode("utf-8")
    assert counts == {}


def test_micro_sign_is_not_turned_into_greek_mu():
    text, _ = normalize_text("5 µg")
    assert "\u00b5" in text and "\u03bc" not in text


def test_clean_text_never_reaches_ftfy(monkeypatch):
    import ftfy

    def boom(*args, **kwargs):
        raise AssertionError("ftfy called on text without mojibake hints")

    monkeypatch.setattr(ftfy, "fix_text", boom)
    assert normalize_text("plain ASCII text.")[0] == "plain ASCII text."
    assert normalize_text("Exploración física: T.A. 120/80 mmHg, m² y µg.")[0].startswith("Exploración")


def test_control_characters_are_removed_and_counted():
    text, counts = normalize_text("a\x00b\x07c\x7fd\x85e", NormalizeConfig(fix_mojibake=False))
    assert text == "abcde"
    assert counts["control_chars"] == 4


def test_tab_and_newline_survive_control_removal():
    assert normalize_text("Hb\t12,5\nHto\t37")[0] == "Hb\t12,5\nHto\t37"


def test_crlf_and_cr_become_newlines():
    text, counts = normalize_text("Nombre: Ana.\r\nEdad: 40.\rSexo: M.\u2028CP: 28001.")
    assert text == "Nombre: Ana.\nEdad: 40.\nSexo: M.\nCP: 28001."
    assert counts["newlines"] == 3


def test_nbsp_and_other_spaces_become_plain_spaces():
    text, counts = normalize_text("10\u00a0mg cada\u202f8\u2009h")
    assert text == "10 mg cada 8 h"
    assert counts["space_chars"] == 3


def test_zero_width_characters_and_soft_hyphens_are_removed():
    text, counts = normalize_text("\ufeffhiper\u00adtensión\u200b arterial\u200d")
    assert text == "hipertensión arterial"
    assert counts["invisible_chars"] == 4


def test_whitespace_runs_collapse_within_lines_and_blank_lines_collapse():
    assert normalize_text("  Nombre:  Ernesto. \n\t Edad:\t\t70\n\n\n\nFin  ")[0] == \
        "Nombre: Ernesto.\nEdad: 70\n\nFin"


def test_pdf_ligatures_are_spelled_out():
    text, counts = normalize_text("tratamiento eﬁcaz y ﬂuido")
    assert text == "tratamiento eficaz y fluido"
    assert counts["ligatures"] == 2


def test_replacement_characters_are_counted_not_hidden():
    text, counts = normalize_text("dolor tor\ufffdcico")
    assert text == "dolor tor\ufffdcico"
    assert counts["replacement_chars"] == 1


def test_nfc_composes_combining_accents():
    text, counts = normalize_text("Inflamacio\u0301n")
    assert text == "Inflamación" and len(text) == len("Inflamación")
    assert unicodedata.is_normalized("NFC", text)
    assert counts["renormalized"] == 1


def test_nfd_is_available_on_request():
    text, _ = normalize_text("ó", NormalizeConfig(form="NFD"))
    assert text == "o\u0301"


@pytest.mark.parametrize("form", ["NFKC", "NFKD", "nfkc"])
def test_compatibility_forms_are_refused_with_the_reason(form):
    with pytest.raises(ValueError, match="m²"):
        NormalizeConfig(form=form)


def test_unknown_form_is_refused():
    with pytest.raises(ValueError, match="NFC"):
        NormalizeConfig(form="NFX")


@pytest.mark.parametrize("dirty", [
    "InflamaciÃ³n\r\n  aguda\u00a0\u00a0grave\x07",
    "o\u0301 \ufb01 \u200b\n\n\n\nfin",
])
def test_normalize_is_idempotent(dirty):
    once, _ = normalize_text(dirty)
    twice, counts = normalize_text(once)
    assert twice == once
    assert counts == {}


@pytest.mark.shared_data
def test_meddocan_is_clean_and_survives_mojibake_round_trip(shared_data):
    paths = sorted((shared_data / "meddocan" / "dev" / "brat").glob("*.txt"))[:60]
    assert paths
    repaired_documents = 0
    for path in paths:
        original = path.read_text(encoding="utf-8-sig")
        clean, counts = normalize_text(original)
        # MEDDOCAN is properly encoded but for the odd stray C1 byte ("Acalka\x82")
        repaired_documents += counts["mojibake_fixed"] > 0
        assert not any(ch < " " and ch not in "\n\t" or "\x7f" <= ch <= "\x9f" for ch in clean)
        assert unicodedata.is_normalized("NFC", clean)
        assert "  " not in clean and "\r" not in clean
        visible = "".join(original.split())
        assert len("".join(clean.split())) >= 0.99 * len(visible)  # only whitespace and invisibles go
        # the same document read with the wrong codec (UTF-8 bytes as Latin-1) comes back
        damaged = original.encode("utf-8").decode("latin-1")
        repaired, counts = normalize_text(damaged)
        assert repaired == clean, path.name
        assert counts["mojibake_fixed"] >= 1
    assert repaired_documents <= 2


def test_normalize_mapped_maps_every_character_back_to_a_whole_grapheme():
    import unicodedata

    from galeno.corpus.normalize import normalize_mapped

    text = "Fibrino\u0301geno\r\nﬁbra\u00a0x\u200by 👩\u200d⚕️ fin"
    seen, bounds = normalize_mapped(text)
    assert seen == unicodedata.normalize("NFC", "Fibrinógeno\nfibra xy 👩⚕️ fin")
    assert seen == normalize_text(text)[0].replace("\u200d", "")  # the corpus's normalisation, character by character
    assert len(bounds) == len(seen)
    assert text[bounds[6][0]:bounds[6][1]] == "o\u0301"  # ó: the letter and its accent
    nl = seen.index("\n")
    assert text[bounds[nl][0]:bounds[nl][1]] == "\r\n"
    assert text[bounds[nl + 1][0]:bounds[nl + 2][1]] == "ﬁ"  # f and i both come from the ligature
    word = seen.index("Fibrinógeno"), seen.index("Fibrinógeno") + len("Fibrinógeno")
    assert text[bounds[word[0]][0]:bounds[word[1] - 1][1]] == "Fibrino\u0301geno"
    assert normalize_mapped("plain ascii") == ("plain ascii", [(i, i + 1) for i in range(11)])
