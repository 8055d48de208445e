"""De-identification as the corpus job's first step, through the whole job on real MEDDOCAN documents
(issue 24, item 3), and the same step as its own job (jobs/deidentify.py, item 4).

The model is an untrained tagger built here whose labels vary with the context (X and Y), so the
model path runs for real; what must be masked for certain is what the rules find, which is checked
against the gold MEDDOCAN spans: no gold identifier the rules cover may reach any file the job
writes, and the manifest counts the replacements per type and per source.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from galeno.deid.evaluate import read_brat_gold
from galeno.deid.rules import find
from tests.builders import random_tagger, tiny_models

pytest.importorskip("transformers")
REPO = Path(__file__).resolve().parents[2]
DOCS = 12


@pytest.fixture(scope="module")
def notes(shared_data: Path, tmp_path_factory) -> Path:
    """The first DOCS MEDDOCAN dev documents (brat), and the gold identifiers the rules cover in them."""
    source = shared_data / "meddocan" / "dev" / "brat"
    if not source.is_dir():
        pytest.skip(f"needs MEDDOCAN dev under {source}")
    folder = tmp_path_factory.mktemp("notes") / "brat"
    folder.mkdir()
    for txt in sorted(source.glob("*.txt"))[:DOCS]:
        shutil.copy(txt, folder / txt.name)
        shutil.copy(txt.with_suffix(".ann"), folder / f"{txt.stem}.ann")
    return folder


def _rule_covered_gold(folder: Path) -> list[str]:
    """Gold identifier strings (6+ characters, so that they are unique enough to grep) wholly inside a rule span."""
    out = []
    for _, text, gold in read_brat_gold(folder):
        spans = find(text)
        for g in gold:
            value = text[g.start:g.end]
            if len(value) >= 6 and any(s.start <= g.start and g.end <= s.end for s in spans):
                out.append(value)
    return sorted(set(out))


@pytest.fixture(scope="module")
def tagger(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("deid-model")
    return random_tagger(tiny_models(root / "tiny")["ner"], root / "tagger")


def _job(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _files_outside_documents(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.is_file() and "documents" not in p.relative_to(out).parts[:1]]


def test_corpus_job_deidentifies_first_and_counts_per_type_and_source(notes, tagger, tmp_path):
    public = tmp_path / "public"
    public.mkdir()
    # a public source that opts out: its date must stay as it was
    (public / "article.txt").write_text("El ensayo clínico se publicó el 14/03/2019 en una revista española de "
                                        "cardiología con los resultados de seguimiento de los pacientes tratados.\n")
    config = tmp_path / "corpus.yaml"
    config.write_text(f"""
sources:
  - {{name: notas, format: brat, path: "{notes}"}}
  - {{name: publico, format: text, path: "{public}", deid: false}}
output: {tmp_path / "corpus"}
""")
    _job("jobs/clean_corpus.py", "--config", str(config), "--deidentify", str(tagger), "ray.num_cpus=2")
    out = tmp_path / "corpus"
    manifest = json.loads((out / "manifest.json").read_text())
    notas, publico = manifest["sources"]["notas"], manifest["sources"]["publico"]
    # every note was de-identified (and is kept or rejected with a reason), the public source was not
    assert notas["deid_documents"] == notas["documents_in"] == DOCS
    assert publico["deid_documents"] == 0 and publico["deid_replacements"] == {}
    replaced = notas["deid_replacements"]
    # a rule span inside a longer model span takes the model's label (X, Y): count what the rules name alone
    assert replaced.get("FECHAS", 0) >= DOCS and replaced.get("CORREO_ELECTRONICO", 0) >= 1
    assert {"X", "Y"} & set(replaced), replaced  # the model's spans were replaced too
    assert manifest["total"]["deid_replacements"]["FECHAS"] == replaced["FECHAS"]
    assert manifest["config"]["deid"]["model"] == str(tagger)
    report = (out / "report.md").read_text()
    assert "Identifiers replaced by [LABEL]" in report and "Opted out: publico" in report

    import pyarrow.parquet as pq

    texts: dict[str, list[str]] = {}
    for f in sorted((out / "documents").glob("*.parquet")):
        for r in pq.read_table(f).to_pylist():
            texts.setdefault(r["source"], []).append(r["text"])
    assert ["14/03/2019" in t for t in texts["publico"]] == [True]
    assert notas["documents_out"] >= 1 and len(texts["notas"]) == notas["documents_out"]
    assert any("[FECHAS]" in t for t in texts["notas"])
    # no gold identifier the rules cover is in any file the job wrote, documents/ included
    identifiers = _rule_covered_gold(notes)
    assert len(identifiers) >= DOCS
    for path in [p for p in out.rglob("*") if p.is_file()]:
        data = path.read_bytes()
        if path.suffix == ".parquet":
            data = json.dumps(pq.read_table(path).to_pylist(), ensure_ascii=False, default=str).encode()
        leaked = [i for i in identifiers if i.encode() in data]
        assert not leaked, f"{path.relative_to(out)} holds {leaked[:3]}"


def test_rules_only_and_a_changed_deid_config_reuse_nothing(notes, tmp_path):
    """`--deidentify rules` needs no model; a run with another de-identification config never reuses the
    shards of a run without it (the local tag covers the step)."""
    out = tmp_path / "corpus"
    base = ["jobs/clean_corpus.py", "--source", f"notas=brat:{notes}", "--output", str(out), "ray.num_cpus=2"]
    _job(*base)
    plain = json.loads((out / "manifest.json").read_text())
    assert plain["sources"]["notas"]["deid_documents"] == 0
    _job(*base, "--deidentify", "rules")
    masked = json.loads((out / "manifest.json").read_text())
    assert masked["local_tag"] != plain["local_tag"] and masked.get("shards_skipped_on_resume", 0) == 0
    assert masked["sources"]["notas"]["deid_documents"] == DOCS
    assert set(masked["sources"]["notas"]["deid_replacements"]) <= {
        "FECHAS", "CORREO_ELECTRONICO", "NUMERO_TELEFONO", "NUMERO_FAX", "ID_SUJETO_ASISTENCIA", "ID_ASEGURAMIENTO",
        "ID_TITULACION_PERSONAL_SANITARIO", "ID_CONTACTO_ASISTENCIAL", "TERRITORIO", "URL_WEB", "DIREC_PROT_INTERNET",
        "NOMBRE_SUJETO_ASISTENCIA", "NOMBRE_PERSONAL_SANITARIO", "CALLE", "PAIS"}


def test_deidentify_job_writes_masked_notes_and_counts(notes, tagger, tmp_path):
    out = tmp_path / "masked"
    _job("jobs/deidentify.py", "--model", str(tagger), "--source", f"notas=brat:{notes}", "--output", str(out),
         "actors=1", "ray.num_cpus=2")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["documents"] == {"notas": DOCS} and manifest["by_reason"] == {"notas": {"deidentified": DOCS}}
    assert manifest["replacements"]["notas"]["FECHAS"] >= DOCS and manifest["text_files"] == DOCS
    import pyarrow.parquet as pq

    rows = [r for f in sorted((out / "deidentified").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    originals = {doc_id: text for doc_id, text, _ in read_brat_gold(notes)}
    for row in rows:
        original = originals[row["id"]]
        assert row["spans"] and all(set(s) == {"label", "start", "end", "by"} for s in row["spans"])
        # the masked text is the original with each span replaced by its label, in order
        rebuilt, at = [], 0
        for s in row["spans"]:
            rebuilt += [original[at:s["start"]], f"[{s['label']}]"]
            at = s["end"]
        assert "".join(rebuilt) + original[at:] == row["text"]
        assert (out / "text" / "notas" / f"{row['id']}.txt").read_text() == row["text"]
    for path in [p for p in out.rglob("*") if p.is_file()]:
        data = path.read_bytes() if path.suffix != ".parquet" else json.dumps(
            pq.read_table(path).to_pylist(), ensure_ascii=False).encode()
        assert not [i for i in _rule_covered_gold(notes) if i.encode() in data], path
