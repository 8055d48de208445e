"""The lock (requirements/lock.txt) is what every install path uses, and it agrees with the ranges.

A fresh install once resolved lxml 6.2.1 (libxml2 2.14.6), whose recovery of truncated XML had
changed, and the suite went red with no change of ours (docs/dependencies.md). Since then every
install goes through exact versions CI passed with; these tests keep the lock and the places
that install in step.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements" / "lock.txt"


def locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line.strip()).groups()
            pins[canonicalize_name(name)] = version
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    for extra, items in project["optional-dependencies"].items():
        requirements += [Requirement(r) for r in items if not r.startswith("galeno[")]
    return requirements


def test_lock_pins_every_declared_dependency_inside_its_range():
    pins = locked()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is declared but not locked: run make test-latest, then make lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"the lock's {requirement.name}=={pins[name]} is outside pyproject.toml's {requirement}")
    for name, version in pins.items():
        assert "+" not in version, f"{name}=={version}: lock public versions (a CUDA build must satisfy it)"


def test_lock_agrees_with_the_other_pins():
    pins = locked()
    makefile = (REPO / "Makefile").read_text()
    assert pins["torch"] == re.search(r"^TORCH_VERSION \?= (\S+)$", makefile, re.M)[1]
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    assert pins["ray"] == re.search(r"rayproject/ray:([\d.]+)-", cluster["docker"]["image"])[1]
    # The cluster's project install goes through the lock too.
    installs = [c for c in cluster["setup_commands"] if re.search(r"pip install .*-e ", c)]
    assert installs and all("-c requirements/lock.txt" in c for c in installs), installs


def make_dry_run(*args: str) -> list[str]:
    out = subprocess.run(["make", "-n", "-B", "install", "VENV=/nonexistent-venv", *args], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if re.search(r"-m pip install (?!-q --upgrade pip)", line)]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_every_make_install_uses_the_lock_unless_told_not_to():
    installs = make_dry_run()
    assert len(installs) == 2 and all("-c requirements/lock.txt" in c for c in installs), installs
    assert "torch==" in installs[0] and "-e " in installs[1]
    # `make install LOCK=`: the ranges of pyproject.toml, for a CUDA image or a newer Ray.
    assert not any("-c " in c for c in make_dry_run("LOCK=")), make_dry_run("LOCK=")
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)  # CI installs the way `make test` does


# --------------------------------------------------------------------------- what the cluster installs
def _cluster_extras() -> list[str]:
    """The extras cluster.yaml's setup commands install galeno with."""
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    found = [m.group(1) for cmd in cluster["setup_commands"]
             for m in re.finditer(r'-e\s+"?\.\[([a-z,]+)\]"?', cmd)]
    assert len(found) == 1, f"cluster.yaml should install galeno once with extras: {found}"
    return found[0].split(",")


def _requirement_closure(roots: list[Requirement]) -> set[str]:
    """Every distribution the installed ``roots`` pull in, with their extras (as pip resolves them here)."""
    from importlib import metadata

    seen: set[str] = set()
    todo = [(canonicalize_name(r.name), set(r.extras)) for r in roots]
    done: set[tuple[str, frozenset]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, frozenset(extras)) in done:
            continue
        done.add((name, frozenset(extras)))
        seen.add(name)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            env_ok = req.marker is None or any(req.marker.evaluate({"extra": e}) for e in (extras or {""}))
            if req.marker is not None and "extra" not in str(req.marker):
                env_ok = req.marker.evaluate({"extra": ""})
            if env_ok:
                todo.append((canonicalize_name(req.name), set(req.extras)))
    return seen


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> the files importing it, over platform/galeno and jobs/, imports inside functions included."""
    import ast
    import sys

    found: dict[str, set[str]] = {}
    for path in [*(REPO / "platform" / "galeno").rglob("*.py"), *(REPO / "jobs").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("galeno", "__future__"):
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def test_every_job_imports_only_what_the_cluster_installs():
    """cluster.yaml once installed .[corpus,train] while every job tracks to MLflow by default: the first
    job on the cluster stopped at an ImportError. Every module the jobs and the library import (inside
    functions too) must come from a distribution that the cluster's install pulls in."""
    from importlib import metadata

    extras = _cluster_extras()
    closure = _requirement_closure([Requirement(f"galeno[{','.join(extras)}]"), Requirement("torch")])  # torch: its own line
    providers = metadata.packages_distributions()
    missing = {}
    for module, files in sorted(_third_party_imports().items()):
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        if not dists & closure:
            missing[module] = (sorted(dists) or ["not installed here"], sorted(files)[:3])
    assert missing == {}, f"imported but not installed by cluster.yaml's .[{','.join(extras)}]: {missing}"


def test_the_closure_check_can_fail():
    """Without the tracking extra, MLflow is outside what the cluster installs, as in the original failure."""
    closure = _requirement_closure([Requirement("galeno[corpus,train]"), Requirement("torch")])
    assert "mlflow" not in closure and "ray" in closure and "transformers" in closure
