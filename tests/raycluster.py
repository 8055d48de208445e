"""Real Ray clusters for tests: a head started with ``ray start --head`` and, for the multi-node
tests, more nodes joined with ``ray start --address``, each in its own process group so a test can
stop it, or SIGKILL it as a lost machine would go.

Every node gets its own ports: the session's local Ray (other tests) holds Ray's defaults, and so
may a developer's own cluster. Token auth is on (Ray's default for local clusters since 2.59).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_worker_ports = iter(range(20000, 29000, 300))  # a disjoint worker port range per node started


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli() -> str:
    found = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if found is None:
        pytest.skip("the ray CLI is not installed")
    return found


def _descendants(root: int) -> list[int]:
    """Every process below ``root``, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()  # "pid (name) state ppid ...": the name may hold spaces and parentheses
        except OSError:
            continue
        children.setdefault(int(text.rsplit(") ", 1)[1].split()[1]), []).append(int(text.split(" ", 1)[0]))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class Node:
    proc: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the node's process group (``ray start``, its raylet and agents) and every process
        under it (Ray starts each worker in a process group of its own): a lost machine, with no chance
        to say goodbye."""
        every = _descendants(self.proc.pid)
        os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in every:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if not self.alive():
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # `ray start --block` stops its processes on SIGTERM ...
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:  # ... but waits ~30 s for actors to exit gracefully: not needed here
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@dataclass
class Cluster:
    """A head on loopback, the nodes joined to it, and how to reach it (``ray job`` CLI, state API)."""

    folder: Path
    ray_bin: str = field(default_factory=ray_cli)
    port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        # RAY_DEDUP_LOGS=0: tests read which node did what from the job's log, and Ray otherwise folds the
        # same line from workers on different nodes into one "[repeated Nx across cluster]"
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
                    "RAY_ADDRESS": "", "RAY_DEDUP_LOGS": "0",
                    "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    @property
    def address(self) -> str:
        """The job submission (dashboard) address."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, args: list[str], name: str) -> Node:
        low = next(_worker_ports)
        log = self.folder / f"{name}.log"
        proc = subprocess.Popen(
            [self.ray_bin, "start", *args, "--node-ip-address=127.0.0.1",
             f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
             f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
             f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
             f"--min-worker-port={low}", f"--max-worker-port={low + 299}", "--disable-usage-stats", "--block"],
            env=self.env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        node = Node(proc, log)
        self.nodes.append(node)
        return node

    def start_head(self, num_cpus: int) -> Node:
        head = self._start(["--head", f"--port={self.port}", f"--dashboard-port={self.dashboard_port}",
                            "--dashboard-host=127.0.0.1", "--include-dashboard=true", f"--num-cpus={num_cpus}"],
                           "head")
        deadline = time.time() + 120
        while time.time() < deadline:
            # `job list` answers before the job agent can take submissions: probe with a no-op job.
            probe = self.ray("job", "submit", "--address", self.address, "--", "true")
            if probe.returncode == 0:
                return head
            time.sleep(3)
        self.stop()
        pytest.fail("ray head did not take jobs:\n" + probe.stdout[-2000:] + probe.stderr[-2000:]
                    + "\n--- head log ---\n" + head.log.read_text()[-1500:])

    def join(self, num_cpus: int, name: str = "worker") -> Node:
        """Join a node and wait until the head counts its CPUs."""
        before = self.cpus()
        node = self._start([f"--address=127.0.0.1:{self.port}", f"--num-cpus={num_cpus}"], name)
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.cpus() >= before + num_cpus:
                return node
            time.sleep(2)
        pytest.fail(f"node {name} did not join:\n" + node.log.read_text()[-2000:])

    def ray(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([self.ray_bin, *args], env=self.env, capture_output=True, text=True,
                              cwd=REPO, timeout=timeout)

    def alive_nodes(self) -> list[dict]:
        """The state API's alive nodes (``node_id``, ``is_head_node``, ``resources_total``)."""
        listed = self.ray("list", "nodes", "--address", self.address, "--format", "json", "--detail")
        start = listed.stdout.find("[")  # the CLI may print a warning line first
        if listed.returncode != 0 or start < 0:
            return []
        nodes, _ = json.JSONDecoder().raw_decode(listed.stdout[start:])
        return [n for n in nodes if n.get("state") == "ALIVE"]

    def cpus(self) -> float:
        return sum(float(n.get("resources_total", {}).get("CPU", 0)) for n in self.alive_nodes())

    def status(self) -> str:
        done = self.ray("status", "--address", f"127.0.0.1:{self.port}")
        return done.stdout + done.stderr

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        current = Path("/tmp/ray/ray_current_cluster")  # still naming the stopped head: forget it
        if current.is_file() and current.read_text().strip().endswith(f":{self.port}"):
            current.unlink()
