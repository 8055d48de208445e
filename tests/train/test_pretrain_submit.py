"""`ray job submit -- python jobs/pretrain.py` against a real local cluster (`ray start --head`)."""

from __future__ import annotations

import json
import subprocess

import pytest

from galeno import paths
from tests.test_job_submit import REPO
from tests.train.conftest import tiny_overrides

pytestmark = pytest.mark.slow


def test_pretrain_under_ray_job_submit(ray_head, tiny_corpus, tiny_tokenizer, tmp_path):
    ray_bin, address, env = ray_head
    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_corpus, tiny_tokenizer, out, **{
        "trainer.num_workers": 2, "trainer.micro_batch": 4, "trainer.max_steps": 4, "trainer.eval_every": 2,
        "trainer.checkpoint_every": 2})
    done = subprocess.run(
        [ray_bin, "job", "submit", "--address", address, "--runtime-env", "configs/ray/runtime-env.yaml", "--",
         "python", "jobs/pretrain.py", *overrides],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "succeeded" in done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["val_loss"] > 0
    assert (paths.model_export(out) / "model.safetensors").is_file()
    assert (paths.train_storage(out) / "tiny-test" / "checkpoint-00000004").is_dir()
