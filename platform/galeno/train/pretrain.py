"""Masked-LM pretraining job: pack the corpus, train on Ray Train (+ DeepSpeed), export a HF model.

setup (``run``) → worker (``pretrain_worker``, one per Ray Train worker, or this process with
``trainer.launcher=local``) → loop (``galeno.train.loop.fit``). Re-running with the same
``name`` and ``output`` resumes from the latest checkpoint (Ray Train restores the run's
checkpoint list from its storage folder); a worker killed mid-run is restarted by Ray Train
from the latest checkpoint, up to ``trainer.max_failures`` times.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from galeno import paths
from galeno.config import config_hash, from_dict, to_dict
from galeno.train.config import PretrainConfig

log = logging.getLogger(__name__)


def _task(cfg: PretrainConfig):
    from galeno.train.mlm import MLMTask

    return MLMTask(cfg.model, cfg.data.tokenizer, cfg.data.seq_len, cfg.data.mlm_probability, cfg.trainer.seed)


def pretrain_worker(config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker``: a plain dict in (STYLE.md: typed config round-trips)."""
    cfg = from_dict(PretrainConfig, config["cfg"])
    if not cfg.trainer.use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from galeno.train.loop import RayReporter, parquet_batches, run_worker
    from galeno.train.engine import world

    packed = config["packed"]
    micro = cfg.trainer.micro_batch

    def train_epoch(epoch: int):
        import ray.train

        shard = ray.train.get_dataset_shard("train")
        return shard.iter_batches(batch_size=micro, batch_format="numpy", drop_last=True,
                                  local_shuffle_buffer_size=micro * 16, local_shuffle_seed=cfg.trainer.seed + epoch)

    def val_batches():
        rank, _, world_size = world()
        return parquet_batches(paths.packed_split(packed, "val"), micro, rank=rank, world_size=world_size,
                               seed=0, drop_last=False, shuffle=False, columns=["input_ids"])

    run_worker(_task(cfg), cfg.trainer, cfg.optim, train_epoch=train_epoch, val_batches=val_batches,
               reporter=RayReporter(), output=cfg.output)


def local_worker(cfg: PretrainConfig, packed: str | Path):
    """World size 1 in this process, no Ray: the same worker body with a local reporter."""
    if not cfg.trainer.use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from galeno.train.loop import LocalReporter, parquet_batches, run_worker

    micro = cfg.trainer.micro_batch

    def train_epoch(epoch: int):
        return parquet_batches(paths.packed_split(packed, "train"), micro, rank=0, world_size=1,
                               seed=cfg.trainer.seed, epoch=epoch, columns=["input_ids"])

    def val_batches():
        return parquet_batches(paths.packed_split(packed, "val"), micro, rank=0, world_size=1, seed=0,
                               drop_last=False, shuffle=False, columns=["input_ids"])

    reporter = LocalReporter(cfg.output, cfg.trainer.keep_checkpoints)
    run_worker(_task(cfg), cfg.trainer, cfg.optim, train_epoch=train_epoch, val_batches=val_batches,
               reporter=reporter, output=cfg.output)
    with reporter.latest_checkpoint() as ckpt:
        return ckpt


def ray_fit(cfg: PretrainConfig, packed: str | Path):
    """Launch the workers with Ray Train's TorchTrainer; returns the final checkpoint."""
    import ray.data
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    t = cfg.trainer
    storage = t.storage_path or str(paths.train_storage(cfg.output).resolve())
    train = ray.data.read_parquet(str(paths.packed_split(packed, "train")), columns=["input_ids"])
    trainer = TorchTrainer(
        pretrain_worker,
        train_loop_config={"cfg": to_dict(cfg), "packed": str(packed)},
        scaling_config=ray.train.ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                               resources_per_worker={"CPU": t.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=cfg.name, storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.keep_checkpoints)),
        datasets={"train": train},
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    return result.checkpoint


def export(cfg: PretrainConfig, checkpoint_dir: str, out_dir: str | Path, extra: dict[str, Any]) -> Path:
    """Consolidate the checkpoint's shards into fp32 weights and write a Hugging Face directory."""
    from galeno.train.engine import consolidated_state_dict
    from galeno.train.loop import CHECKPOINT_TAG

    task = _task(cfg)
    model = task.build_model()
    state = consolidated_state_dict(checkpoint_dir, CHECKPOINT_TAG)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.decoder.weight")]  # tied to the embeddings
    if missing or unexpected:
        raise RuntimeError(f"checkpoint does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task.export(model, str(out))
    (out / "galeno.json").write_text(json.dumps(extra, indent=2, ensure_ascii=False))
    return out


def run(cfg: PretrainConfig) -> dict[str, Any]:
    """The whole job: pack (or reuse packed data), train, export; returns a summary."""
    from galeno.runtime import init_ray
    from galeno.train.packing import pack_corpus, packing_identity, packing_tag

    t0 = time.time()
    cfg = absolute_paths(cfg)
    init_ray(cfg.ray)
    packed = paths.packed_data(cfg.output, packing_tag(packing_identity(cfg.data))).resolve()
    manifest = pack_corpus(cfg.data, packed)
    if manifest["splits"]["train"]["sequences"] < cfg.trainer.micro_batch * cfg.trainer.num_workers:
        raise ValueError(f"only {manifest['splits']['train']['sequences']} training sequences: fewer than one "
                         f"micro batch per worker")
    if cfg.trainer.launcher == "local":
        final = contextlib.nullcontext(local_worker(cfg, packed))
    else:
        final = ray_fit(cfg, packed).as_directory()
    with final as final_dir:
        lineage = {"config_hash": config_hash(cfg), "packing_tag": manifest["tag"],
                   "tokenizer_hash": manifest["tokenizer_hash"], "corpus_manifest_hash": manifest["corpus_manifest_hash"],
                   "checkpoint": str(final_dir), "config": to_dict(cfg)}
        model_dir = export(cfg, final_dir, paths.model_export(cfg.output), lineage)
    last = _last_metrics(paths.metrics_log(cfg.output))
    summary = {"model": str(model_dir), "packed": str(packed), "steps": last.get("step"),
               "loss": last.get("loss"), "val_loss": last.get("val_loss"), "val_perplexity": last.get("val_perplexity"),
               "tokens_per_second": last.get("tokens_per_second"), "mfu": last.get("mfu"),
               "train_sequences": manifest["splits"]["train"]["sequences"],
               "elapsed_seconds": round(time.time() - t0, 1)}
    (Path(cfg.output) / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def absolute_paths(cfg: PretrainConfig) -> PretrainConfig:
    """Workers start in their own directory: hand them absolute paths (URIs such as s3:// stay as they are)."""
    def resolve(p: str) -> str:
        return p if not p or "://" in p else str(Path(p).resolve())

    data = dataclasses.replace(cfg.data, corpus=resolve(cfg.data.corpus), tokenizer=resolve(cfg.data.tokenizer))
    trainer = dataclasses.replace(cfg.trainer, storage_path=resolve(cfg.trainer.storage_path))
    return dataclasses.replace(cfg, output=resolve(cfg.output), data=data, trainer=trainer)


def _last_metrics(path: Path) -> dict[str, Any]:
    """Last evaluated step of metrics.jsonl (the final step always evaluates)."""
    last: dict[str, Any] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if "val_loss" in row:
                last = row
    return last
