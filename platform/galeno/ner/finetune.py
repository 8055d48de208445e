"""NER fine-tuning job: encode the data, fine-tune once per seed on the shared loop, score, register.

setup (``run``, the driver) → worker (``ner_worker`` under Ray Train, or ``local_worker``) →
loop (``galeno.train.loop.fit`` with :class:`galeno.ner.task.NERTask`). Each seed has its own
folder and MLflow run; rank 0 keeps the best dev-F1 model in ``seed-N/best`` as training goes
(the ``reproduce`` recipe's "best epoch"), the driver scores it on dev with the evaluation
code of ``jobs/evaluate_ner.py``, and the best seed's model is registered as
``galeno-ner-<task>``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

from galeno import handover, paths
from galeno.config import config_hash, from_dict, to_dict
from galeno.ner.config import NERConfig
from galeno.hashing import code_digest, model_digest
from galeno.ner.sweep import run_sweep
from galeno.train import resume

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- data
def prepare(cfg: NERConfig, model_dir: str, out: Path) -> dict[str, Any]:
    """Read train and dev, build the label map, encode both into windows; returns the data manifest."""
    from galeno.hashing import file_hash
    from galeno.inference.align import label_map, window_stats
    from galeno.ner.config import split_extra_dev
    from galeno.ner.data import read_ner
    from galeno.inference.loading import load_tokenizer
    from galeno.ner.task import encode_rows, write_rows

    fmt = cfg.data.format or None
    train_docs, train_stats = read_ner(cfg.data.train, fmt)
    dev_docs, dev_stats = read_ner(cfg.data.dev, fmt)
    extra = {name: read_ner(path, fmt) for name, path in map(split_extra_dev, cfg.data.extra_dev)}
    train = [s for d in train_docs for s in d.sentences]
    if cfg.data.train_sentences:
        train = train[:cfg.data.train_sentences]
    empty_dropped = 0
    if cfg.data.empty_fraction < 1:
        keep = random.Random(0)  # the same thinning for every seed and rerun
        thinned = [s for s in train if any(t != "O" for t in s.tags) or keep.random() < cfg.data.empty_fraction]
        empty_dropped, train = len(train) - len(thinned), thinned
        log.info("data.empty_fraction=%s: %d training sentences without entities left out", cfg.data.empty_fraction,
                 empty_dropped)
    dev = [s for d in dev_docs for s in d.sentences]
    if not train or not dev:
        raise ValueError(f"no sentences in {cfg.data.train if not train else cfg.data.dev}")
    labels = label_map([s.tags for s in train] + [s.tags for s in dev])
    dev_only = sorted({t[2:] for s in dev for t in s.tags if t != "O"} - {t[2:] for s in train for t in s.tags if t != "O"})
    if dev_only:
        log.warning("entity types in dev but not in train (never learned): %s", dev_only)
    label2id = {t: i for i, t in enumerate(labels)}
    tokenizer = load_tokenizer(model_dir)
    max_length = usable_length(model_dir, tokenizer, cfg.data.max_length)
    rows = {"train": encode_rows(tokenizer, train, label2id, max_length, cfg.data.stride),
            "dev": encode_rows(tokenizer, dev, label2id, max_length, cfg.data.stride)}
    files = {split: str(write_rows(r, paths.ner_data(out, split))) for split, r in rows.items()}
    manifest = {"labels": labels, "files": files, "train_stats": train_stats, "dev_stats": dev_stats,
                "train_sentences": len(train), "dev_sentences": len(dev), "dev_only_types": dev_only,
                "train_empty_dropped": empty_dropped,
                "extra_dev": {name: {"path": split_extra_dev(entry)[1], "stats": stats,
                                     "sentences": sum(len(d.sentences) for d in docs)}
                              for (name, (docs, stats)), entry in zip(extra.items(), cfg.data.extra_dev)},
                "windows": {split: window_stats(_as_windows(r)) for split, r in rows.items()},
                "digests": {split: file_hash(path, 16) for split, path in files.items()}}
    paths.ner_data_manifest(out).write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    log.info("NER data: %d train / %d dev sentences, %d / %d windows, %d labels", len(train), len(dev),
             len(rows["train"]), len(rows["dev"]), len(labels))
    return {**manifest, "dev_docs": dev_docs, "extra_docs": {name: docs for name, (docs, _) in extra.items()}}


def usable_length(model_dir: str, tokenizer, max_length: int) -> int:
    """``data.max_length``, capped at what the model's positions take (as evaluation and Serve cap it):
    a 130-position model trains on 128-token windows whatever the preset asks."""
    from types import SimpleNamespace

    from transformers import AutoConfig

    from galeno.inference.loading import window_limit

    limit = window_limit(SimpleNamespace(config=AutoConfig.from_pretrained(model_dir, local_files_only=True)),
                         tokenizer, max_length)
    if limit < max_length:
        log.info("data.max_length %d capped at %d: what %s's positions take", max_length, limit, model_dir)
    return limit


def _as_windows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"sentence": r["sentence"], "truncated": False} for r in rows]


def derive(cfg: NERConfig, train_windows: int) -> NERConfig:
    """Steps from epochs: max_steps, evaluation/checkpoint cadence and warmup steps."""
    from galeno.ner.task import steps_per_epoch, total_steps

    per_epoch = steps_per_epoch(train_windows, cfg.trainer.global_batch)
    steps = total_steps(train_windows, cfg.trainer.global_batch, cfg.epochs)
    every = max(1, per_epoch // cfg.eval_per_epoch)
    trainer = dataclasses.replace(cfg.trainer, max_steps=steps, eval_every=every, checkpoint_every=every)
    optim = dataclasses.replace(cfg.optim, warmup_steps=round(cfg.warmup_fraction * steps))
    return dataclasses.replace(cfg, trainer=trainer, optim=optim)


# --------------------------------------------------------------------------- workers
def _worker_body(cfg: NERConfig, job: dict[str, Any], reporter, tracker) -> None:
    from galeno.ner.task import NERTask, eval_batches, train_batches
    from galeno.train.engine import world
    from galeno.train.loop import run_worker

    task = NERTask(job["model_dir"], job["labels"], init=cfg.init, seed=job["seed"], o_weight=cfg.o_weight,
                   select=cfg.select)
    micro = cfg.trainer.micro_batch

    def train_epoch(epoch: int):
        rank, _, world_size = world()
        return train_batches(job["files"]["train"], micro, rank=rank, world_size=world_size, seed=job["seed"],
                             epoch=epoch, group_by_length=cfg.data.group_by_length,
                             equal_tokens=cfg.data.equal_tokens,
                             weight_by_tokens=cfg.data.weight_by_tokens)

    def val_batches():
        rank, _, world_size = world()
        return eval_batches(job["files"]["dev"], micro, rank=rank, world_size=world_size)

    trainer = dataclasses.replace(cfg.trainer, seed=job["seed"])
    run_worker(task, trainer, cfg.optim, train_epoch=train_epoch, val_batches=val_batches, reporter=reporter,
               output=job["seed_dir"], tracker=tracker, best_dir=paths.ner_best(job["seed_dir"]))


def ner_worker(config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker``."""
    from galeno.train.loop import RayReporter, rank0_tracker

    cfg = from_dict(NERConfig, config["cfg"])
    job = config["job"]
    if job.get("placement_group_file"):
        from galeno.train.engine import world

        if world()[0] == 0:  # a sweep trial: its driver removes this run's placement group when the trial ends
            import ray.util

            group = ray.util.get_current_placement_group()
            if group is not None:
                Path(job["placement_group_file"]).parent.mkdir(parents=True, exist_ok=True)
                Path(job["placement_group_file"]).write_text(group.id.hex())
    with rank0_tracker(cfg.tracking, job.get("mlflow_run_id")) as tracker:
        _worker_body(cfg, job, RayReporter(), tracker)


def local_worker(cfg: NERConfig, job: dict[str, Any], tracker) -> None:
    """World size 1 in this process, no Ray."""
    from galeno.train.loop import LocalReporter

    _worker_body(cfg, job, LocalReporter(job["seed_dir"], cfg.trainer.keep_checkpoints), tracker)


def ray_fit(cfg: NERConfig, job: dict[str, Any], callbacks: list | None = None) -> None:
    from galeno.train.loop import ray_train

    storage = cfg.trainer.storage_path or str(paths.train_storage(job["seed_dir"]).resolve())
    ray_train(ner_worker, {"cfg": to_dict(cfg), "job": job}, cfg.trainer, name=_run_name(cfg, job["seed"]),
              storage=storage, callbacks=callbacks)


def _run_name(cfg: NERConfig, seed: int) -> str:
    """The Ray Train run of one seed (a rerun of the same name and storage resumes it)."""
    return f"ner-{cfg.task}-seed{seed}"


# --------------------------------------------------------------------------- driver
def run(cfg: NERConfig) -> dict[str, Any]:
    """The whole job; returns (and writes to ``<output>/results.json``) per-seed and aggregate scores."""
    from galeno.ner.evaluate import dump, score, summary, write_predictions_table
    from galeno.inference.source import resolve_model
    from galeno.tracking import job_run

    t0 = time.time()
    cfg = absolute_paths(cfg)
    out = Path(cfg.output)
    if not cfg.model:
        raise handover.HandoverError("no model given: --model names the encoder to fine-tune (a pretraining output "
                                     "folder, a Hugging Face folder or models:/NAME@ALIAS; jobs/pipeline.py passes it)")
    model_dir = str(Path(resolve_model(cfg.model, cfg.tracking)).resolve())
    handover.clear(out)
    if not cfg.trainer.use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    data = prepare(cfg, model_dir, out)
    if cfg.trainer.launcher == "ray" or cfg.sweep.enabled:
        from galeno.runtime import init_ray

        init_ray(cfg.ray)
    if cfg.sweep.enabled:
        if cfg.data.extra_dev:
            log.warning("data.extra_dev is not scored in a sweep (trials are compared on dev); fine-tune the "
                        "chosen configuration without sweep.enabled to score it")
        return run_sweep(cfg, model_dir, data, fit=ray_fit, derive=derive)
    cfg = derive(cfg, data["windows"]["train"]["windows"])
    lineage = _lineage(cfg, model_dir, data)
    base_digest = model_digest(model_dir)
    seeds, notes = [], []
    for seed in cfg.seeds:
        seed_dir = paths.ner_seed(out, seed)
        job = {"model_dir": model_dir, "labels": data["labels"], "files": data["files"], "seed": seed,
               "seed_dir": str(seed_dir)}
        storage = cfg.trainer.storage_path or str(paths.train_storage(seed_dir))
        identity = {"model": base_digest, "init": cfg.init, "data": data["digests"],
                    "encoding": {k: v for k, v in to_dict(cfg.data).items() if k not in ("train", "dev", "extra_dev")},
                    "labels": data["labels"], "optim": to_dict(cfg.optim), "eval_per_epoch": cfg.eval_per_epoch,
                    "warmup_fraction": cfg.warmup_fraction, "o_weight": cfg.o_weight, "select": cfg.select,
                    "trainer": resume.trainer_identity(cfg.trainer),
                    "code": code_digest("galeno.train", "galeno.ner"), "seed": seed}
        resumption = resume.prepare(seed_dir, [f"{storage}/{_run_name(cfg, seed)}", paths.local_checkpoints(seed_dir)],
                                    identity, cfg.trainer.resume, f"NER run {cfg.task} seed {seed}",
                                    run_files=(paths.metrics_log(seed_dir), paths.mlflow_run_file(seed_dir)))
        notes += [resumption.note] if resumption.note else []
        with job_run(cfg.tracking, "finetune_ner", seed_dir, {**to_dict(cfg), "seed": seed},
                     run_name=f"ner-{cfg.task}-seed{seed}", tags={**lineage, "galeno.seed": seed}) as tracker:
            _log_inputs(tracker, cfg, data, model_dir)
            job["mlflow_run_id"] = tracker.run_id
            if cfg.trainer.launcher == "local":
                local_worker(cfg, job, tracker)
            else:
                ray_fit(cfg, job)
            best = paths.ner_best(seed_dir)
            predicted = _predict(best, data["dev_docs"], cfg)
            result = score(data["dev_docs"], predicted, _format(cfg))
            result["best_step"] = int((best / "best_step.txt").read_text())
            dump(result, paths.ner_dev_metrics(seed_dir))
            write_predictions_table(data["dev_docs"], predicted, paths.ner_dev_predictions(seed_dir))
            (best / "galeno.json").write_text(json.dumps({**lineage, "seed": seed}, indent=2))
            headline = summary(result)
            for name, docs in data["extra_docs"].items():  # scored like dev, never selected on
                extra = score(docs, _predict(best, docs, cfg), _format(cfg, name))
                dump(extra, paths.ner_seed(out, seed) / f"{name}_metrics.json")
                headline.update({k.replace("dev_", f"{name}_", 1): v for k, v in summary(extra).items()})
            tracker.log_metrics({f"final_{k}": v for k, v in headline.items()})
            tracker.log_artifact(paths.ner_dev_metrics(seed_dir))
            tracker.log_artifact(paths.ner_dev_predictions(seed_dir))
            seeds.append({"seed": seed, "run_id": tracker.run_id, "model": str(best), **headline,
                          "best_step": result["best_step"]})
    results = _aggregate(cfg, seeds, data, time.time() - t0)
    results.update(_register(cfg, seeds, results, lineage, notes))
    paths.ner_results(out).write_text(json.dumps(results, indent=2, ensure_ascii=False))
    handover.write(handover.record(handover.NEROutputs, out, model=results["best_model"],
                                   results=paths.ner_results(out), task=cfg.task,
                                   registered_model=results.get("registered_model"), notes=notes))
    return results


def _predict(model_dir: Path, docs, cfg: NERConfig) -> list[list[str]]:
    """The dev tags that are reported and registered: the inference layer's, as Serve and MLflow users get them."""
    from galeno.inference.loading import load_ner, local_source
    from galeno.inference.token_classification import predict_tags

    loaded = load_ner(local_source(str(model_dir)), cfg.data.max_length, want_gpu=cfg.trainer.use_gpu)
    sentences = [s for d in docs for s in d.sentences]
    return predict_tags(loaded, sentences, "first", stride=cfg.data.stride,
                        chunk=max(cfg.trainer.micro_batch, 32))[0]


def _format(cfg: NERConfig, extra: str = "") -> str:
    from galeno.ner.config import split_extra_dev
    from galeno.ner.data import detect_format

    path = dict(map(split_extra_dev, cfg.data.extra_dev))[extra] if extra else cfg.data.dev
    return cfg.data.format or detect_format(path)


def _aggregate(cfg: NERConfig, seeds: list[dict[str, Any]], data: dict[str, Any], elapsed: float) -> dict[str, Any]:
    f1 = [s["dev_f1"] for s in seeds]
    best = max(seeds, key=lambda s: s[cfg.select])  # the seed registered: by the metric that picked its step
    spread = {}  # mean and std over the seeds of every other headline score (span F1, extra dev sets)
    for key in seeds[0]:
        if key != "dev_f1" and "_f1" in key:
            values = [s[key] for s in seeds]
            spread[f"{key}_mean"] = statistics.fmean(values)
            spread[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"task": cfg.task, "model": cfg.model, "init": cfg.init, "seeds": seeds,
            "dev_f1_mean": statistics.fmean(f1), "dev_f1_std": statistics.stdev(f1) if len(f1) > 1 else 0.0,
            **spread,
            "best_seed": best["seed"], "best_model": best["model"],
            "train_sentences": data["train_sentences"], "dev_sentences": data["dev_sentences"],
            "max_steps": cfg.trainer.max_steps, "elapsed_seconds": round(elapsed, 1)}


def _lineage(cfg: NERConfig, model_dir: str, data: dict[str, Any]) -> dict[str, Any]:
    lineage = {"config_hash": config_hash(cfg), "base_model": cfg.model, "init": cfg.init,
               "train_data_hash": data["digests"]["train"], "dev_data_hash": data["digests"]["dev"]}
    if cfg.model.startswith("models:/"):
        from galeno.registry import read_lineage

        version = Path(model_dir).parent.parent.name  # <cache>/NAME/VERSION/artifacts/model
        lineage["base_model_version"] = f"{Path(model_dir).parent.parent.parent.name}/{version}"
        lineage["tokenizer_hash"] = read_lineage(model_dir).get("tokenizer_hash", "")
    return lineage


def _log_inputs(tracker, cfg: NERConfig, data: dict[str, Any], model_dir: str) -> None:
    for split in ("train", "dev"):
        tracker.log_input_dataset(f"{cfg.task}-{split}", data["digests"][split], getattr(cfg.data, split),
                                  context="training" if split == "train" else "evaluation",
                                  profile={"sentences": data[f"{split}_sentences"], **data["windows"][split]})
    tracker.log_artifact(paths.ner_data_manifest(cfg.output), "inputs")
    tracker.set_tags({"galeno.base_model_dir": model_dir})


def _register(cfg: NERConfig, seeds: list[dict[str, Any]], results: dict[str, Any],
              lineage: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """Register the best seed's model as galeno-ner-<task>; a failure is reported, not raised."""
    from galeno.registry import NER_MODEL_PREFIX, register_unless_identical
    from galeno.tracking import resolved

    if not (cfg.tracking.enabled and cfg.tracking.register):
        return {}
    best = next(s for s in seeds if s["seed"] == results["best_seed"])
    name = NER_MODEL_PREFIX + cfg.task
    metrics = {k: best[k] for k in ("dev_f1", "dev_precision", "dev_recall", "dev_f1_strict", "dev_span_f1") if k in best}
    metrics.update({"dev_f1_mean": results["dev_f1_mean"], "dev_f1_std": results["dev_f1_std"]})
    try:
        version, reused = register_unless_identical(
            best["model"], name, kind="ner", metrics=metrics, lineage=lineage, run_id=best["run_id"],
            cfg=resolved(cfg.tracking), step=best["best_step"])
        if reused:
            notes.append(f"the model is identical to version {version} of {name}: not registered again")
    except Exception as err:  # noqa: BLE001 - the model is on disk; registration can be redone
        log.warning("registering %s as %s failed (%s: %s)", best["model"], name, type(err).__name__, err)
        return {"registered_model": None}
    return {"registered_model": f"models:/{name}/{version}"}


def absolute_paths(cfg: NERConfig) -> NERConfig:
    """Absolute data, model and output paths (workers start elsewhere), absolute tracking URIs."""
    from galeno import paths
    from galeno.ner.config import split_extra_dev
    from galeno.tracking import resolved

    data = dataclasses.replace(cfg.data, train=paths.absolute(cfg.data.train), dev=paths.absolute(cfg.data.dev),
                               extra_dev=[f"{name}={paths.absolute(p)}" for name, p in map(split_extra_dev, cfg.data.extra_dev)])
    return dataclasses.replace(cfg, model=paths.absolute(cfg.model), output=paths.absolute(cfg.output), data=data,
                               tracking=resolved(cfg.tracking))
