"""The corpus job on a real two-node Ray cluster that loses a node mid-run (issue 21, item 3).

A head and a second node joined with ``ray start --address`` (token auth, own ports, 1 CPU on the
second node) take the job through ``ray job submit``. Once the second node has committed a shard,
its whole process group is SIGKILLed (the state API says when), as a lost machine would go. The job must then finish on what
is left, in the same submission or after one resubmission that resumes from the committed shards,
and never hang; its ``documents/`` and ``rejected/`` must be byte-identical to a clean single-node
run of the same input, with every input id accounted for.

Two shapes: the head keeps 1 CPU (before the fix the job hung there: the output writer, an actor,
held the only CPU while the tasks it waited for queued behind it) or 2. docs/corpus.md says which
of the two outcomes happens, and why.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.raycluster import REPO, Cluster

MB = 6          # crawl-like JSONL built from ../shared/data (benchmarks/make_scaled_corpus.py)
FILES = 16      # 16 input shards of ~0.4 MB: the unit of work and of resume, spread over both nodes
SHARD_MB = 0.3
JOB_TIMEOUT = 420  # a job that makes no end in this long has hung (a clean run takes ~1 min alone)

pytestmark = [pytest.mark.slow, pytest.mark.extended, pytest.mark.timeout(1800)]


def _crawl(shared_data: Path, root: Path) -> Path:
    """Crawl-like JSONL (mostly distinct documents, planted near and exact copies) in ``FILES`` files:
    a file is the smallest shard, and the shards are what the two nodes share."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from make_scaled_corpus import data_dir, make_corpus
    finally:
        sys.path.pop(0)
    lines = [line for f in sorted(data_dir(make_corpus(mb=MB, seed=3, data=shared_data, root=root)).glob("*.jsonl"))
             for line in f.open(encoding="utf-8")]
    folder = root / "crawl"
    folder.mkdir()
    for k in range(FILES):
        (folder / f"part-{k:03d}.jsonl").write_text("".join(lines[k::FILES]), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def crawl(shared_data, tmp_path_factory) -> tuple[Path, Path]:
    """The input, its config, and a clean single-node run of it (the reference output)."""
    root = tmp_path_factory.mktemp("cluster-corpus")
    data = _crawl(shared_data, root)
    config = root / "corpus.yaml"
    config.write_text(yaml.safe_dump({
        "output": str(root / "clean"), "shard_mb": SHARD_MB, "num_partitions": 4, "output_shards": 4,
        "ray": {"progress_bars": False}, "sources": [{"name": "crawl", "format": "jsonl", "path": str(data)}]}))
    clean = subprocess.run([sys.executable, "jobs/clean_corpus.py", "--config", str(config), "ray.num_cpus=2"],
                           cwd=REPO, capture_output=True, text=True, timeout=900, env=_no_cluster_env())
    assert clean.returncode == 0, clean.stdout[-3000:] + clean.stderr[-3000:]
    return data, config


def _no_cluster_env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}


def _ids(folder: Path) -> list[str]:
    import pyarrow.parquet as pq

    return [i for f in sorted(folder.glob("*.parquet")) for i in pq.read_table(f, columns=["id"])["id"].to_pylist()]


def _submit(cluster: Cluster, config: Path, out: Path, submission: str) -> None:
    done = cluster.ray("job", "submit", "--address", cluster.address, "--no-wait", "--submission-id", submission,
                       "--runtime-env", "configs/ray/runtime-env.yaml", "--",
                       "python", "jobs/clean_corpus.py", "--config", str(config), f"output={out}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def _status(cluster: Cluster, submission: str) -> str:
    done = cluster.ray("job", "status", "--address", cluster.address, submission)
    said = done.stdout + done.stderr  # the CLI's words (ray/dashboard/modules/job/cli.py, _log_job_status)
    for words, state in ((f"Job '{submission}' succeeded", "SUCCEEDED"), (f"Job '{submission}' failed", "FAILED"),
                         (f"Job '{submission}' was stopped", "STOPPED")):
        if words in said:
            return state
    found = re.search(rf"Status for job '{submission}': (?:JobStatus\.)?(\w+)", said)
    return found.group(1) if found else "UNKNOWN"


def _logs(cluster: Cluster, submission: str) -> str:
    done = cluster.ray("job", "logs", "--address", cluster.address, submission)
    return done.stdout + done.stderr


def _shard_tasks_on(cluster: Cluster, node_id: str) -> int:
    """Input-shard tasks the node has run or is running, from the state API (its log lines can reach
    the driver late, once the job is over)."""
    listed = cluster.ray("list", "tasks", "--address", cluster.address, "--filter", f"node_id={node_id}",
                         "--format", "json", "--limit", "10000")
    start = listed.stdout.find("[")  # the CLI may print a warning line first
    if listed.returncode != 0 or start < 0:
        return 0
    tasks, _ = json.JSONDecoder().raw_decode(listed.stdout[start:])
    return sum("ShardWorker" in t.get("name", "") and t.get("name", "").endswith(".submit")  # not __init__
               and t.get("state") in ("RUNNING", "FINISHED") for t in tasks)


def _wait(cluster: Cluster, submission: str, timeout: float) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = _status(cluster, submission)
        if state in ("SUCCEEDED", "FAILED", "STOPPED"):
            return state
        time.sleep(3)
    status = cluster.status()
    waiting = cluster.ray("list", "tasks", "--address", cluster.address, "--filter", "state!=FINISHED", "--limit", "50")
    actors = cluster.ray("list", "actors", "--address", cluster.address, "--filter", "state=ALIVE")
    cluster.ray("job", "stop", "--address", cluster.address, submission)
    pytest.fail(f"the job hung: no end in {timeout:.0f} s after the node was lost\n--- ray status ---\n{status}\n"
                f"--- unfinished tasks ---\n{waiting.stdout[-3000:]}\n--- alive actors ---\n{actors.stdout[-3000:]}\n"
                f"--- job log ---\n{_logs(cluster, submission)[-4000:]}")


@pytest.mark.parametrize("head_cpus", [1, 2], ids=["1-cpu-left", "2-cpus-left"])
def test_corpus_job_survives_a_lost_node(crawl, tmp_path, head_cpus):
    data, config = crawl
    clean = Path(yaml.safe_load(config.read_text())["output"])
    out = tmp_path / "corpus"
    cluster = Cluster(tmp_path)
    try:
        cluster.start_head(num_cpus=head_cpus)
        head_id = cluster.alive_nodes()[0]["node_id"]
        second = cluster.join(num_cpus=1, name="second")
        second_id = next(n["node_id"] for n in cluster.alive_nodes() if n["node_id"] != head_id)

        _submit(cluster, config, out, "corpus-1")
        deadline = time.time() + JOB_TIMEOUT
        while not _shard_tasks_on(cluster, second_id):  # the second node works ...
            assert time.time() < deadline, _logs(cluster, "corpus-1")[-4000:]
            assert _status(cluster, "corpus-1") in ("PENDING", "RUNNING"), _logs(cluster, "corpus-1")[-4000:]
            time.sleep(0.5)
        time.sleep(2)  # (a shard takes about a second)
        second.kill()  # ... and is lost mid-run
        assert _status(cluster, "corpus-1") == "RUNNING", ("the node was lost after the job had ended:\n"
                                                          + _logs(cluster, "corpus-1")[-6000:])

        outcome = _wait(cluster, "corpus-1", JOB_TIMEOUT)
        first_log = _logs(cluster, "corpus-1")
        resubmitted = outcome != "SUCCEEDED"
        if resubmitted:  # one resubmission resumes from the shards the first one committed
            print(f"the first submission ended {outcome}:\n" + "\n".join(
                line for line in first_log.splitlines() if "Error" in line or "galeno" in line)[-3000:])
            _submit(cluster, config, out, "corpus-2")
            outcome = _wait(cluster, "corpus-2", JOB_TIMEOUT)
            assert outcome == "SUCCEEDED", _logs(cluster, "corpus-2")[-4000:]
            assert "reusing" in _logs(cluster, "corpus-2")
        restarted = "the global phase was interrupted by the loss of node(s)" in first_log
        print(f"head with {head_cpus} CPU(s): {'finished after one resubmission' if resubmitted else 'finished in the same submission'}"
              f"{' (global phase restarted)' if restarted else ''}")
        assert f"on node {head_id}" in first_log  # tasks ran on both nodes (the second's: above)
    finally:
        cluster.stop()

    # the same corpus as a clean single-node run, every input id accounted for
    from galeno.hashing import folder_digest

    for sub in ("documents", "rejected"):
        assert folder_digest(out / sub) == folder_digest(clean / sub), sub
    inputs = [json.loads(line)["id"] for f in sorted(data.glob("*.jsonl")) for line in f.open(encoding="utf-8")]
    kept, rejected = _ids(out / "documents"), _ids(out / "rejected")
    assert sorted(kept + rejected) == sorted(inputs)
    from galeno import paths

    manifest = json.loads(paths.corpus_manifest(out).read_text())
    assert manifest["total"]["documents_in"] == len(inputs)
