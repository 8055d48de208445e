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

from galeno import handover, paths
from galeno.config import config_hash, from_dict, to_dict
from galeno.hashing import code_digest
from galeno.train import resume
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
    from galeno.train.loop import RayReporter, parquet_batches, rank0_tracker, run_worker
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

    # the driver closes the run after export and registration
    with rank0_tracker(cfg.tracking, config.get("mlflow_run_id")) as tracker:
        run_worker(_task(cfg), cfg.trainer, cfg.optim, train_epoch=train_epoch, val_batches=val_batches,
                   reporter=RayReporter(), output=cfg.output, tracker=tracker)


def local_worker(cfg: PretrainConfig, packed: str | Path, tracker=None):
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
               reporter=reporter, output=cfg.output, tracker=tracker)
    with reporter.latest_checkpoint() as ckpt:
        return ckpt


def ray_fit(cfg: PretrainConfig, packed: str | Path, mlflow_run_id: str | None = None):
    """Launch the workers with Ray Train's TorchTrainer; returns the final checkpoint.

    Rank 0 logs its metrics into MLflow run ``mlflow_run_id`` (None: no metrics to MLflow from the workers)."""
    import ray.data

    from galeno.train.loop import ray_train

    storage = cfg.trainer.storage_path or str(paths.train_storage(cfg.output).resolve())
    train_dir = paths.packed_split(packed, "train")
    train = ray.data.read_parquet(str(train_dir), columns=["input_ids"])
    size_mb = sum(f.stat().st_size for f in Path(train_dir).glob("*.parquet")) / 2**20
    if size_mb <= cfg.data.in_memory_mb:
        log.info("packed training data: %.1f MB, read once into the object store (data.in_memory_mb=%g)",
                 size_mb, cfg.data.in_memory_mb)
        train = train.materialize()
    return ray_train(pretrain_worker, {"cfg": to_dict(cfg), "packed": str(packed), "mlflow_run_id": mlflow_run_id},
                     cfg.trainer, name=cfg.name, storage=storage, datasets={"train": train}).checkpoint


def export(cfg: PretrainConfig, checkpoint_dir: str, out_dir: str | Path, extra: dict[str, Any]) -> Path:
    """Consolidate the checkpoint's shards into fp32 weights and write a Hugging Face directory."""
    from galeno.train.loop import CHECKPOINT_TAG

    from galeno.train.engine import consolidated_state_dict
    from galeno.train.mlm import tied_to_embeddings

    task = _task(cfg)
    model = task.build_model()
    state = consolidated_state_dict(checkpoint_dir, CHECKPOINT_TAG)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not tied_to_embeddings(k)]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task.export(model, str(out))
    (out / "galeno.json").write_text(json.dumps(extra, indent=2, ensure_ascii=False))
    return out


def run(cfg: PretrainConfig) -> dict[str, Any]:
    """The whole job: pack (or reuse packed data), train, export, register; returns a summary.

    The driver owns the MLflow run (config, inputs, final metrics, the model); rank 0 logs the
    per-step metrics into it. Tracking never stops the job: if the store is down the run is
    created when it answers again, and a model that could not be registered says so in the summary.
    """
    from galeno.runtime import init_ray
    from galeno.tracking import job_run
    from galeno.train.packing import pack_corpus, packing_identity, packing_tag

    t0 = time.time()
    given = cfg.model.init_from
    cfg = absolute_paths(cfg)
    handover.read(cfg.data.corpus, handover.CorpusOutputs)  # a missing corpus fails now, not after Ray starts
    base = check_init_from(cfg, given)
    if not cfg.data.tokenizer:
        raise handover.HandoverError("no tokenizer given: name the output folder of jobs/train_tokenizer.py, or any "
                                     "Hugging Face tokenizer or model folder (data.tokenizer=DIR; jobs/pipeline.py "
                                     "passes it itself)")
    handover.clear(cfg.output)
    init_ray(cfg.ray)
    packed = paths.packed_data(cfg.output, packing_tag(packing_identity(cfg.data))).resolve()
    notes = [f"reused the packed sequences in {packed} (same corpus, tokenizer, settings and packing code)"] \
        if paths.packed_manifest(packed).is_file() else []
    manifest = pack_corpus(cfg.data, packed)
    if manifest["splits"]["train"]["sequences"] < cfg.trainer.micro_batch * cfg.trainer.num_workers:
        raise ValueError(f"only {manifest['splits']['train']['sequences']} training sequences: fewer than one "
                         f"micro batch per worker")
    storage = cfg.trainer.storage_path or str(paths.train_storage(cfg.output))
    resumption = resume.prepare(cfg.output, [f"{storage}/{cfg.name}", paths.local_checkpoints(cfg.output)],
                                {"model": {"init_from": base["base_model_digest"]} if base else to_dict(cfg.model),
                                 "optim": to_dict(cfg.optim), "packed": manifest["tag"],
                                 "mlm_probability": cfg.data.mlm_probability,
                                 "trainer": resume.trainer_identity(cfg.trainer),
                                 "code": code_digest("galeno.train", "galeno.inference.forward")},
                                cfg.trainer.resume, f"pretraining run {cfg.name}",
                                run_files=(paths.metrics_log(cfg.output), paths.mlflow_run_file(cfg.output)))
    notes += [resumption.note] if resumption.note else []
    lineage = {"config_hash": config_hash(cfg), "packing_tag": manifest["tag"],
               "tokenizer_hash": manifest["tokenizer_hash"], "corpus_manifest_hash": manifest["corpus_manifest_hash"],
               **base}
    with job_run(cfg.tracking, "pretrain", cfg.output, to_dict(cfg), run_name=cfg.name, tags=lineage) as tracker:
        _log_inputs(tracker, cfg, manifest, packed)
        streamed = tracker.run_id is not None or cfg.trainer.launcher == "local"
        if cfg.trainer.launcher == "local":
            final = contextlib.nullcontext(local_worker(cfg, packed, tracker))
        else:
            final = ray_fit(cfg, packed, tracker.run_id).as_directory()
        with final as final_dir:
            model_dir = export(cfg, final_dir, paths.model_export(cfg.output),
                               {**lineage, "checkpoint": str(final_dir), "config": to_dict(cfg)})
        metrics_path = paths.metrics_log(cfg.output)
        if not streamed:  # the workers had no run to log into: send their metrics now
            for row in _metric_rows(metrics_path):
                tracker.log_metrics(row, step=row["step"])
        last = _last_metrics(metrics_path)
        summary = {"model": str(model_dir), "packed": str(packed), "steps": last.get("step"),
                   "loss": last.get("loss"), "val_loss": last.get("val_loss"),
                   "val_perplexity": last.get("val_perplexity"),
                   "tokens_per_second": last.get("tokens_per_second"), "mfu": last.get("mfu"),
                   "train_sequences": manifest["splits"]["train"]["sequences"],
                   "elapsed_seconds": round(time.time() - t0, 1)}
        tracker.log_artifact(metrics_path)
        summary.update(_register(cfg, model_dir, tracker, last, notes))
        tracker.log_dict(summary, "summary.json")  # the MLflow artifact name
    paths.pretrain_summary(cfg.output).write_text(json.dumps(summary, indent=2))
    handover.write(handover.record(handover.PretrainOutputs, cfg.output, model=model_dir,
                                   summary=paths.pretrain_summary(cfg.output), metrics=metrics_path,
                                   registered_model=summary.get("registered_model"), notes=notes))
    return summary


def _log_inputs(tracker, cfg: PretrainConfig, manifest: dict[str, Any], packed: Path) -> None:
    """The corpus, the tokenizer and the packed sequences, by digest, plus their small manifests."""
    splits = manifest["splits"]
    tracker.log_input_dataset("corpus", manifest["corpus_manifest_hash"], cfg.data.corpus,
                              schema={"id": "string", "source": "string", "text": "string"},
                              profile={"documents": manifest["documents_in"], "sources": sorted(manifest["sources"]),
                                       "rejected": manifest["rejected"]})
    tracker.log_input_dataset("tokenizer", manifest["tokenizer_hash"], cfg.data.tokenizer, context="tokenizer")
    tracker.log_input_dataset("packed", manifest["tag"], str(packed), schema={"input_ids": "string"},
                              profile={s: {"sequences": v["sequences"], "tokens": v["tokens"]} for s, v in splits.items()})
    tracker.log_artifact(handover.read(cfg.data.corpus, handover.CorpusOutputs).manifest, "inputs/corpus")
    tracker.log_artifact(cfg.data.tokenizer, "inputs/tokenizer")
    tracker.log_artifact(paths.packed_manifest(packed), "inputs/packed")


def _register(cfg: PretrainConfig, model_dir: Path, tracker, last: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """Register the exported model as a new galeno-mlm version (or find the identical one, noted in
    ``notes``); a failure is reported, not raised."""
    from galeno.registry import MLM_MODEL, register_unless_identical

    if not (cfg.tracking.enabled and cfg.tracking.register):
        return {}
    metrics = {k: last[k] for k in ("val_loss", "val_perplexity", "val_accuracy") if last.get(k) is not None}
    if not tracker.flush() or tracker.run_id is None:
        log.warning("MLflow at %s does not answer: %s is not registered; register it later with "
                    "galeno.registry.register_model(%r, %r)", tracker.cfg.tracking_uri, model_dir, str(model_dir),
                    MLM_MODEL)
        return {"registered_model": None}
    try:
        version, reused = register_unless_identical(
            model_dir, MLM_MODEL, kind="fill-mask", metrics=metrics, run_id=tracker.run_id, cfg=tracker.cfg,
            step=int(last.get("step") or 0))
        if reused:
            notes.append(f"the model is identical to version {version} of {MLM_MODEL}: not registered again")
    except Exception as err:  # noqa: BLE001 - the model is on disk; registration can be redone
        log.warning("registering %s as %s failed (%s: %s); the model stays in %s", model_dir, MLM_MODEL,
                    type(err).__name__, err, model_dir)
        return {"registered_model": None}
    return {"registered_model": f"models:/{MLM_MODEL}/{version}", "mlflow_run_id": tracker.run_id}


def absolute_paths(cfg: PretrainConfig) -> PretrainConfig:
    """Workers start in their own directory: hand them absolute paths (URIs such as s3:// stay as they are),
    registry URIs resolved to local folders and the tracking store's absolute URI (``model.init_from`` too)."""
    from galeno.inference.source import resolve_model
    from galeno.tracking import resolved

    tracking = resolved(cfg.tracking)
    model = cfg.model
    if model.init_from:
        model = dataclasses.replace(model, init_from=paths.absolute(resolve_model(model.init_from, tracking)))
    # a registered model's folder holds its tokenizer: models:/galeno-mlm@champion is a tokenizer too
    tokenizer = paths.absolute(handover.tokenizer_folder(resolve_model(cfg.data.tokenizer, tracking))) \
        if cfg.data.tokenizer else model.init_from  # continual pretraining: the base model's own tokenizer
    data = dataclasses.replace(cfg.data, corpus=paths.absolute(cfg.data.corpus), tokenizer=tokenizer)
    trainer = dataclasses.replace(cfg.trainer, storage_path=paths.absolute(cfg.trainer.storage_path))
    return dataclasses.replace(cfg, output=paths.absolute(cfg.output), data=data, model=model, trainer=trainer,
                               tracking=tracking)


def check_init_from(cfg: PretrainConfig, given: str) -> dict[str, Any]:
    """A continual run's base model (``given``: as the user named it; ``cfg``: resolved): it must exist, hold a tokenizer, be the tokenizer the run packs with,
    and have positions for ``data.seq_len``. Returns its lineage (``base_model``, ``base_model_digest``,
    ``base_model_version`` for a registry URI), empty for a run from random weights."""
    from galeno.hashing import model_digest
    from galeno.train.packing import tokenizer_digest

    folder = cfg.model.init_from
    if not folder:
        return {}
    if Path(folder).resolve().is_relative_to(Path(cfg.output).resolve()):
        raise ValueError(f"model.init_from={given} lies in this run's own output {cfg.output}, which the run "
                         "overwrites: continue from a copy, or give the new run another output")
    if not (Path(folder) / "config.json").is_file():
        raise FileNotFoundError(f"model.init_from={given}: no Hugging Face model in {folder} (config.json)")
    if not (Path(folder) / "tokenizer.json").is_file():
        raise FileNotFoundError(f"model.init_from={given}: {folder} has no tokenizer.json; continual "
                                "pretraining uses the base model's own tokenizer")
    if Path(cfg.data.tokenizer).resolve() != Path(folder).resolve() and \
            tokenizer_digest(cfg.data.tokenizer) != tokenizer_digest(folder):
        raise ValueError(f"data.tokenizer={cfg.data.tokenizer} is not the tokenizer of model.init_from={given}: "
                         "a checkpoint continues with its own vocabulary (leave data.tokenizer empty)")
    config = json.loads((Path(folder) / "config.json").read_text())
    positions = config.get("max_position_embeddings", 0)
    offset = 2 if config.get("model_type") in ("roberta", "xlm-roberta", "camembert") else 0  # positions after padding
    if positions and positions < cfg.data.seq_len + offset:
        raise ValueError(f"data.seq_len {cfg.data.seq_len} does not fit model.init_from={given}: "
                         f"{positions} positions")
    lineage = {"base_model": given, "base_model_path": str(folder), "base_model_digest": model_digest(folder)}
    if given.startswith("models:/"):
        lineage["base_model_version"] = f"{Path(folder).parent.parent.parent.name}/{Path(folder).parent.parent.name}"
    return lineage


def _metric_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _last_metrics(path: Path) -> dict[str, Any]:
    """Last evaluated step of metrics.jsonl (the final step always evaluates)."""
    last: dict[str, Any] = {}
    for row in _metric_rows(path):
        if "val_loss" in row:
            last = row
    return last
