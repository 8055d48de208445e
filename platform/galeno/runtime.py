"""Starting (or joining) Ray, the one place jobs do it.

Under ``ray job submit`` the driver already sits on a cluster and ``ray.init()`` joins it
(``RAY_ADDRESS`` is set for it); run with plain ``python`` it starts a local Ray.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)

#: For a Ray started by a job on one machine. Ray kills idle workers after 1 s once there
#: are more than CPUs, and Ray Data's shuffles run in their own worker pools, so each step
#: of a multi-shuffle job would pay worker start-up again: measured on 2 cores, the dedup
#: tests took 240 s with Ray's defaults and 64 s with these.
LOCAL_SYSTEM_CONFIG = {"num_workers_soft_limit": 8, "idle_worker_killing_time_threshold_ms": 300_000}

#: Every job's log line: jobs/pipeline.py reads our own lines back by this shape.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Library output that says nothing to a Galeno user, quieted where it is made (docs/architecture.md):
#: transformers' and huggingface_hub's progress bars (one per weight file loaded or written, hundreds of
#: broken lines in a log) and advisory warnings, such as the load report of a head that fine-tuning
#: is about to train.
#: Ray Data's console shows WARNING and above (ray_data_logging.yaml): the lines it writes at every
#: dataset execution, every epoch of a training run, stay in its session log file.
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
             "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
             "RAY_DATA_LOGGING_CONFIG": str(Path(__file__).with_name("ray_data_logging.yaml"))}
#: Loggers whose warnings are known to be harmless in our jobs, raised to ERROR. Ray Train's placement
#: group cleaner asks the State API, which a Ray started without its dashboard (ours) does not serve,
#: once a second for a whole run: "Failed to query Ray Train Controller actor state" (65 lines in a demo).
QUIET_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)

#: The worker_process_setup_hook that quiets every Ray worker of a job (init_ray sets it for a local
#: Ray; configs/ray/runtime-env.yaml names it for a cluster).
WORKER_SETUP_HOOK = "galeno.runtime.quiet_worker"


def quiet_libraries() -> None:
    """Quiet the known-harmless library output in this process (jobs call it through setup_logging)."""
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import transformers.utils.logging as hf_logging
    except ImportError:
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def quiet_worker() -> None:
    """Ray's worker_process_setup_hook: every worker process of the job starts quiet, and our own
    INFO lines (a training run's progress on rank 0) reach the driver as they do in the driver.
    A worker has no terminal: a dataset it runs (a Ray Train split, a task's own dataset) draws no
    progress bars, whose every update would be a line in the driver's output."""
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    quiet_libraries()
    ours = logging.getLogger("galeno")
    if not ours.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
        ours.propagate = False


@dataclass
class RayConfig:
    address: Optional[str] = None
    """Ray cluster to join (``auto``, ``ray://host:10001``). Empty: join ``$RAY_ADDRESS`` if set, else start a local Ray."""
    num_cpus: Optional[int] = None
    """CPUs for a local Ray started by the job (default: all cores). Ignored when joining a cluster."""
    temp_dir: Optional[str] = None
    """Where a local Ray started by the job keeps its session (logs, sockets); default /tmp/ray. Keep the
    path short: Ray's socket paths under it must fit in 107 characters."""
    object_store_mb: Optional[int] = None
    """Object store size in MiB for a local Ray started by the job (default: Ray's, 30% of memory). Blocks
    beyond it spill to disk (``temp_dir``), so this bounds the job's shared memory. Ignored when joining a
    cluster (set it with ``ray start --object-store-memory``)."""
    progress_bars: Optional[bool] = None
    """Show Ray Data's progress bars; default: only when stderr is a terminal (in a log file each update
    is a line of its own)."""

    def __post_init__(self) -> None:
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError("ray.num_cpus must be >= 1")
        if self.object_store_mb is not None and self.object_store_mb < 64:
            raise ValueError("ray.object_store_mb must be >= 64 (MiB)")


def init_ray(cfg: RayConfig) -> None:
    """Join or start Ray once; idempotent, so tests and pipelines can call it freely."""
    import ray
    import ray.data

    if not ray.is_initialized():
        address = cfg.address or os.environ.get("RAY_ADDRESS")
        kwargs = dict(include_dashboard=False, log_to_driver=True, configure_logging=False)
        if address:
            ray.init(address=address, **kwargs)  # the job's runtime env (configs/ray/runtime-env.yaml) applies
        else:
            if cfg.temp_dir:
                kwargs["_temp_dir"] = os.path.abspath(cfg.temp_dir)
            if cfg.object_store_mb:
                kwargs["object_store_memory"] = cfg.object_store_mb * 2**20
            ray.init(address="local", num_cpus=cfg.num_cpus, _system_config=LOCAL_SYSTEM_CONFIG,
                     runtime_env={"worker_process_setup_hook": WORKER_SETUP_HOOK}, **kwargs)
        log.info("Ray: %s", ray.cluster_resources())
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty() if cfg.progress_bars is None else cfg.progress_bars


def setup_logging(level: str = "INFO") -> None:
    """Jobs call this once; the library never configures logging on import."""
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format=LOG_FORMAT)
    quiet_libraries()


def each(fn: Callable[[list[Any]], list[Any]], items: list[Any], ids: list[str], what: str) -> list[Any]:
    """``fn(items)``; if the batch fails, ``fn`` on each item alone, ``None`` for an item that fails
    again: one bad document never fails its batch. Logs ids and exception types, never a text."""
    try:
        return list(fn(items))
    except Exception as err:  # noqa: BLE001
        log.warning("%s failed on a batch of %d documents (%s); retrying one by one", what, len(items),
                    type(err).__name__)
    out: list[Any] = []
    for item, doc_id in zip(items, ids):
        try:
            out += fn([item])
        except Exception as one:  # noqa: BLE001
            log.warning("%s failed on document %s (%s)", what, doc_id, type(one).__name__)
            out.append(None)
    return out
