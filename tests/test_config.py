"""The shared config system: defaults <- YAML preset <- flags <- dotted overrides, typed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional

import pytest

from galeno.config import (ConfigError, Flag, config_hash, field_docs, from_dict, help_text,
                           load, load_yaml, parse_cli, set_field, to_dict)


@dataclass
class Inner:
    rate: float = 0.5
    """Learning rate of the inner thing."""
    names: list[str] = field(default_factory=list)
    """Some names."""

    def __post_init__(self):
        if self.rate < 0:
            raise ValueError("rate must be >= 0")


@dataclass
class Item:
    name: str = ""
    size: int = 1


@dataclass
class Outer:
    epochs: int = 3
    """How many passes."""
    flag: bool = False
    label: Optional[str] = None
    inner: Inner = field(default_factory=Inner)
    """The inner group."""
    items: list[Item] = field(default_factory=list)


def test_field_docstrings_become_help():
    docs = field_docs(Outer)
    assert docs["epochs"] == "How many passes."
    text = help_text(Outer)
    assert "inner.rate: float = 0.5" in text and "Learning rate of the inner thing." in text
    assert "epochs: int = 3" in text


def test_yaml_then_overrides(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("epochs: 5\ninner:\n  names: [a, b]\nitems:\n  - {name: x, size: 2}\n")
    cfg = load(Outer, preset, ["inner.rate=0.1", "flag=true", "items.0.size=7", "items.1.name=y"])
    assert cfg.epochs == 5 and cfg.flag is True and cfg.inner.rate == 0.1
    assert cfg.inner.names == ["a", "b"]  # untouched by the override of a sibling key
    assert cfg.items == [Item("x", 7), Item("y", 1)]


@pytest.mark.parametrize("override, message", [
    ("epochs=three", "expected an integer"),
    ("inner.rat=1", "unknown config key"),
    ("inner.rate=-1", "rate must be >= 0"),
    ("flag=maybe", "true/false"),
    ("epochs", "key.path=value"),
])
def test_bad_overrides_fail_early_with_the_field_name(override, message):
    with pytest.raises(ConfigError, match=message):
        load(Outer, None, [override])


def test_round_trip_through_plain_dict_and_json():
    cfg = load(Outer, None, ["items.0.name=a", "label=x", "inner.names=[p, q]"])
    plain = json.loads(json.dumps(to_dict(cfg)))  # what Ray's train_loop_config carries
    assert from_dict(Outer, plain) == cfg
    assert config_hash(cfg) == config_hash(from_dict(Outer, plain))
    assert config_hash(cfg) != config_hash(load(Outer, None, ["epochs=4"]))


def test_cli_flags_and_trailing_overrides(tmp_path, capsys):
    flags = [Flag("--label", "label it", set_field("label"))]
    cfg = parse_cli(Outer, ["--label", "L", "epochs=9"], flags=flags)
    assert cfg.label == "L" and cfg.epochs == 9
    with pytest.raises(SystemExit):
        parse_cli(Outer, ["--help"], flags=flags)
    out = capsys.readouterr().out
    assert "--label" in out and "inner.rate" in out and "How many passes." in out
    with pytest.raises(SystemExit):
        parse_cli(Outer, ["epochs=x"])
    assert "epochs" in capsys.readouterr().err


def test_a_preset_extends_another(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\nnested:\n  a: 1\n  b: 2\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text("extends: ../base.yaml\nnested:\n  b: 3\n")
    assert load_yaml(tmp_path / "sub" / "child.yaml") == {"name": "base", "nested": {"a": 1, "b": 3}}
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_yaml(tmp_path / "loop.yaml")
    (tmp_path / "missing.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="names no file"):
        load_yaml(tmp_path / "missing.yaml")


def test_the_deid_recipe_layers_on_meddocan():
    from pathlib import Path

    from galeno.ner.config import NERConfig

    repo = Path(__file__).resolve().parents[1]
    cfg = load(NERConfig, repo / "configs" / "ner" / "meddocan-deid.yaml")
    assert cfg.data.format == "brat" and cfg.data.train.endswith("meddocan/train/brat")  # from meddocan.yaml
    assert cfg.task == "meddocan-deid" and cfg.select == "dev_f2" and cfg.o_weight < 1 and cfg.data.empty_fraction < 1


def test_object_store_size_bounds_a_local_ray():
    """``ray.object_store_mb`` sizes the object store of the Ray a job starts (what bounds the corpus
    job's shared memory: benchmarks/corpus_scale.py); a size Ray cannot use fails at load."""
    import shutil
    import subprocess
    import sys
    import tempfile

    from galeno.corpus.config import CorpusConfig

    with pytest.raises(ValueError, match="object_store_mb"):
        load(CorpusConfig, None, ["ray.object_store_mb=10"])
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 characters
    code = ("import ray; from galeno.runtime import RayConfig, init_ray; "
            f"init_ray(RayConfig(num_cpus=1, object_store_mb=96, temp_dir={temp!r})); "
            "print(int(ray.cluster_resources()['object_store_memory'])); ray.shutdown()")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.strip().splitlines()[-1]) == 96 * 2**20
