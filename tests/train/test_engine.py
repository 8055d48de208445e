"""Batch arithmetic, DeepSpeed config, precision and learning-rate schedule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from galeno.config import ConfigError, load
from galeno.train.config import ModelConfig, OptimConfig, PretrainConfig, TrainerConfig
from galeno.train.engine import deepspeed_config, lr_lambda, resolve_precision

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("global_batch,micro,world,accum", [(2048, 32, 16, 4), (2048, 8, 16, 16),
                                                             (2048, 32, 1, 64), (16, 8, 2, 1)])
def test_accumulation_makes_the_global_batch(global_batch, micro, world, accum):
    t = TrainerConfig(global_batch=global_batch, micro_batch=micro, num_workers=world)
    assert t.grad_accum(world) == accum
    ds = deepspeed_config(t, world, "fp32")
    assert ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * world == ds["train_batch_size"]


def test_indivisible_global_batch_fails_at_load_time():
    with pytest.raises(ConfigError, match="not a multiple"):
        load(PretrainConfig, None, ["trainer.global_batch=100", "trainer.micro_batch=32", "trainer.num_workers=2"])


def test_published_recipe_preset():
    cfg = load(PretrainConfig, REPO / "configs/pretrain/roberta-base-16xv100.yaml")
    t = cfg.trainer
    assert (t.num_workers, t.global_batch, t.max_steps, t.use_gpu) == (16, 2048, 125_000, True)
    assert t.micro_batch * t.grad_accum(16) * 16 == 2048
    assert (cfg.optim.lr, cfg.optim.betas, cfg.optim.eps, cfg.optim.weight_decay) == (5e-4, [0.9, 0.98], 1e-6, 0.01)
    assert cfg.optim.warmup_steps == 10_000 and cfg.data.seq_len == 512
    m = cfg.model
    assert (m.num_layers, m.hidden_size, m.num_heads, m.max_position_embeddings) == (12, 768, 12, 514)
    assert m.padded_vocab(52_000) == 52_032 and m.padded_vocab(52_032) == 52_032
    ds = deepspeed_config(t, 16, "fp16")  # what `auto` resolves to on V100 (no bf16)
    assert ds["fp16"]["enabled"] and ds["fp16"]["loss_scale"] == 0  # dynamic loss scaling
    assert ds["zero_optimization"]["stage"] in (1, 2) and "bf16" not in ds


def test_precision_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        resolve_precision("fp16", cpu)
    assert "fp16" not in deepspeed_config(TrainerConfig(), 1, "fp32")


def test_warmup_then_linear_decay():
    f = lr_lambda(OptimConfig(warmup_steps=10, schedule="linear"), max_steps=110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0)
    poly = lr_lambda(OptimConfig(warmup_steps=0, schedule="polynomial", power=2.0, lr=1e-3, end_lr=1e-4), 100)
    assert poly(50) == pytest.approx(0.1 + 0.9 * 0.25) and poly(100) == pytest.approx(0.1)


def test_model_config_validation():
    with pytest.raises(ValueError, match="divide"):
        ModelConfig(hidden_size=100, num_heads=12)
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        load(PretrainConfig, None, ["data.seq_len=512", "model.max_position_embeddings=512"])


@pytest.mark.slow
def test_deepspeed_on_cpu_compiles_no_op(tmp_path):
    """DeepSpeed on CPU all-reduces through gloo: its shared-memory op would be JIT-compiled again in
    every new environment (1.5 min here). An empty extensions folder stays empty."""
    import os
    import subprocess
    import sys

    code = """
import torch
import deepspeed.comm.comm as dscomm
import deepspeed.ops
before = deepspeed.ops.__compatible_ops__.get("deepspeed_shm_comm", "absent")
from galeno.train.config import OptimConfig, TrainerConfig
from galeno.train.engine import build_engine
engine, _ = build_engine(torch.nn.Linear(4, 2), TrainerConfig(deepspeed=True, global_batch=2, micro_batch=2),
                         OptimConfig(), torch.device("cpu"), 1)
print("world", dscomm.get_world_size(), "shm op", dscomm.cdb.shm_comm_op)
print("table restored", deepspeed.ops.__compatible_ops__.get("deepspeed_shm_comm", "absent") == before)
"""
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "world 1 shm op None" in done.stdout
    assert "table restored True" in done.stdout  # DeepSpeed's own table is left as it was
    assert not list(tmp_path.iterdir())
