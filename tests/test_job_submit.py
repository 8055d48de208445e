"""`ray job submit` of the pipeline against a real local Ray cluster (`ray start --head`).

One submission runs the three jobs in a row — corpus, tokenizer, pretraining — the way a user
chains them on a cluster (`ray job submit -- bash -c '...'`); every submission pays the runtime
environment upload and a driver start, so one is cheaper than three.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from galeno import paths

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_pipeline_under_ray_job_submit(ray_head, tmp_path):
    from tests.builders import tracked_run
    from tests.train.conftest import tiny_overrides

    ray_bin, address, env = ray_head
    corpus, tokenizer, run = tmp_path / "corpus", tmp_path / "tokenizer", tmp_path / "run"
    steps = [
        ["python", "jobs/clean_corpus.py", "--source", "pharmaconer=conll:data/sample/pharmaconer/train.conll",
         "--source", "crawl=jsonl:data/sample/crawl", "--output", str(corpus), "ray.progress_bars=false"],
        ["python", "jobs/train_tokenizer.py", f"corpus={corpus}", f"output={tokenizer}", "vocab_size=600",
         "max_length=64", "eval_fraction=0", "progress=false"],
        ["python", "jobs/pretrain.py", *tiny_overrides(corpus, tokenizer, run, **{
            "trainer.num_workers": 2, "trainer.micro_batch": 4, "trainer.max_steps": 4, "trainer.eval_every": 2,
            "trainer.checkpoint_every": 2})],
    ]
    script = " && ".join(shlex.join(step) for step in steps)
    done = subprocess.run(
        [ray_bin, "job", "submit", "--address", address, "--runtime-env", "configs/ray/runtime-env.yaml", "--",
         "bash", "-c", script],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "succeeded" in done.stdout + done.stderr
    manifest = json.loads(paths.corpus_manifest(corpus).read_text())
    assert set(manifest["sources"]) == {"pharmaconer", "crawl"} and manifest["total"]["documents_out"] > 0
    assert (tokenizer / "tokenizer.json").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["val_loss"] > 0
    assert (paths.model_export(run) / "model.safetensors").is_file()
    assert (paths.train_storage(run) / "tiny-test" / "checkpoint-00000004").is_dir()
    # the job tracked into the same store as this session (GALENO_HOME reaches the job's driver)
    _, mlrun = tracked_run(run)
    assert mlrun.data.tags["galeno.job"] == "pretrain" and summary["registered_model"].startswith("models:/galeno-mlm/")
