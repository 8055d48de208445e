"""The model registry: every exported model a registered, versioned, loadable MLflow model.

Runs and the tracking configuration live in :mod:`galeno.tracking`; this module is the models.

* :func:`register_model` logs an exported Hugging Face directory as an MLflow model of our own
  ``PythonModel`` (:class:`GalenoFillMask`, :class:`GalenoNER`) and registers it as a new version
  of ``galeno-mlm`` / ``galeno-ner-<task>``, tagged with its lineage and dev metrics. Our own
  model, not the transformers flavor: MLflow's generic wrapper reduces NER output to a string of
  labels and fill-mask to its top-1, and the flavor pulls torchvision into the requirements.
  Loading a registered model back (``models:/NAME/N``, ``models:/NAME@alias``) is
  :func:`galeno.inference.source.resolve_model`'s, the layer that runs models.
* :func:`promote` moves an alias (``champion``) to a version only if its dev metric is at least
  as good as the current holder's, unless forced, and records who, when and why as tags.

MLflow is imported inside the functions that need it: importing this module must stay cheap
(it takes seconds to import MLflow, and every Ray worker imports ``galeno``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

from galeno.hashing import model_digest
from galeno.inference.fill_mask import InputError, fill_masks
from galeno.inference.loading import load_fill_mask, load_ner, local_source
from galeno.inference.token_classification import predict_texts
from galeno.tracking import (MAX_KEY, MAX_TAG_VALUE, TrackingConfig, as_float, client, current_user,
                             ensure_experiment, system_tags, tracking_uri)

log = logging.getLogger(__name__)

#: Registered model names: the pretrained MLM, and one NER model per task (``galeno-ner-pharmaconer``).
MLM_MODEL = "galeno-mlm"
NER_MODEL_PREFIX = "galeno-ner-"
#: What a registered model does; each kind has its own ``PythonModel``.
KINDS = ("fill-mask", "ner")
#: Prefix of a model version's dev-metric tags (``metric.val_loss``, ``metric.dev_f1``).
METRIC_TAG = "metric."
#: Metrics the promotion rule knows the direction of (True: higher is better).
METRIC_DIRECTIONS = {"val_loss": False, "val_perplexity": False, "val_accuracy": True,
                     "dev_f1": True, "dev_precision": True, "dev_recall": True}

# --------------------------------------------------------------------------- served models
def _texts(model_input: Any) -> list[str]:
    """The texts of a pyfunc input: a list or Series of strings, one string, or a one-column DataFrame.

    MLflow's schema enforcement hands a DataFrame over (column ``0``, or ``text`` when the caller named it).
    """
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        column = "text" if "text" in model_input.columns else model_input.columns[0]
        values = model_input[column].tolist()
    elif isinstance(model_input, pd.Series):
        values = model_input.tolist()
    elif isinstance(model_input, str):
        values = [model_input]
    else:
        values = [v["text"] if isinstance(v, Mapping) else v for v in model_input]
    bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
    if bad:
        raise ValueError(f"expected texts (strings); input {bad[0]} is {type(values[bad[0]]).__name__}")
    return values


#: Sub-tokens per window of a registered model (capped by the model's own positions, as Serve's default).
PYFUNC_MAX_LENGTH = 512
#: Words shared by consecutive windows of a long sentence (Serve's default).
PYFUNC_STRIDE = 32


class GalenoFillMask:
    """The pretrained MLM as a served model: the top-k fillers of every ``<mask>`` of every text.

    Input: texts. Param ``top_k`` (default 5). Output: one list per text of
    ``{mask, token, token_str, score, sequence}`` (``mask`` numbers the masks of a text from 0,
    ``token`` is the token id, as Hugging Face's pipeline says it). Predictions come from
    :mod:`galeno.inference.fill_mask`, the code Serve replicas run. MLflow's ``PythonModel`` is
    mixed in by :func:`pyfunc_model`.
    """

    def load_context(self, context) -> None:
        self.loaded = load_fill_mask(local_source(context.artifacts["model"]), PYFUNC_MAX_LENGTH, want_gpu=True)

    # No type hints on predict: MLflow would derive a schema from them instead of our signature.
    def predict(self, context, model_input, params=None):
        top_k = int((params or {}).get("top_k", 5))
        out = []
        for i, found in enumerate(fill_masks(self.loaded, [(t, top_k) for t in _texts(model_input)])):
            if isinstance(found, InputError):
                raise ValueError(f"text {i}: {found}")  # the message never quotes the text
            out.append([{"mask": m, "token": c["token_id"], "token_str": c["token_str"], "score": c["score"],
                         "sequence": c["sequence"]} for m, one in enumerate(found) for c in one["candidates"]])
        return out


class GalenoNER:
    """A token-classification model as a served model: the entities of every text, with offsets.

    Input: texts. Output: one list per text of ``{entity_group, score, word, start, end}`` (Hugging
    Face's pipeline keys; ``aggregation_strategy="simple"``); ``text[start:end] == word``. Predictions
    come from :mod:`galeno.inference.token_classification`, the code Serve replicas and
    ``jobs/evaluate_ner.py`` run. MLflow's ``PythonModel`` is mixed in by :func:`pyfunc_model`.
    """

    def load_context(self, context) -> None:
        self.loaded = load_ner(local_source(context.artifacts["model"]), PYFUNC_MAX_LENGTH, want_gpu=True)

    def predict(self, context, model_input, params=None):
        found = predict_texts(self.loaded, _texts(model_input), "simple", stride=PYFUNC_STRIDE)
        return [[{"entity_group": e["label"], "score": e["score"], "word": e["text"], "start": e["start"],
                  "end": e["end"]} for e in entities] for entities in found]


_PYFUNC_CLASSES = {"fill-mask": GalenoFillMask, "ner": GalenoNER}


def pyfunc_model(kind: str):
    """An instance of the ``PythonModel`` of ``kind``: MLflow's base class is mixed in here, not at
    import, so importing this module never imports MLflow."""
    import mlflow.pyfunc

    base = _PYFUNC_CLASSES[kind]
    return type(base.__name__, (base, mlflow.pyfunc.PythonModel), {"__module__": __name__})()


# The model's entry point (MLflow "models from code": no pickle). `code/galeno` in the logged
# model is this package, so a Serve replica needs only the pip requirements, not galeno itself.
_MODEL_CODE = """# MLflow models-from-code entry point, written by galeno.registry.register_model.
import mlflow
from galeno.registry import pyfunc_model

mlflow.models.set_model(pyfunc_model({kind!r}))
"""


def _requirements(kind: str) -> list[str]:
    """Explicit pins of what the served model imports (MLflow's inference would add torchvision and more);
    NER also splits sentences as training did (syntok, the splitter's fallback)."""
    from importlib.metadata import version

    dists = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "numpy", "pandas")
    dists += ("syntok",) if kind == "ner" else ()
    # a local build label (2.13.0+cpu) would not install on a GPU image; ==2.13.0 matches any of them
    return [f"{d}=={version(d).split('+')[0]}" for d in dists]


def _signature_and_example(kind: str, model_dir: str | Path):
    from mlflow.models import infer_signature
    from transformers import AutoTokenizer

    if kind == "fill-mask":
        mask = AutoTokenizer.from_pretrained(str(model_dir)).mask_token
        texts = [f"El paciente presenta dolor {mask} y fiebre desde hace tres días."]
        output = [[{"mask": 0, "token": 0, "token_str": "", "score": 0.0, "sequence": ""}]]
        params = {"top_k": 5}
        return infer_signature(texts, output, params=params), (texts, params)
    texts = ["Se detectó sobreexpresión de la proteína p53 en la biopsia hepática."]
    output = [[{"entity_group": "", "score": 0.0, "word": "", "start": 0, "end": 0}]]
    return infer_signature(texts, output), texts


def read_lineage(model_dir: str | Path) -> dict[str, Any]:
    """``galeno.json`` written beside an exported model (config hash, tokenizer and corpus hashes, ...)."""
    path = Path(model_dir) / "galeno.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def lineage_tags(lineage: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, str]:
    """Version tags: every scalar lineage entry under its own key, every dev metric as ``metric.<name>``."""
    tags = {k: str(v)[:MAX_TAG_VALUE] for k, v in lineage.items()
            if isinstance(v, (str, int, float, bool)) and v != "" and len(k) <= MAX_KEY}
    for key, value in metrics.items():
        number = as_float(value)
        if number is not None:
            tags[METRIC_TAG + key] = repr(number)
    return tags


def register_model(model_dir: str | Path, name: str, *, kind: str = "fill-mask",
                   metrics: Mapping[str, Any] | None = None, lineage: Mapping[str, Any] | None = None,
                   run_id: str | None = None, cfg: TrackingConfig | None = None, step: int = 0,
                   digest: str | None = None) -> str:
    """Log ``model_dir`` (an exported Hugging Face directory) as an MLflow model and register it as a
    new version of ``name``; returns the version.

    Every version carries ``galeno.model_digest`` (:func:`~galeno.hashing.model_digest`: its weights,
    config and tokenizer; ``digest`` when the caller has already computed it).
    :func:`register_unless_identical` is what the training jobs call.

    The weights are copied into the logged model (``artifacts/<folder name>``), not referenced. ``lineage`` is
    merged over the directory's ``galeno.json``; with ``metrics`` it becomes the version's tags
    (:func:`lineage_tags`) — ``base_model_version`` is how an NER model names the MLM version it
    was fine-tuned from. The model is logged in run ``run_id`` (the training run), or a new run;
    the metrics go on that run and the model at ``step`` (the training step they were measured
    at, so they sit on the run's curves where they belong).
    Sets the process's MLflow tracking and registry URI to ``cfg``'s, as ``mlflow.pyfunc.log_model``
    reads them from there. MLflow also exports them as ``MLFLOW_TRACKING_URI`` and
    ``MLFLOW_REGISTRY_URI``; those are put back as they were, so that a later
    ``tracking_uri(TrackingConfig())`` in this process still means the store it meant before.
    """
    import mlflow

    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    model_dir = Path(model_dir).resolve()
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a Hugging Face model directory (no config.json)")
    cfg = cfg or TrackingConfig()
    uri = tracking_uri(cfg)
    mc = client(cfg)
    metrics = dict(metrics or {})
    tags = lineage_tags({**read_lineage(model_dir), **(lineage or {})}, metrics)
    tags["galeno.kind"] = kind
    tags["galeno.model_digest"] = digest or model_digest(model_dir)
    signature, example = _signature_and_example(kind, model_dir)

    exported = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for key, value in exported.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    with tempfile.TemporaryDirectory(prefix="galeno-register-") as tmp:
        code = Path(tmp) / "galeno_model.py"
        code.write_text(_MODEL_CODE.format(kind=kind), encoding="utf-8")
        package = Path(tmp) / "galeno"
        shutil.copytree(Path(__file__).resolve().parent, package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        # The training run keeps the status it had (its RunLogger may still be running it).
        previous = mc.get_run(run_id).info.status if run_id else None
        if run_id:
            mlflow.start_run(run_id=run_id)
        else:
            mlflow.start_run(experiment_id=ensure_experiment(cfg, mc), run_name=f"register-{name}",
                             tags={**system_tags(), "galeno.job": "register"})
        ok = False
        try:
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(code), artifacts={"model": str(model_dir)},
                code_paths=[str(package)], signature=signature, input_example=example,
                pip_requirements=_requirements(kind), registered_model_name=name, tags=tags)
            if metrics:
                mlflow.log_metrics({k: as_float(v) for k, v in metrics.items() if as_float(v) is not None},
                                   step=step, model_id=info.model_id)
            ok = True
        finally:
            mlflow.end_run(status=previous or ("FINISHED" if ok else "FAILED"))
    version = str(info.registered_model_version)
    mc.set_registered_model_tag(name, "galeno.kind", kind)
    log.info("registered %s version %s (%s) from %s", name, version, kind, model_dir)
    return version


def register_unless_identical(model_dir: str | Path, name: str, **kwargs: Any) -> tuple[str, bool]:
    """:func:`register_model`, unless a version of ``name`` already is this model (the same
    weights, config and tokenizer): then that version, and ``True`` for "reused". A rerun that
    reproduces the same weights adds no version and moves no alias."""
    digest = model_digest(model_dir)
    same = identical_version(name, digest, kwargs.get("cfg"))
    if same is not None:
        log.info("%s is identical to version %s of %s (model digest %s): not registered again",
                 model_dir, same, name, digest)
        return same, True
    return register_model(model_dir, name, digest=digest, **kwargs), False


def identical_version(name: str, digest: str, cfg: TrackingConfig | None = None) -> str | None:
    """The newest version of ``name`` whose model digest is ``digest``, or None."""
    from mlflow.exceptions import MlflowException

    try:
        found = client(cfg).search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    same = [int(v.version) for v in found if (v.tags or {}).get("galeno.model_digest") == digest]
    return str(max(same)) if same else None


# --------------------------------------------------------------------------- promotion
class PromotionRefused(RuntimeError):
    """The candidate's dev metric is worse than the alias holder's (or cannot be compared)."""


def default_metric(name: str) -> tuple[str, bool]:
    """The promotion metric of a registered model and whether higher is better."""
    if name == MLM_MODEL:
        return "val_loss", False
    if name.startswith(NER_MODEL_PREFIX):
        return "dev_f1", True
    raise ValueError(f"no default promotion metric for {name!r}: pass metric= (--metric) and its direction")


def _metric_of(version, metric: str) -> Optional[float]:
    return as_float(version.tags.get(METRIC_TAG + metric))


def promote(name: str, version: str | int, alias: str = "champion", *, metric: str | None = None,
            higher_is_better: bool | None = None, force: bool = False, reason: str = "",
            user: str | None = None, cfg: TrackingConfig | None = None) -> dict[str, Any]:
    """Point ``alias`` at ``version`` if its ``metric.<metric>`` tag is at least as good as the
    current holder's; raises :class:`PromotionRefused` otherwise, unless ``force``.

    Every move is recorded as a tag ``promotion.<alias>.<UTC time>`` on the version and on the
    registered model (the history), holding JSON with who, when, why, the previous version, both
    metric values and whether it was forced. Returns that record (``changed: false`` when the
    alias already points at ``version``).
    """
    from mlflow.exceptions import MlflowException

    mc = client(cfg)
    version = str(version)
    if metric is None:
        metric, default_higher = default_metric(name)
        higher_is_better = default_higher if higher_is_better is None else higher_is_better
    elif higher_is_better is None:
        if metric not in METRIC_DIRECTIONS:
            raise ValueError(f"metric {metric!r}: say whether higher is better")
        higher_is_better = METRIC_DIRECTIONS[metric]
    candidate = mc.get_model_version(name, version)
    try:
        current = mc.get_model_version_by_alias(name, alias)
    except MlflowException:
        current = None
    now = dt.datetime.now(dt.timezone.utc)
    record: dict[str, Any] = {
        "model": name, "version": version, "alias": alias,
        "previous_version": str(current.version) if current else None,
        "metric": metric, "higher_is_better": higher_is_better,
        "candidate_value": _metric_of(candidate, metric),
        "previous_value": _metric_of(current, metric) if current else None,
        "who": user or current_user(), "when": now.isoformat(timespec="seconds"), "why": reason,
        "forced": False, "changed": True,
    }
    if current is not None and str(current.version) == version:
        return {**record, "changed": False}
    problem = _promotion_problem(record)
    if problem:
        if not force:
            raise PromotionRefused(f"{name} version {version} not promoted to @{alias}: {problem} "
                                   f"(--force overrides, with --reason)")
        record["forced"] = True
        record["override"] = problem
    mc.set_registered_model_alias(name, alias, version)
    key = f"promotion.{alias}.{now.strftime('%Y%m%dT%H%M%S%fZ')}"
    value = json.dumps(record, ensure_ascii=False)
    mc.set_model_version_tag(name, version, key, value)
    mc.set_registered_model_tag(name, key, value)
    log.info("%s@%s -> version %s (was %s)%s", name, alias, version, record["previous_version"],
             " [forced]" if record["forced"] else "")
    return record


def _promotion_problem(record: Mapping[str, Any]) -> str:
    """Why the rule refuses the candidate; empty when it is at least as good."""
    cand, prev, metric = record["candidate_value"], record["previous_value"], record["metric"]
    if cand is None:
        return f"the candidate has no {METRIC_TAG}{metric} tag"
    if record["previous_version"] is None:
        return ""
    if prev is None:
        return f"the current version {record['previous_version']} has no {METRIC_TAG}{metric} tag to compare with"
    better = cand >= prev if record["higher_is_better"] else cand <= prev
    if better:
        return ""
    word = "lower" if record["higher_is_better"] else "higher"
    return f"its {metric} {cand:g} is {word} than version {record['previous_version']}'s {prev:g}"


def history(name: str, alias: str | None = None, cfg: TrackingConfig | None = None) -> list[dict[str, Any]]:
    """Every recorded promotion of ``name`` (of one alias, or all), oldest first."""
    tags = client(cfg).get_registered_model(name).tags
    prefix = f"promotion.{alias}." if alias else "promotion."
    keys = [k for k in tags if k.startswith(prefix)]
    return [json.loads(tags[k]) for k in sorted(keys, key=lambda k: k.rsplit(".", 1)[1])]
