"""High-recall rules for the structured identifiers of Spanish clinical text, labelled with MEDDOCAN's types.

A missed identifier is a leak; an extra mask costs a few words. So these rules match generously:
every date written with digits or with a Spanish month name, every 9-digit Spanish phone number
however it is grouped, e-mail addresses, URLs, IPv4 addresses, DNI and NIE numbers, and the
numbers that follow the labels clinical reports put before them (NHC, NASS, Nº Col., Episodio, CP).
They run whatever a model says, and their spans are merged with the model's
(:func:`merge_spans`). Types follow the MEDDOCAN annotation guidelines (Marimon et al. 2019).

``find(text)`` returns non-overlapping :class:`Span` s, in text order; each ``text[start:end]``
is the identifier (no surrounding punctuation or label).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

_MONTHS = ("enero|febrero|marzo|abril|mayo|junio|julio|agosto|septiembre|setiembre|octubre|noviembre|diciembre"
           "|ene|feb|mar|abr|may|jun|jul|ago|sep|sept|oct|nov|dic")
#: A header field's value: after the colon, to the end of the line, less a final dot and spaces.
_FIELD = r"[ \t]*:[ \t]*(?P<id>[^\n]*?[^\s.])[ \t.]*$"
#: A capitalised name word (letters only: "NºCol" that follows a name is not one).
_NAME = r"[A-ZÁÉÍÓÚÑ][A-Za-zÁÉÍÓÚÑáéíóúñüÜàèçÇ'´-]+"
#: Units after which a 4-digit number is a quantity, not a year ("2000 mg").
_UNIT = r"\s*(?:mg|mcg|µg|g|kg|ml|mL|l|UI|U|mmol|mEq|%|cc|cm|mm|m|h|min|ng|pg|mmHg)\b"


@dataclass(frozen=True)
class Span:
    """An identifier found in a text: ``text == source[start:end]``."""

    label: str
    start: int
    end: int
    text: str
    rule: str


def _rules() -> list[tuple[str, str, re.Pattern[str]]]:
    """(rule name, MEDDOCAN label, pattern); a pattern's group ``id`` (or the whole match) is the span."""
    flags = re.IGNORECASE
    phone = r"(?:\(?\+?\d{2,3}\)?[\s.-]?)?[6789](?:[\s.-]?\d){8}"
    labelled_phone = r"\+?\(?\d[\d \t().-]{5,18}\d"  # after a Tel./Fax label: any grouping, foreign numbers too
    full_months = _MONTHS.split("|ene|")[0]
    return [
        ("email", "CORREO_ELECTRONICO", re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")),
        ("url", "URL_WEB", re.compile(r"\b(?:https?://|www\.)[^\s<>\"']+[^\s<>\"'.,;:)]", flags)),
        ("ip", "DIREC_PROT_INTERNET",
         re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b")),
        # 14/03/2021, 14-3-21, 14.03.2021, 03/2021, and the typos of hand-typed reports (23/010/1990, 20/11//2014)
        ("date-numeric", "FECHAS",
         re.compile(r"\b\d{1,3}\s?[/.-]{1,2}\s?\d{1,3}\s?[/.-]{1,2}\s?(?:\d{4}|\d{2})\b"
                    r"|\b\d{1,6}/(?:19|20)\d{2}\b")),
        # 14 de marzo de 2021, 14 marzo 2021, 6-abril-2004, marzo de 2021, mayo 2005, Junio 04, 14 de marzo
        ("date-words", "FECHAS",
         re.compile(rf"\b(?:\d{{1,2}}(?:\s+de\s+|[\s/-]+)(?:{_MONTHS})\.?(?:(?:\s+(?:de|del)\s+|[\s/-]+)\d{{2,4}})?"
                    rf"|(?:{_MONTHS})\.?(?:\s+(?:de|del))?\s+(?:\d{{4}}|\d{{2}})\b(?![.,]\d))\b", flags)),
        ("month", "FECHAS", re.compile(rf"\b(?:{full_months})\b", flags)),
        ("year", "FECHAS", re.compile(rf"\b(?:año\s+)?(?:19|20)\d{{2}}\b(?!{_UNIT})(?![.,]\d)", flags)),
        ("fax", "NUMERO_FAX", re.compile(rf"\bfax\b\W{{0,6}}?(?P<id>{phone}|{labelled_phone})", flags)),
        ("labelled-phone", "NUMERO_TELEFONO",
         re.compile(rf"\b(?:tel[eé]fonos?|tel[fé]?|tfno|tlfno|tlf|m[oó]vil)\b\.?\W{{0,4}}?(?P<id>{phone}|{labelled_phone})",
                    flags)),
        ("phone", "NUMERO_TELEFONO", re.compile(rf"(?<![\w/.-]){phone}\b")),
        ("dni", "ID_SUJETO_ASISTENCIA", re.compile(r"\b\d{8}[\s-]?[A-Za-z]\b")),
        ("nie", "ID_SUJETO_ASISTENCIA", re.compile(r"\b[XYZ][\s-]?\d{7}[\s-]?[A-Za-z]\b", flags)),
        ("nhc", "ID_SUJETO_ASISTENCIA",
         re.compile(r"\b(?:N\.?\s?H\.?\s?C\.?|n[ºo°.]*\s*(?:de\s+)?historia(?:\s+cl[ií]nica)?|historia\s+cl[ií]nica"
                    r"|hc)\b\W{0,4}(?P<id>[A-Za-z]{0,3}[-\s]?\d[\d \t/.-]*\d|\d)", flags)),
        ("nass", "ID_ASEGURAMIENTO",
         re.compile(r"\b(?:N\.?\s?A\.?\s?S\.?\s?S\.?|(?:n[ºo°.]*\s*(?:de\s+)?)?(?:afiliaci[oó]n|seguridad\s+social"
                    r"|tarjeta\s+sanitaria|TSI|CIP))\b\W{0,4}(?P<id>[A-Z]{0,4}\d[\d \t/-]*\d)", flags)),
        ("colegiado", "ID_TITULACION_PERSONAL_SANITARIO",
         re.compile(r"(?:(?:\b|(?<=[a-záéíóúñ]))n[ºo°.]*\s*(?:de\s+)?col(?:egiado|egiada)?\b|\bcolegiad[oa]\b)"
                    r"\W{0,4}(?P<id>\d[\d \t/-]*\d|\d)", flags)),
        ("episodio", "ID_CONTACTO_ASISTENCIAL",
         re.compile(r"\b(?:episodio|n[ºo°.]*\s*(?:de\s+)?(?:episodio|ingreso|asistencia))\b\W{0,4}"
                    r"(?P<id>[A-Za-z]{0,3}\d[\d/.-]*\d|\d)", flags)),
        ("postal-code", "TERRITORIO",
         re.compile(r"\b(?:C\.?\s?P\.?|c[oó]digo\s+postal)\W{0,4}(?P<id>\d{5})\b", flags)),
        # the labelled fields of a report's header ("Nombre: Pedro.", "Médico: Ana Ruiz  NºCol: ..."): the value
        # to the end of its line (or, for a doctor, to the next label); whatever the value is, it is the field's
        ("header-name", "NOMBRE_SUJETO_ASISTENCIA",
         re.compile(rf"^[ \t]*(?:nombre(?:\s+(?:y\s+apellidos|del\s+paciente|completo))?|apellidos?){_FIELD}", flags | re.MULTILINE)),
        ("header-doctor", "NOMBRE_PERSONAL_SANITARIO",
         re.compile(r"^[ \t]*(?:m[eé]dico|responsable\s+cl[ií]nico|m[eé]dico\s+responsable)[ \t]*:[ \t]*"
                    r"(?P<id>[^\n]*?)(?=[ \t]*(?:\bn[ºo°.]*\s*col|\s{2,}|\.?[ \t]*$))", flags | re.MULTILINE)),
        ("header-address", "CALLE", re.compile(rf"^[ \t]*(?:domicilio|direcci[oó]n){_FIELD}", flags | re.MULTILINE)),
        ("header-place", "TERRITORIO",
         re.compile(rf"^[ \t]*(?:localidad(?:[ \t]*/[ \t]*provincia)?|provincia|municipio){_FIELD}",
                    flags | re.MULTILINE)),
        ("header-country", "PAIS", re.compile(rf"^[ \t]*pa[ií]s(?:\s+de\s+nacimiento)?{_FIELD}", flags | re.MULTILINE)),
        # a doctor named by title: Dra. María Merino Viveros, Dr Luis de la Fuente, DR. ANA RUIZ (up to seven words)
        ("doctor-title", "NOMBRE_PERSONAL_SANITARIO",
         re.compile(rf"\b(?i:dra?\.?|doctora?)[ \t]+(?P<id>{_NAME}(?:[ \t]+(?:(?:de|del|la|los|las|y)[ \t]+)*{_NAME}){{0,6}})")),
        ("postal-code-city", "TERRITORIO",
         re.compile(r"\b(?P<id>(?:0[1-9]|[1-4]\d|5[0-2])\d{3})\b(?=,?\s+[A-ZÁÉÍÓÚÑ][a-záéíóúñ]+)")),
    ]


RULES = _rules()


def find_all(text: str) -> list[Span]:
    """Every match of every rule, overlaps included, in rule order (the de-identifier unites them).
    Carriage returns are read as spaces, so a line ending ``\r\n`` ends a header field as ``\n`` does
    (offsets stay those of ``text``)."""
    view = text.replace("\r", " ")
    found: list[Span] = []
    for name, label, pattern in RULES:
        for m in pattern.finditer(view):
            start, end = m.span("id") if "id" in pattern.groupindex else m.span()
            if end > start:
                found.append(Span(label, start, end, text[start:end], name))
    return found


def find(text: str) -> list[Span]:
    """Every identifier the rules see in ``text``: non-overlapping spans in text order. Where two
    rules overlap, the longer span wins (then the rule listed first: fax before phone)."""
    order = {name: i for i, (name, _, _) in enumerate(RULES)}
    return merge_spans(sorted(find_all(text), key=lambda s: (-(s.end - s.start), order[s.rule], s.start)))


def merge_spans(ranked: Iterable[Span]) -> list[Span]:
    """Keep spans in the order given, dropping any that overlaps one already kept; returns them in text order."""
    kept: list[Span] = []
    for span in ranked:
        if all(span.end <= k.start or span.start >= k.end for k in kept):
            kept.append(span)
    return sorted(kept, key=lambda s: s.start)
