"""Sentence filters: drop ill-formed sentences, each for one named reason.

Every filter is a :data:`~galeno.corpus.document.SentencePredicate` (``None`` keeps, a reason
string drops), built from one :class:`FilterConfig` by :func:`build_sentence_filters`. The
heuristics are the line-level rules of Gopher (Rae et al. 2021, MassiveText quality
filters) and C4 (Raffel et al. 2020: boilerplate phrases, brackets), as packaged by
datatrove's ``GopherQualityFilter``/``C4QualityFilter``, retuned for clinical Spanish, where
real sentences are short and dense in numbers and symbols: ``T.A. 120/80 mmHg.``,
``Hb 12,5 g/dl.``, ``Edad: 70 años Sexo: H.``, ``DQ2 (-) y DQ8 (+).``.

Defaults were set on MEDDOCAN (24.5k sentences after :mod:`galeno.corpus.sentences`),
SciELO-es (5.2k) and PharmaCoNER (10.5k): together they drop about 1-2% of those real
sentences, most of it one-word lines (``Afebril.``, ``Resultados.``) and split debris
(``2013;26(1):45-58).``); ``python benchmarks/langid_cascade.py --filters`` prints the
per-reason rates. Reasons, in the order they are checked (the first failing one counts):

* ``too_short`` / ``too_long``: whitespace tokens or characters out of range.
* ``no_letters``: nothing alphabetic at all (``12/12/2016.``, ``---``).
* ``too_many_digits``: digits over alphanumeric characters (numeric tables, id dumps);
  punctuation is left out of the ratio so ``120/80`` weighs as much as ``12080``.
* ``too_many_symbols``: characters neither alphanumeric nor space over non-space ones
  (menus, markup debris, ASCII art).
* ``repeated_chars``: a run of one non-digit character (``aaaaaa``, ``------``,
  ``!!!!!!``); digits are exempt because ``100000 plaquetas`` is a number, not noise. No
  run of four or more occurs in the three corpora above.
* ``unbalanced_brackets``: ``()``, ``[]``, ``{}`` that do not pair up, list markers
  (``a)``, ``2)``, ``iv)`` after a space) aside, since they never had a partner.
* ``boilerplate``: web chrome in Spanish and English (:data:`BOILERPLATE_PATTERNS`).

A ``min_letter_ratio`` is not offered: letters, digits and symbols partition the non-space
characters, so the digit and symbol ratios (and ``no_letters``) already bound it.
Everything is precompiled regex or ``str`` methods, no per-character Python loop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from galeno.corpus.document import SentencePredicate

__all__ = [
    "FilterConfig", "FILTER_NAMES", "BOILERPLATE_PATTERNS",
    "build_sentence_filters", "first_failing",
]

#: Every filter (its name is also its drop reason), in the order they run.
FILTER_NAMES = (
    "too_short", "too_long", "no_letters", "too_many_digits", "too_many_symbols",
    "repeated_chars", "unbalanced_brackets", "boilerplate",
)

#: Web boilerplate in Spanish and English, as ``(regex, example it catches)``: cookie
#: banners, legal footers, navigation and pagination, sharing and subscription prompts,
#: login. Regexes match case-insensitively anywhere in the sentence and are specific enough
#: to be absent from clinical and biomedical prose: none fires on the MEDDOCAN, SciELO-es or
#: PharmaCoNER sentences (``ver más adelante`` and ``el médico que suscribe`` are clinical,
#: hence the anchored ``ver más`` and the imperative-only ``suscríbete``). Each example is
#: a test case.
BOILERPLATE_PATTERNS: tuple[tuple[str, str], ...] = (
    # cookie banners
    (r"cookies?\b.{0,80}\b(?:acept|configur|pol[ií]tica|naveg|consent|accept|polic|settings|browsing)",
     "Este sitio web utiliza cookies para mejorar su experiencia. Aceptar"),
    (r"\b(?:utiliza(?:mos)?|usa(?:mos)?|emplea(?:mos)?|we use|uses)\s+(?:\w+\s+){0,3}cookies\b",
     "Usamos cookies propias y de terceros."),
    # legal footers
    (r"todos los derechos reservados", "© 2023 Clínica San Rafael. Todos los derechos reservados."),
    (r"all rights reserved", "Copyright 2021 Elsevier Ltd. All rights reserved."),
    (r"\b(?:aviso|nota) legal\b", "Aviso legal"),
    (r"\blegal notice\b", "Legal notice"),
    (r"\b(?:aceptar|acepto|rechazar|configurar|accept|reject)\b(?:\s+\w+){0,2}\s+cookies\b",
     "Aceptar cookies."),
    (r"pol[ií]tica de (?:privacidad|cookies|protecci[oó]n de datos)", "Lea nuestra política de privacidad."),
    (r"\b(?:privacy|cookie) (?:policy|statement|notice)\b", "Privacy policy and terms."),
    (r"t[eé]rminos y condiciones|condiciones (?:generales )?de uso", "Términos y condiciones de uso"),
    (r"\bterms (?:of (?:use|service)|and conditions)\b", "Terms of use"),
    (r"©|\bcopyright\b", "Copyright Sociedad Española de Cardiología"),
    # navigation, calls to action, pagination
    (r"\b(?:leer|mostrar|cargar) m[aá]s\b|^\W*ver m[aá]s\W*$|seguir leyendo|\bread more\b",
     "Leer más »"),
    (r"\b(?:haz|haga|pulse|pulsa|pincha|pinche) (?:clic|click|aqu[ií])\b|\bclick here\b",
     "Para descargar el folleto haga clic aquí."),
    (r"volver (?:arriba|al inicio)|\bback to top\b", "Volver arriba"),
    (r"\b(?:ir|saltar) al contenido\b|\bskip to (?:main )?content\b", "Saltar al contenido principal"),
    (r"\bmapa (?:del|de la) (?:sitio|web)\b|\bsite ?map\b", "Mapa del sitio"),
    (r"\b(?:iniciar|cerrar) sesi[oó]n\b|\bmi cuenta\b|forgot your password", "Iniciar sesión | Registrarse"),
    (r"\bp[aá]gina \d+ de \d+\b|\bpage \d+ of \d+\b", "Página 3 de 12"),
    (r"\s[|»›]\s+[^|»›]+?\s[|»›](?:\s|$)", "Inicio | Quiénes somos | Contacto"),
    (r"(?:anterior|siguiente|previous|next)\s*[»›]|[«‹]\s*(?:anterior|siguiente|previous|next)\b",
     "« Anterior   Siguiente »"),
    # sharing, subscriptions, scripts
    (r"\bsu(?:s|bs)cr[ií]b(?:ete|ase|anse|irse|irte)\b|\bsubscribe\b|\bnewsletter\b",
     "Suscríbete a nuestro boletín de noticias"),
    (r"\bcompart(?:ir|e)(?: en| por)? (?:facebook|twitter|whatsapp|linkedin)\b|\bshare (?:on|this)\b",
     "Compartir en Facebook"),
    (r"s[ií]guenos en|\bfollow us\b", "Síguenos en Twitter e Instagram"),
    (r"\b(?:habilit|activ)(?:e|a|ar) (?:el )?javascript\b|\benable javascript\b",
     "Para ver este contenido habilite JavaScript en su navegador."),
)

#: Lowercase literals, one of which occurs in every match of :data:`BOILERPLATE_PATTERNS`.
#: One pass of these literals (compiled as a trie, so each position costs one branch) clears
#: ~99% of real sentences; the full pattern list, some 20x slower, runs on the rest only.
_BOILERPLATE_TRIGGERS = (
    "cookie", "reservad", "reserved", "aviso legal", "nota legal", "legal notice", "privac",
    "rminos y", "de uso", "terms", "©", "copyright", "leer m", "mostrar m", "cargar m",
    "ver m", "leyendo", "read more", "clic", "volver", "back to top", "al contenido",
    "skip to", "mapa de", "map", "iniciar ses", "cerrar ses", "mi cuenta", "password",
    "página ", "pagina ", "page", "|", "»", "›", "«", "‹", "suscr", "subscr", "newsletter",
    "facebook", "twitter",
    "whatsapp", "linkedin", "share", "guenos", "follow us", "javascript",
)


@dataclass
class FilterConfig:
    """Thresholds of the sentence filters (step 4); each filter's name is its drop reason."""

    min_words: int = 2
    """Drop sentences with fewer whitespace tokens (``too_short``); ``Hemograma normal.`` has 2, and 3 would drop 16% of MEDDOCAN."""
    max_words: int = 300
    """Drop sentences with more whitespace tokens (``too_long``): a glued page or table, not a sentence."""
    min_chars: int = 5
    """Drop sentences shorter than this many characters (``too_short``)."""
    max_chars: int = 2500
    """Drop sentences longer than this many characters (``too_long``)."""
    max_digit_ratio: float = 0.8
    """Drop when digits exceed this share of alphanumeric characters (``too_many_digits``); ``NASS: 47 39047534 02.`` is 0.75, ``0,5 1,2 3,4 5,6 7,8 9,0 mg`` 0.86."""
    max_symbol_ratio: float = 0.5
    """Drop when non-alphanumeric, non-space characters exceed this share of non-space characters (``too_many_symbols``); ``DQ2 (-) y DQ8 (+).`` is 0.5, ``T.A. 120/80 mmHg.`` 0.27."""
    max_char_repeat: int = 4
    """Drop a sentence holding a run of more than this many copies of one non-digit character (``repeated_chars``)."""
    check_brackets: bool = True
    """Drop sentences whose (), [] and {} do not pair up, list markers like ``a)`` aside (``unbalanced_brackets``)."""
    boilerplate: bool = True
    """Drop web boilerplate: cookie banners, legal footers, menus, share/subscribe prompts (``boilerplate``)."""
    extra_boilerplate: list[str] = field(default_factory=list)
    """More boilerplate regexes (case-insensitive, always tried), added to the built-in list."""
    disabled: list[str] = field(default_factory=list)
    """Filters to switch off, by name (= reason), e.g. ``[unbalanced_brackets]``."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.disabled) - set(FILTER_NAMES))
        if unknown:
            raise ValueError(f"filters.disabled: unknown filter(s) {unknown}; known: {list(FILTER_NAMES)}")
        if not 0 <= self.min_words <= self.max_words:
            raise ValueError(f"need 0 <= min_words <= max_words, got {self.min_words}, {self.max_words}")
        if not 0 <= self.min_chars <= self.max_chars:
            raise ValueError(f"need 0 <= min_chars <= max_chars, got {self.min_chars}, {self.max_chars}")
        for name in ("max_digit_ratio", "max_symbol_ratio"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.max_char_repeat < 1:
            raise ValueError(f"max_char_repeat must be >= 1, got {self.max_char_repeat}")
        for pattern in self.extra_boilerplate:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"filters.extra_boilerplate: bad regex {pattern!r}: {err}") from None

    def enabled(self) -> list[str]:
        """Names of the filters that run, in order."""
        off = set(self.disabled)
        if not self.check_brackets:
            off.add("unbalanced_brackets")
        if not self.boilerplate:
            off.add("boilerplate")
        return [name for name in FILTER_NAMES if name not in off]


# --------------------------------------------------------------------------- predicates
_LETTER = re.compile(r"[^\W\d_]")
_DIGIT = re.compile(r"\d")
_SYMBOL = re.compile(r"[^\w\s]|_")
_BRACKET = re.compile(r"[()\[\]{}]")
_LIST_MARKER = re.compile(r"(?:^|(?<=\s))(?:\d{1,2}|[a-zA-Z]|[ivxIVX]{2,4})\)")
_OPEN_OF = {")": "(", "]": "[", "}": "{"}


def _non_space(sentence: str) -> int:
    # Sentences come out of the splitter without tabs or newlines: counting spaces is enough.
    return len(sentence) - sentence.count(" ")


def _too_short(cfg: FilterConfig) -> SentencePredicate:
    def too_short(sentence: str) -> Optional[str]:
        if len(sentence) < cfg.min_chars or len(sentence.split()) < cfg.min_words:
            return "too_short"
        return None
    return too_short


def _too_long(cfg: FilterConfig) -> SentencePredicate:
    def too_long(sentence: str) -> Optional[str]:
        if len(sentence) > cfg.max_chars or len(sentence.split()) > cfg.max_words:
            return "too_long"
        return None
    return too_long


def _no_letters(sentence: str) -> Optional[str]:
    return None if _LETTER.search(sentence) else "no_letters"


def _too_many_digits(cfg: FilterConfig) -> SentencePredicate:
    def too_many_digits(sentence: str) -> Optional[str]:
        digits = len(_DIGIT.findall(sentence))
        if not digits:
            return None
        alnum = _non_space(sentence) - len(_SYMBOL.findall(sentence))
        return "too_many_digits" if digits > cfg.max_digit_ratio * alnum else None
    return too_many_digits


def _too_many_symbols(cfg: FilterConfig) -> SentencePredicate:
    def too_many_symbols(sentence: str) -> Optional[str]:
        symbols = len(_SYMBOL.findall(sentence))
        if symbols and symbols > cfg.max_symbol_ratio * max(_non_space(sentence), 1):
            return "too_many_symbols"
        return None
    return too_many_symbols


def _repeated_chars(cfg: FilterConfig) -> SentencePredicate:
    # "(.)\1\1\1\1" is ~3x faster in CPython's re than "([^\d\s])\1{4,}"; digit and
    # space runs ("100000", aligned columns) are skipped after the match.
    run = re.compile(r"(.)" + r"\1" * cfg.max_char_repeat)

    def repeated_chars(sentence: str) -> Optional[str]:
        for match in run.finditer(sentence):
            char = match.group(1)
            if not (char.isdigit() or char.isspace()):
                return "repeated_chars"
        return None
    return repeated_chars


def _balanced(text: str) -> bool:
    stack = []
    for bracket in _BRACKET.findall(text):
        if bracket in "([{":
            stack.append(bracket)
        elif not stack or stack.pop() != _OPEN_OF[bracket]:
            return False
    return not stack


def _unbalanced_brackets(sentence: str) -> Optional[str]:
    if not _BRACKET.search(sentence) or _balanced(sentence):
        return None
    # "a) fiebre; b) tos" is a list, not an unclosed bracket; "(segmento VII)" was balanced.
    return None if _balanced(_LIST_MARKER.sub(" ", sentence)) else "unbalanced_brackets"


def _trie_regex(literals: tuple[str, ...]) -> str:
    """One regex matching any of ``literals``, factored by common prefixes ("c(?:lic|ookie)").

    CPython's ``re`` tries every branch of a flat alternation at every position; the trie
    form rejects most positions on their first character.
    """
    trie: dict = {}
    for literal in literals:
        node = trie
        for char in literal:
            node = node.setdefault(char, {})
        node[""] = {}

    def emit(node: dict) -> str:
        branches = [re.escape(char) + emit(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        if len(branches) == 1 and "" not in node:
            return branches[0]
        body = "(?:" + "|".join(branches) + ")"
        return body + "?" if "" in node else body

    return emit(trie)


def _boilerplate(cfg: FilterConfig) -> SentencePredicate:
    trigger = re.compile(_trie_regex(_BOILERPLATE_TRIGGERS))
    pattern = re.compile("|".join(f"(?:{p})" for p, _ in BOILERPLATE_PATTERNS), re.IGNORECASE)
    extra = (re.compile("|".join(f"(?:{p})" for p in cfg.extra_boilerplate), re.IGNORECASE)
             if cfg.extra_boilerplate else None)

    def boilerplate(sentence: str) -> Optional[str]:
        if trigger.search(sentence.lower()) and pattern.search(sentence):
            return "boilerplate"
        if extra is not None and extra.search(sentence):
            return "boilerplate"
        return None
    return boilerplate


_BUILDERS = {
    "too_short": _too_short,
    "too_long": _too_long,
    "no_letters": lambda cfg: _no_letters,
    "too_many_digits": _too_many_digits,
    "too_many_symbols": _too_many_symbols,
    "repeated_chars": _repeated_chars,
    "unbalanced_brackets": lambda cfg: _unbalanced_brackets,
    "boilerplate": _boilerplate,
}


def build_sentence_filters(cfg: FilterConfig) -> list[tuple[str, SentencePredicate]]:
    """The enabled filters as ``(name, predicate)`` pairs, in :data:`FILTER_NAMES` order."""
    return [(name, _BUILDERS[name](cfg)) for name in cfg.enabled()]


def first_failing(sentence: str, filters: list[tuple[str, SentencePredicate]]) -> Optional[str]:
    """The reason of the first filter in ``filters`` that drops ``sentence``; ``None`` keeps it."""
    for _, predicate in filters:
        why = predicate(sentence)
        if why is not None:
            return why
    return None
