"""Sentence filters: each keeps real clinical lines and drops its kind of garbage."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest

from galeno.config import field_docs, from_dict, to_dict
from galeno.corpus.filters import (
    BOILERPLATE_PATTERNS,
    FILTER_NAMES,
    FilterConfig,
    build_sentence_filters,
    first_failing,
)

DEFAULT_FILTERS = build_sentence_filters(FilterConfig())
BY_NAME = dict(DEFAULT_FILTERS)

# (filter, a sentence it keeps, a sentence it drops): the keep case sits close to the line.
CASES = [
    ("too_short", "Hemograma normal.", "Afebril."),
    ("too_short", "Hb 9 g/dl", "H. U"),
    ("too_long", "Paciente de 70 años " * 70, "Paciente de 70 años " * 80),
    ("no_letters", "Edad: 70 años.", "12/12/2016 - 14:30."),
    ("too_many_digits", "NASS: 47 39047534 02.", "0,5 1,2 3,4 5,6 7,8 9,0 mg"),
    ("too_many_symbols", "DQ2 (-) y DQ8 (+).", "»» ■ ◄ ► »» Menú"),
    ("repeated_chars", "Plaquetas 1000000/mm3, leucocitos normales.", "Aaaaaaaah, qué dolor más fuerte."),
    ("repeated_chars", "Ver apartado III... y tabla IV.", "Resultados ------------- tabla"),
    ("unbalanced_brackets", "Dolor abdominal (fosa iliaca derecha) y fiebre [38,5 ºC].",
     "Se inició amoxicilina (500 mg cada 8 horas."),
    ("unbalanced_brackets", "Presentaba: a) fiebre; b) tos; iv) disnea.", "La TC mostró) una masa hepática."),
    ("boilerplate", "El médico que suscribe certifica la veracidad de los datos.",
     "Suscríbete a nuestra newsletter de salud"),
    ("boilerplate", "La angina de pecho (ver más adelante) cedió con nitratos.", "Leer más »"),
    ("boilerplate", "Hay que tener en cuenta las condiciones generales del paciente.",
     "Utilizamos cookies propias y de terceros. Si continúa navegando acepta su uso."),
]


@pytest.mark.parametrize("name,keep,drop", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_each_filter_keeps_and_drops(name, keep, drop):
    predicate = BY_NAME[name]
    assert predicate(keep) is None
    assert predicate(drop) == name
    assert first_failing(keep, DEFAULT_FILTERS) is None, "the keep case passes every filter"


# Real lines from MEDDOCAN / SPACCC clinical cases: short, numeric, symbol-heavy, and kept.
CLINICAL_LINES = [
    "T.A. 120/80 mmHg.", "Hb 12,5 g/dl.", "Edad: 70 años Sexo: H.", "NHC: 2569870.", "CP: 28016.",
    "Fecha de Ingreso: 12/12/2016.", "Médico: Ignacio Navarro Cuéllar NºCol: 28 28 70973.",
    "Hemograma normal.", "PSA de 1.16 ng/ml.", "IHQ:WT1 +++,CD 117 +++,CD56 +++,P53 -.",
    "(ki 67: 5-7 %).", "Tfno: 956 013 059",
    "Glucemia de 169 mg/dl y triglicéridos de 456 mg/dl; función hepática y renal normal.",
    "Tacto rectal compatible con adenoma de próstata grado I/IV.",
    "Remitido por: Ignacio Navarro Cuéllar c/ del Abedul 5-7, 2º dcha 28036 Madrid, España "
    "E-mail: nnavcu@hotmail.com.",
    "En la analítica de orina destaca la existencia de 4 hematíes/ campo y 0-5 leucocitos/campo.",
    "Se consultó la página web del fabricante y el mapa de riesgos del servicio.",
]


@pytest.mark.parametrize("line", CLINICAL_LINES)
def test_real_clinical_lines_are_kept(line):
    assert first_failing(line, DEFAULT_FILTERS) is None


@pytest.mark.parametrize("pattern,example", BOILERPLATE_PATTERNS, ids=[e[:30] for _, e in BOILERPLATE_PATTERNS])
def test_every_boilerplate_pattern_catches_its_example(pattern, example):
    # Through the predicate, so the literal prefilter is checked to let each example through.
    assert BY_NAME["boilerplate"](example) == "boilerplate"


GARBAGE = [
    "Inicio | Quiénes somos | Servicios | Contacto", "===============================",
    "© 2023 Clínica San Rafael. Todos los derechos reservados.", "Página 1 de 12",
    "Aviso legal · Política de privacidad · Política de cookies", "12/03/2019 14:35 h",
    "$('#menu').click(function(){", "[1] [2] [3] [4] [5]", "« Anterior | Siguiente »",
    "We use cookies to improve your experience.", "Back to top", "!!!!!!!!!! OFERTA !!!!!!!!!!",
]


@pytest.mark.parametrize("line", GARBAGE)
def test_web_garbage_is_dropped(line):
    assert first_failing(line, DEFAULT_FILTERS) in FILTER_NAMES


def test_order_disabled_and_switches():
    assert [name for name, _ in DEFAULT_FILTERS] == list(FILTER_NAMES)
    relaxed = build_sentence_filters(FilterConfig(disabled=["too_short"], check_brackets=False, boilerplate=False))
    assert [name for name, _ in relaxed] == [n for n in FILTER_NAMES
                                           if n not in ("too_short", "unbalanced_brackets", "boilerplate")]
    assert first_failing("Afebril.", relaxed) is None
    assert first_failing("Leer más »", relaxed) is None
    assert first_failing("(500 mg cada 8 horas.", relaxed) is None


def test_extra_boilerplate_and_validation():
    custom = dict(build_sentence_filters(FilterConfig(extra_boilerplate=[r"\bpublicidad\b"])))
    assert custom["boilerplate"]("Espacio de publicidad patrocinado") == "boilerplate"
    assert custom["boilerplate"]("Paciente de 70 años con hematuria.") is None
    with pytest.raises(ValueError, match="unknown filter"):
        FilterConfig(disabled=["too_shrt"])
    with pytest.raises(ValueError, match="max_digit_ratio"):
        FilterConfig(max_digit_ratio=0)
    with pytest.raises(ValueError, match="bad regex"):
        FilterConfig(extra_boilerplate=["(unclosed"])
    with pytest.raises(ValueError, match="min_words"):
        FilterConfig(min_words=10, max_words=5)


def test_config_round_trip_and_field_docs():
    cfg = FilterConfig(min_words=3, disabled=["boilerplate"])
    assert from_dict(FilterConfig, to_dict(cfg)) == cfg
    docs = field_docs(FilterConfig)
    assert set(docs) == {f for f in FilterConfig.__dataclass_fields__}, "every field documents itself"


@pytest.mark.shared_data
def test_drop_rate_on_real_clinical_and_biomedical_sentences(shared_data: Path):
    from galeno.corpus.sentences import ClinicalSentenceSplitter

    splitter = ClinicalSentenceSplitter()
    meddocan = []
    for path in sorted(glob.glob(str(shared_data / "meddocan" / "dev" / "brat" / "*.txt")))[:120]:
        meddocan += splitter.split(Path(path).read_text(encoding="utf-8"))
    from lxml import etree

    scielo = [s.findtext("text").strip() for s in
              etree.parse(str(shared_data / "scielo" / "es-health.bioc.xml")).getroot().iter("sentence")]
    for corpus in (meddocan, scielo):
        assert len(corpus) > 2000
        dropped = sum(first_failing(s, DEFAULT_FILTERS) is not None for s in corpus)
        assert dropped / len(corpus) < 0.03, f"{dropped}/{len(corpus)} real sentences dropped"
        assert dropped > 0, "the real data holds some one-word debris that should go"
