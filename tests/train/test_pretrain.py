"""Real pretraining runs of a tiny RoBERTa: Ray Train + DeepSpeed on 2 workers, and world size 1 without Ray.

One module-scoped run carries the fault drill (rank 1 SIGKILLs itself mid-run; Ray Train
restarts the workers from the latest checkpoint), then a re-run of the same name continues it.
"""

from __future__ import annotations

import json
import math

import pytest

from galeno import paths
from galeno.config import load
from galeno.train.config import PretrainConfig
from galeno.train.pretrain import run
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


def test_resubmitting_the_same_run_continues_it(ray_run):
    out, overrides, _ = ray_run
    summary = run(load(PretrainConfig, None, [o for o in overrides if not o.startswith("trainer.max_steps")]
                       + ["trainer.max_steps=35"]))
    rows = _metrics(out)
    assert summary["steps"] == 35
    assert rows[-1]["resumed_from_step"] == 30 and rows[-1]["step"] == 35


def test_world_size_one_without_ray_or_deepspeed(tiny_corpus, tiny_tokenizer, tmp_path, ray_local):
    """trainer.launcher=local: this process is the only worker (what a single-GPU box runs)."""
    out = tmp_path / "local"
    summary = run(load(PretrainConfig, None, tiny_overrides(tiny_corpus, tiny_tokenizer, out, **{
        "trainer.launcher": "local", "trainer.deepspeed": False, "trainer.max_steps": 20,
        "trainer.cpus_per_worker": 1})))
    losses = _val_losses(_metrics(out))
    assert summary["steps"] == 20 and losses[-1] < losses[0]
    assert (paths.model_export(out) / "model.safetensors").is_file()
