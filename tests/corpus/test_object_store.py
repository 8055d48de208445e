"""The corpus job with its inputs and its output on an S3 object store (issue 21).

A real S3-compatible server runs here: moto's (``moto[server]``, from PyPI), on a local port. The job
reads the shipped sample from ``s3://`` and writes ``documents/``, ``rejected/``, its committed shards,
manifest and report to ``s3://``, through pyarrow's S3 filesystem, exactly as it would to AWS S3 or MinIO
(the endpoint comes from ``AWS_ENDPOINT_URL``). It must give the same bytes as a run on local folders.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.slow

BUCKET = "galeno-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on a free port, its bucket, and the environment a job needs to reach it."""
    server = shutil.which("moto_server", path=os.path.dirname(sys.executable))
    if server is None:
        pytest.skip("moto_server is not installed (pip install 'moto[server]'; the test extra has it)")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    pytest.fail(f"moto_server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.3)
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            from pyarrow import fs

            from galeno import storage

            storage._filesystem.cache_clear()
            fs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                            allow_bucket_creation=True).create_dir(BUCKET)
            yield env
            storage._filesystem.cache_clear()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _config(tmp: Path, sources_root: str, output: str) -> Path:
    """The sample preset with its sources under ``sources_root`` (a folder or a URI) and ``output``."""
    preset = yaml.safe_load((REPO / "configs/corpus/sample.yaml").read_text())
    for src in preset["sources"]:
        src["path"] = src["path"].replace("data/sample", sources_root, 1)
    preset["decontaminate"]["paths"] = [str(REPO / p) for p in preset["decontaminate"]["paths"]]
    preset["output"] = output
    path = tmp / f"corpus-{hashlib.sha256(output.encode()).hexdigest()[:8]}.yaml"
    path.write_text(yaml.safe_dump(preset))
    return path


def _job(config: Path, env: dict, *overrides: str) -> str:
    """``python jobs/clean_corpus.py --config CONFIG`` as a user runs it; its log."""
    done = subprocess.run([sys.executable, "jobs/clean_corpus.py", "--config", str(config), *overrides],
                          cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stderr


def _digests(folder: str) -> dict[str, str]:
    from galeno import storage

    return {storage.name(uri): hashlib.sha256(storage.read_bytes(uri)).hexdigest()
            for uri, _, _ in storage.list_files(folder) if uri.endswith(".parquet")}


def _rows(folder: str) -> list[dict]:
    import pyarrow.parquet as pq

    from galeno import storage

    rows = []
    for uri, _, _ in storage.list_files(folder):
        filesystem, inner = storage.resolve(uri)
        rows += pq.read_table(inner, filesystem=filesystem).to_pylist()
    return rows


def test_the_job_reads_and_writes_an_s3_bucket_like_a_folder(s3, tmp_path):
    from pyarrow import fs

    from galeno import storage

    s3fs, _ = storage.resolve(f"s3://{BUCKET}")
    fs.copy_files(str(REPO / "data/sample"), f"{BUCKET}/sample", source_filesystem=fs.LocalFileSystem(),
                  destination_filesystem=s3fs)
    local_out = tmp_path / "local"
    _job(_config(tmp_path, str(REPO / "data/sample"), str(local_out)), s3)
    remote_out = f"s3://{BUCKET}/corpus"
    log = _job(_config(tmp_path, f"s3://{BUCKET}/sample", remote_out), s3)

    # the same documents and rejections, byte for byte, as the run on local folders
    for sub in ("documents", "rejected"):
        assert _rows(f"{remote_out}/{sub}") == _rows(str(local_out / sub)), sub
        local = _digests(str(local_out / sub))
        assert local and _digests(f"{remote_out}/{sub}") == local, sub
    # manifest and report beside the data; every input document accounted for, as locally
    remote = json.loads(storage.read_bytes(f"{remote_out}/manifest.json"))
    here = json.loads((local_out / "manifest.json").read_text())
    assert remote["total"] == here["total"] and remote["total"]["documents_in"] > 0
    assert remote["documents_digest"] == here["documents_digest"]
    assert b"| Name | Tokens | Description |" in storage.read_bytes(f"{remote_out}/report.md")
    # the committed local shards live on the object store too, where every node sees them
    shards = [u for u, _, _ in storage.list_files(f"{remote_out}/_work") if "/local-" in u]
    assert len(shards) == remote["shards"] > 2
    assert "s3://" in log

    # a rerun resumes from the shards committed on the object store, and writes the same bytes
    again = _job(_config(tmp_path, f"s3://{BUCKET}/sample", remote_out), s3)
    assert f"reusing {remote['shards']} of {remote['shards']} input shards" in again
    assert _digests(f"{remote_out}/documents") == _digests(str(local_out / "documents"))


def test_a_missing_s3_source_is_a_clear_error(s3, tmp_path):
    config = _config(tmp_path, f"s3://{BUCKET}/no-such-prefix", f"s3://{BUCKET}/never")
    done = subprocess.run([sys.executable, "jobs/clean_corpus.py", "--config", str(config)], cwd=REPO,
                          env={**os.environ, **s3}, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "no brat input matches 's3://galeno-test/no-such-prefix/meddocan/train/brat'" in done.stderr
