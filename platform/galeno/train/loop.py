"""The one training loop: pretraining and NER fine-tuning are tasks plugged into ``fit``.

``run_worker`` is the per-worker function (setup → worker → loop, STYLE.md §5): it builds the
device, the task's model and the engine, restores the latest checkpoint, and calls ``fit``.
It runs the same under Ray Train (one call per worker, ``RayReporter``) and in a plain
process with world size 1 (``LocalReporter``), which is how GPU throughput is measured on a
single-GPU box without Ray.

A task provides ``build_model``, ``collate(raw_batch, generator)``, ``tokens(batch)``,
``step_loss(outputs)``, ``eval_sums(outputs, raw_batch)`` (summing the keys in ``eval_keys``),
``eval_summary(sums)``, ``target`` (the metric that picks the best step, and whether higher is
better), ``flops_per_token`` and ``export``; optionally ``save_best(module, directory)``,
called on rank 0 each time the target improves when the loop is given a ``best_dir``. See
``galeno.train.mlm.MLMTask`` and ``galeno.ner.task.NERTask``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Iterator, Optional

import torch

from galeno import paths
from galeno.train.config import OptimConfig, TrainerConfig

log = logging.getLogger(__name__)

CHECKPOINT_TAG = "state"  # DeepSpeed tag / TorchEngine subfolder inside every checkpoint directory


@dataclass
class RunState:
    """What a checkpoint carries besides weights and optimizer: where the run is."""

    step: int = 0
    epoch: int = 0
    tokens: int = 0
    resumed_from: int = 0
    best: Optional[float] = None
    best_step: int = 0


# --------------------------------------------------------------------------- data sources
def parquet_batches(directory: str | Path, batch_size: int, *, rank: int, world_size: int, seed: int,
                    epoch: int = 0, drop_last: bool = True, shuffle: bool = True,
                    columns: Optional[list[str]] = None) -> Iterator[dict[str, Any]]:
    """One epoch of this rank's rows of a Parquet folder, as dicts of column lists (no Ray needed)."""
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(str(directory), columns=columns)
    order = np.arange(table.num_rows)
    if shuffle:
        np.random.default_rng((seed, epoch)).shuffle(order)
    order = order[rank::world_size]
    if drop_last and world_size > 1:  # equal batch counts on every rank, or collectives hang
        order = order[: table.num_rows // world_size]
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        if drop_last and len(idx) < batch_size:
            break
        part = table.take(idx)
        yield {name: part[name].to_pylist() for name in part.column_names}


def cycle_epochs(make_epoch: Callable[[int], Iterable[dict[str, Any]]], state: RunState) -> Iterator[dict[str, Any]]:
    """Endless batches: a new epoch (new order) whenever one runs out; counts epochs in ``state``."""
    while True:
        empty = True
        for batch in make_epoch(state.epoch):
            empty = False
            yield batch
        if empty:
            raise ValueError("the training split yields no full batch: lower trainer.micro_batch or add data")
        state.epoch += 1


# --------------------------------------------------------------------------- reporters
class LocalReporter:
    """World size 1 without Ray: checkpoints in ``<output>/checkpoints``, metrics in metrics.jsonl."""

    def __init__(self, output: str | Path, keep: int):
        self.root = paths.local_checkpoints(output)
        self.keep = keep

    def latest_checkpoint(self) -> ContextManager[Optional[str]]:
        done = sorted(p for p in self.root.glob("checkpoint-*") if (p / ".complete").exists())
        return contextlib.nullcontext(str(done[-1]) if done else None)

    def report(self, metrics: dict[str, Any], save: Optional[Callable[[str], None]] = None) -> None:
        if save is None:
            return
        target = self.root / f"checkpoint-{metrics['step']:08d}"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        save(str(target))
        (target / ".complete").touch()
        for old in sorted(self.root.glob("checkpoint-*"))[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)


class RayReporter:
    """Under Ray Train: every rank reports (the call is a barrier); checkpoint shards merge into one folder."""

    def latest_checkpoint(self) -> ContextManager[Optional[str]]:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        return ckpt.as_directory() if ckpt else contextlib.nullcontext(None)

    def report(self, metrics: dict[str, Any], save: Optional[Callable[[str], None]] = None) -> None:
        import ray.train

        if save is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="galeno-ckpt-") as tmp:
            save(tmp)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint-{metrics['step']:08d}")


def ray_train(worker: Callable[[dict[str, Any]], None], loop_config: dict[str, Any], trainer: TrainerConfig, *,
              name: str, storage: str, datasets: Optional[dict[str, Any]] = None, callbacks: Optional[list] = None):
    """Run ``worker`` on ``trainer.num_workers`` Ray Train workers (TorchTrainer); the result, or its error raised.

    The one launcher of every job: scaling, backend, failure recovery and checkpoint retention
    come from ``trainer``.
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    t = trainer
    result = TorchTrainer(
        worker, train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                               resources_per_worker={"CPU": t.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage, callbacks=callbacks,
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.keep_checkpoints)),
        datasets=datasets,
    ).fit()
    if result.error:
        raise result.error
    return result


@contextlib.contextmanager
def rank0_tracker(tracking, run_id: Optional[str]) -> Iterator[Any]:
    """Under Ray Train: rank 0's ``RunLogger`` into the driver's MLflow run ``run_id`` (None on other
    ranks, or with no run); at the end it sends what is left and leaves the run open for the driver."""
    import ray.train

    if not run_id or ray.train.get_context().get_world_rank() != 0:
        yield None
        return
    from galeno.tracking import RunLogger

    tracker = RunLogger(tracking).start(run_id=run_id)
    try:
        yield tracker
    finally:
        tracker.end(status=None)


# --------------------------------------------------------------------------- the loop
def _all_reduce(values: list[float], device: torch.device) -> list[float]:
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def evaluate(task, engine, batches: Iterable[dict[str, Any]], device: torch.device, seed: int,
             max_batches: int) -> dict[str, float]:
    """Task metrics over this rank's validation batches, summed over all ranks; fixed masking seed."""
    engine.train(False)
    sums: dict[str, float] = {}
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i, raw in enumerate(batches):
            if max_batches and i >= max_batches:
                break
            outputs = engine.eval_forward(**_to(task.collate(raw, generator), device))
            for k, v in task.eval_sums(outputs, raw).items():
                sums[k] = sums.get(k, 0.0) + v
    engine.train(True)
    keys = list(task.eval_keys)  # fixed on every rank, even one with no validation batch
    total = _all_reduce([sums.get(k, 0.0) for k in keys], device)
    return task.eval_summary(dict(zip(keys, total)))


def fit(task, engine, train_batches: Iterator[dict[str, Any]], val_batches: Callable[[], Iterable[dict[str, Any]]],
        trainer: TrainerConfig, reporter, state: RunState, device: torch.device, *,
        rank: int = 0, world_size: int = 1, metrics_path: Optional[Path] = None,
        peak_tflops: float = 0.0, tracker=None, best_dir: Optional[str | Path] = None) -> RunState:
    """Step until ``trainer.max_steps``, or until the target stopped improving for
    ``trainer.early_stopping_patience`` evaluations; evaluate, report and checkpoint on the
    configured cadence.

    Rank 0 writes every step's metrics to ``metrics_path`` and to ``tracker`` (a
    ``galeno.tracking.RunLogger``, or None), which buffers them and never blocks the step, and
    saves the model to ``best_dir`` (``task.save_best``) whenever the target improves.
    """
    flops_per_token = task.flops_per_token(engine.module)
    target, higher_better = task.target
    sink = None
    if metrics_path and rank == 0:
        Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
        sink = open(metrics_path, "a")
    engine.train(True)
    try:
        while state.step < trainer.max_steps:
            t0 = time.perf_counter()
            loss_sum, tokens = 0.0, 0
            for micro in range(engine.grad_accum):
                raw = next(train_batches)
                generator = torch.Generator().manual_seed(
                    trainer.seed * 1_000_003 + rank * 10_007 + state.step * engine.grad_accum + micro)
                batch = _to(task.collate(raw, generator), device)
                loss, _ = task.step_loss(engine(**batch))
                engine.backward(loss)
                engine.step()
                loss_sum += float(loss.detach())
                tokens += task.tokens(batch)
            state.step += 1
            _maybe_kill(trainer, state, rank, world_size)
            loss_sum, tokens_all = _all_reduce([loss_sum, float(tokens)], device)
            elapsed = time.perf_counter() - t0
            state.tokens += int(tokens_all)
            tps = tokens_all / elapsed
            metrics: dict[str, Any] = {
                "step": state.step, "epoch": state.epoch, "loss": loss_sum / (engine.grad_accum * world_size),
                "lr": engine.lr(), "tokens_per_second": tps, "tokens_per_second_per_worker": tps / world_size,
                "tokens_seen": state.tokens, "step_seconds": elapsed, "progress": state.step / trainer.max_steps,
                "mfu": (tps * flops_per_token / (peak_tflops * 1e12 * world_size)) if peak_tflops else None,
                "resumed_from_step": state.resumed_from}
            last = state.step == trainer.max_steps
            evaluated = bool(trainer.eval_every and state.step % trainer.eval_every == 0) or last
            if evaluated:
                metrics.update(evaluate(task, engine, val_batches(), device, trainer.seed, trainer.eval_batches))
                value = metrics.get(target)
                if value is not None and (state.best is None or (value > state.best if higher_better else value < state.best)):
                    state.best, state.best_step = value, state.step
                    if best_dir and rank == 0:
                        _save_best(task, engine.module, Path(best_dir), state.step)
                metrics.update({f"best_{target}": state.best, "best_step": state.best_step})
                # every rank has the same all-reduced metrics, so every rank stops at the same step
                patience = trainer.early_stopping_patience * (trainer.eval_every or trainer.max_steps)
                if patience and state.step - state.best_step >= patience and not last:
                    log.info("early stop at step %d: %s has not improved since step %d", state.step, target,
                             state.best_step)
                    metrics["early_stopped"] = 1
                    last = True
            if sink:
                sink.write(json.dumps(metrics) + "\n")
                sink.flush()
            if tracker is not None:
                tracker.log_metrics(metrics, step=state.step)
            checkpoint = (trainer.checkpoint_every and state.step % trainer.checkpoint_every == 0) or last
            if checkpoint:
                if tracker is not None:
                    tracker.wake()  # send what the checkpoint covers before a failure could lose it
                reporter.report(metrics, save=lambda d: engine.save(d, CHECKPOINT_TAG, asdict(state)))
            elif evaluated:
                # Only evaluations (what Ray Tune's schedulers act on) and checkpoints are reported to
                # Ray: Ray Train V2 keeps no metrics-only reports, and each report waits for the
                # controller's next poll (about 2 s, benchmarks/train_report.py). Every step's metrics
                # go to metrics.jsonl and MLflow instead.
                reporter.report(metrics)
            if rank == 0 and (state.step % trainer.log_every == 0 or last):
                log.info("step %d/%d loss %.4f lr %.2e %.0f tok/s%s", state.step, trainer.max_steps,
                         metrics["loss"], metrics["lr"], tps,
                         f" {target} {metrics[target]:.4f}" if target in metrics else "")
            if last:
                break
    finally:
        if sink:
            sink.close()
    return state


def _save_best(task, module: torch.nn.Module, directory: Path, step: int) -> None:
    """The model as it is now, written beside and then swapped in, so ``directory`` is always whole."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    task.save_best(module, str(tmp))
    (tmp / "best_step.txt").write_text(f"{step}\n")
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def _maybe_kill(trainer: TrainerConfig, state: RunState, rank: int, world_size: int) -> None:
    """The fault drill: a real SIGKILL of one worker process, once per run folder."""
    if not trainer.kill_at_step or state.step != trainer.kill_at_step or state.resumed_from:
        return
    if rank == min(1, world_size - 1):
        # Ray Train's controller collects reported checkpoints when it polls the workers (every
        # 2 s by default); a worker dying before that poll loses the report still in flight.
        # A real failure lands long after the last checkpoint, so the drill waits out two polls.
        time.sleep(5)
        log.warning("fault drill: killing rank %d at step %d", rank, state.step)
        os.kill(os.getpid(), signal.SIGKILL)


def run_worker(task, trainer: TrainerConfig, optim: OptimConfig, *, train_epoch: Callable[[int], Iterable],
               val_batches: Callable[[], Iterable], reporter, output: str | Path, tracker=None,
               best_dir: Optional[str | Path] = None) -> RunState:
    """Per-worker setup → restore → fit. Called by Ray Train on each worker, or directly (world size 1).

    ``tracker`` receives rank 0's metrics (pass it on rank 0 only); see :func:`fit` for ``best_dir``."""
    from galeno.train.engine import build_engine, device_for, init_distributed_if_needed, peak_tflops, world

    init_distributed_if_needed()
    rank, local_rank, world_size = world()
    device = device_for(local_rank, trainer.use_gpu)
    if device.type == "cpu":
        torch.set_num_threads(max(1, round(trainer.cpus_per_worker)))
    model = task.build_model()
    engine, precision = build_engine(model, trainer, optim, device, world_size)
    state = RunState()
    with reporter.latest_checkpoint() as ckpt:
        if ckpt:
            saved = engine.load(ckpt, CHECKPOINT_TAG)  # DeepSpeed returns its own keys too
            state = RunState(**{f.name: saved[f.name] for f in fields(RunState) if f.name in saved})
            state.resumed_from = state.step
            log.info("rank %d resumed from %s at step %d", rank, ckpt, state.step)
    peak = peak_tflops(device, precision, trainer.peak_tflops)
    if rank == 0:
        log.info("world %d, device %s, precision %s, accumulation %d, peak %.2f TFLOP/s", world_size, device,
                 precision, engine.grad_accum, peak)
    return fit(task, engine, cycle_epochs(train_epoch, state), val_batches, trainer, reporter, state, device,
               rank=rank, world_size=world_size, metrics_path=paths.metrics_log(output), peak_tflops=peak,
               tracker=tracker if rank == 0 else None, best_dir=best_dir)
