"""A rerun resumes only checkpoints written by the same training, and says what it does."""

from __future__ import annotations

import logging
import sys

import pytest

from galeno import paths
from galeno.hashing import code_digest
from galeno.train import resume


def _checkpoint(folder):
    (folder / "checkpoint-00000004").mkdir(parents=True)
    (folder / "checkpoint-00000004" / "state.pt").write_text("x")


IDENTITY = {"model": {"hidden_size": 32}, "optim": {"lr": 0.001}, "code": "abc"}


def test_same_identity_resumes_a_changed_one_starts_afresh_and_each_is_announced(tmp_path, caplog):
    ray_dir, local = tmp_path / "ray" / "run", paths.local_checkpoints(tmp_path)
    caplog.set_level(logging.INFO, logger="galeno.train.resume")
    assert resume.prepare(tmp_path, [ray_dir, local], IDENTITY, "auto", "run x").decision == "fresh"
    _checkpoint(ray_dir)
    assert resume.prepare(tmp_path, [ray_dir, local], IDENTITY, "auto", "run x").decision == "resume"
    assert "run x: resuming from the checkpoints in" in caplog.text and ray_dir.is_dir()
    changed = {**IDENTITY, "optim": {"lr": 0.002}, "code": "def"}
    caplog.clear()
    assert resume.prepare(tmp_path, [ray_dir, local], changed, "auto", "run x").decision == "restart"
    assert "not resuming: code, optim changed since they were written" in caplog.text
    assert not ray_dir.exists() and len(list((tmp_path / "ray").glob("run-stale-*"))) == 1  # moved, not deleted
    assert resume.prepare(tmp_path, [ray_dir, local], changed, "auto", "run x").decision == "fresh"


def test_always_and_never(tmp_path, caplog):
    local = paths.local_checkpoints(tmp_path)
    resume.prepare(tmp_path, [local], IDENTITY, "auto", "run y")  # recorded, then the run checkpoints
    _checkpoint(local)
    caplog.set_level(logging.INFO, logger="galeno.train.resume")
    assert resume.prepare(tmp_path, [local], {**IDENTITY, "code": "new"}, "always", "run y").decision == "resume"
    assert "resume=always: continuing" in caplog.text and "although code changed" in caplog.text
    assert resume.prepare(tmp_path, [local], {**IDENTITY, "code": "new"}, "never", "run y").decision == "restart"
    assert not local.exists() and "resume=never" in caplog.text
    with pytest.raises(ValueError, match="resume must be one of"):
        resume.prepare(tmp_path, [local], IDENTITY, "sometimes", "run y")


def test_checkpoints_with_no_identity_are_not_trusted(tmp_path, caplog):
    local = paths.local_checkpoints(tmp_path)
    _checkpoint(local)
    assert resume.prepare(tmp_path, [local], IDENTITY, "auto", "run w").decision == "restart"
    assert "no identity was recorded with them" in caplog.text


def test_remote_checkpoints_of_another_identity_are_an_error(tmp_path):
    resume.prepare(tmp_path, ["s3://bucket/run"], IDENTITY, "auto", "run z")
    with pytest.raises(ValueError, match="written by another config or code.*resume=always"):
        resume.prepare(tmp_path, ["s3://bucket/run"], {**IDENTITY, "code": "new"}, "auto", "run z")


def test_the_code_digest_follows_the_source(tmp_path, monkeypatch):
    package = tmp_path / "fakepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "steps.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = code_digest("fakepkg")
    assert code_digest("fakepkg") == before and code_digest("fakepkg.steps") != before
    (package / "steps.py").write_text("X = 2\n")
    code_digest.cache_clear()
    assert code_digest("fakepkg") != before
    sys.modules.pop("fakepkg", None)
