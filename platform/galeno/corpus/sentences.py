"""Sentence splitting for clinical Spanish.

Sentences are the unit of the corpus stage: filters, near-duplicate detection and
decontamination all work on them. General-purpose splitters over-split clinical notes:
on an 80-sentence clinical paragraph Moses, pysbd and spaCy found 100-101 sentences
where syntok (Dewitt, https://github.com/fnl/syntok) found exactly 80, so syntok's
segmentation rules are the base here. :class:`ClinicalSentenceSplitter` takes every
place syntok could split (a terminal ``.!?…`` followed by space, or glued to a capitalised
word as in ``mejoró.El``; plus every line break), decides each with syntok's own
heuristics re-stated for Spanish plus the clinical rules below, and hands the few
candidates no rule covers (0.1% on MEDDOCAN) to syntok itself, run on that line only.
Running syntok's pure-Python state machine over whole documents would take about five
times as long (``benchmarks/splitter_accuracy.py``). What syntok lacks and the rules add:

* **Abbreviations** (:data:`CLINICAL_ABBREVIATIONS`). Titles and pointers that never end a
  sentence (``Dr.``, ``Dra.``, ``Sra.``, ``p. ej.``, ``vs.``, ``Fig.``; the subset
  :data:`NON_FINAL_ABBREVIATIONS`) never split. Units, routes and clinical shorthand
  (``mg/dl.``, ``h.``, ``sem.``, ``i.v.``, ``v.o.``, ``T.A.``, ``etc.``) often *do* end a
  sentence, so after them a split happens only before an uppercase word, never before a
  lowercase word or a number (``500 mg/8 h. i.v. durante``, ``T.A. 120/80 mmHg``). syntok
  alone never splits after dotted forms (``1 g i.v. Posteriormente``) nor after numbers
  with a dot (``10.500/mm3. Plaquetas``); here both split.
* **Numbers**: decimals (``37.5``, ``1,5``) are never candidates; an enumeration marker
  (``1.``, ``a.``, ``II.`` opening a sentence or following a colon) is never a boundary;
  as in syntok, a number of three or more digits does not open a sentence (postal codes
  and years in addresses: ``Aguilar, 90. 46017 Valencia``).
* **Semicolons** do not end sentences (syntok treats ``;`` as terminal), and neither
  does a period inside short bracketed text (``(Master Diagnostic. Granada. España)``;
  syntok's 70-character bracket skip).
* **Line breaks**: clinical notes are line-structured (``Nombre: Ernesto.`` /
  ``Apellidos: ...``, headers without a full stop), so every line break is a boundary,
  except where a line was broken mid-sentence: the next line starts lowercase and the
  previous one ends without terminal punctuation (``.!?…:``) or with an abbreviation's
  period (``mg/dl.``); or the previous line ends with a comma or a title (``Dr.``). A line
  starting with an enumeration marker or a bullet (``1.``, ``2)``, ``a)``, ``-``, ``•``)
  always starts a sentence. A blank line always ends one.
* **Ellipsis** (``...``, ``…``) is a boundary only before an uppercase letter or a digit,
  never before a lowercase word, and ``(...)``/``[...]`` (an elision) never is.
* **Initials**: after a single capital letter (``J. García``, ``Sexo: H.``) a split
  happens only before a word from a short list of Spanish sentence openers (``El``,
  ``La``, ``Se``, ``Tras``, ``Ingresa``, ``Acude``...), so ``hepatitis C. Se`` splits and
  ``J. García`` does not.

Returned sentences are stripped, have no internal line breaks, and each holds at least
one letter or digit (punctuation-only pieces such as ``---`` are dropped).
"""

from __future__ import annotations

import re
from typing import Iterable, Optional

__all__ = ["ClinicalSentenceSplitter", "CLINICAL_ABBREVIATIONS", "NON_FINAL_ABBREVIATIONS"]

#: Abbreviations that never end a sentence in Spanish clinical text: titles and forms of
#: address, pointers to figures/pages/numbers, Latin connectives, and ``Ac.``/``Ag.``
#: (anticuerpos/antígeno, ``ác.`` ácido), which always precede what they qualify
#: (``Ac. Toxoplasma positivo``), and the street types of addresses (``Ctra. Nacional``,
#: ``C/. Mayor``, ``Avd. Blasco Ibáñez``, ``Urb. Los Pinos``). Lowercase, with their
#: final period; multi-word forms separated by one space.
NON_FINAL_ABBREVIATIONS = frozenset("""
    dr. dra. dres. dras. sr. sra. sres. sras. srta. dña. dn. prof. profa. lic. ldo. lda.
    ilmo. ilma. excmo. excma. sto. sta. dpto. hosp. serv. tel. tfno. telf.
    avda. avd. av. ctra. crta. c/. pso. pº. pza. plza. urb. gral. cdad. ntra. nstra.
    fig. figs. pág. págs. núm. núms. nº. art. vs. cf. cfr. p.ej. ej. e.g. i.e.
    ac. acs. ag. ags. ác.
""".split()) | {"p. ej.", "p. e.", "e. g.", "i. e."}

#: Every abbreviation the splitter knows (lowercase, final period included): the
#: :data:`NON_FINAL_ABBREVIATIONS` plus units, routes, frequencies, clinical shorthand and
#: month names that may end a sentence. After these a split happens only before an
#: uppercase word; before a lowercase word or a number the period is the abbreviation's.
#: Any token with a slash (``mg/dl.``, ``c/8h.``, ``mg/kg/día.``) counts as a unit too.
CLINICAL_ABBREVIATIONS = NON_FINAL_ABBREVIATIONS | frozenset("""
    h. hr. hrs. hs. min. mins. seg. sg. s. sem. sems. d. m. g. l. u.
    mg. mcg. µg. μg. ng. pg. kg. gr. grs. ml. cc. dl. cl. µl. μl. cm. cm2. cm3. mm. mm2. mm3. km.
    mmhg. cmh2o. lpm. rpm. ppm. ui. mui. meq. mmol. µmol. μmol. mol. mosm. kcal. cal. ºc. °c.
    i.v. v.o. i.m. s.c. s.l. i.t. i.o. i.d. e.v. iv. vo. im. sc. sl. t.a. f.c. f.r. tª.
    a.m. p.m. ee.uu. etc. aprox. approx. máx. mín. max. min. temp. tto. trat. dx. tx. sdr.
    izq. izqda. izda. dcha. dch. dcho. ant. post. sup. inf. lat. bilat. cap. caps. cáps. comp.
    comps. amp. amps. sol. susp. gts. inh. aplic. sobr. fco. env. cp. cps. vol. ref.
    ene. feb. mar. abr. may. jun. jul. ago. sep. sept. set. oct. nov. dic.
""".split())

# Words that open Spanish (clinical) sentences; only consulted after a single capital
# letter, which is usually an initial ("J. García") but sometimes ends a sentence
# ("hepatitis C. Se ...", "Child-Pugh B. Ingresa ..."). Function words, then the verbs
# and section words case reports open sentences with.
_STARTERS = frozenset("""
    A Al Ante Así Asimismo Aunque Ambos Cabe Como Con Cuando Dado Debido Desde Dicho Dicha
    Durante El Ella Ello En Entre Era Es Esa Ese Esta Este Estos Estas Fue Finalmente Ha Había
    Han Hasta Hay La Las Le Les Lo Los Mediante Ni No Nos Otra Otro Para Pero Por Posteriormente
    Presenta Presentaba Que Se Según Si Sin Sobre Son Su Sus También Tampoco Tras Un Una Unos
    Unas Ya Además Actualmente Inicialmente Tanto Todo Toda Todos Todas
    Acude Acudió Consulta Consultó Ingresa Ingresó Refiere Refería Refirió Presentó Niega
    Negaba Inicia Inició Recibe Recibió Precisa Precisó Requiere Requirió Muestra Mostró
    Permanece Evoluciona Evolucionó Analítica Exploración Diagnóstico Tratamiento Evolución
""".split())

_CLOSERS = "\"'»”’)]"
_OPENERS = "\"'«“‘([¿¡"
_STRIP = " \t\n\r\x0b\x0c\ufeff\u200b\u00a0"
# A terminal run, then closing quotes/brackets, then spaces: a candidate boundary at its end.
_INLINE_CANDIDATE = re.compile(r"[.!?…;]+[\"'»”’)\]]*[ \t]+(?=\S)")
# A terminal glued to the next sentence ("mejoró.El paciente"), as syntok also splits.
_GLUED_CANDIDATE = re.compile(r"(?<=[a-záéíóúüñ]{2}[.!?])(?=[¿¡\"«“]?[A-ZÁÉÍÓÚÜÑ][a-záéíóúüñ])")
_LINE_BREAK = re.compile(r"[ \t]*\n\s*")
_LAST_CHUNKS = re.compile(r"(?:(?:^|\s)(\S+)\s+)?(\S+)$")
_ENUM_WORD = re.compile(r"^(?:\d{1,2}|[A-Za-z]|[IVXivx]{1,4})$")
_LINE_START_ENUM = re.compile(r"(?:\(?(?:\d{1,2}|[A-Za-z]|[IVXivx]{1,4})[.)]\s|[-–—•*·▪]\s?)")
_INNER_BREAKS = re.compile(r"\s*\n\s*")
_HAS_ALNUM = re.compile(r"\w")
_LARGE_NUMBER = re.compile(r"\d{3,}\b")
_BULLETS = "-–—•*·▪"
_BRACKET_SKIP = 70  # syntok's max_bracket_skipping_length
_LOOK_BACK = 256


class ClinicalSentenceSplitter:
    """Split Spanish clinical text into sentences (clinical rules, syntok where they are silent)."""

    def __init__(self, extra_abbreviations: Iterable[str] = ()) -> None:
        extra = set()
        for abbreviation in extra_abbreviations:
            a = " ".join(abbreviation.lower().split())
            if a:
                extra.add(a if a.endswith(".") else a + ".")
        #: Known abbreviations: after these a split happens only before an uppercase word.
        self.abbreviations = CLINICAL_ABBREVIATIONS | frozenset(extra)

    def split(self, text: str) -> list[str]:
        """Sentences of ``text`` in order: stripped, non-empty, without internal newlines."""
        sentences = []
        starts = self.boundaries(text)
        for start, end in zip(starts, starts[1:] + [len(text)]):
            sentence = text[start:end].strip(_STRIP)
            if "\n" in sentence:
                sentence = _INNER_BREAKS.sub(" ", sentence)
            if sentence and _HAS_ALNUM.search(sentence):
                sentences.append(sentence)
        return sentences

    def boundaries(self, text: str) -> list[int]:
        """Start offsets of the sentences of ``text``; the first is always 0."""
        candidates: dict[int, str] = {}  # offset -> "inline", "line" or "blank"
        for match in _INLINE_CANDIDATE.finditer(text):
            candidates[match.end()] = "inline"
        for match in _GLUED_CANDIDATE.finditer(text):
            candidates[match.end()] = "inline"
        for match in _LINE_BREAK.finditer(text):
            if match.end() < len(text):
                candidates[match.end()] = "blank" if match.group().count("\n") > 1 else "line"

        starts = [0]
        syntok_lines: dict[int, set[int]] = {}
        for pos in sorted(candidates):
            kind = candidates[pos]
            if kind == "blank":
                keep = True
            elif kind == "line":
                keep = not self._joins_lines(text, pos)
            else:
                keep = self._decide(text, starts[-1], pos)
                if keep is None:
                    keep = pos in self._syntok_starts(text, pos, syntok_lines)
            if keep:
                starts.append(pos)
        return starts

    # -- rules ----------------------------------------------------------------------------

    @staticmethod
    def _syntok_starts(text: str, pos: int, cache: dict[int, set[int]]) -> set[int]:
        """syntok's sentence starts on the line around ``pos`` (computed once per line).

        syntok is the fallback judge: the rules below decide all but 0.1% of the
        candidates on MEDDOCAN, and running syntok's pure-Python state machine only where
        they are silent makes the splitter about five times faster than syntok itself.
        """
        line_start = text.rfind("\n", 0, pos) + 1
        if line_start not in cache:
            from syntok import segmenter

            line_end = text.find("\n", pos)
            line = text[line_start:len(text) if line_end < 0 else line_end]
            cache[line_start] = {
                line_start + sentence[0].offset
                for paragraph in segmenter.analyze(line)
                for sentence in paragraph
            }
        return cache[line_start]

    def _abbreviation(self, core: str) -> tuple[Optional[str], str, str]:
        """For ``core`` ending in a period: the known abbreviation it ends with (None if
        none, ``"<unit>"`` for a slashed unit), its last word without the period, and the
        text before that word."""
        match = _LAST_CHUNKS.search(core, max(0, len(core) - 64))
        if match is None:
            return None, "", core
        previous, last = match.group(1), match.group(2)
        word = last[:-1].lstrip(_OPENERS)
        before = core[: match.start(2)].rstrip()
        key = word.lower() + "."
        if previous is not None:
            two = previous.lstrip(_OPENERS).lower() + " " + key
            if two in self.abbreviations:
                return two, word, before
        if key in self.abbreviations:
            return key, word, before
        if "/" in word and any(ch.isalpha() for ch in word):
            return "<unit>", word, before  # mg/dl. c/8h. mg/kg/día. 10.500/mm3.
        return None, word, before

    def _decide(self, text: str, segment_start: int, pos: int) -> Optional[bool]:
        """Split at ``pos`` (a candidate inside a line)? None: no rule applies, ask syntok."""
        # a bounded look-back keeps long runs without a boundary linear
        segment = text[max(segment_start, pos - _LOOK_BACK):pos].rstrip()
        core = segment.rstrip(_CLOSERS)
        if not core or core[-1] not in ".!?…":
            return False  # ";" is no terminal in Spanish
        right = text[pos:pos + 64]
        first = right.lstrip(_OPENERS)[:1]
        if not first or first.islower():
            return False
        if segment.count("(") > segment.count(")"):
            close = right.find(")")
            if 0 <= close < _BRACKET_SKIP and "\n" not in right[:close]:
                return False  # short bracketed text: "(Master Diagnostic. Granada. España)"
        if first in _BULLETS:
            return True
        if _LARGE_NUMBER.match(right):
            return False  # postal codes, years: "Aguilar, 90. 46017 Valencia"
        terminal = core[-1]
        if terminal in "!?":
            return True if first.isupper() or first.isdigit() else None
        if terminal == "…" or core.endswith(".."):
            if segment.endswith(("(...)", "[...]", "(…)", "[…]")):
                return False  # an elision, not an ellipsis
            return True if first.isupper() or first.isdigit() else None

        abbreviation, word, before = self._abbreviation(core)
        if abbreviation in NON_FINAL_ABBREVIATIONS:
            return False
        if _ENUM_WORD.match(word) and (not before or before.endswith(":")):
            return False  # "1. HTA.", "Antecedentes: 1. HTA."
        if abbreviation is not None and not first.isupper():
            return False  # "Sodio 140 mEq/l. 3 días", "32 sem. + 4 días" stay one sentence
        if first.isdigit():
            return True
        if first.isupper():
            initial = word.rsplit(".", 1)[-1]
            if len(initial) == 1 and initial.isupper():  # "J. García", "Dra.C. Lara"
                return right.lstrip(_OPENERS).split(None, 1)[0].rstrip(".,;:") in _STARTERS
            return True
        return None

    def _joins_lines(self, text: str, pos: int) -> bool:
        """Does the line starting at ``pos`` continue the previous line's sentence?"""
        nxt = text[pos:pos + 64]
        if _LINE_START_ENUM.match(nxt):
            return False
        left = text[max(0, pos - 96):pos].rstrip()
        if not left:
            return False
        end = left[-1]
        if end == ",":
            return True
        first = nxt.lstrip(_OPENERS)[:1]
        if end == ".":
            abbreviation = self._abbreviation(left)[0]
            if abbreviation in NON_FINAL_ABBREVIATIONS:
                return True  # "Dr.\nGarcía"
            return abbreviation is not None and first.islower()
        return first.islower() and end not in "!?…:"
