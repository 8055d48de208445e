"""Tracking and registry against real MLflow stores: the embedded SQLite store, and an
`mlflow server` started on loopback (SQLite backend, proxied artifacts), killed mid-run.

Tiny real models (a 2-layer, 32-wide RoBERTa on a 300-token BPE vocabulary): registered,
promoted under the metric guard, loaded back through ``models:/`` URIs with MLflow's own loader.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("mlflow")
pytest.importorskip("transformers")

from galeno.inference.source import resolve_model  # noqa: E402
from galeno.registry import PromotionRefused, history, promote, register_model  # noqa: E402
from galeno.tracking import RunLogger, TrackingConfig, tracking_uri  # noqa: E402
from tests.conftest import free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NER_LABELS = {0: "O", 1: "B-PROTEINAS", 2: "I-PROTEINAS"}
SENTENCES = [
    "El paciente presenta dolor abdominal y fiebre desde hace tres días.",
    "Se pautó tratamiento con amoxicilina cada ocho horas durante siete días.",
    "La biopsia hepática mostró sobreexpresión de la proteína p53.",
    "La paciente refiere cefalea intensa y náuseas sin vómitos.",
    "Se solicitó una analítica con hemograma y bioquímica completa.",
    "El dolor torácico cedió tras la administración de nitroglicerina.",
]


# --------------------------------------------------------------------------- fixtures
def _save_tiny(model, tokenizer, out: Path, lineage: dict) -> Path:
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "galeno.json").write_text(json.dumps(lineage))
    return out


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A fill-mask and a token-classification model, untrained, with a real tokenizer and lineage."""
    import torch
    from transformers import (AutoTokenizer, RobertaConfig, RobertaForMaskedLM,
                              RobertaForTokenClassification)

    from galeno.tokenizer import TokenizerConfig, train_tokenizer
    from tests.builders import write_corpus

    root = tmp_path_factory.mktemp("tiny-models")
    docs = [{"id": f"d{i}", "source": "sample", "text": "\n".join(SENTENCES[i:] + SENTENCES[:i])}
            for i in range(len(SENTENCES))]
    corpus = write_corpus(root / "corpus", docs)
    report = train_tokenizer(TokenizerConfig(corpus=str(corpus), output=str(root / "tokenizer"), vocab_size=300,
                                             eval_fraction=0.0, max_length=64, progress=False))
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    config = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=66, pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    lineage = {"config_hash": "cfg123", "packing_tag": "pack456", "tokenizer_hash": report["tokenizer_hash"],
               "corpus_manifest_hash": report["corpus_manifest_hash"], "config": {"model": {"hidden_size": 32}}}
    torch.manual_seed(0)
    mlm = _save_tiny(RobertaForMaskedLM(RobertaConfig(**config)), tokenizer, root / "mlm", lineage)
    ner_config = RobertaConfig(**config, num_labels=3, id2label=NER_LABELS,
                               label2id={v: k for k, v in NER_LABELS.items()})
    ner_model = RobertaForTokenClassification(ner_config)
    with torch.no_grad():  # untrained, but every token tagged B-PROTEINAS: entities to check, deterministically
        ner_model.classifier.bias.copy_(torch.tensor([0.0, 50.0, 0.0]))
    ner = _save_tiny(ner_model, tokenizer, root / "ner", {**lineage, "base_model_version": "galeno-mlm/1"})
    return {"mlm": mlm, "ner": ner}


@pytest.fixture(autouse=True)
def _mlflow_uris(monkeypatch):
    """No test may reach a tracking server of the developer's shell; and register_model points the
    process's MLflow at a store (setting $MLFLOW_TRACKING_URI too): each test starts clean."""
    import mlflow

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    yield
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


class MlflowServer:
    """`mlflow server` on loopback with a SQLite backend and proxied artifacts, restartable on its port."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "MlflowServer":
        mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent))
        self.proc = subprocess.Popen(
            [mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--serve-artifacts"],
            stdout=open(self.root / "server.log", "a"), stderr=subprocess.STDOUT, start_new_session=True,
            # no GenAI job runner: it forks seven huey consumers that a registry test does not use
            env={**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")},
                 "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.kill()
        pytest.fail("mlflow server did not start:\n" + (self.root / "server.log").read_text()[-3000:])

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)  # the whole group: the server and its uvicorn worker
            self.proc.wait(timeout=30)
        self.proc = None
        deadline = time.time() + 30
        while time.time() < deadline:  # the worker may still hold the port for a moment
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.2)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield srv
    srv.kill(signal.SIGTERM)


def _get(uri: str, path: str, **query) -> dict:
    with urllib.request.urlopen(f"{uri}{path}?{urllib.parse.urlencode(query)}", timeout=10) as resp:
        return json.loads(resp.read())


# --------------------------------------------------------------------------- the shared flow
def _registry_flow(cfg: TrackingConfig, models: dict[str, Path], cache: Path) -> None:
    """Register, promote under the guard, force, load by alias and by version: on any store."""
    import mlflow.pyfunc
    import pandas as pd
    from transformers import AutoModelForMaskedLM

    v1 = register_model(models["mlm"], "galeno-mlm", metrics={"val_loss": 2.5}, cfg=cfg)
    v2 = register_model(models["mlm"], "galeno-mlm", metrics={"val_loss": 3.0}, cfg=cfg,
                        lineage={"config_hash": "cfg789"})
    assert (v1, v2) == ("1", "2")
    mc = mlflow.MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)
    tags = mc.get_model_version("galeno-mlm", v2).tags
    assert tags["metric.val_loss"] == "3.0" and tags["config_hash"] == "cfg789"
    assert tags["packing_tag"] == "pack456" and len(tags["tokenizer_hash"]) == 12 and tags["corpus_manifest_hash"]
    assert "config" not in tags  # nested lineage stays in galeno.json, inside the model

    first = promote("galeno-mlm", v1, cfg=cfg, reason="first model", user="ana")
    assert first["previous_version"] is None and first["changed"]
    with pytest.raises(PromotionRefused, match=r"val_loss 3 is higher than version 1's 2.5"):
        promote("galeno-mlm", v2, cfg=cfg, reason="try")
    assert str(mc.get_model_version_by_alias("galeno-mlm", "champion").version) == v1
    forced = promote("galeno-mlm", v2, force=True, cfg=cfg, reason="drill", user="luis")
    assert forced["forced"] and forced["previous_version"] == v1
    assert str(mc.get_model_version_by_alias("galeno-mlm", "champion").version) == v2
    records = [json.loads(v) for k, v in mc.get_model_version("galeno-mlm", v2).tags.items()
               if k.startswith("promotion.champion.")]
    assert len(records) == 1 and records[0]["who"] == "luis" and records[0]["why"] == "drill" and records[0]["when"]
    assert [(r["version"], r["who"]) for r in history("galeno-mlm", "champion", cfg=cfg)] == [("1", "ana"), ("2", "luis")]
    promote("galeno-mlm", v1, cfg=cfg, reason="back to the better one")  # better than v2: no force needed

    mlflow.set_tracking_uri(cfg.tracking_uri)
    mlflow.set_registry_uri(cfg.tracking_uri)
    for uri in ("models:/galeno-mlm@champion", "models:/galeno-mlm/2"):
        model = mlflow.pyfunc.load_model(uri)
        out = model.predict(["El paciente presenta dolor <mask> y fiebre."], params={"top_k": 3})
        assert len(out) == 1 and len(out[0]) == 3
        assert all({"token_str", "token", "score", "sequence"} <= set(p) for p in out[0])
        assert all(isinstance(p["score"], float) and "<mask>" not in p["sequence"] for p in out[0])
    two = model.predict(["<mask> dolor.", "Fiebre <mask> y <mask>."])  # default top_k, two masks
    assert [len(x) for x in two] == [5, 10] and {p["mask"] for p in two[1]} == {0, 1}

    hf_dir = resolve_model("models:/galeno-mlm@champion", cfg, cache=cache)
    logged = Path(hf_dir).parent.parent
    assert logged == cache / "galeno-mlm" / "1"
    requirements = (logged / "requirements.txt").read_text().split()
    assert {r.split("==")[0] for r in requirements} == {
        "mlflow", "torch", "transformers", "tokenizers", "safetensors", "numpy", "pandas"}  # no torchvision
    assert (logged / "code" / "galeno" / "registry.py").is_file() and not list(logged.glob("*.pkl"))
    assert AutoModelForMaskedLM.from_pretrained(hf_dir).config.hidden_size == 32
    assert json.loads((Path(hf_dir) / "galeno.json").read_text())["config_hash"] == "cfg123"
    assert resolve_model(str(models["mlm"]), cfg) == str(models["mlm"])

    ner_version = register_model(models["ner"], "galeno-ner-pharmaconer", kind="ner",
                                 metrics={"dev_f1": 0.5, "dev_precision": 0.4}, cfg=cfg)
    assert mc.get_model_version("galeno-ner-pharmaconer", ner_version).tags["base_model_version"] == "galeno-mlm/1"
    promote("galeno-ner-pharmaconer", ner_version, cfg=cfg, reason="first NER")
    ner = mlflow.pyfunc.load_model("models:/galeno-ner-pharmaconer@champion")
    text = "La proteína p53 se expresa en el tejido."
    entities = ner.predict([text])[0]
    assert entities and ner.predict(pd.DataFrame({"text": [text, text]})) == [entities, entities]
    for e in entities:
        assert e["entity_group"] == "PROTEINAS" and isinstance(e["score"], float)
        assert 0 <= e["start"] < e["end"] <= len(text) and text[e["start"]:e["end"]] == e["word"].strip()


# --------------------------------------------------------------------------- embedded store
def test_embedded_store_register_promote_load(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("GALENO_HOME", str(tmp_path / "home"))
    cfg = TrackingConfig()
    uri = tracking_uri(cfg)
    assert uri == f"sqlite:///{tmp_path / 'home' / 'mlflow' / 'mlflow.db'}"
    _registry_flow(TrackingConfig(tracking_uri=uri), tiny_models, tmp_path / "cache")
    assert (tmp_path / "home" / "mlflow" / "artifacts").is_dir()  # our experiment's artifact location

    # A fresh process (a Serve replica) loads the logged model with galeno taken from the model
    # itself, and without unpickling anything.
    logged = tmp_path / "cache" / "galeno-mlm" / "1"
    probe = ("import sys, mlflow.pyfunc; m = mlflow.pyfunc.load_model(sys.argv[1]); "
             "out = m.predict(['Dolor <mask>.'], params={'top_k': 2}); "
             "print(sys.modules['galeno'].__file__, len(out[0]))")
    done = subprocess.run([sys.executable, "-c", probe, str(logged)], capture_output=True, text=True,
                          cwd=tmp_path, env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                                             "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"})
    assert done.returncode == 0, done.stderr[-2000:]
    module_file, n = done.stdout.split()[-2:]
    assert Path(module_file).is_relative_to(logged / "code") and n == "2"

    # A fresh process resolves a registry URI against the store it is given, not MLflow's global
    # default (which would be a new ./mlflow.db in its working directory: a Serve replica's case).
    elsewhere = tmp_path / "replica"
    elsewhere.mkdir()
    probe = ("import sys; from galeno.inference.source import resolve_model; from galeno.tracking import TrackingConfig; "
             "print(resolve_model('models:/galeno-mlm@champion', TrackingConfig(tracking_uri=sys.argv[1]), sys.argv[2]))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") and k != "GALENO_HOME"}
    done = subprocess.run([sys.executable, "-c", probe, uri, str(elsewhere / "cache")], capture_output=True,
                          text=True, cwd=elsewhere, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (Path(done.stdout.split()[-1]) / "config.json").is_file() and not (elsewhere / "mlflow.db").exists()


def test_tracking_config_refuses_file_stores_and_env_overrides(monkeypatch):
    with pytest.raises(ValueError, match="3.13"):
        TrackingConfig(tracking_uri="artifacts/mlruns")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert tracking_uri(TrackingConfig()) == "http://mlflow.internal:5000"
    assert tracking_uri(TrackingConfig(tracking_uri="sqlite:////x/db")) == "sqlite:////x/db"


def test_promote_cli_exit_code_on_refusal(tiny_models, tmp_path, capsys):
    from galeno.registry_cli import main

    cfg = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'cli.db'}", artifact_location=str(tmp_path / "a"))
    for loss in (1.0, 1.5):
        register_model(tiny_models["mlm"], "galeno-mlm", metrics={"val_loss": loss}, cfg=cfg)
    base = ["--model", "galeno-mlm", "--tracking-uri", cfg.tracking_uri]
    assert main(base + ["--version", "1", "--reason", "first"])["version"] == "1"
    with pytest.raises(SystemExit) as refused:
        main(base + ["--version", "2"])
    assert refused.value.code == 2 and "promotion refused" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --force without --reason is a usage error
        main(base + ["--version", "2", "--force"])
    done = subprocess.run([sys.executable, str(REPO / "jobs" / "promote.py"), *base, "--version", "2",
                           "--force", "--reason", "drill"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["forced"] is True


# --------------------------------------------------------------------------- a real server
def test_server_register_promote_load_and_rest(tiny_models, server, tmp_path):
    cfg = TrackingConfig(tracking_uri=server.uri)
    _registry_flow(cfg, tiny_models, tmp_path / "cache")
    found = _get(server.uri, "/api/2.0/mlflow/registered-models/search")["registered_models"]
    by_name = {m["name"]: m for m in found}
    assert set(by_name) == {"galeno-mlm", "galeno-ner-pharmaconer"}
    assert {"alias": "champion", "version": "1"} in by_name["galeno-mlm"]["aliases"]
    alias = _get(server.uri, "/api/2.0/mlflow/registered-models/alias", name="galeno-mlm", alias="champion")
    version = alias["model_version"]
    assert version["version"] == "1"
    assert {"key": "metric.val_loss", "value": "2.5"} in version["tags"]
    # the weights went through the server's artifact proxy, not a path on this machine
    assert list((server.root / "artifacts").rglob("model.safetensors"))


def test_run_logger_survives_a_server_killed_mid_run(server, caplog):
    from mlflow import MlflowClient

    cfg = TrackingConfig(tracking_uri=server.uri, experiment="resilience", flush_every=10_000, flush_seconds=3600)
    logger = RunLogger(cfg).start({"trainer": {"lr": 1e-4, "betas": [0.9, 0.98]}, "name": "x" * 7000},
                                  tags={"galeno.job": "test"}, run_name="killed-mid-run")
    for step in range(5):
        logger.log_metrics({"loss": 10.0 - step, "note": "skipped", "lr": 1e-4}, step)
    assert logger.flush() and logger.run_id
    with caplog.at_level(logging.WARNING, logger="galeno.tracking"):
        server.kill()
        for step in range(5, 15):
            logger.log_metrics({"loss": 10.0 - step}, step)
        assert not logger.flush() and not logger.flush()
        outage = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(outage) == 1 and "training goes on" in outage[0].getMessage()
        server.start()  # same port, same SQLite file
        assert logger.flush()
    assert logger.end("FINISHED")
    mc = MlflowClient(tracking_uri=server.uri)
    history_ = mc.get_metric_history(logger.run_id, "loss")
    assert sorted(m.step for m in history_) == list(range(15))
    run = mc.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.betas"] == "[0.9, 0.98]" and len(run.data.params["name"]) == 6000
    assert run.data.tags["galeno.job"] == "test" and run.data.tags["sys.python"]
    assert "note" not in run.data.metrics


def test_run_logger_never_raises_when_the_server_never_answers(caplog):
    cfg = TrackingConfig(tracking_uri=f"http://127.0.0.1:{free_port()}", max_buffered=10, flush_every=5,
                         flush_seconds=0.2, end_timeout=5)
    with caplog.at_level(logging.WARNING, logger="galeno.tracking"):
        logger = RunLogger(cfg).start({"a": 1}, run_name="nowhere")
        for step in range(25):
            logger.log_metrics({"loss": float(step)}, step)
        logger.log_input_dataset("corpus", "abc123", source="/tmp/corpus", profile={"documents": 3})
        assert logger.end() is False
    messages = [r.getMessage() for r in caplog.records]
    assert sum("failed" in m for m in messages) == 1
    assert any("dropping the oldest" in m for m in messages)
    assert any("10 metric points" in m for m in messages)  # what is lost is counted


def test_run_logger_embedded_store_inputs_artifacts_and_registration(tiny_models, tmp_path, caplog):
    from mlflow import MlflowClient

    cfg = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'db'}", artifact_location=str(tmp_path / "art"))
    (tmp_path / "report.md").write_text("# report\n")
    with RunLogger(cfg).start({"data": {"seq_len": 64}}, run_name="embedded") as logger:
        logger.log_input_dataset("corpus", "0123456789ab", source=str(tmp_path), context="training",
                                 schema={"text": "string"}, profile={"documents": 42})
        logger.log_artifact(tmp_path / "report.md")
        logger.log_metrics({"loss": 1.0, "bad key!": 2.0}, 1)
        assert logger.flush()
        version = register_model(tiny_models["mlm"], "galeno-mlm", metrics={"val_loss": 1.0},
                                 run_id=logger.run_id, cfg=cfg)
    assert any("'bad key!' not sent" in r.getMessage() for r in caplog.records)
    mc = MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)
    assert mc.get_model_version("galeno-mlm", version).run_id == logger.run_id
    run = mc.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.data.params["data.seq_len"] == "64"
    assert set(run.data.metrics) == {"loss", "val_loss"}
    dataset = run.inputs.dataset_inputs[0].dataset
    assert (dataset.name, dataset.digest, json.loads(dataset.profile)) == ("corpus", "0123456789ab", {"documents": 42})
    assert {f.path for f in MlflowClient(tracking_uri=cfg.tracking_uri).list_artifacts(logger.run_id)} == {
        "config.json", "report.md"}


@pytest.mark.slow
def test_mlflow_ui_is_announced_only_once_it_answers(tmp_path):
    """`make mlflow-ui` (jobs/mlflow_ui.py) prints its ready line only when a browser would get a page,
    and a port that is taken is an error naming the log, not a silent hang."""
    import os
    import subprocess
    import sys
    import urllib.request

    env = {**os.environ, "GALENO_HOME": str(tmp_path)}
    port = free_port()
    proc = subprocess.Popen([sys.executable, "jobs/mlflow_ui.py", "--port", str(port)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "ready at" in line:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:  # at once, first try
                    assert page.status == 200
                break
        assert lines and f"MLflow UI ready at http://127.0.0.1:{port}" in lines[-1], lines
        assert len(lines) == 2 and "ui.log" in lines[0]  # MLflow's own output went to the log
        assert (tmp_path / "mlflow" / "ui.log").is_file()
        # a second UI on the same port fails clearly (the first one's /health must not pass for its own)
        done = subprocess.run([sys.executable, "jobs/mlflow_ui.py", "--port", str(port), "--timeout", "60"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and f"port {port} is in use" in done.stderr, done.stderr[-2000:]
        assert "ready at" not in done.stdout
    finally:
        proc.terminate()
        proc.wait(timeout=30)
