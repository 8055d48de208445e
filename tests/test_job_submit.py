"""`ray job submit` of the pipeline (``jobs/pipeline.py``) against a real local Ray cluster
(`ray start --head`): corpus → tokenizer → pretraining → NER → promotion → Serve, the way a user
runs it on a cluster. One submission: each pays the runtime environment upload and a driver start.

CI submits the middle of the chain, pretraining → NER → promotion (``start_from=pretrain
stop_after=promote``), over a corpus and tokenizer built in the test: Ray Train and Ray Data tasks
and actors get the runtime environment, each stage's process joins the job's cluster, the stages
hand over through disk and the registry. The whole chain takes 4.5 min on 2 cores, 2 of them in
the corpus, tokenizer and Serve stages, whose jobs CI runs outside a submission (tests/corpus,
tests/test_tokenizer.py, tests/serve); ``make test-extended`` submits all six stages.
"""

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from galeno import paths

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("whole", [pytest.param(True, marks=pytest.mark.extended, id="whole-chain"),
                                   pytest.param(False, id="pretrain-to-promote")])
def test_pipeline_under_ray_job_submit(ray_head, tmp_path, whole):
    from tests.builders import tracked_run, write_corpus
    from tests.conftest import free_port
    from tests.train.conftest import sample_documents, tiny_overrides

    ray_bin, address, env = ray_head
    corpus, tokenizer, run, ner = (tmp_path / d for d in ("corpus", "tokenizer", "run", "ner"))
    pipeline = {
        "corpus": {"config": [str(tmp_path / "corpus.yaml")]},
        "tokenizer": {"overrides": [f"corpus={corpus}", f"output={tokenizer}", "vocab_size=2000", "max_length=64",
                                    "eval_fraction=0", "progress=false"]},
        # one Ray Train worker without DeepSpeed: 2 workers with DeepSpeed are tests/train/test_pretrain.py's
        "pretrain": {"overrides": tiny_overrides(corpus, tokenizer, run, **{
            "trainer.num_workers": 1, "trainer.deepspeed": False, "trainer.micro_batch": 8, "trainer.max_steps": 4,
            "trainer.eval_every": 2, "trainer.checkpoint_every": 2})},
        "ner": {"config": ["configs/ner/tiny-cpu.yaml"],
                # the preset's batch 8 at a constant 1e-3 tags from the 2nd epoch on (3 seeds tried): the
                # served model must find entities; without Serve one epoch shows the stage works
                "overrides": [f"model={paths.model_export(run)}", f"output={ner}", f"epochs={4 if whole else 1}",
                              "data.max_length=64", "trainer.log_every=5"]},
        "serve": {"config": ["configs/serve/local.yaml"],
                  "overrides": [f"port={free_port()}", "fill_mask_model=models:/galeno-mlm@champion",
                                "ner_model=models:/galeno-ner-pharmaconer-sample@champion", "max_length=64",
                                "fill_mask.num_cpus=0.5", "ner.num_cpus=0.5"]},
    }
    (tmp_path / "corpus.yaml").write_text(yaml.safe_dump({
        "output": str(corpus), "ray": {"progress_bars": False},
        "sources": [{"name": "pharmaconer", "format": "conll", "path": "data/sample/pharmaconer/train.conll"},
                    {"name": "crawl", "format": "jsonl", "path": "data/sample/crawl"}]}))
    if not whole:  # the two skipped stages' outputs, as they would have written them
        from galeno.tokenizer import TokenizerConfig, train_tokenizer

        write_corpus(corpus, sample_documents())
        train_tokenizer(TokenizerConfig(corpus=str(corpus), output=str(tokenizer), vocab_size=2000,
                                        eval_fraction=0.0, max_length=64, progress=False))
    if not whole:
        pipeline.update(start_from="pretrain", stop_after="promote")
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
    assert ("=== [1/6] corpus ===" in logs) == whole and ("=== [6/6] serve ===" in logs) == whole
    if whole:
        manifest = json.loads(paths.corpus_manifest(corpus).read_text())
        assert set(manifest["sources"]) == {"pharmaconer", "crawl"} and manifest["total"]["documents_out"] > 0
        assert (tokenizer / "tokenizer.json").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["val_loss"] > 0
    assert (paths.model_export(run) / "model.safetensors").is_file()
    assert (paths.train_storage(run) / "tiny-test" / "checkpoint-00000004").is_dir()
    results = json.loads((ner / "results.json").read_text())
    assert results["registered_model"].startswith("models:/galeno-ner-pharmaconer-sample/")
    # the jobs tracked into the same store as this session (GALENO_HOME reaches the job's driver)
    _, mlrun = tracked_run(run)
    assert mlrun.data.tags["galeno.job"] == "pretrain" and summary["registered_model"].startswith("models:/galeno-mlm/")
    # promotion moved the champion aliases to the versions just trained (Serve answers from them)
    from mlflow import MlflowClient

    from galeno.tracking import TrackingConfig, tracking_uri

    client = MlflowClient(tracking_uri(TrackingConfig()))
    for uri in (summary["registered_model"], results["registered_model"]):
        name, version = uri[len("models:/"):].split("/")
        assert str(client.get_model_version_by_alias(name, "champion").version) == version
    if whole:
        _assert_served(logs)


def _assert_served(logs: str) -> None:
    """The Serve stage answered both models; the NER one tags the PharmaCoNER sentence it was sent."""
    assert "POST /fill-mask -> 200" in logs
    from galeno.serve.page import NER_EXAMPLE

    assert "POST /ner -> 200" in logs
    answer, _ = json.JSONDecoder().raw_decode(logs[logs.index("POST /ner -> 200") + len("POST /ner -> 200"):].lstrip())
    assert answer["entities"], answer
    assert all(NER_EXAMPLE[e["start"]:e["end"]] == e["text"] for e in answer["entities"])
    assert {e["label"] for e in answer["entities"]} <= {"NORMALIZABLES", "NOTNORMALIZABLES", "PROTEINAS"}
    gold = {"fibrinógeno", "urea", "creatinina", "LDH", "gonadotropinacoriónica humana", "alfafetoproteína"}
    assert gold & {e["text"] for e in answer["entities"]}, answer  # at least one right
