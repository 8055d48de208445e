"""Rebuild data/sample/ from ../shared/data (run from the repo root): python data/make_sample.py

The sample is a deterministic slice of the licensed corpora (see data/sample/README.md for
attribution) plus a small synthetic crawl file with the kinds of mess a web crawl has.
"""

import json
import re
import shutil
from pathlib import Path

SHARED = Path("../shared/data")
OUT = Path("data/sample")


def conll_slice(src: Path, dst: Path, n_sentences: int) -> None:
    blocks = src.read_text(encoding="utf-8").strip().split("\n\n")[:n_sentences]
    dst.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")


def bioc_slice(src: Path, dst: Path, n_docs: int) -> None:
    text = src.read_text(encoding="utf-8")
    head, _, rest = text.partition("<document>")
    docs = re.findall(r"<document>.*?</document>", "<document>" + rest, flags=re.S)
    dst.write_text(head + "".join(docs[:n_docs]) + "</collection>\n", encoding="utf-8")


def main() -> None:
    shutil.rmtree(OUT / "pharmaconer", ignore_errors=True)
    shutil.rmtree(OUT / "meddocan", ignore_errors=True)
    shutil.rmtree(OUT / "scielo", ignore_errors=True)
    (OUT / "pharmaconer").mkdir(parents=True)
    conll_slice(SHARED / "pharmaconer/train.conll", OUT / "pharmaconer/train.conll", 500)
    conll_slice(SHARED / "pharmaconer/dev.conll", OUT / "pharmaconer/dev.conll", 200)
    for split, n in (("train", 14), ("dev", 6)):
        stems = sorted(p.stem for p in (SHARED / f"meddocan/{split}/brat").glob("*.txt"))[:n]
        for sub, exts in (("brat", (".txt", ".ann")), ("xml", (".xml",))):
            (OUT / f"meddocan/{split}/{sub}").mkdir(parents=True, exist_ok=True)
            for stem in stems if sub == "brat" else stems[:4]:  # a few XML twins for the i2b2 reader
                for ext in exts:
                    shutil.copy(SHARED / f"meddocan/{split}/{sub}/{stem}{ext}",
                                OUT / f"meddocan/{split}/{sub}/{stem}{ext}")
    (OUT / "scielo").mkdir(parents=True)
    bioc_slice(SHARED / "scielo/es-health.bioc.xml", OUT / "scielo/es-health.bioc.xml", 200)
    bioc_slice(SHARED / "scielo/pt-health.bioc.xml", OUT / "scielo/pt-health.bioc.xml", 40)
    write_crawl(OUT / "crawl" / "crawl.jsonl")


def write_crawl(path: Path) -> None:
    """Synthetic crawl records (written for Galeno, public domain) exercising every rejection path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nav = "Inicio | Quiénes somos | Contacto. Utilizamos cookies para mejorar su experiencia. Aceptar cookies."
    body = ("La hipertensión arterial es uno de los principales factores de riesgo cardiovascular. "
            "Se recomienda medir la presión arterial al menos una vez al año en adultos sanos. "
            "El tratamiento inicial incluye cambios en el estilo de vida, como reducir la sal y hacer ejercicio. "
            "Si la T.A. se mantiene por encima de 140/90 mmHg, el médico puede indicar un IECA, p. ej. enalapril 10 mg/día.")
    records = [
        {"id": "crawl-001", "url": "https://salud.example/hta", "text": nav + "\n" + body + "\n© 2024 Todos los derechos reservados."},
        {"id": "crawl-002", "url": "https://salud.example/hta?utm=1", "text": nav + "\n" + body.replace("al menos", "como mínimo") + "\n© 2024 Todos los derechos reservados."},
        {"url": "https://salud.example/diabetes", "html": "<html><head><title>Diabetes</title></head><body><nav><a href='/'>Inicio</a> <a href='/c'>Contacto</a></nav><article><h1>Diabetes tipo 2</h1><p>La diabetes mellitus tipo 2 se caracteriza por una resistencia a la insulina y una secreción insuficiente de la misma.</p><p>El control glucémico se evalúa con la hemoglobina glicosilada (HbA1c), cuyo objetivo habitual es inferior al 7 %.</p><p>La metformina, a dosis de 850 mg cada 12 h, sigue siendo el fármaco de primera elección en la mayoría de los pacientes.</p></article><footer>Política de privacidad · Aviso legal</footer></body></html>"},
        {"id": "crawl-004", "text": "InflamaciÃ³n crÃ³nica de la mucosa gÃ¡strica asociada a Helicobacter pylori. El paciente recibiÃ³ tratamiento erradicador durante 14 dÃ­as con buena tolerancia."},
        {"id": "crawl-005", "text": "O paciente apresentou melhora clínica após o início do tratamento com antibióticos. A função renal manteve-se estável durante toda a internação hospitalar."},
        {"id": "crawl-006", "text": ""},
        {"id": "crawl-007", "text": "12345 67890 !!!! ???? ---- ==== //// 0000"},
    ]
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    lines.insert(5, '{"id": "crawl-broken", "text": "registro truncado')  # a malformed JSON line
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
