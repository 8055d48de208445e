"""Shared fixtures: the real data in ../shared/data and a real local Ray."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A head node on loopback with token auth (Ray's default for local clusters since 2.59) for the
    job-submission tests of one module, stopped after it: a second cluster left running becomes the
    one that Ray's address auto-detection (``/tmp/ray/ray_current_cluster``) finds."""
    tmp_path = tmp_path_factory.mktemp("ray-head")
    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if ray_bin is None:
        pytest.skip("the ray CLI is not installed")
    port, dash = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "RAY_ADDRESS": "", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    head = subprocess.Popen(
        [ray_bin, "start", "--head", f"--port={port}", f"--dashboard-port={dash}",
         "--dashboard-host=127.0.0.1", "--num-cpus=2", "--include-dashboard=true",
         # Own agent ports: the session's local Ray (other tests) already holds the defaults,
         # and a head whose job agent cannot bind never accepts a submission.
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
         "--disable-usage-stats", "--block"],
        env=env, stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT,
        start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while time.time() < deadline:
        # `job list` answers before the job agent can take submissions: probe with a no-op job.
        probe = subprocess.run([ray_bin, "job", "submit", "--address", address, "--", "true"],
                               env=env, capture_output=True, text=True)
        if probe.returncode == 0:
            break
        time.sleep(3)
    else:
        os.killpg(head.pid, signal.SIGTERM)
        pytest.fail("ray head did not take jobs:\n" + probe.stdout[-2000:] + probe.stderr[-2000:]
                    + "\n--- head log ---\n" + (tmp_path / "head.log").read_text()[-1500:])
    yield ray_bin, address, env
    os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops its processes on SIGTERM ...
    try:
        head.wait(timeout=3)
    except subprocess.TimeoutExpired:  # ... but waits ~30 s for actors to exit gracefully: not needed here
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)
    current = Path("/tmp/ray/ray_current_cluster")  # still naming the stopped head: forget it
    if current.is_file() and current.read_text().strip().endswith(f":{port}"):
        current.unlink()
