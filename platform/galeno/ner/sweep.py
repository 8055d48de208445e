"""A hyperparameter sweep of NER fine-tuning: Ray Tune trials, each a Ray Train run, stopped early by ASHA.

Each trial draws a learning rate (log-uniform), a global batch size and a warmup fraction,
and runs the job's fine-tuning on Ray Train with the first seed (Ray Train V2 inside Tune:
the trial function launches a ``TorchTrainer`` whose ``TuneReportCallback`` forwards rank 0's
reports). ASHA compares trials on dev F1 at equal ``progress`` (the share of a trial's steps
done, so trials of different batch sizes line up) and stops the weakest ones after
``grace_evals`` evaluations. The result is ``<output>/sweep.json`` with every trial and the
overrides of the best one, to run with seeds afterwards.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

from galeno import paths
from galeno.config import from_dict, to_dict
from galeno.ner.config import NERConfig

log = logging.getLogger(__name__)


def _trial(space: dict[str, Any], base: dict[str, Any], job: dict[str, Any], train_windows: int,
           fit: Callable, derive: Callable) -> None:
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = from_dict(NERConfig, base)
    cfg = dataclasses.replace(cfg, warmup_fraction=space["warmup_fraction"],
                              optim=dataclasses.replace(cfg.optim, lr=space["lr"]),
                              trainer=dataclasses.replace(cfg.trainer, global_batch=space["global_batch"]))
    cfg = derive(cfg, train_windows)
    context = ray.tune.get_context()
    trial_dir = Path(cfg.output) / "sweep" / context.get_trial_name()
    fit(cfg, {**job, "seed_dir": str(trial_dir), "mlflow_run_id": None,
                   "placement_group_file": str(_placement_group_file(cfg.output, context.get_trial_id()))},
             callbacks=[TuneReportCallback()])


def _placement_group_file(output: str | Path, trial_id: str) -> Path:
    return Path(output) / "sweep" / "placement-groups" / f"{trial_id}.txt"


def _release_callback(output: str | Path):
    """A Tune callback that removes a finished trial's Ray Train placement group.

    When Tune ends a trial (ASHA stops it, or it reaches ``max_t``) it kills the trial's actor, and
    the Ray Train V2 run inside loses its controller before the controller removes its worker
    group's placement group, which lives as long as the driver (ray-project/ray#54305). On a small
    cluster the next trial's workers then wait for CPUs that no one uses, forever (the worker group
    start times out and is retried). Rank 0 of each trial's run writes its placement group's id;
    this callback removes it when the trial completes or fails.
    """
    from ray.tune import Callback

    class ReleaseTrainPlacementGroups(Callback):
        def _release(self, trial) -> None:
            import ray.util
            from ray._raylet import PlacementGroupID
            from ray.util.placement_group import PlacementGroup

            path = _placement_group_file(output, trial.trial_id)
            if not path.is_file():
                return
            group = PlacementGroup(PlacementGroupID.from_hex(path.read_text().strip()))
            if ray.util.placement_group_table(group).get("state") not in (None, "REMOVED"):
                ray.util.remove_placement_group(group)
                log.info("sweep: removed the placement group left by trial %s", trial.trial_id)

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self._release(trial)

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self._release(trial)

    return ReleaseTrainPlacementGroups()


def run_sweep(cfg: NERConfig, model_dir: str, data: dict[str, Any], *, fit: Callable, derive: Callable) -> dict[str, Any]:
    """Run the sweep; returns (and writes to ``<output>/sweep.json``) every trial and the best configuration.

    Each trial is one fine-tuning run, ``fit(cfg, job, callbacks)`` on a config ``derive(cfg, train_windows)``
    completes: fine-tuning hands its own launcher over, so this module never imports it.
    """
    import ray.tune
    from ray.tune.schedulers import ASHAScheduler

    from galeno.tracking import job_run

    sw = cfg.sweep
    # a report without dev_f1 (a step between evaluations) is fine: ASHA only acts on those with it
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    evals = max(1, round(cfg.epochs * cfg.eval_per_epoch))
    scheduler = ASHAScheduler(time_attr="progress", metric="dev_f1", mode="max", max_t=1.0,
                              grace_period=min(1.0, sw.grace_evals / evals), reduction_factor=sw.reduction_factor)
    space = {"lr": ray.tune.loguniform(sw.lr_min, sw.lr_max), "global_batch": ray.tune.choice(sw.batch_sizes),
             "warmup_fraction": ray.tune.choice(sw.warmup_fractions)}
    job = {"model_dir": model_dir, "labels": data["labels"], "files": data["files"], "seed": cfg.seeds[0]}
    trainable = ray.tune.with_resources(  # the trial function only waits on its Ray Train run (Tune refuses 0)
        ray.tune.with_parameters(_trial, base=to_dict(cfg), job=job, train_windows=data["windows"]["train"]["windows"],
                                 fit=fit, derive=derive),
        {"cpu": 0.01})
    out = Path(cfg.output)
    tuner = ray.tune.Tuner(
        trainable, param_space=space,
        tune_config=ray.tune.TuneConfig(scheduler=scheduler, num_samples=sw.num_samples,
                                        max_concurrent_trials=sw.max_concurrent),
        run_config=ray.tune.RunConfig(name=f"sweep-{cfg.task}", storage_path=str((out / "sweep" / "tune").resolve()),
                                      callbacks=[_release_callback(out.resolve())]))
    with job_run(cfg.tracking, "sweep_ner", out / "sweep", to_dict(cfg), run_name=f"ner-{cfg.task}-sweep") as tracker:
        grid = tuner.fit()
        trials = []
        for result in grid:
            history = result.metrics_dataframe
            scored = history[history["dev_f1"].notna()] if history is not None and "dev_f1" in history else None
            best_f1 = float(scored["dev_f1"].max()) if scored is not None and len(scored) else None
            trials.append({"config": result.config, "best_dev_f1": best_f1,
                           "progress": float(history["progress"].max()) if history is not None else 0.0,
                           "error": str(result.error) if result.error else None})
        finished = [t for t in trials if t["best_dev_f1"] is not None]
        if not finished:
            raise RuntimeError(f"no sweep trial reached a dev evaluation: {[t['error'] for t in trials]}")
        best = max(finished, key=lambda t: t["best_dev_f1"])
        overrides = [f"optim.lr={best['config']['lr']:.3g}", f"trainer.global_batch={best['config']['global_batch']}",
                     f"warmup_fraction={best['config']['warmup_fraction']}"]
        summary = {"task": cfg.task, "trials": trials, "best": best, "best_overrides": overrides,
                   "stopped_early": sum(t["progress"] < 1.0 for t in finished)}
        paths.ner_sweep(out).write_text(json.dumps(summary, indent=2))
        for i, t in enumerate(trials):
            if t["best_dev_f1"] is not None:
                tracker.log_metrics({"trial_dev_f1": t["best_dev_f1"]}, step=i)
        tracker.log_metrics({"best_dev_f1": best["best_dev_f1"]})
        tracker.log_artifact(paths.ner_sweep(out))
    log.info("sweep: best dev F1 %.4f with %s", best["best_dev_f1"], " ".join(overrides))
    return summary
