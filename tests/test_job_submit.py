"""`ray job submit` of a job against a real local Ray cluster (`ray start --head`)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_clean_corpus_under_ray_job_submit(ray_head, tmp_path):
    ray_bin, address, env = ray_head
    out = tmp_path / "corpus"
    done = subprocess.run(
        [ray_bin, "job", "submit", "--address", address,
         "--runtime-env", "configs/ray/runtime-env.yaml", "--",
         "python", "jobs/clean_corpus.py", "--config", "configs/corpus/sample.yaml",
         f"output={out}", "ray.progress_bars=false"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "succeeded" in done.stdout + done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["total"]["documents_in"] > 700
    assert manifest["total"]["documents_out"] > 0
    assert list((out / "documents").glob("*.parquet"))
