"""Shared fixtures: the real data in ../shared/data and a real local Ray."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.raycluster import free_port  # noqa: F401  (tests import it from here)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GALENO_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def isolated_tracking(tmp_path_factory):
    """Jobs run by tests track into a SQLite store under a temporary GALENO_HOME, never into the
    repo's artifacts/ or a tracking server named by the developer's shell."""
    home = tmp_path_factory.mktemp("galeno-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GALENO_HOME", str(home))
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_TRACKING_USERNAME",
                     "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
            mp.delenv(name, raising=False)
        yield home


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The licensed corpora in ../shared/data; tests skip with a reason where it is absent."""
    if not (SHARED_DATA / "pharmaconer").is_dir():
        pytest.skip(f"needs the shared corpora at {SHARED_DATA} (absent in a fresh clone; CI has them)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def ray_local(request):
    """A real local Ray with 2 CPUs, started for one test module and stopped after it.

    Per module, not per session: one module's leftovers (a Serve controller, Ray Data actor pools,
    a worker killed by the fault drill) never reach the next, and no driver lives long enough to
    pile them up. A session-long driver once hung after ~20 minutes of mixed work: it never heard
    that the Ray Train controller it had just created was alive (the GCS had it ALIVE), so
    ``TorchTrainer.fit`` waited forever. A start costs ~8 s here.

    A module's ``RAY_ENV`` mapping is set while Ray starts, so its processes (raylet, workers) see it.
    """
    ray = pytest.importorskip("ray")
    import ray.data

    if not ray.is_initialized():
        from galeno.runtime import LOCAL_SYSTEM_CONFIG

        with pytest.MonkeyPatch.context() as mp:
            for name, value in getattr(request.module, "RAY_ENV", {}).items():
                mp.setenv(name, value)
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                     _system_config=LOCAL_SYSTEM_CONFIG)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A head node on loopback with token auth (Ray's default for local clusters since 2.59) for the
    job-submission tests of one module, stopped after it: a second cluster left running becomes the
    one that Ray's address auto-detection (``/tmp/ray/ray_current_cluster``) finds."""
    from tests.raycluster import Cluster

    cluster = Cluster(tmp_path_factory.mktemp("ray-head"))
    cluster.start_head(num_cpus=2)
    yield cluster.ray_bin, cluster.address, cluster.env
    cluster.stop()
