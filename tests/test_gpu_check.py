"""benchmarks/gpu_check.py --dry-run: the GPU machine's first script runs its every code path on CPU, in CI,
so that whoever is lent a GPU can run it once without preparation."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_the_dry_run_passes_every_check_and_writes_one_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["ok"] is True
    checks = report["checks"]
    assert list(checks) == ["mlm_bf16", "deepspeed_fp16", "ner_finetune", "serve_cuda"]
    assert all(c["status"] == "ok" for c in checks.values()), checks
    mlm = checks["mlm_bf16"]
    assert mlm["precision"] == "bf16" and mlm["seq_len"] == 64 and mlm["timed_steps"] >= 1
    assert mlm["tokens_per_second"] > 0 and mlm["mfu"] > 0
    assert mlm["first_loss"] > math.log(100)  # real masked tokens over a large vocabulary, not an empty batch
    assert checks["deepspeed_fp16"]["deepspeed"] is True and checks["deepspeed_fp16"]["losses_finite"]
    assert checks["ner_finetune"]["steps"] >= 1 and 0 <= checks["ner_finetune"]["dev_f1"] <= 1
    serve = checks["serve_cuda"]
    assert serve["devices"] == ["cpu"] and serve["ner_status"] == serve["fill_mask_status"] == 200
    assert "entities" in serve["ner_answer"]


def test_without_a_gpu_the_real_run_says_so():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the real run would run")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and "no CUDA device" in done.stderr
