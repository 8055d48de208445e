"""A model by local path or registry URI: ``models:/NAME/N``, ``models:/NAME/latest``, ``models:/NAME@alias``.

Every job that accepts a model path passes it through :func:`resolve_model`, so a registry URI
works wherever a folder does. Serve replicas use :func:`resolve_source`, which also says which
registered version they hold, so that a moved alias can be followed. MLflow is imported only when
a ``models:/`` URI is resolved.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from galeno import handover, paths
from galeno.tracking import TrackingConfig, client, tracking_uri


def split_models_uri(uri: str) -> tuple[str, str, str]:
    """``(name, reference, kind)`` of ``models:/NAME/N`` (kind ``version``), ``models:/NAME/latest``
    (``latest``) or ``models:/NAME@alias`` (``alias``), without asking the registry."""
    rest = uri.removeprefix("models:/").strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, alias, "alias"
    name, _, reference = rest.rpartition("/")
    if not name:
        raise ValueError(f"{uri!r}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    return name, reference, "latest" if reference == "latest" else "version"


def parse_models_uri(uri: str, mc) -> tuple[str, str]:
    """``(name, version)`` that ``uri`` points at now, asking the registry client ``mc``."""
    name, version, kind = split_models_uri(uri)
    if kind == "alias":
        return name, str(mc.get_model_version_by_alias(name, version).version)
    if kind == "latest":
        found = mc.search_model_versions(f"name = '{name}'")
        if not found:
            raise ValueError(f"{uri!r}: {name} has no versions")
        version = str(max(int(v.version) for v in found))
    return name, version


def resolve_model(uri_or_path: str | Path, cfg: TrackingConfig | None = None,
                  cache: str | Path | None = None) -> str:
    """The local Hugging Face directory of a model path or registry URI.

    A pretraining or NER output folder gives the model its record names (galeno.handover); any
    other local path (or string) is returned as it is. A registry version is downloaded once
    into ``cache`` (default ``<artifact root>/mlflow/models/NAME/VERSION``) and its
    ``artifacts/model`` returned; an alias is resolved to its version at call time, so moving it
    takes effect at the next call.
    """
    text = str(uri_or_path)
    if not text.startswith("models:/"):
        return handover.model_folder(text)
    import mlflow.artifacts
    from mlflow.models import Model

    uri = tracking_uri(cfg)
    name, version = parse_models_uri(text, client(cfg))
    target = Path(cache) if cache else paths.mlflow_home() / "models"
    target = (target / name / version).resolve()
    if not (target / "MLmodel").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{version}-{uuid.uuid4().hex[:8]}"
        try:
            # the version's storage location, not models:/ (whose repository asks a registry client
            # built from the process's global MLflow URI, not ours: a fresh Serve replica has none)
            source = client(cfg).get_model_version_download_uri(name, version)
            got = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp), tracking_uri=uri)
            try:
                os.replace(got, target)  # atomic: concurrent workers on one node download at most twice
            except OSError:
                if not (target / "MLmodel").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    artifact = Model.load(str(target)).flavors["python_function"]["artifacts"]["model"]["path"]
    return str(target / artifact)


@dataclass
class ModelSource:
    """Where a loaded model came from: the URI asked for and, for a registry URI, name, version and run."""

    uri: str
    path: str
    name: Optional[str] = None
    version: Optional[str] = None
    run_id: Optional[str] = None

    def brief(self) -> dict[str, Any]:
        """The ``model`` field of every answer."""
        return {"uri": self.uri, "name": self.name, "version": self.version}


def follows(uri: str) -> bool:
    """Does ``uri`` name a registry version that can change under it (an alias, or ``latest``)?"""
    return uri.startswith("models:/") and split_models_uri(uri)[2] != "version"


def registry_version(uri: str, tracking_uri: str = "") -> tuple[str, str]:
    """``(name, version)`` that a ``models:/`` URI points at now: one registry call, nothing downloaded."""
    return parse_models_uri(uri, client(TrackingConfig(tracking_uri=tracking_uri)))


def resolve_source(uri: str, tracking_uri: str = "", cache: str = "") -> ModelSource:
    """Resolve ``uri`` now: an alias gives the version it points at *now* (a moved alias is picked up)."""
    if not uri.startswith("models:/"):
        if not (Path(uri) / "config.json").is_file():
            raise FileNotFoundError(f"{uri} is not a Hugging Face model directory (no config.json)")
        return ModelSource(uri=uri, path=str(Path(uri).resolve()))
    cfg = TrackingConfig(tracking_uri=tracking_uri)
    mc = client(cfg)
    name, version = parse_models_uri(uri, mc)
    # resolve the pinned version, not the alias again: the alias may move between two calls
    path = resolve_model(f"models:/{name}/{version}", cfg, cache or None)
    return ModelSource(uri=uri, path=path, name=name, version=version, run_id=mc.get_model_version(name, version).run_id)
