"""One engine interface over DeepSpeed and plain PyTorch, so the loop never branches on it.

``deepspeed_config`` derives DeepSpeed's JSON from our config: batch arithmetic, precision for
the device (V100 has no bf16, so fp16 with dynamic loss scaling there) and the ZeRO stage. The
optimizer and schedule are ours (``build_optimizer``), handed to DeepSpeed as client objects, so
the same recipe runs with or without DeepSpeed and with or without Ray.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from galeno.train.config import OptimConfig, TrainerConfig

log = logging.getLogger(__name__)

#: Dense tensor-core peak TFLOP/s by GPU name, for MFU: (fp16/bf16, fp32). Vendor data sheets.
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "A10G": 125.0, "L4": 121.0,
                   "V100": 125.0, "T4": 65.0}


def resolve_precision(requested: str, device: torch.device) -> str:
    if requested != "auto":
        if device.type == "cpu" and requested == "fp16":
            raise ValueError("fp16 needs a GPU; use bf16 or fp32 on CPU")
        return requested
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def deepspeed_config(trainer: TrainerConfig, world_size: int, precision: str) -> dict[str, Any]:
    """DeepSpeed's config for our trainer group; accumulation makes micro × accum × world == global."""
    cfg: dict[str, Any] = {
        "train_batch_size": trainer.global_batch,
        "train_micro_batch_size_per_gpu": trainer.micro_batch,
        "gradient_accumulation_steps": trainer.grad_accum(world_size),
        "zero_optimization": {"stage": trainer.zero_stage},
        "steps_per_print": 10**9,  # the loop logs; DeepSpeed's own prints would duplicate it
        "wall_clock_breakdown": False,
    }
    if trainer.zero_stage in (1, 2):
        cfg["zero_optimization"].update({"reduce_bucket_size": 5e8, "allgather_bucket_size": 5e8,
                                         "overlap_comm": trainer.use_gpu, "contiguous_gradients": True})
    if precision == "fp16":
        cfg["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16,
                       "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1}
    elif precision == "bf16":
        cfg["bf16"] = {"enabled": True}
    return cfg


def lr_lambda(optim: OptimConfig, max_steps: int):
    """Multiplier of the peak LR at a step: linear warmup, then linear/polynomial decay to end_lr."""
    floor = optim.end_lr / optim.lr

    def factor(step: int) -> float:
        if optim.warmup_steps and step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        if optim.schedule == "constant":
            return 1.0
        span = max(1, max_steps - optim.warmup_steps)
        remaining = max(0.0, 1.0 - (step - optim.warmup_steps) / span)
        power = 1.0 if optim.schedule == "linear" else optim.power
        return floor + (1.0 - floor) * remaining ** power

    return factor


def build_optimizer(model: nn.Module, optim: OptimConfig, max_steps: int, device: torch.device):
    """AdamW without decay on biases and LayerNorms; fused kernel on GPU."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": optim.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                            fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(optim, max_steps))
    return opt, sched


class Engine:
    """forward / backward / step over accumulation, checkpoint save and load."""

    module: nn.Module
    grad_accum: int

    def __call__(self, **batch):
        raise NotImplementedError

    def eval_forward(self, **batch):
        """Forward for evaluation with no collective inside, so ranks may run different batch counts."""
        raise NotImplementedError

    def backward(self, loss: torch.Tensor) -> None:
        raise NotImplementedError

    def step(self) -> None:
        raise NotImplementedError

    def lr(self) -> float:
        raise NotImplementedError

    def save(self, directory: str, tag: str, client_state: dict) -> None:
        raise NotImplementedError

    def load(self, directory: str, tag: str) -> dict:
        raise NotImplementedError

    def train(self, mode: bool = True) -> None:
        self.module.train(mode)


@contextlib.contextmanager
def _without_shm_comm_op():
    """Keep DeepSpeed's CPU accelerator from building its shared-memory all-reduce op while it starts.

    DeepSpeed JIT-compiles that op (``deepspeed_shm_comm``, into ``~/.cache/torch_extensions``) when
    its communication backend starts, and compiles it again whenever its build flags change, which
    name the Python environment's include paths: every fresh clone or new virtualenv pays 1.5 min
    on 2 cores, in each run's first DeepSpeed process group. CPU runs (tests, the demo) all-reduce
    through gloo instead, the backend Ray Train's process group already uses; GPU runs never build it.
    DeepSpeed's table of compatible ops is put back as it was on the way out.
    """
    import deepspeed.ops

    ops, name = deepspeed.ops.__compatible_ops__, "deepspeed_shm_comm"
    missing = object()
    before = ops.get(name, missing)
    ops[name] = False
    try:
        yield
    finally:
        if before is missing:
            ops.pop(name, None)
        else:
            ops[name] = before


class DeepSpeedEngine(Engine):
    def __init__(self, model, optimizer, scheduler, ds_config: dict, trainer: TrainerConfig):
        import deepspeed

        if not torch.distributed.is_initialized():  # world size 1 without Ray or torchrun
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("LOCAL_RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
        on_cpu = next(model.parameters()).device.type == "cpu"
        with _without_shm_comm_op() if on_cpu else contextlib.nullcontext():
            self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
                model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config,
            )
        self.module = self.engine.module
        self.grad_accum = self.engine.gradient_accumulation_steps()

    def __call__(self, **batch):
        return self.engine(**batch)

    def eval_forward(self, **batch):
        if self.engine.zero_optimization_stage() == 3:  # partitioned weights: gathering is a collective
            return self.engine(**batch)
        return self.module(**batch)  # ZeRO 0-2 keep full (fp16/bf16) weights on every rank

    def backward(self, loss):
        self.engine.backward(loss)

    def step(self):
        self.engine.step()  # DeepSpeed steps optimizer + scheduler only at the accumulation boundary

    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def train(self, mode: bool = True):
        self.engine.train(mode)

    def save(self, directory, tag, client_state):
        self.engine.save_checkpoint(directory, tag=tag, client_state=client_state)

    def load(self, directory, tag):
        _, client_state = self.engine.load_checkpoint(directory, tag=tag)
        return client_state or {}


class TorchEngine(Engine):
    """Plain PyTorch (DDP when distributed): the same contract, for NER and DeepSpeed-less boxes."""

    def __init__(self, model, optimizer, scheduler, trainer: TrainerConfig, optim: OptimConfig,
                 precision: str, device: torch.device, world_size: int):
        self.module = model
        self.optimizer, self.scheduler = optimizer, scheduler
        self.grad_accum = trainer.grad_accum(world_size)
        self.clip = optim.grad_clip
        self.device = device
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler(enabled=precision == "fp16")
        self.micro = 0
        if world_size > 1 and torch.distributed.is_initialized():
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(model, device_ids=ids)
        else:
            self.wrapped = model

    def __call__(self, **batch):
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            if self.micro + 1 < self.grad_accum and self.wrapped is not self.module:
                with self.wrapped.no_sync():
                    return self.wrapped(**batch)
            return self.wrapped(**batch)

    def eval_forward(self, **batch):
        # not through DDP: its forward broadcasts buffers, a collective that would wait for
        # ranks that have already run out of validation batches
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            return self.module(**batch)

    def backward(self, loss):
        self.scaler.scale(loss / self.grad_accum).backward()

    def step(self):
        self.micro += 1
        if self.micro < self.grad_accum:
            return
        self.micro = 0
        if self.clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def save(self, directory, tag, client_state):
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if rank != 0:
            return
        target = Path(directory) / tag
        target.mkdir(parents=True, exist_ok=True)
        torch.save({"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                    "client_state": client_state}, target / "state.pt")

    def load(self, directory, tag):
        state = torch.load(Path(directory) / tag / "state.pt", map_location=self.device, weights_only=False)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        return state["client_state"]


def consolidated_state_dict(checkpoint_dir: str | Path, tag: str) -> dict:
    """Full fp32 weights of a saved checkpoint of either engine (ZeRO shards are gathered)."""
    torch_state = Path(checkpoint_dir) / tag / "state.pt"
    if torch_state.is_file():
        return torch.load(torch_state, map_location="cpu", weights_only=False)["model"]
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag)


def build_engine(model: nn.Module, trainer: TrainerConfig, optim: OptimConfig, device: torch.device,
                 world_size: int) -> tuple[Engine, str]:
    precision = resolve_precision(trainer.precision, device)
    model.to(device)
    optimizer, scheduler = build_optimizer(model, optim, trainer.max_steps, device)
    if trainer.deepspeed:
        ds = deepspeed_config(trainer, world_size, precision)
        if optim.grad_clip:
            ds["gradient_clipping"] = optim.grad_clip
        return DeepSpeedEngine(model, optimizer, scheduler, ds, trainer), precision
    return TorchEngine(model, optimizer, scheduler, trainer, optim, precision, device, world_size), precision


def peak_tflops(device: torch.device, precision: str, configured: float = 0.0) -> float:
    """Peak per device for MFU: configured, from the GPU's name, or a matmul probe on CPU."""
    if configured:
        return configured
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAK_TFLOPS.items():
            if key in name:
                return value if precision in ("fp16", "bf16") else value / 8
        return 0.0
    return _cpu_matmul_tflops()


def _cpu_matmul_tflops(n: int = 1024, repeats: int = 5) -> float:
    """Best fp32 matmul rate of this process's threads: the CPU 'peak' MFU is measured against."""
    import time

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e12


def init_distributed_if_needed() -> None:
    """Under ``torchrun``-style env vars without Ray, join the process group (gloo on CPU, NCCL on GPU)."""
    if torch.distributed.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(backend)


def world() -> tuple[int, int, int]:
    """(rank, local rank, world size) of this process."""
    if torch.distributed.is_initialized():
        return (torch.distributed.get_rank(), int(os.environ.get("LOCAL_RANK", "0")),
                torch.distributed.get_world_size())
    return 0, 0, 1


def device_for(local_rank: int, use_gpu: bool) -> torch.device:
    if use_gpu and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
