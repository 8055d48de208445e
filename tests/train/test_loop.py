"""The loop's collectives stay in step across ranks: a rank with no validation batch still all-reduces."""

from __future__ import annotations

import time

import pytest
import torch
import torch.multiprocessing as mp



def _rank(rank: int, world: int, port: int, tokenizer: str, out) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    from galeno.train.config import ModelConfig, OptimConfig, TrainerConfig
    from galeno.train.engine import build_engine
    from galeno.train.loop import evaluate
    from galeno.train.mlm import MLMTask

    task = MLMTask(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                               max_position_embeddings=34), tokenizer, 32, 0.15, seed=0)
    trainer = TrainerConfig(deepspeed=False, global_batch=4, micro_batch=2, num_workers=world)
    engine, _ = build_engine(task.build_model(), trainer, OptimConfig(), torch.device("cpu"), world)
    ids = task.tokenizer(["El paciente presenta fiebre alta y tos seca."] * 2)["input_ids"]
    batches = [{"input_ids": ids}] if rank == 0 else []  # rank 1 has nothing to evaluate
    out[rank] = evaluate(task, engine, batches, torch.device("cpu"), seed=0, max_batches=0)
    torch.distributed.destroy_process_group()


def test_a_rank_without_validation_batches_does_not_break_the_all_reduce(tiny_tokenizer):
    """Before eval_keys and eval_forward, rank 0 waited forever in DDP's buffer broadcast."""
    from tests.conftest import free_port

    out = mp.Manager().dict()
    ctx = mp.spawn(_rank, args=(2, free_port(), str(tiny_tokenizer), out), nprocs=2, join=False)
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("evaluation hung: the ranks' collectives are out of step")
    assert set(out.keys()) == {0, 1}
    assert out[0] == out[1]                 # both ranks see the summed metrics
    assert out[0]["val_predictions"] > 0    # rank 0's masked tokens, counted once
    assert out[0]["val_loss"] > 0
