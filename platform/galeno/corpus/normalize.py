"""Encoding repair and Unicode normalisation, applied to every document before splitting.

Spanish clinical text reaches us through many hands (PDF exports, hospital systems,
web pages, old Latin-1 databases), so the same word arrives as ``Inflamación``,
``InflamaciÃ³n`` (UTF-8 read as Windows-1252), ``Inflamacio\\u0301n`` (decomposed) or with
a zero-width space in the middle. Left alone, the tokenizer learns each spelling as a
different string and deduplication misses copies. :func:`normalize_text` makes them one:

1. **Mojibake** is repaired with ftfy (Speer, 2019, https://ftfy.readthedocs.io), but only
   on lines that carry a mojibake *hint* (a UTF-8 lead byte seen as Latin-1 followed by a
   continuation byte, a C1 control, a surrogate or an ANSI escape). ftfy runs at about
   1 M chars/s; the hint regex at about 20 M chars/s, and clean text, the common case,
   never reaches ftfy. ftfy is configured to *only* repair encodings: quotes stay curly,
   ligatures, widths, line breaks and control characters are handled below, and no
   Unicode normalisation happens inside ftfy (its NFKC option would rewrite units).
2. **Line breaks**: ``\\r\\n``, ``\\r``, U+2028/U+2029, vertical tab and form feed -> ``\\n``.
3. **Control characters** (C0 except ``\\t``/``\\n``, DEL, C1) are removed, and so are the
   invisible format characters (zero-width space/joiners, word joiner, BOM, soft hyphen,
   bidirectional marks) that split words without showing.
4. **Space separators** (NBSP, narrow NBSP, thin/em/en spaces, ideographic space) -> ``' '``;
   runs of two or more spaces/tabs inside a line become one space, lines are stripped,
   and more than one blank line in a row becomes one.
5. **Latin ligatures** from PDF extraction (``ﬁ``, ``ﬂ``, ...) are spelled out.
6. **NFC** (or NFD). Never NFKC: it turns ``m²`` into ``m2``, ``µg`` (micro sign) into
   ``μg`` (Greek mu), ``½`` into ``1⁄2`` and ``10³`` into ``103``, changing the meaning of
   doses and lab values.

Every change is counted in the returned :class:`~collections.Counter` (zero counts are
left out), so a stage manifest can say how much repair a source needed.

Lengths change, so never run this on text whose character offsets are annotated (brat
standoff, NER spans): it is for the pretraining corpus.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Optional

__all__ = ["NormalizeConfig", "normalize_mapped", "normalize_text"]


@dataclass
class NormalizeConfig:
    """How :func:`normalize_text` repairs and normalises a document."""

    fix_mojibake: bool = True
    """Repair mojibake such as 'Ã³' -> 'ó' with ftfy (encoding repair only, on hinted lines;
    quotes, ligatures, widths and normal form are not ftfy's job here)."""
    form: str = "NFC"
    """Unicode normal form, NFC or NFD. NFC, never NFKC: NFKC would turn 'm²' into 'm2',
    'µg' (micro sign) into 'μg' (Greek mu) and '½' into '1⁄2', changing doses and units."""

    def __post_init__(self) -> None:
        form = self.form.upper()
        if form in ("NFKC", "NFKD"):
            raise ValueError(
                f"form={self.form!r} refused: compatibility normalisation rewrites clinical "
                "notation ('m²' -> 'm2', 'µg' -> 'μg', '½' -> '1⁄2', '10³' -> '103'); use NFC"
            )
        if form not in ("NFC", "NFD"):
            raise ValueError(f"form must be 'NFC' or 'NFD', got {self.form!r}")
        self.form = form


# A UTF-8 lead byte (U+00C2..U+00F4 when read as Latin-1/cp1252) followed by a continuation
# byte as Latin-1 (U+0080..U+00BF) or as its cp1252 glyph (‚ ƒ „ … † ‡ ˆ ‰ Š ‹ Œ Ž ‘ ’ “ ” • – —
# ˜ ™ š › œ ž Ÿ €); or a C1 control, a surrogate, an ANSI escape. False positives only cost
# an ftfy call that changes nothing ('café”' matches).
_MOJIBAKE_HINT = re.compile(
    "[\u00c2-\u00f4][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6"
    "\u02dc\u2013\u2014\u2018-\u201a\u201c-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a"
    "\u20ac\u2122]|[\u0080-\u009f\ud800-\udfff\x1b]"
)
_OTHER_BREAKS = re.compile("[\u2028\u2029\x0b\x0c]")
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f]")
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
_SPACES = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_SURROGATES = re.compile("[\ud800-\udfff]")
_LIGATURES = {"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl",
              "\ufb05": "st", "\ufb06": "st"}
_LIGATURE = re.compile("[\ufb00-\ufb06]")
_LINE_EDGES = re.compile("[ \t]+\n[ \t]*|\n[ \t]+")
_HSPACE_RUN = re.compile("[ \t]{2,}")
_BLANK_LINES = re.compile("\n{3,}")

_FTFY_CONFIG = None


def _ftfy_config():
    global _FTFY_CONFIG
    if _FTFY_CONFIG is None:
        from ftfy import TextFixerConfig

        _FTFY_CONFIG = TextFixerConfig(
            unescape_html=False,        # readers unescape HTML; here it would hit hinted lines only
            remove_terminal_escapes=True,
            fix_encoding=True,
            restore_byte_a0=True,
            replace_lossy_sequences=True,
            decode_inconsistent_utf8=True,
            fix_c1_controls=True,
            fix_latin_ligatures=False,  # done below on every text, not only on hinted lines
            fix_character_width=False,  # a width fix is NFKC in disguise
            uncurl_quotes=False,        # “ ” « » are real characters of Spanish text
            fix_line_breaks=False,      # done below, and counted
            fix_surrogates=True,
            remove_control_chars=False,  # done below, and counted
            normalization=None,         # done below with the configured form, never NFKC
            explain=False,
        )
    return _FTFY_CONFIG


def _fix_mojibake(text: str) -> tuple[str, int]:
    """Run ftfy on each line that carries a mojibake hint; return the text and lines changed."""
    from ftfy import fix_text

    pieces: list[str] = []
    pos = 0
    changed = 0
    for match in _MOJIBAKE_HINT.finditer(text):
        if match.start() < pos:
            continue  # inside a line already fixed
        start = text.rfind("\n", 0, match.start()) + 1
        end = text.find("\n", match.end())
        end = len(text) if end < 0 else end
        line = text[start:end]
        fixed = fix_text(line, _ftfy_config())
        if fixed != line:
            changed += 1
        pieces.append(text[pos:start])
        pieces.append(fixed)
        pos = end
    if not pieces:
        return text, 0
    pieces.append(text[pos:])
    return "".join(pieces), changed


def normalize_text(text: str, cfg: Optional[NormalizeConfig] = None) -> tuple[str, Counter]:
    """Repair encoding damage and normalise ``text``; return it with per-fix counts.

    Counter keys (present only when non-zero): ``mojibake_fixed`` (lines ftfy changed),
    ``newlines`` (CR, CRLF, LS, PS, VT, FF turned into ``\\n``), ``control_chars`` and
    ``invisible_chars`` (removed), ``space_chars`` (exotic spaces turned into ``' '``),
    ``ligatures``, ``surrogates`` (lone ones, turned into U+FFFD), ``replacement_chars``
    (U+FFFD left in the output: damage that cannot be undone) and ``renormalized`` (1 when
    the text was not already in the normal form).
    """
    cfg = cfg or NormalizeConfig()
    counts: Counter = Counter()
    ascii_only = text.isascii()

    if cfg.fix_mojibake and not ascii_only:
        text, n = _fix_mojibake(text)
        counts["mojibake_fixed"] = n

    if "\r" in text:  # str methods first: each regex pass costs more than a find
        counts["newlines"] = text.count("\r")
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text, n = _OTHER_BREAKS.subn("\n", text)
    counts["newlines"] += n
    text, counts["control_chars"] = _CONTROL.subn("", text)

    if not ascii_only:
        text, counts["invisible_chars"] = _INVISIBLE.subn("", text)
        text, counts["space_chars"] = _SPACES.subn(" ", text)
        text, counts["ligatures"] = _LIGATURE.subn(lambda m: _LIGATURES[m.group()], text)
        text, counts["surrogates"] = _SURROGATES.subn("\ufffd", text)
        if not unicodedata.is_normalized(cfg.form, text):
            text = unicodedata.normalize(cfg.form, text)
            counts["renormalized"] = 1
        counts["replacement_chars"] = text.count("\ufffd")

    if " \n" in text or "\n " in text or "\t" in text:
        text = _LINE_EDGES.sub("\n", text)
    if "  " in text or "\t" in text:
        text = _HSPACE_RUN.sub(" ", text)
    if "\n\n\n" in text:
        text = _BLANK_LINES.sub("\n\n", text)
    text = text.strip()
    return text, +counts  # unary plus drops the zero counts


def _cluster(piece: str, form: str) -> str:
    """One grapheme cluster normalised as :func:`normalize_text` normalises characters (steps 2-6)."""
    if piece.isascii() and piece.isprintable():
        return piece
    if "\r" in piece:
        piece = piece.replace("\r\n", "\n").replace("\r", "\n")
    piece = _OTHER_BREAKS.sub("\n", piece)
    piece = _CONTROL.sub("", piece)
    piece = _INVISIBLE.sub("", piece)
    piece = _SPACES.sub(" ", piece)
    piece = _LIGATURE.sub(lambda m: _LIGATURES[m.group()], piece)
    piece = _SURROGATES.sub("\ufffd", piece)
    return unicodedata.normalize(form, piece)


def normalize_mapped(text: str, form: str = "NFC") -> tuple[str, list[tuple[int, int]]]:
    """``text`` normalised for a model as the corpus normalises it, with a map back to ``text``.

    The character-level steps of :func:`normalize_text` (line breaks, control and invisible
    characters, exotic spaces, ligatures, the normal form) are applied to each grapheme cluster
    of ``text`` (Unicode's user-perceived characters, UAX #29: a letter with its combining
    accents, an emoji sequence, CRLF). Mojibake repair and space collapsing are left out: they
    rewrite across characters. Returns the normalised text and, for each of its characters, the
    ``(start, end)`` in ``text`` of the grapheme cluster it comes from. A span ``[i, j)`` of the
    normalised text is ``[bounds[i][0], bounds[j - 1][1])`` in ``text``: offsets stay true to the
    caller's text, and a span never ends inside a grapheme.
    """
    if text.isascii() and "\r" not in text and not _CONTROL.search(text) and not _OTHER_BREAKS.search(text):
        return text, [(i, i + 1) for i in range(len(text))]
    import regex

    form = form.upper()
    out: list[str] = []
    bounds: list[tuple[int, int]] = []
    for match in regex.finditer(r"\X", text):
        piece = _cluster(match.group(), form)
        out.append(piece)
        bounds += [match.span()] * len(piece)
    return "".join(out), bounds
