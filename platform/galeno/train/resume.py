"""Whether a training run may continue from the checkpoints a previous run left in its folder.

Re-running a job with the same output resumes it (after a crash, a preemption, a resubmission).
That is only right when the checkpoints were written by the same training: the same model, data,
optimiser and schedule, and the same training code. :func:`prepare` compares the identity of the
run about to start with the one recorded beside its checkpoints (``<output>/run_identity.json``)
and says what it does, always in the log:

* ``resume=auto`` (the default): the same identity resumes from the latest checkpoint (a larger
  ``max_steps`` is the same identity: training extended); another one moves the old checkpoints
  aside (``<name>-stale-<identity>``) and starts afresh;
* ``resume=always``: continue from the checkpoints whatever changed (a fix that does not change
  the training, on a run too long to restart), said as a warning;
* ``resume=never``: move any checkpoints aside and start afresh.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, NamedTuple

from galeno import paths

log = logging.getLogger(__name__)

RESUME_MODES = ("auto", "always", "never")


class Resumption(NamedTuple):
    """What :func:`prepare` decided: ``fresh``, ``resume`` or ``restart``, and the sentence that says so
    (empty for a fresh run), which the job also records for ``jobs/pipeline.py`` to print."""

    decision: str
    note: str


#: Trainer fields that do not change what is trained so far (logging, retention, placement, fault drills),
#: and max_steps: a rerun with more steps continues the run (training extended).
_NOT_TRAINING = ("log_every", "checkpoint_every", "keep_checkpoints", "max_failures", "launcher", "storage_path",
                 "peak_tflops", "kill_at_step", "cpus_per_worker", "use_gpu", "resume", "max_steps")


def trainer_identity(trainer: Any) -> dict[str, Any]:
    """The fields of a :class:`~galeno.train.config.TrainerConfig` that decide the training trajectory."""
    import dataclasses

    return {k: v for k, v in dataclasses.asdict(trainer).items() if k not in _NOT_TRAINING}


def _has_checkpoints(folder: Path) -> bool:
    return folder.is_dir() and any(folder.rglob("checkpoint-*"))


def prepare(output: str | Path, checkpoints: list[str | Path], identity: dict[str, Any], mode: str,
            what: str, run_files: tuple[str | Path, ...] = ()) -> Resumption:
    """Decide, announce and record: ``fresh``, ``resume`` or ``restart``, with the sentence logged.

    ``checkpoints`` are the local folders a previous run of this output may have left (Ray Train's
    run folder, the local launcher's ``checkpoints/``); ``identity`` is what the training depends on
    (its digest is recorded). ``what`` names the run in messages (``pretraining run tiny-cpu``).
    ``run_files`` (its metrics log, its MLflow run record) go aside with the checkpoints on a restart,
    so the new run gets its own curves and MLflow run.
    A remote storage (``s3://``) cannot be moved aside: a changed identity there is an error.
    """
    from galeno.config import config_hash

    if mode not in RESUME_MODES:
        raise ValueError(f"resume must be one of {RESUME_MODES}, got {mode!r}")
    digest = config_hash(identity)
    record = paths.run_identity(output)
    previous = json.loads(record.read_text()) if record.is_file() else None
    remote = [str(c) for c in checkpoints if "://" in str(c)]
    local = [Path(c) for c in checkpoints if "://" not in str(c)]
    found = [c for c in local if _has_checkpoints(c)]
    if remote and previous is not None and previous.get("digest") != digest and mode == "auto":
        raise ValueError(f"{what}: the checkpoints at {remote[0]} were written by another config or code "
                         f"(identity {previous.get('digest')}, now {digest}); use a new name or output, "
                         "or resume=always to continue them, or resume=never after removing them")
    decision, note = "fresh", ""
    if found:
        same = previous is not None and previous.get("digest") == digest
        if mode == "always" or (mode == "auto" and same):
            decision = "resume"
            if same:
                note = (f"{what}: resuming from the checkpoints in {found[0]} (written by the same config, data "
                        f"and code, identity {digest}); resume=never starts afresh")
                log.info("%s", note)
            else:
                changed = _changed(previous, identity)
                note = (f"{what}: resume=always: continuing the checkpoints in {found[0]} although "
                        f"{', '.join(changed) or 'the identity'} changed since they were written")
                log.warning("%s", note)
        else:
            decision = "restart"
            stamp = previous.get("digest") if previous else time.strftime("%Y%m%d-%H%M%S")
            moved = [folder.with_name(f"{folder.name}-stale-{stamp}") for folder in found]
            for folder, aside in zip(found, moved):
                shutil.rmtree(aside, ignore_errors=True)
                folder.rename(aside)
            for file in map(Path, run_files):
                if file.is_file():
                    file.replace(file.with_name(f"{file.stem}-stale-{stamp}{file.suffix}"))
            if mode == "never":
                why = "resume=never"
            elif previous is None:
                why = "no identity was recorded with them (an older Galeno, or another job)"
            else:
                why = f"{', '.join(_changed(previous, identity))} changed since they were written"
            note = f"{what}: not resuming: {why}; the old checkpoints moved to {', '.join(map(str, moved))}, starting afresh"
            log.warning("%s", note)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"digest": digest, "identity": identity}, indent=2, default=str) + "\n")
    return Resumption(decision, note)


def _changed(previous: dict[str, Any] | None, identity: dict[str, Any]) -> list[str]:
    """Top-level keys of ``identity`` that differ from ``previous``'s (what a user should look at)."""
    before = (previous or {}).get("identity", {})
    return sorted(k for k in set(before) | set(identity) if json.dumps(before.get(k), sort_keys=True, default=str)
                  != json.dumps(identity.get(k), sort_keys=True, default=str))
