"""`ray job submit` of the pipeline (``jobs/pipeline.py``) against a real local Ray cluster
(`ray start --head`): corpus → tokenizer → pretraining → NER → promotion → Serve, the way a user
runs it on a cluster. One submission: each pays the runtime environment upload and a driver start.

CI submits the pretraining stage alone (``start_from=pretrain stop_after=pretrain``: ``ray job
submit -- python jobs/pretrain.py`` through the pipeline), training with ``trainer.launcher=local``
over a corpus and tokenizer built in the test: the pipeline's driver starts the stage's process,
which joins the job's cluster, packs on Ray Data there, trains, exports, and tracks and registers
into the store the job was given. Ray Train runs in CI outside a submission
(tests/train/test_pretrain.py), and so does each later stage's job (tests/ner,
tests/test_registry.py, tests/serve); ``make test-extended`` submits all six stages, with Ray
Train, NER, promotion and Serve (4.5 min on 2 cores), and batch prediction (``jobs/predict_ner.py``).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from galeno import paths

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("whole", [pytest.param(True, marks=pytest.mark.extended, id="whole-chain"),
                                   pytest.param(False, id="pretrain")])
def test_pipeline_under_ray_job_submit(ray_head, tmp_path, whole):
    from tests.builders import tracked_run, write_corpus
    from tests.conftest import free_port
    from tests.train.conftest import sample_documents, tiny_overrides

    ray_bin, address, env = ray_head
    corpus, tokenizer, run, ner = (tmp_path / d for d in ("corpus", "tokenizer", "run", "ner"))
    pipeline = {
        "corpus": {"config": [str(tmp_path / "corpus.yaml")]},
        # no upstream folder is named below: the pipeline hands each stage its inputs from the records
        "tokenizer": {"overrides": [f"output={tokenizer}", "vocab_size=2000", "max_length=64",
                                    "eval_fraction=0", "progress=false"]},
        # one Ray Train worker without DeepSpeed (2 workers with DeepSpeed are tests/train/test_pretrain.py's);
        # in CI, world size 1 in the stage's process
        "pretrain": {"overrides": tiny_overrides(None, None, run, **{
            "trainer.num_workers": 1, "trainer.deepspeed": False, "trainer.micro_batch": 8, "trainer.max_steps": 4,
            "trainer.eval_every": 2, "trainer.checkpoint_every": 2,
            "trainer.launcher": "ray" if whole else "local"})},
        "ner": {"config": ["configs/ner/tiny-cpu.yaml"],
                # the preset's batch 8 at a constant 1e-3 tags from the 2nd epoch on (3 seeds tried)
                "overrides": [f"output={ner}", "epochs=4", "data.max_length=64",
                              "trainer.log_every=5"]},
        "serve": {"config": ["configs/serve/local.yaml"],
                  "overrides": [f"port={free_port()}", "max_length=64",
                                "fill_mask.num_cpus=0.5", "ner.num_cpus=0.5"]},
    }
    (tmp_path / "corpus.yaml").write_text(yaml.safe_dump({
        "output": str(corpus), "ray": {"progress_bars": False},
        "sources": [{"name": "pharmaconer", "format": "conll", "path": "data/sample/pharmaconer/train.conll"},
                    {"name": "crawl", "format": "jsonl", "path": "data/sample/crawl"}]}))
    if not whole:  # the two skipped stages' outputs, as they would have written them
        from galeno.config import load
        from galeno.tokenizer import TokenizerConfig, train_tokenizer

        write_corpus(corpus, sample_documents())
        train_tokenizer(load(TokenizerConfig, None, [f"corpus={corpus}", *pipeline["tokenizer"]["overrides"]]))
        pipeline.update(start_from="pretrain", stop_after="pretrain")
    pipeline["log_dir"] = str(tmp_path / "logs")
    preset = tmp_path / "pipeline.yaml"
    preset.write_text(yaml.safe_dump(pipeline))
    done = subprocess.run(
        [ray_bin, "job", "submit", "--address", address, "--runtime-env", "configs/ray/runtime-env.yaml", "--",
         "python", "jobs/pipeline.py", "--config", str(preset)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    logs = done.stdout + done.stderr
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "succeeded" in logs
    # every stage's output contract
    assert ("=== [1/6] corpus ===" in logs) == whole and ("=== [4/6] ner ===" in logs) == whole
    if whole:
        manifest = json.loads(paths.corpus_manifest(corpus).read_text())
        assert set(manifest["sources"]) == {"pharmaconer", "crawl"} and manifest["total"]["documents_out"] > 0
        assert (tokenizer / "tokenizer.json").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["val_loss"] > 0
    # the console: one line per stage and its outcome; everything else is in the stage's log file
    stage_log = tmp_path / "logs" / "3-pretrain.log"
    assert f"[3/6] pretrain: running; full log {stage_log}" in logs
    assert f"=== pretrain: " in logs and f"registered as {summary['registered_model']} ===" in logs
    assert "INFO galeno.train" in stage_log.read_text() and "INFO galeno.train" not in logs
    assert f"full logs of every stage in {tmp_path / 'logs'}" in logs
    assert (paths.model_export(run) / "model.safetensors").is_file()
    if whole:
        assert (paths.train_storage(run) / "tiny-test" / "checkpoint-00000004").is_dir()  # Ray Train's
    # the jobs tracked into the same store as this session (GALENO_HOME reaches the job's driver)
    _, mlrun = tracked_run(run)
    assert mlrun.data.tags["galeno.job"] == "pretrain" and summary["registered_model"].startswith("models:/galeno-mlm/")
    if whole:
        _assert_promoted_and_served(summary, ner, logs)


def _assert_promoted_and_served(summary: dict, ner: Path, logs: str) -> None:
    """The NER model is registered, promotion moved both champion aliases to the versions just
    trained, and the Serve stage answered from them."""
    results = json.loads((ner / "results.json").read_text())
    assert results["registered_model"].startswith("models:/galeno-ner-pharmaconer-sample/")
    # promotion moved the champion aliases to the versions just trained
    from mlflow import MlflowClient

    from galeno.tracking import TrackingConfig, tracking_uri

    client = MlflowClient(tracking_uri(TrackingConfig()))
    for uri in (summary["registered_model"], results["registered_model"]):
        name, version = uri[len("models:/"):].split("/")
        assert str(client.get_model_version_by_alias(name, "champion").version) == version
    # Serve answered both models; the NER one tags the lab results it was sent
    assert "POST /fill-mask -> 200" in logs
    from galeno.serve.page import NER_EXAMPLE

    assert "POST /ner -> 200" in logs
    answer, _ = json.JSONDecoder().raw_decode(logs[logs.index("POST /ner -> 200") + len("POST /ner -> 200"):].lstrip())
    assert answer["entities"], answer
    assert all(NER_EXAMPLE[e["start"]:e["end"]] == e["text"] for e in answer["entities"])
    assert {e["label"] for e in answer["entities"]} <= {"NORMALIZABLES", "NOTNORMALIZABLES", "PROTEINAS"}
    gold = {"creatinina", "urea", "potasio"}
    assert gold & {e["text"] for e in answer["entities"]}, answer  # at least one right


@pytest.mark.slow
@pytest.mark.extended
def test_predict_ner_under_ray_job_submit(ray_head, tmp_path):
    """Batch prediction submitted to a cluster: the job's driver joins it, the actor pool tags every document."""
    import pyarrow.parquet as pq

    from tests.builders import random_tagger, tiny_models

    ray_bin, address, env = ray_head
    tagger = random_tagger(tiny_models(tmp_path / "models")["ner"], tmp_path / "tagger")
    out = tmp_path / "predicted"
    done = subprocess.run(
        [ray_bin, "job", "submit", "--address", address, "--runtime-env", "configs/ray/runtime-env.yaml", "--",
         "python", "jobs/predict_ner.py", "--model", str(tagger), "--source", "med=brat:data/sample/meddocan/dev/brat",
         "--output", str(out), "actors=1,2", "num_cpus=0.5", "max_length=64", "stride=4"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    manifest = json.loads(paths.predictions_manifest(out).read_text())
    rows = pq.read_table(paths.predictions(out)).to_pylist()
    assert manifest["documents"] == {"med": 6} and len(rows) == 6 and all(r["reason"] is None for r in rows)
    assert all(r["text"][e["start"]:e["end"]] == e["text"] for r in rows for e in r["entities"])
    assert sum(len(r["entities"]) for r in rows) > 20
