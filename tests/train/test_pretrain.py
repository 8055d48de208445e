"""Real pretraining runs of a tiny RoBERTa: Ray Train + DeepSpeed on 2 workers, and world size 1 without Ray.

One module-scoped run carries the fault drill (rank 1 SIGKILLs itself mid-run; Ray Train
restarts the workers from the latest checkpoint); a re-run of the same name continues it.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

from galeno import paths
from galeno.config import load
from galeno.train.config import PretrainConfig
from galeno.train.pretrain import run
from tests.builders import tracked_run
from tests.train.conftest import tiny_overrides

pytestmark = pytest.mark.slow


def _metrics(output) -> list[dict]:
    return [json.loads(line) for line in paths.metrics_log(output).read_text().splitlines()]


def _val_losses(rows) -> list[float]:
    return [r["val_loss"] for r in rows if "val_loss" in r]


@pytest.fixture(scope="module")
def ray_run(ray_local, tiny_corpus, tiny_tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain-ray")
    overrides = tiny_overrides(tiny_corpus, tiny_tokenizer, out, **{
        "trainer.num_workers": 2, "trainer.micro_batch": 4, "trainer.max_steps": 30,
        "trainer.kill_at_step": 8, "trainer.max_failures": 1})
    summary = run(load(PretrainConfig, None, overrides))
    return out, overrides, summary


def test_two_workers_with_deepspeed_learn(ray_run, tiny_tokenizer):
    out, _, summary = ray_run
    assert summary["steps"] == 30
    rows = _metrics(out)
    losses = _val_losses(rows)
    assert len(losses) >= 3
    vocab = len(json.loads((tiny_tokenizer / "tokenizer.json").read_text())["model"]["vocab"])
    assert rows[0]["step"] == 1 and rows[0]["loss"] > math.log(vocab) - 0.3   # starts near uniform
    assert losses[-1] < rows[0]["loss"] - 0.5
    assert losses[-1] < losses[0] - 0.1      # and is still learning at the end
    assert all(r["tokens_per_second"] > 0 and r["mfu"] > 0 for r in rows)


def test_killed_worker_resumes_from_the_checkpoint(ray_run):
    out, _, _ = ray_run
    rows = _metrics(out)
    first_attempt = [r["step"] for r in rows if not r["resumed_from_step"]]
    assert max(first_attempt) == 7  # rank 1 died inside step 8, before it was logged
    resumed = [r for r in rows if r["resumed_from_step"]]
    assert resumed and resumed[0]["step"] == 6 and {r["resumed_from_step"] for r in resumed} == {5}
    assert rows[-1]["step"] == 30
    checkpoints = sorted(p.name for p in (paths.train_storage(out) / "tiny-test").glob("checkpoint-*"))
    assert checkpoints[-1] == "checkpoint-00000030"


def test_export_loads_in_transformers(ray_run):
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    out, _, summary = ray_run
    model_dir = paths.model_export(out)
    model = AutoModelForMaskedLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert model.config.vocab_size == len(tok)   # padded rows trimmed on export
    fill = pipeline("fill-mask", model=model, tokenizer=tok, top_k=5)
    preds = fill("El paciente presenta <mask> abdominal.")
    assert len(preds) == 5 and all(0 <= p["score"] <= 1 for p in preds)
    lineage = json.loads((model_dir / "galeno.json").read_text())
    assert lineage["tokenizer_hash"] and lineage["corpus_manifest_hash"] and len(lineage["config_hash"]) == 12


def test_the_run_is_tracked_and_the_model_registered(ray_run):
    """Rank 0 streams its metrics into the driver's run across the killed worker's restart; the
    inputs are logged by digest and the model is a registered galeno-mlm version with its lineage."""
    from galeno.inference.source import resolve_model
    from galeno.registry import MLM_MODEL

    out, _, summary = ray_run
    mc, mlrun = tracked_run(out)
    assert mlrun.info.run_id == summary["mlflow_run_id"] and mlrun.info.status == "FINISHED"
    assert mlrun.data.params["trainer.num_workers"] == "2" and mlrun.data.tags["galeno.job"] == "pretrain"
    assert {m.step for m in mc.get_metric_history(mlrun.info.run_id, "loss")} == set(range(1, 31))
    assert len(mc.get_metric_history(mlrun.info.run_id, "val_loss")) >= 3
    lineage = json.loads((paths.model_export(out) / "galeno.json").read_text())
    digests = {d.dataset.name: d.dataset.digest for d in mlrun.inputs.dataset_inputs}
    assert digests["corpus"] == lineage["corpus_manifest_hash"] and digests["tokenizer"] == lineage["tokenizer_hash"]
    assert {a.path for a in mc.list_artifacts(mlrun.info.run_id)} >= {"metrics.jsonl", "inputs", "config.json"}

    name, version = summary["registered_model"].removeprefix("models:/").split("/")
    assert name == MLM_MODEL
    mv = mc.get_model_version(name, version)
    assert mv.run_id == mlrun.info.run_id
    assert mv.tags["corpus_manifest_hash"] == lineage["corpus_manifest_hash"]
    assert float(mv.tags["metric.val_loss"]) == pytest.approx(summary["val_loss"])
    local = resolve_model(summary["registered_model"])
    assert (paths.model_export(out) / "model.safetensors").read_bytes() == (Path(local) / "model.safetensors").read_bytes()


@pytest.mark.extended
def test_resubmitting_the_same_run_continues_it(ray_run):
    """Ray Train restores a finished 2-worker DeepSpeed run by its name. Extended (42 s: a second Ray
    Train run and DeepSpeed set-up); CI continues a world-size-1 run (the next test) and restores
    this run after the fault drill."""
    out, overrides, first = ray_run
    summary = run(load(PretrainConfig, None, [o for o in overrides if not o.startswith("trainer.max_steps")]
                       + ["trainer.max_steps=35"]))
    rows = _metrics(out)
    assert summary["steps"] == 35
    assert rows[-1]["resumed_from_step"] == 30 and rows[-1]["step"] == 35
    mc, mlrun = tracked_run(out)  # one MLflow run, one loss curve
    assert summary["mlflow_run_id"] == first["mlflow_run_id"] == mlrun.info.run_id
    assert max(m.step for m in mc.get_metric_history(mlrun.info.run_id, "loss")) == 35


def test_world_size_one_without_ray_or_deepspeed(tiny_corpus, tiny_tokenizer, tmp_path, ray_local):
    """trainer.launcher=local: this process is the only worker (what a single-GPU box runs)."""
    out = tmp_path / "local"
    summary = run(load(PretrainConfig, None, tiny_overrides(tiny_corpus, tiny_tokenizer, out, **{
        "trainer.launcher": "local", "trainer.deepspeed": False, "trainer.max_steps": 20,
        "trainer.cpus_per_worker": 1})))
    losses = _val_losses(_metrics(out))
    assert summary["steps"] == 20 and losses[-1] < losses[0]
    assert (paths.model_export(out) / "model.safetensors").is_file()
    mc, mlrun = tracked_run(out)
    assert [m.step for m in mc.get_metric_history(mlrun.info.run_id, "loss")] == list(range(1, 21))
    assert summary["registered_model"].startswith("models:/galeno-mlm/")


def test_rerunning_a_finished_run_continues_it(tiny_corpus, tiny_tokenizer, tmp_path, ray_local):
    """The same name and output with more steps: resumes from the latest checkpoint, in the same MLflow run."""
    out = tmp_path / "again"
    overrides = tiny_overrides(tiny_corpus, tiny_tokenizer, out, **{
        "trainer.launcher": "local", "trainer.deepspeed": False, "trainer.cpus_per_worker": 1,
        "trainer.eval_every": 0, "trainer.checkpoint_every": 2})
    first = run(load(PretrainConfig, None, overrides + ["trainer.max_steps=4"]))
    summary = run(load(PretrainConfig, None, overrides + ["trainer.max_steps=6"]))
    rows = _metrics(out)
    assert first["steps"] == 4 and summary["steps"] == 6
    assert [(r["step"], r["resumed_from_step"]) for r in rows] == [(1, 0), (2, 0), (3, 0), (4, 0), (5, 4), (6, 4)]
    mc, mlrun = tracked_run(out)  # one MLflow run, one loss curve
    assert summary["mlflow_run_id"] == first["mlflow_run_id"] == mlrun.info.run_id
    assert [m.step for m in mc.get_metric_history(mlrun.info.run_id, "loss")] == list(range(1, 7))


def test_a_rerun_says_what_it_reuses_and_a_changed_config_starts_afresh(tiny_corpus, tiny_tokenizer, tmp_path,
                                                                        ray_local, caplog):
    """Rerunning a finished run reuses its packed data and checkpoint, says so, and registers no second
    copy of the same model; a changed optimiser does not resume: it trains afresh in a new MLflow run."""
    out = tmp_path / "same"
    overrides = tiny_overrides(tiny_corpus, tiny_tokenizer, out, **{
        "trainer.launcher": "local", "trainer.deepspeed": False, "trainer.cpus_per_worker": 1,
        "trainer.eval_every": 0, "trainer.checkpoint_every": 2, "trainer.max_steps": 4})
    first = run(load(PretrainConfig, None, overrides))
    caplog.set_level(logging.INFO)
    again = run(load(PretrainConfig, None, overrides))
    assert "reusing the packed sequences" in caplog.text and "resuming from the checkpoints" in caplog.text
    assert "not registered again" in caplog.text
    assert again["registered_model"] == first["registered_model"] and again["steps"] == 4
    caplog.clear()
    changed = run(load(PretrainConfig, None, overrides + ["optim.lr=0.002"]))
    assert "not resuming: optim changed since they were written" in caplog.text
    assert [(r["step"], r["resumed_from_step"]) for r in _metrics(out)] == [(s, 0) for s in range(1, 5)]
    assert changed["registered_model"] != first["registered_model"]
    assert changed["mlflow_run_id"] != first["mlflow_run_id"]
    assert list(out.glob("checkpoints-stale-*")) and list(out.glob("metrics-stale-*.jsonl"))


def test_a_tracking_server_that_never_answers_does_not_stop_training(tiny_corpus, tiny_tokenizer, tmp_path,
                                                                      ray_local, caplog):
    """Down from start to end: the job trains, exports and says the model is not registered."""
    from tests.conftest import free_port

    out = tmp_path / "down"
    with caplog.at_level(logging.WARNING):
        summary = run(load(PretrainConfig, None, tiny_overrides(tiny_corpus, tiny_tokenizer, out, **{
            "trainer.launcher": "local", "trainer.deepspeed": False, "trainer.max_steps": 4,
            "trainer.eval_every": 0, "trainer.cpus_per_worker": 1,
            "tracking.tracking_uri": f"http://127.0.0.1:{free_port()}", "tracking.end_timeout": 5})))
    assert summary["steps"] == 4 and summary["registered_model"] is None
    assert (paths.model_export(out) / "model.safetensors").is_file()
    assert not paths.mlflow_run_file(out).exists()
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "training goes on" in warnings and "is not registered" in warnings
