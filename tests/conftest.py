"""Shared fixtures: the real data in ../shared/data and a real local Ray."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GALENO_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The licensed corpora in ../shared/data; tests skip with a reason where it is absent."""
    if not (SHARED_DATA / "pharmaconer").is_dir():
        pytest.skip(f"needs the shared corpora at {SHARED_DATA} (absent in a fresh clone; CI has them)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs, shared by the whole session."""
    ray = pytest.importorskip("ray")
    import ray.data

    if not ray.is_initialized():
        from galeno.runtime import LOCAL_SYSTEM_CONFIG

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _system_config=LOCAL_SYSTEM_CONFIG)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()
