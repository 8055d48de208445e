"""High-recall rules for structured identifiers (issue 24, item 2): each on the formats the issue
names, and each measured on the real MEDDOCAN dev annotations (../shared/data)."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from galeno.deid.rules import find


def _found(text: str) -> list[tuple[str, str]]:
    return [(s.label, s.text) for s in find(text)]


@pytest.mark.parametrize("text, expected", [
    ("Fecha de ingreso: 14/03/2021.", [("FECHAS", "14/03/2021")]),
    ("Nacido el 14 de marzo de 2021 en Lugo", [("FECHAS", "14 de marzo de 2021")]),
    ("visto el 6-abril-2004 y en mayo 2005, en el año 1996", [("FECHAS", "6-abril-2004"), ("FECHAS", "mayo 2005"),
                                                            ("FECHAS", "año 1996")]),
    ("Tel.: 967 597 100. Fax: 91 336 87 85", [("NUMERO_TELEFONO", "967 597 100"), ("NUMERO_FAX", "91 336 87 85")]),
    ("móvil 620586301 o +34 915-86-80-00", [("NUMERO_TELEFONO", "620586301"), ("NUMERO_TELEFONO", "+34 915-86-80-00")]),
    ("Correo: raquel.caja@uam.es; web www.hospital-x.es/citas.", [("CORREO_ELECTRONICO", "raquel.caja@uam.es"),
                                                                 ("URL_WEB", "www.hospital-x.es/citas")]),
    ("DNI 12345678Z, NIE X-1234567-L", [("ID_SUJETO_ASISTENCIA", "12345678Z"), ("ID_SUJETO_ASISTENCIA", "X-1234567-L")]),
    ("NHC: 2349857.\nNASS: 22 97684351 85\nEpisodio: 1330431",
     [("ID_SUJETO_ASISTENCIA", "2349857"), ("ID_ASEGURAMIENTO", "22 97684351 85"), ("ID_CONTACTO_ASISTENCIAL", "1330431")]),
    ("Dra. Ana Ruiz NºCol: 28 28 54796", [("NOMBRE_PERSONAL_SANITARIO", "Ana Ruiz"),
                                          ("ID_TITULACION_PERSONAL_SANITARIO", "28 28 54796")]),
    ("Nombre:  Pedro.\nApellidos: De Miguel Rivera.\nDomicilio: Calle Carmen Romero, 23, 1D.\n"
     "Localidad/ Provincia: Collado Villalba, Madrid.\nPaís: España.\n",
     [("NOMBRE_SUJETO_ASISTENCIA", "Pedro"), ("NOMBRE_SUJETO_ASISTENCIA", "De Miguel Rivera"),
      ("CALLE", "Calle Carmen Romero, 23, 1D"), ("TERRITORIO", "Collado Villalba, Madrid"), ("PAIS", "España")]),
    ("Médico: Estefanía Romero Selas  NºCol: 28 28 5479.\nRemitido por: Dr. Luis de la Fuente Pérez c/ Mayor 3",
     [("NOMBRE_PERSONAL_SANITARIO", "Estefanía Romero Selas"), ("ID_TITULACION_PERSONAL_SANITARIO", "28 28 5479"),
      ("NOMBRE_PERSONAL_SANITARIO", "Luis de la Fuente Pérez")]),
    ("CP: 28035. Calle Mayor 3, 31008 Pamplona", [("TERRITORIO", "28035"), ("TERRITORIO", "31008")]),
    ("acceso desde 192.168.10.7", [("DIREC_PROT_INTERNET", "192.168.10.7")]),
])
def test_each_format(text, expected):
    assert _found(text) == expected
    assert all(text[s.start:s.end] == s.text for s in find(text))


def test_doses_and_lab_values_are_not_identifiers():
    text = ("Se pautaron 2000 mg de paracetamol, TA 120/80 mmHg, peso 70,5 kg, creatinina 1.2 mg/dl, "
            "½ comprimido cada 8 h, 3 ciclos, PSA 4,5 ng/ml. Nombre del fármaco: ibuprofeno.")
    assert find(text) == []


RULE_TYPES = {  # MEDDOCAN types the rules cover, and the dev recall each reached (2026-12-07)
    "FECHAS": 0.96, "CORREO_ELECTRONICO": 0.98, "NUMERO_TELEFONO": 0.95, "NUMERO_FAX": 0.8,
    "ID_SUJETO_ASISTENCIA": 0.9, "ID_ASEGURAMIENTO": 0.98, "ID_TITULACION_PERSONAL_SANITARIO": 0.98,
    "ID_CONTACTO_ASISTENCIAL": 0.95,
    # the labelled header fields (2026-12-07: 0.978, 0.873, 0.737, 0.804, 0.786)
    "NOMBRE_SUJETO_ASISTENCIA": 0.95, "NOMBRE_PERSONAL_SANITARIO": 0.85, "CALLE": 0.7, "PAIS": 0.78,
    "TERRITORIO": 0.75,
}


def test_recall_and_precision_on_meddocan_dev(shared_data: Path):
    """Every gold span of a type the rules cover is masked whole, at the recall noted per type; and
    nearly everything the rules mask is inside some gold PHI span (of any type)."""
    folder = shared_data / "meddocan" / "dev" / "brat"
    if not folder.is_dir():
        pytest.skip(f"needs MEDDOCAN dev brat files under {folder}")
    total, whole = collections.Counter(), collections.Counter()
    predicted = inside = 0
    for ann in sorted(folder.glob("*.ann")):
        text = ann.with_suffix(".txt").read_bytes().decode("utf-8")  # offsets count CRLF as two characters
        spans = find(text)
        gold = []
        for line in ann.read_text(encoding="utf-8").splitlines():
            if line.startswith("T"):
                kind, start, *_, end = line.split("\t")[1].split(" ")
                gold.append((kind, int(start), int(end)))
        for kind, start, end in gold:
            covered = {i for s in spans for i in range(max(start, s.start), min(end, s.end))}
            total[kind] += 1
            whole[kind] += len(covered) == end - start
        predicted += len(spans)
        inside += sum(any(s.start < e and b < s.end for _, b, e in gold) for s in spans)
    recall = {kind: whole[kind] / total[kind] for kind in RULE_TYPES}
    assert all(recall[k] >= floor for k, floor in RULE_TYPES.items()), recall
    assert inside / predicted >= 0.98, (inside, predicted)
