"""Nothing clinical in logs (issue 24, item 6): a canary note with unique identifiers goes through the
corpus job (with --deidentify), the tokenizer, pretraining and a Serve request; then every file the run
wrote outside the corpus's documents/ is searched — rejected rows, the manifest and report, the
tokenizer and model folders, job output, Ray's session logs and the MLflow store. No canary string may
be in any of them.

The de-identification model is an untrained tagger built here; the canary's identifiers sit where a
clinical report puts them (labelled header fields, a phone, an e-mail, a date), which the rules mask
whatever the model says. The Serve request carries the raw canary: Serve must answer it without
writing it anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.builders import random_tagger, tiny_models
from tests.conftest import free_port

httpx = pytest.importorskip("httpx")
pytest.importorskip("transformers")
REPO = Path(__file__).resolve().parents[2]

CANARIES = ["Zorbalina", "Quetzaltepec", "Urdangoiti", "7391846", "Xilófono Ambarino", "Villaquemada de Ulloa",
            "29/02/1956", "Wenceslao Ptolomeo Garabito", "28 28 91735", "689 417 253", "zquetzal@canario-unico.es"]
NOTE = """Datos del paciente.
Nombre: Zorbalina.
Apellidos: Quetzaltepec Urdangoiti.
NHC: 7391846.
Domicilio: Calle Xilófono Ambarino 77.
Localidad/ Provincia: Villaquemada de Ulloa, Ourense.
Fecha de nacimiento: 29/02/1956.
Médico: Wenceslao Ptolomeo Garabito NºCol: 28 28 91735.
Teléfono de contacto: 689 417 253. Correo electrónico: zquetzal@canario-unico.es
Informe clínico del paciente: mujer de 68 años que acude a urgencias por dolor torácico opresivo de dos horas de \
evolución, irradiado al brazo izquierdo, acompañado de sudoración profusa y náuseas. En la exploración física \
destaca tensión arterial de 150/90 mmHg y frecuencia cardiaca de 98 latidos por minuto. El electrocardiograma \
muestra elevación del segmento ST en la cara inferior. Se inicia tratamiento antiagregante y se traslada a la \
sala de hemodinámica para cateterismo urgente, que muestra una oclusión de la coronaria derecha.
"""


def _run(*args: str, log: Path, env: dict) -> None:
    with open(log, "a") as fh:
        out = subprocess.run([sys.executable, *args], stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                             timeout=900)
    assert out.returncode == 0, log.read_text()[-4000:]


def _holding(folder: Path, skip: Path | None = None) -> dict[str, list[str]]:
    """Canary strings found in each file under ``folder`` (Parquet read as rows, other files as bytes)."""
    import pyarrow.parquet as pq

    found = {}
    # each canary, its words of 5+ letters alone, as \u escapes (JSON) and as a byte-level BPE spells it
    forms = {c: {c} | {w for w in c.split() if len(w) >= 5} for c in CANARIES}
    for c in CANARIES:
        forms[c] |= {json.dumps(f)[1:-1] for f in forms[c]} | {f.encode().decode("latin-1") for f in forms[c]}
    for path in folder.rglob("*"):
        if not path.is_file() or path.is_symlink() or (skip is not None and skip in path.parents):
            continue
        data = path.read_bytes()
        if path.suffix == ".parquet":
            data += json.dumps(pq.read_table(path).to_pylist(), ensure_ascii=False, default=str).encode()
        hits = [c for c in CANARIES if any(f.encode() in data or f.encode("utf-16-le") in data for f in forms[c])]
        if hits:
            found[str(path)] = hits
    return found


def test_no_canary_string_outside_the_documents(tmp_path, isolated_tracking):
    work = tmp_path / "run"
    (work / "notes").mkdir(parents=True)
    # Windows line endings: the step runs before the corpus job normalises them
    (work / "notes" / "canary.txt").write_bytes(NOTE.replace("\n", "\r\n").encode("utf-8"))
    tagger = random_tagger(tiny_models(tmp_path / "tiny")["ner"], tmp_path / "tagger")
    ray_dir = Path(tempfile.mkdtemp(prefix="gc", dir="/tmp"))  # short: Ray's socket paths must fit
    log = work / "jobs.log"
    env = {**os.environ, "RAY_ADDRESS": ""}
    ray_opts = ["ray.num_cpus=2", f"ray.temp_dir={ray_dir}"]
    try:
        corpus = work / "corpus"
        config = work / "corpus.yaml"
        config.write_text(f"""
sources:
  - {{name: notas, format: text, path: "{work / 'notes'}"}}
  - {{name: meddocan, format: brat, path: "{REPO / 'data/sample/meddocan/train/brat'}", deid: false}}
  - {{name: pharmaconer, format: conll, path: "{REPO / 'data/sample/pharmaconer/train.conll'}", deid: false}}
output: {corpus}
shard_mb: 0.25
num_partitions: 2
output_shards: 2
""")
        _run("jobs/clean_corpus.py", "--config", str(config), "--deidentify", str(tagger), *ray_opts, log=log, env=env)
        manifest = json.loads((corpus / "manifest.json").read_text())
        assert manifest["sources"]["notas"]["deid_documents"] == 1
        assert manifest["sources"]["notas"]["documents_out"] == 1, manifest["sources"]["notas"]
        _run("jobs/train_tokenizer.py", "--config", "configs/tokenizer/sample.yaml", "--corpus", str(corpus),
             f"output={work / 'tokenizer'}", "eval_paths=[]", log=log, env=env)
        _run("jobs/pretrain.py", "--config", "configs/pretrain/tiny-cpu.yaml", f"data.corpus={corpus}",
             f"data.tokenizer={work / 'tokenizer'}", f"output={work / 'pretrain'}", "trainer.max_steps=6",
             "trainer.eval_every=3", "trainer.checkpoint_every=3", "optim.warmup_steps=1", "trainer.log_every=1",
             *ray_opts, log=log, env=env)
        port = free_port()
        with open(log, "a") as fh:
            server = subprocess.Popen(
                [sys.executable, "jobs/serve.py", "--fill-mask-model", str(work / "pretrain"), "--deid-model", str(tagger),
                 "--port", str(port), "max_length=64", "fill_mask.num_cpus=0.5", "deid.num_cpus=0.5", *ray_opts],
                stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
        try:
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
            deadline = time.monotonic() + 300
            while True:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline and server.poll() is None, log.read_text()[-4000:]
                time.sleep(1)
            answer = client.post("/deidentify", json={"texts": [NOTE, NOTE.replace("\n", "\r\n")]})
            assert answer.status_code == 200, answer.text
            for result in answer.json()["results"]:
                assert not [c for c in CANARIES if c in result["text"]], result["text"]
            assert client.post("/fill-mask", json={"text": "Nombre: Zorbalina <mask> Quetzaltepec, NHC 7391846."}
                               ).status_code == 200
            bad = client.post("/deidentify", json={"text": NOTE, "extra": "Zorbalina"})  # a 422 quotes no input
            assert bad.status_code == 422 and "Zorbalina" not in bad.text
        finally:
            os.killpg(server.pid, signal.SIGINT)
            server.wait(timeout=120)
        # the documents hold the masked note; nothing else the run wrote holds a canary
        documents = _holding(corpus / "documents")
        assert not documents, documents
        leaks = {}
        for folder, skip in ((work, corpus / "documents"), (ray_dir, None), (isolated_tracking, None)):
            leaks.update(_holding(folder, skip))
        leaks.pop(str(work / "notes" / "canary.txt"), None)  # the input itself
        leaks.pop(str(work / "corpus.yaml"), None)
        assert not leaks, leaks
        assert any(ray_dir.rglob("*.log")) or any(ray_dir.rglob("*.out")), "Ray wrote no session logs where expected"
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
