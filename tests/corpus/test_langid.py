"""Language identification cascade: accuracy on SciELO es/pt, sentence level, determinism."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from galeno.config import field_docs, from_dict, to_dict
from galeno.corpus.langid import LangIdConfig, LanguageIdentifier

SPANISH_CASE = (
    "Paciente de 70 años, minero jubilado, sin alergias medicamentosas conocidas, que presenta "
    "hematuria macroscópica postmiccional. En la exploración física presenta un buen estado general, "
    "con abdomen y genitales normales. Las citologías de orina son repetidamente sospechosas de malignidad."
)
PORTUGUESE_CASE = (
    "Paciente do sexo masculino, 70 anos, aposentado, sem alergias conhecidas, que apresenta "
    "hematúria macroscópica. No exame físico apresentava bom estado geral, com abdome e genitais "
    "normais. As citologias de urina foram repetidamente suspeitas de malignidade."
)
ENGLISH_SENTENCE = "The aim of this study was to assess the prevalence of hypertension in rural communities."
PORTUGUESE_SENTENCE = "Os resultados mostraram que a maioria dos pacientes não recebeu o tratamento adequado."
# Titles where the fast model hesitates between Spanish and Portuguese/Italian: langdetect decides.
HARD_TITLES = [
    "Tumor gástrico estromal como causa de sangrado digestivo.",
    "Sarcoma de estroma prostático gigante",
    "Adenocarcinoma de próstata metastático a pene",
    "Trauma cardíaco penetrante: factores pronósticos.",
    "Diverticulite jejunal: relato de caso.",
    "Carcinoma neuroendocrino del intestino delgado.",
]


@pytest.fixture(scope="module")
def lid() -> LanguageIdentifier:
    return LanguageIdentifier(LangIdConfig())


def load_scielo_sentences(root: Path, lang: str, n: int, min_words: int = 4) -> list[str]:
    """Every k-th sentence of ``min_words`` words or more from the SciELO file of ``lang``."""
    from lxml import etree

    root_el = etree.parse(str(root / "scielo" / f"{lang}-health.bioc.xml")).getroot()
    texts = [s.findtext("text").strip() for s in root_el.iter("sentence")]
    texts = [t for t in texts if len(t.split()) >= min_words]
    step = max(len(texts) // n, 1)
    return texts[::step][:n]


def test_config_validation_docs_and_round_trip():
    with pytest.raises(ValueError, match="candidate_languages"):
        LangIdConfig(language="gl")
    with pytest.raises(ValueError, match="fast_threshold"):
        LangIdConfig(fast_threshold=1.5)
    with pytest.raises(ValueError, match="confusable with itself"):
        LangIdConfig(confusable_languages=["es", "pt"])
    with pytest.raises(ValueError, match="ISO"):
        LangIdConfig(candidate_languages=["es", "Portuguese"])
    cfg = LangIdConfig(min_sentence_words=3, candidate_languages=["es", "pt", "en"])
    assert from_dict(LangIdConfig, to_dict(cfg)) == cfg
    assert set(field_docs(LangIdConfig)) == set(LangIdConfig.__dataclass_fields__)


def test_document_predicate_reasons(lid):
    assert lid.document_predicate(SPANISH_CASE) is None
    assert lid.document_predicate(PORTUGUESE_CASE) == "lang_pt"
    assert lid.document_predicate(ENGLISH_SENTENCE) == "lang_en"
    assert lid.document_predicate("12/12/2016 --- 28036 ***") == "lang_unknown"
    # All-caps titles are lowercased first (langdetect skips all-caps words entirely).
    assert lid.document_predicate("CARCINOMA UROTELIAL SUPERFICIAL DE VEJIGA EN PACIENTE JOVEN") is None


def test_detect_then_predicate_costs_one_identification():
    lid = LanguageIdentifier(LangIdConfig())
    text = "Hallazgos ecográficos en la trombosis venosa profunda de miembros inferiores."
    lang, confidence, decided_by = lid.detect(text)
    assert (lang, decided_by) == ("es", "fast") and 0.5 <= confidence <= 1.0
    assert lid.document_predicate(text) is None
    assert sum(lid.stats.values()) == 1


def test_sentence_predicate_on_a_mixed_document(lid):
    predicate = lid.sentence_predicate("es")
    sentences = [
        "Se presenta el caso de una mujer de 45 años con dolor abdominal de dos semanas de evolución.",
        ENGLISH_SENTENCE,
        "Hemograma normal.",          # short: inherits Spanish
        "Afebril.",
        "Case report.",               # short English: inherits too (LID cannot judge it)
        PORTUGUESE_SENTENCE,
        "La tomografía computarizada mostró una masa hepática de 5 cm en el segmento VII.",
    ]
    verdicts = [predicate(s) for s in sentences]
    assert verdicts == [None, "lang_en", None, None, None, "lang_pt", None]
    assert lid.sentence_predicate("pt")("Resultados.") == "lang_pt", "short sentences follow the document"


def test_fresh_identifiers_agree_and_langdetect_is_exercised():
    first, second = LanguageIdentifier(LangIdConfig()), LanguageIdentifier(LangIdConfig())
    texts = HARD_TITLES + [SPANISH_CASE, PORTUGUESE_CASE, ENGLISH_SENTENCE] * 2
    answers = [first.detect(t) for t in texts]
    assert answers == [second.detect(t) for t in texts]
    assert first.stats["langdetect"] >= 3, "the hard titles must reach langdetect for this to test it"


def test_import_and_construction_load_no_model():
    import subprocess
    import sys

    code = ("import sys; from galeno.corpus.langid import LangIdConfig, LanguageIdentifier; "
            "from galeno.corpus.filters import FilterConfig, build_sentence_filters; "
            "LanguageIdentifier(LangIdConfig()); build_sentence_filters(FilterConfig()); "
            "print(sorted(m for m in ('py3langid', 'langdetect', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_pickles_before_and_after_first_use():
    lid = LanguageIdentifier(LangIdConfig(min_sentence_words=3))
    blob = pickle.dumps(lid)
    assert len(blob) < 4000, "only the config travels, not the models"
    clone = pickle.loads(blob)
    assert clone.cfg == lid.cfg
    assert clone.detect(PORTUGUESE_CASE)[0] == "pt"
    again = pickle.loads(pickle.dumps(clone))  # after use: models stay behind
    assert len(pickle.dumps(clone)) < 4000
    assert again.detect(PORTUGUESE_CASE) == clone.detect(PORTUGUESE_CASE)


@pytest.mark.shared_data
def test_spanish_vs_portuguese_on_scielo(shared_data: Path):
    spanish = load_scielo_sentences(shared_data, "es", 400)
    portuguese = load_scielo_sentences(shared_data, "pt", 400)
    lid = LanguageIdentifier(LangIdConfig(min_document_words=0))  # every sentence judged as a document
    kept_es = [lid.document_predicate(s) is None for s in spanish]
    kept_pt = [lid.document_predicate(s) is None for s in portuguese]
    recall = sum(kept_es) / len(spanish)
    false_keep = sum(kept_pt) / len(portuguese)
    accuracy = (sum(kept_es) + len(portuguese) - sum(kept_pt)) / (len(spanish) + len(portuguese))
    assert accuracy >= 0.98, (recall, false_keep)
    assert recall >= 0.97 and false_keep <= 0.02
    calls, total = lid.stats["langdetect"], sum(lid.stats.values())
    assert total == len(spanish) + len(portuguese)
    assert 0 < calls < 0.1 * total, f"langdetect decided {calls}/{total}: the cascade should spare it"


@pytest.mark.shared_data
def test_sentence_level_drops_portuguese_inserted_into_spanish_abstracts(shared_data: Path):
    spanish = load_scielo_sentences(shared_data, "es", 300)
    portuguese = load_scielo_sentences(shared_data, "pt", 100, min_words=6)
    lid = LanguageIdentifier(LangIdConfig())
    predicate = lid.sentence_predicate("es")
    spanish_lost = sum(predicate(s) is not None for s in spanish)
    portuguese_dropped = sum(predicate(s) == "lang_pt" for s in portuguese)
    assert spanish_lost <= 0.01 * len(spanish)
    assert portuguese_dropped >= 0.9 * len(portuguese)
    assert lid.stats["sentence_langdetect"] < 0.1 * (len(spanish) + len(portuguese))


@pytest.mark.parametrize("text", ["Neoplasia germinal intratubular.", "HbA1c 16,2%.",
                                  "Proteína C reactiva 1,05 mg/dl.", "P53 29%."])
def test_short_documents_need_both_identifiers_to_agree(text):
    """One-line clinical documents (PharmaCoNER sentences) fool a single identifier."""
    strict = LanguageIdentifier(LangIdConfig(min_document_words=0))
    lenient = LanguageIdentifier(LangIdConfig())
    assert lenient.document_predicate(text) is None
    assert lenient.stats["short_document_kept"] + (strict.document_predicate(text) is None) >= 1


def test_short_portuguese_document_is_still_dropped():
    text = "O paciente apresentou melhora clínica após o tratamento."
    assert LanguageIdentifier(LangIdConfig()).document_predicate(text) == "lang_pt"
