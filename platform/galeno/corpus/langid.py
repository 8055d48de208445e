"""Language identification: a fast model first, langdetect where the fast one hesitates.

langdetect (the Python port of Nakatani Shuyo's 2010 Java library) is the usual reference,
but it reads ~150-500 sentences/s on one core, too slow for every sentence of a web-scale
corpus. The cascade runs py3langid (Lui & Baldwin 2012, naive Bayes over byte n-grams;
several thousand sentences/s) on everything and hands a text to langdetect only when

* the fast model's top probability is below ``fast_threshold`` (it is not confident), or
* its top two are the kept language and one easily confused with it (``pt``, ``gl``,
  ``ca`` for Spanish) and the top is below ``confusable_threshold``.

Both models choose among ``candidate_languages`` only. For the fast model this removes the
Spanish-vs-Galician/Asturian/Aragonese confusions that cost it 8 points of Spanish recall
on SciELO; langdetect loads 7 profiles instead of 55 and runs ~3x faster. A language
outside the list comes out as its nearest candidate, which still drops it. Text that is
mostly upper case is lowercased first: langdetect skips all-caps words, and stock
langdetect calls 8% of SciELO's Spanish sentences English or German, nearly all of them
all-caps titles.

Measured on SciELO es/pt/fr (``python benchmarks/langid_cascade.py``), py3langid restricted
this way is already more accurate than langdetect, per sentence (0.987 vs 0.977) and per
document (0.994 vs 0.984), so the tuned thresholds hand langdetect only 2-3% of the inputs;
the cascade (0.985 / 0.993) beats langdetect alone at 6-9x its speed (20-30x stock
langdetect's), and sits 0.1-0.2 points under the fast model alone
(``fast_threshold=0`` gives that). langdetect is deterministic (seed 0, set on a private
factory, not on the global ``DetectorFactory.seed``); both models load lazily, once per
process, so an identifier is cheap to build and pickles (to Ray workers) as its config.

Sentence level, for mixed documents (a Spanish abstract with an English sentence): a
sentence of ``min_sentence_words`` words or more goes through the fast model; langdetect
only confirms a would-be drop on which the fast model hesitates (same thresholds), so a
document in the kept language costs langdetect almost nothing. Confirming every would-be
drop was measured worse: langdetect calls short Portuguese titles Spanish (19 more of
2,161 kept) and saves one Spanish sentence of 5,163. Shorter sentences inherit the
document's language; no identifier is reliable on ``Resultados.`` or ``Hemograma normal.``.
"""

from __future__ import annotations

import functools
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

from galeno.corpus.document import SentencePredicate

__all__ = ["LangIdConfig", "LanguageIdentifier", "UNKNOWN"]

#: Language reported for text without letters (the document reason is ``lang_unknown``).
UNKNOWN = "unknown"

_ISO = re.compile(r"^[a-z]{2,3}$")
_LETTER = re.compile(r"[^\W\d_]")
_UPPER_LATIN = re.compile(r"[A-ZÀ-ÖØ-Þ]")
_WORD = re.compile(r"\S*?[^\W\d_]\S*")
_SPACES = re.compile(r"\s+")


@dataclass
class LangIdConfig:
    """Step 3: keep documents (and sentences) in one language."""

    language: str = "es"
    """Language to keep (ISO 639-1)."""
    candidate_languages: list[str] = field(
        default_factory=lambda: ["es", "pt", "ca", "fr", "it", "en", "de", "eu"])
    """Languages both models choose among; include every language the input may hold. Galician and Latin are left out on purpose: with them the fast model calls 5% of Spanish titles Galician or Latin."""
    confusable_languages: list[str] = field(default_factory=lambda: ["pt", "gl", "ca"])
    """Languages easily mistaken for ``language``: a close call between one of them and ``language`` goes to langdetect."""
    fast_threshold: float = 0.5
    """The fast model decides alone when its top probability reaches this (and the call is not a close confusable one); 0 turns langdetect off."""
    confusable_threshold: float = 0.6
    """Top probability under which a ``language``-vs-confusable call goes to langdetect."""
    sentence_level: bool = True
    """Also drop single sentences in another language from kept documents (langdetect must agree)."""
    min_sentence_words: int = 4
    """Sentences with fewer ordinary words (lowercase alphabetic tokens) inherit the document's language: names, addresses, units and numbers ("Domicilio: Calle Miguel Benitez 90.") carry no language signal."""
    min_document_words: int = 12
    """Documents with fewer words are too short for one identifier's verdict: they are dropped only when the fast model and langdetect both name the same other language with at least ``short_document_confidence``."""
    short_document_confidence: float = 0.9
    """Confidence both identifiers need to drop a short document."""
    max_chars: int = 5000
    """Characters of a text that the identifiers read (the head); more adds time, not accuracy."""
    langdetect_seed: int = 0
    """Seed of langdetect's sampling, which makes it deterministic."""

    def __post_init__(self) -> None:
        codes = [self.language, *self.candidate_languages, *self.confusable_languages]
        bad = [c for c in codes if not _ISO.match(c)]
        if bad:
            raise ValueError(f"langid: not ISO 639 codes: {bad}")
        if self.language not in self.candidate_languages:
            raise ValueError(f"langid: language {self.language!r} must be one of candidate_languages "
                             f"{self.candidate_languages}")
        if len(self.candidate_languages) < 2:
            raise ValueError("langid: candidate_languages needs at least two languages")
        if self.language in self.confusable_languages:
            raise ValueError(f"langid: {self.language!r} cannot be confusable with itself")
        for name in ("fast_threshold", "confusable_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"langid: {name} must be in [0, 1], got {getattr(self, name)}")
        if self.min_sentence_words < 0:
            raise ValueError(f"langid: min_sentence_words must be >= 0, got {self.min_sentence_words}")
        if self.min_document_words < 0 or not 0.0 <= self.short_document_confidence <= 1.0:
            raise ValueError("langid: min_document_words must be >= 0 and short_document_confidence in [0, 1]")
        if self.max_chars < 1:
            raise ValueError(f"langid: max_chars must be >= 1, got {self.max_chars}")


# --------------------------------------------------------------------------- models
# One copy per process, shared by every identifier with the same languages.
@functools.lru_cache(maxsize=None)
def _fast_model(languages: tuple[str, ...]) -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier as Py3LangId

    model = Py3LangId.from_model_file(MODEL_FILE, norm_probs=True)
    model.set_languages(list(languages))  # ValueError names any code it does not know
    return model


@functools.lru_cache(maxsize=None)
def _langdetect_factory(languages: tuple[str, ...], seed: int) -> Any:
    from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

    profiles = []
    for lang in languages:
        path = os.path.join(PROFILES_DIRECTORY, lang)
        if os.path.isfile(path):  # langdetect has no gl, la or eu profile
            with open(path, encoding="utf-8") as f:
                profiles.append(f.read())
    factory = DetectorFactory()
    factory.load_json_profile(profiles)
    factory.set_seed(seed)
    return factory


def _prepare(text: str, max_chars: int) -> str:
    """Head of ``text`` with spaces collapsed, lowercased when mostly upper case."""
    text = _SPACES.sub(" ", text[: max_chars + max_chars // 4]).strip()[:max_chars]
    head = text[:400]
    if 2 * len(_UPPER_LATIN.findall(head)) > len(_LETTER.findall(head)):
        return text.lower()
    return text


def _ordinary_words(sentence: str) -> int:
    """Lowercase alphabetic tokens: the words that tell a language (not names, codes, numbers)."""
    n = 0
    for token in sentence.split():
        token = token.strip(".,;:()[]¿?¡!\"'«»")
        if len(token) > 1 and token.isalpha() and token.islower():
            n += 1
    return n


class LanguageIdentifier:
    """The fast-model -> langdetect cascade, at document and at sentence level.

    ``stats`` counts the decisions: ``fast`` and ``langdetect`` (documents through
    :meth:`detect`), ``no_letters``, and ``sentence_inherited``, ``sentence_fast``,
    ``sentence_langdetect`` (the sentence predicate's paths).
    """

    def __init__(self, cfg: Optional[LangIdConfig] = None) -> None:
        self.cfg = cfg or LangIdConfig()
        self.stats: Counter = Counter()
        self._languages = tuple(dict.fromkeys(self.cfg.candidate_languages))
        self._confusable = frozenset(self.cfg.confusable_languages)
        self._fast: Any = None
        self._langdetect: Any = None
        self._last: Optional[tuple[str, tuple[str, float, str]]] = None

    # Models stay behind: a shipped identifier (Ray) reloads them once in its new process.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_fast=None, _langdetect=None, _last=None)
        return state

    # -- models -------------------------------------------------------------------------
    def _fast_ranking(self, text: str) -> tuple[str, float, str, float]:
        if self._fast is None:
            self._fast = _fast_model(self._languages)
        ranked = self._fast.rank(text)
        (lang1, p1), (lang2, p2) = ranked[0], ranked[1]
        return lang1, float(p1), lang2, float(p2)

    def _langdetect_top(self, text: str) -> Optional[tuple[str, float]]:
        from langdetect.lang_detect_exception import LangDetectException

        if self._langdetect is None:
            self._langdetect = _langdetect_factory(self._languages, self.cfg.langdetect_seed)
            if self.cfg.language not in self._langdetect.get_lang_list():
                raise ValueError(f"langid: langdetect has no profile for {self.cfg.language!r}")
        detector = self._langdetect.create()
        detector.set_max_text_length(self.cfg.max_chars)
        detector.append(text)
        try:
            ranked = detector.get_probabilities()
        except LangDetectException:  # no usable n-gram
            return None
        return (ranked[0].lang, float(ranked[0].prob)) if ranked else None

    def _needs_langdetect(self, lang1: str, p1: float, lang2: str) -> bool:
        if p1 < self.cfg.fast_threshold:
            return True
        keep = self.cfg.language
        close_call = ((lang1 == keep and lang2 in self._confusable)
                      or (lang1 in self._confusable and lang2 == keep))
        return close_call and p1 < self.cfg.confusable_threshold

    # -- public -------------------------------------------------------------------------
    def detect(self, text: str) -> tuple[str, float, str]:
        """``(language, confidence, decided_by)``; ``decided_by`` is ``fast`` or ``langdetect``.

        The last answer is remembered, so ``detect`` followed by :meth:`document_predicate`
        on the same text costs one identification.
        """
        if self._last is not None and (self._last[0] is text or self._last[0] == text):
            return self._last[1]
        prepared = _prepare(text, self.cfg.max_chars)
        if not _LETTER.search(prepared):
            self.stats["no_letters"] += 1
            result = (UNKNOWN, 0.0, "fast")
        else:
            lang1, p1, lang2, _ = self._fast_ranking(prepared)
            result = (lang1, p1, "fast")
            if self._needs_langdetect(lang1, p1, lang2):
                top = self._langdetect_top(prepared)
                if top is not None:
                    result = (top[0], top[1], "langdetect")
            self.stats[result[2]] += 1
        self._last = (text, result)
        return result

    def document_predicate(self, text: str) -> Optional[str]:
        """``None`` keeps a document in ``cfg.language``; else ``lang_<xx>`` (``lang_unknown``)."""
        lang = self.detect(text)[0]
        if lang == self.cfg.language:
            return None
        if lang != UNKNOWN and len(_WORD.findall(text)) < self.cfg.min_document_words:
            # One-line documents ("Neoplasia germinal intratubular.", "HbA1c 16,2%.") fool
            # either identifier alone; only a confident agreement of both drops them.
            prepared = _prepare(text, self.cfg.max_chars)
            fast_lang, fast_p, _, _ = self._fast_ranking(prepared)
            top = self._langdetect_top(prepared)
            bar = self.cfg.short_document_confidence
            if not (top is not None and fast_lang == top[0] == lang and min(fast_p, top[1]) >= bar):
                self.stats["short_document_kept"] += 1
                return None
        return f"lang_{lang}"

    def sentence_predicate(self, doc_lang: str) -> SentencePredicate:
        """Predicate for the sentences of a document already identified as ``doc_lang``.

        A sentence shorter than ``min_sentence_words`` gets ``doc_lang``'s verdict. A longer
        one is kept when the fast model calls it ``cfg.language``; a would-be drop stands on
        the fast model's word when it is confident (the same rule as :meth:`detect`), and
        otherwise only if langdetect agrees it is not ``cfg.language``.
        """
        keep = self.cfg.language
        inherited = None if doc_lang == keep else f"lang_{doc_lang}"
        min_words = self.cfg.min_sentence_words
        stats = self.stats

        def language_of_sentence(sentence: str) -> Optional[str]:
            if _ordinary_words(sentence) < min_words:
                stats["sentence_inherited"] += 1
                return inherited
            prepared = _prepare(sentence, self.cfg.max_chars)
            lang1, p1, lang2, _ = self._fast_ranking(prepared)
            if lang1 == keep or not self._needs_langdetect(lang1, p1, lang2):
                stats["sentence_fast"] += 1
                return None if lang1 == keep else f"lang_{lang1}"
            stats["sentence_langdetect"] += 1
            top = self._langdetect_top(prepared)
            return None if top is None or top[0] == keep else f"lang_{top[0]}"

        return language_of_sentence
