"""Starting (or joining) Ray, the one place jobs do it.

Under ``ray job submit`` the driver already sits on a cluster and ``ray.init()`` joins it
(``RAY_ADDRESS`` is set for it); run with plain ``python`` it starts a local Ray.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

log = logging.getLogger(__name__)

#: For a Ray started by a job on one machine. Ray kills idle workers after 1 s once there
#: are more than CPUs, and Ray Data's shuffles run in their own worker pools, so each step
#: of a multi-shuffle job would pay worker start-up again: measured on 2 cores, the dedup
#: tests took 240 s with Ray's defaults and 64 s with these.
LOCAL_SYSTEM_CONFIG = {"num_workers_soft_limit": 8, "idle_worker_killing_time_threshold_ms": 300_000}


@dataclass
class RayConfig:
    address: Optional[str] = None
    """Ray cluster to join (``auto``, ``ray://host:10001``). Empty: join ``$RAY_ADDRESS`` if set, else start a local Ray."""
    num_cpus: Optional[int] = None
    """CPUs for a local Ray started by the job (default: all cores). Ignored when joining a cluster."""
    progress_bars: bool = True
    """Show Ray Data's progress bars."""

    def __post_init__(self) -> None:
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError("ray.num_cpus must be >= 1")


def init_ray(cfg: RayConfig) -> None:
    """Join or start Ray once; idempotent, so tests and pipelines can call it freely."""
    import ray
    import ray.data

    if not ray.is_initialized():
        address = cfg.address or os.environ.get("RAY_ADDRESS")
        kwargs = dict(include_dashboard=False, log_to_driver=True, configure_logging=False)
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(address="local", num_cpus=cfg.num_cpus, _system_config=LOCAL_SYSTEM_CONFIG, **kwargs)
        log.info("Ray: %s", ray.cluster_resources())
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.progress_bars


def setup_logging(level: str = "INFO") -> None:
    """Jobs call this once; the library never configures logging on import."""
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
