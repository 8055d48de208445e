"""Tracking and the model registry: every run is an MLflow run, every exported model a registered version.

One configuration (:class:`TrackingConfig`) serves every job. Its default is an embedded store —
a SQLite file and an artifact folder under the artifact root — because MLflow refuses the old
``./mlruns`` file store since 3.13; production points ``tracking_uri`` (or ``$MLFLOW_TRACKING_URI``)
at an ``mlflow server`` with PostgreSQL and S3 behind it (docs/mlflow.md).

Three pieces:

* :class:`RunLogger`, rank 0's run. It buffers metrics in memory and a background thread sends
  them with ``log_batch``; when the server is down the training loop notices nothing but one
  warning, the points wait (bounded) and go out once it answers again.
* :func:`register_model` logs an exported Hugging Face directory as an MLflow model of our own
  ``PythonModel`` (:class:`GalenoFillMask`, :class:`GalenoNER`) and registers it as a new version
  of ``galeno-mlm`` / ``galeno-ner-<task>``, tagged with its lineage and dev metrics. Our own
  model, not the transformers flavor: MLflow's generic wrapper reduces NER output to a string of
  labels and fill-mask to its top-1, and the flavor pulls torchvision into the requirements.
  :func:`resolve_model` turns ``models:/NAME/N`` or ``models:/NAME@alias`` into a local Hugging
  Face directory: jobs call it wherever they accept a model path.
* :func:`promote` moves an alias (``champion``) to a version only if its dev metric is at least
  as good as the current holder's, unless forced, and records who, when and why as tags.

MLflow is imported inside the functions that need it: importing this module must stay cheap
(it takes seconds to import MLflow, and every Ray worker imports ``galeno``).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import getpass
import json
import logging
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

from galeno import paths

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

# MLflow's own limits (mlflow.utils.validation): a longer value is rejected, not cut.
_MAX_PARAM_VALUE = 6000
_MAX_TAG_VALUE = 8000
_MAX_KEY = 250
_MAX_BATCH_METRICS = 1000
_MAX_BATCH_PARAMS_TAGS = 100
_VALID_KEY = re.compile(rf"^[/\w.\- :]{{1,{_MAX_KEY}}}$")
#: MLflow error codes of a request that will never succeed (a retry would fail the same way).
_REJECTED = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
             "INVALID_STATE", "BAD_REQUEST"}


# --------------------------------------------------------------------------- configuration
@dataclass
class TrackingConfig:
    tracking_uri: str = ""
    """MLflow tracking store or server. Empty: $MLFLOW_TRACKING_URI, else the embedded SQLite store
    sqlite:///<artifact root>/mlflow/mlflow.db. Production: the http(s):// address of an
    `mlflow server` (docs/mlflow.md). Plain folders and file:// are refused: MLflow dropped its
    file store in 3.13."""
    artifact_location: str = ""
    """Artifact location of the experiment when this job creates it. Empty: <artifact
    root>/mlflow/artifacts with the embedded store, the server's own (--artifacts-destination)
    with a server."""
    experiment: str = "galeno"
    """Experiment the runs belong to (created on first use)."""
    enabled: bool = True
    """Track the run in MLflow at all (false: metrics.jsonl only)."""
    register: bool = True
    """Register the exported model as a new version of galeno-mlm / galeno-ner-<task>."""
    flush_every: int = 500
    """Buffered metric points that wake the background sender before flush_seconds are up."""
    flush_seconds: float = 10.0
    """Longest time a metric point waits in memory before it is sent."""
    max_buffered: int = 100_000
    """Metric points kept in memory while the tracking server does not answer; beyond this the
    oldest are dropped, with a warning that counts them."""
    end_timeout: float = 60.0
    """Seconds the end of a run waits for the last points to be sent before giving up (warning)."""

    def __post_init__(self) -> None:
        uri = self.tracking_uri
        if uri and (uri.startswith("file:") or ("://" not in uri and not uri.startswith("databricks"))):
            raise ValueError(f"tracking_uri {uri!r}: MLflow >= 3.13 refuses file stores; use "
                             f"sqlite:///{uri.removeprefix('file://') or 'PATH'}/mlflow.db or an http(s) server")
        if self.flush_every < 1 or self.flush_seconds <= 0 or self.end_timeout < 0:
            raise ValueError("flush_every >= 1, flush_seconds > 0 and end_timeout >= 0 are required")
        if self.max_buffered < self.flush_every:
            raise ValueError("max_buffered must be at least flush_every")


def _mlflow_home() -> Path:
    """Embedded store, its artifacts and downloaded registry models, under the artifact root."""
    return paths.artifact_root() / "mlflow"


def tracking_uri(cfg: TrackingConfig | None = None) -> str:
    """The store ``cfg`` points at: its own URI, else ``$MLFLOW_TRACKING_URI``, else the embedded SQLite file."""
    cfg = cfg or TrackingConfig()
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        uri = "sqlite:///" + str((_mlflow_home() / "mlflow.db").resolve())
    return uri


def _is_local_store(uri: str) -> bool:
    return uri.startswith("sqlite:")


def artifact_location(cfg: TrackingConfig | None = None) -> Optional[str]:
    """Where an experiment we create keeps its artifacts; None lets a server decide."""
    cfg = cfg or TrackingConfig()
    if cfg.artifact_location:
        loc = cfg.artifact_location
        return loc if "://" in loc else Path(loc).resolve().as_uri()
    if _is_local_store(tracking_uri(cfg)):
        return (_mlflow_home() / "artifacts").resolve().as_uri()
    return None


def resolved(cfg: TrackingConfig) -> TrackingConfig:
    """``cfg`` with absolute URIs: Ray workers start in their own folder, so the driver resolves."""
    return dataclasses.replace(cfg, tracking_uri=tracking_uri(cfg), artifact_location=artifact_location(cfg) or "")


#: What a Ray job's workers and Serve replicas need to reach the server, taken from the submitting shell.
TRACKING_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH",
                "GALENO_GIT_COMMIT")


def tracking_env_vars() -> dict[str, str]:
    """The ``env_vars`` of a Ray runtime environment: the tracking variables set in this shell, plus
    the git commit (a job's uploaded working_dir has no .git). Built at submit time, never committed."""
    env = {k: os.environ[k] for k in TRACKING_ENV if os.environ.get(k)}
    commit = _git_commit()
    if commit:
        env["GALENO_GIT_COMMIT"] = commit
    return env


def client(cfg: TrackingConfig | None = None):
    """An ``MlflowClient`` for tracking and registry on ``cfg``'s store (the SQLite folder made if needed)."""
    from mlflow import MlflowClient

    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(cfg: TrackingConfig | None = None, mlflow_client=None) -> str:
    """Id of ``cfg.experiment``, created (with our artifact location) if it does not exist yet."""
    from mlflow.exceptions import MlflowException

    cfg = cfg or TrackingConfig()
    mc = mlflow_client or client(cfg)
    found = mc.get_experiment_by_name(cfg.experiment)
    if found is not None:
        return found.experiment_id
    try:
        return mc.create_experiment(cfg.experiment, artifact_location=artifact_location(cfg))
    except MlflowException:  # another job created it between the two calls
        found = mc.get_experiment_by_name(cfg.experiment)
        if found is None:
            raise
        return found.experiment_id


# --------------------------------------------------------------------------- run logging
def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: dotted keys, JSON for lists, values cut to MLflow's 6000 characters."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, name + "."))
            continue
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
        if len(name) > _MAX_KEY:
            log.warning("param %s... skipped: keys are limited to %d characters", name[:40], _MAX_KEY)
            continue
        out[name] = text if len(text) <= _MAX_PARAM_VALUE else text[:_MAX_PARAM_VALUE - 3] + "..."
    return out


def _git_commit() -> str:
    """``$GALENO_GIT_COMMIT`` (Ray's working_dir upload has no .git), else the commit of the checkout
    this package is imported from (none for an installed wheel)."""
    commit = os.environ.get("GALENO_GIT_COMMIT", "")
    if commit:
        return commit
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _user() -> str:
    """Who acts: the tracking server login where there is one, else the OS user."""
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()


def system_tags() -> dict[str, str]:
    """Where a run ran: Python, torch and CUDA (if the job imported torch), host, git commit."""
    import galeno

    tags = {"mlflow.user": _user(), "galeno.version": galeno.__version__,
            "sys.python": platform.python_version(), "sys.platform": platform.platform(),
            "sys.hostname": socket.gethostname()}
    torch = sys.modules.get("torch")  # never import torch (or wake a GPU) just for a tag
    if torch is not None:
        tags["sys.torch"] = torch.__version__
        tags["sys.cuda"] = str(torch.version.cuda or "none")
        if torch.cuda.is_available():
            tags["sys.gpu"] = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _reachable(uri: str, timeout: float = 3.0) -> bool:
    """Whether an http(s) tracking server answers ``/health`` within ``timeout`` seconds.

    MLflow's own client retries a dead server for minutes (7 retries, exponential backoff); this
    answers fast, so a flush skips the attempt instead. Refused, reset, timed out or a 5xx from a
    proxy mean down; a TLS or auth problem is left to MLflow's client, which has its own settings.
    """
    import ssl
    import urllib.error
    import urllib.request

    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return True
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return True
    except urllib.error.HTTPError as err:
        return err.code < 500
    except urllib.error.URLError as err:
        return isinstance(err.reason, ssl.SSLError)
    except OSError:  # timeouts and resets outside URLError
        return False


class RunLogger:
    """Rank 0's MLflow run; it never raises into the training loop and never waits on the network.

    Create it in the process that uses it (it holds a thread and a client)::

        logger = RunLogger(cfg.tracking).start(to_dict(cfg), tags={"job": "pretrain"}, run_name=cfg.name)
        logger.log_input_dataset("corpus", manifest_hash, source=cfg.data.corpus, profile=manifest["total"])
        for step ...: logger.log_metrics({"loss": loss}, step)
        logger.end("FINISHED")   # or use it as a context manager: FAILED on an exception

    Metrics wait in memory; a background thread sends them in ``log_batch`` calls every
    ``flush_seconds`` or ``flush_every`` points. Every MLflow call happens in that thread (or in
    :meth:`flush`): when one fails — server down, mid-run restart — one warning says so, the
    points stay (up to ``max_buffered``, then the oldest are dropped and counted) and go out at
    the next flush that succeeds. Params, tags, dataset inputs and artifacts queue the same way,
    in order; even the run is created by the first successful flush, so a server that is down
    at start costs nothing but the warning. ``log_batch`` is idempotent on the server (a point
    with the same key, step, time and value is stored once), so a retried batch does no harm.
    """

    def __init__(self, cfg: TrackingConfig | None = None) -> None:
        self.cfg = resolved(cfg or TrackingConfig())
        if self.cfg.enabled:
            _require_mlflow()  # now, not at the first metric inside the training loop
        self.run_id: Optional[str] = None
        self._run_request: Optional[dict[str, Any]] = None
        self._client = None
        self._metrics: collections.deque = collections.deque()  # (seq, Metric)
        self._seq = 0
        self._since_wake = 0
        self._ops: collections.deque = collections.deque()  # (what, callable(client, run_id))
        self._lock = threading.Lock()        # buffers
        self._flush_lock = threading.Lock()  # one flush at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._down = False
        self._dropped = 0
        self._ended = False
        self._bad_keys: set[str] = set()

    # -- lifecycle
    def start(self, cfg_dict: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None,
              run_name: str | None = None, run_id: str | None = None) -> "RunLogger":
        """Queue the run (a new one, or ``run_id`` to continue it after a restart), its params and tags."""
        if not self.cfg.enabled:
            return self
        try:
            self._run_request = {"run_id": run_id, "run_name": run_name, "start_time": _now_ms()}
            self.run_id = run_id
            all_tags = {**system_tags(), **{k: str(v) for k, v in (tags or {}).items()}}
            self._queue_tags(all_tags)
            if cfg_dict:
                params = flatten_params(cfg_dict)
                for chunk in _chunks(params.items(), _MAX_BATCH_PARAMS_TAGS):
                    self._queue("params", lambda c, r, chunk=chunk: c.log_batch(r, params=[_param(k, v) for k, v in chunk]))
                self.log_dict(dict(cfg_dict), "config.json")
            self._thread = threading.Thread(target=self._loop, name="galeno-mlflow", daemon=True)
            self._thread.start()
            self._wake.set()
        except Exception as err:  # noqa: BLE001 - tracking must never stop training
            self._failed(err)
        return self

    def end(self, status: str = "FINISHED") -> bool:
        """Send what is left and close the run with ``status``; waits at most ``end_timeout`` seconds.

        Returns whether everything reached MLflow; if not, the warning says how many points are lost.
        """
        if not self.cfg.enabled or self._ended or self._run_request is None:
            return True
        self._ended = True
        self._queue("status", lambda c, r: c.set_terminated(r, status))
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.cfg.end_timeout)  # the thread does the final flush
        with self._lock:
            left_metrics, left_ops = len(self._metrics), len(self._ops)
        if left_metrics or left_ops:
            log.warning("MLflow run %s: %d metric points and %d other calls were not sent to %s by the end "
                        "of the run (waited up to %.0f s) and are lost to MLflow; the job's own files keep them",
                        self.run_id, left_metrics, left_ops, self.cfg.tracking_uri, self.cfg.end_timeout)
            return False
        if self._dropped:
            log.warning("MLflow run %s: %d metric points were dropped while the server was unreachable "
                        "(buffer of %d)", self.run_id, self._dropped, self.cfg.max_buffered)
        return True

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end("FAILED" if exc_type else "FINISHED")

    # -- what the job logs
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Buffer numeric values (others are skipped); returns at once."""
        if not self.cfg.enabled:
            return
        try:
            from mlflow.entities import Metric

            stamp, wake = _now_ms(), False
            with self._lock:
                for key, value in metrics.items():
                    if isinstance(value, bool) or not isinstance(value, (int, float)):
                        value = _as_float(value)
                        if value is None:
                            continue
                    if not _VALID_KEY.match(key):
                        if key not in self._bad_keys:
                            self._bad_keys.add(key)
                            log.warning("metric %r not sent to MLflow: keys are letters, digits, _ - . / : "
                                        "and spaces, at most %d characters", key, _MAX_KEY)
                        continue
                    if len(self._metrics) >= self.cfg.max_buffered:
                        self._metrics.popleft()
                        self._dropped += 1
                        if self._dropped == 1:
                            log.warning("MLflow: %d metric points buffered while %s does not answer; "
                                        "dropping the oldest from now on (counted at the end of the run)",
                                        self.cfg.max_buffered, self.cfg.tracking_uri)
                    self._seq += 1
                    self._metrics.append((self._seq, Metric(key, float(value), stamp, int(step or 0))))
                    self._since_wake += 1
                if self._since_wake >= self.cfg.flush_every and not self._down:
                    self._since_wake, wake = 0, True
            if wake:
                self._wake.set()
        except Exception as err:  # noqa: BLE001
            self._failed(err)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Run tags (values cut to MLflow's 8000 characters)."""
        if self.cfg.enabled:
            self._queue_tags({k: str(v) for k, v in tags.items()})

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file or folder (read when sent, so it should not change afterwards)."""
        if not self.cfg.enabled:
            return
        local = str(local_path)
        upload = "log_artifacts" if Path(local).is_dir() else "log_artifact"
        self._queue(f"artifact {local}", lambda c, r: getattr(c, upload)(r, local, artifact_path))

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        """A JSON artifact, serialised now."""
        if not self.cfg.enabled:
            return
        frozen = json.loads(json.dumps(data, default=str))
        self._queue(f"artifact {artifact_file}", lambda c, r: c.log_dict(r, frozen, artifact_file))

    def log_input_dataset(self, name: str, digest: str, source: str, *, context: str = "training",
                          schema: Mapping[str, str] | None = None, profile: Mapping[str, Any] | None = None,
                          tags: Mapping[str, str] | None = None) -> None:
        """Record an input of the run (the corpus manifest, the tokenizer) by digest, not by content.

        ``source`` is the path or URI it was read from, ``schema`` maps column names to MLflow types
        (``{"text": "string"}``), ``profile`` is a small JSON-able summary (counts).
        """
        if not self.cfg.enabled:
            return
        try:
            dataset = _dataset_input(name, digest, source, context, schema, profile, tags)
        except Exception as err:  # noqa: BLE001
            self._failed(err)
            return
        self._queue(f"input {name}", lambda c, r: c.log_inputs(r, datasets=[dataset]))

    # -- sending
    def flush(self) -> bool:
        """Send everything buffered now (in the calling thread); False if MLflow did not take it."""
        if not self.cfg.enabled or self._run_request is None:
            return True
        with self._flush_lock:
            try:
                if not _reachable(self.cfg.tracking_uri):
                    raise ConnectionError(f"nothing listens at {self.cfg.tracking_uri}")
                mc = self._ensure_run()
                while True:
                    with self._lock:
                        if not self._ops:
                            break
                        what, call = self._ops[0]
                    self._refusable(what, lambda: call(mc, self.run_id))
                    with self._lock:
                        self._ops.popleft()
                sent = self._send_metrics(mc)
            except Exception as err:  # noqa: BLE001
                return self._failed(err)
            if self._down:
                self._down = False
                log.info("MLflow at %s answers again: run %s is up to date (%d buffered points sent)",
                         self.cfg.tracking_uri, self.run_id, sent)
            return True

    def _refusable(self, what: str, call: Callable[[], Any]) -> None:
        """Run one MLflow call; a request MLflow rejects as invalid is dropped with a warning rather
        than retried forever (it would hold up everything queued behind it)."""
        try:
            call()
        except Exception as err:  # noqa: BLE001
            if getattr(err, "error_code", None) not in _REJECTED:
                raise
            log.warning("MLflow rejected %s for run %s, dropped: %s", what, self.run_id, str(err)[:300])

    def _send_metrics(self, mc) -> int:
        sent = 0
        while True:
            with self._lock:
                chunk = [self._metrics[i] for i in range(min(_MAX_BATCH_METRICS, len(self._metrics)))]
            if not chunk:
                return sent
            self._refusable(f"{len(chunk)} metric points", lambda: mc.log_batch(self.run_id, metrics=[m for _, m in chunk]))
            last = chunk[-1][0]
            with self._lock:  # drop what was sent (the oldest may have been dropped meanwhile)
                while self._metrics and self._metrics[0][0] <= last:
                    self._metrics.popleft()
            sent += len(chunk)

    def _ensure_run(self):
        if self._client is None:
            self._client = client(self.cfg)
        if self.run_id is None:
            req = self._run_request or {}
            exp = ensure_experiment(self.cfg, self._client)
            run = self._client.create_run(exp, start_time=req.get("start_time"), run_name=req.get("run_name"),
                                          tags={"mlflow.user": _user()})
            self.run_id = run.info.run_id
            log.info("MLflow run %s in experiment %r at %s", self.run_id, self.cfg.experiment, self.cfg.tracking_uri)
        elif self._run_request and self._run_request.get("run_id") and not self._run_request.get("resumed"):
            self._client.update_run(self.run_id, status="RUNNING")
            self._run_request["resumed"] = True
        return self._client

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.cfg.flush_seconds)
            self._wake.clear()
            if not self._stop.is_set():
                self.flush()
        self.flush()  # the final one, after end()

    def _queue(self, what: str, call: Callable[[Any, str], Any]) -> None:
        with self._lock:
            self._ops.append((what, call))

    def _queue_tags(self, tags: Mapping[str, str]) -> None:
        items = ((k, v[:_MAX_TAG_VALUE]) for k, v in tags.items() if len(k) <= _MAX_KEY)
        for chunk in _chunks(items, _MAX_BATCH_PARAMS_TAGS):
            self._queue("tags", lambda c, r, chunk=chunk: c.log_batch(r, tags=[_run_tag(k, v) for k, v in chunk]))

    def _failed(self, err: BaseException) -> bool:
        """One warning per outage; the buffers are kept for the next flush."""
        if not self._down:
            self._down = True
            log.warning("MLflow tracking at %s failed (%s: %s); training goes on, metrics wait in memory "
                        "(up to %d points) and are retried every %.0f s", self.cfg.tracking_uri,
                        type(err).__name__, str(err).splitlines()[0][:300] if str(err) else "",
                        self.cfg.max_buffered, self.cfg.flush_seconds)
        else:
            log.debug("MLflow still unreachable: %s", err)
        return False


def _require_mlflow() -> None:
    try:
        import mlflow.entities  # noqa: F401
    except ImportError as err:
        raise ImportError(f"tracking needs MLflow ({err}): install it (pip install 'mlflow>=3.13,<4') "
                          "or turn tracking off with tracking.enabled=false") from err


def _now_ms() -> int:
    return int(time.time() * 1000)


def _as_float(value: Any) -> Optional[float]:
    try:
        return float(value)  # numpy and torch scalars too
    except (TypeError, ValueError, RuntimeError):
        return None


def _param(key: str, value: str):
    from mlflow.entities import Param

    return Param(key, value)


def _run_tag(key: str, value: str):
    from mlflow.entities import RunTag

    return RunTag(key, value)


def _dataset_input(name: str, digest: str, source: str, context: str, schema: Mapping[str, str] | None,
                   profile: Mapping[str, Any] | None, tags: Mapping[str, str] | None):
    """An MLflow ``DatasetInput`` for a dataset known only by its metadata (``MetaDataset``) plus a profile."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.types import ColSpec, Schema
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    where = resolve_dataset_source(source) if "://" in source else LocalArtifactDatasetSource(str(Path(source).resolve()))
    meta = MetaDataset(where, name=name, digest=str(digest)[:36],
                       schema=Schema([ColSpec(t, n) for n, t in schema.items()]) if schema else None)
    spec = meta.to_dict()
    entity = Dataset(name=spec["name"], digest=spec["digest"], source_type=spec["source_type"],
                     source=spec["source"], schema=spec.get("schema"),
                     profile=json.dumps(profile, default=str) if profile else None)
    input_tags = [InputTag(MLFLOW_DATASET_CONTEXT, context)] + [InputTag(k, str(v)) for k, v in (tags or {}).items()]
    return DatasetInput(entity, input_tags)


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


def _pipeline(task: str, model_dir: str, **kwargs: Any):
    """A transformers pipeline of the model in ``model_dir``, on the GPU when there is one."""
    import torch
    from transformers import AutoTokenizer, pipeline

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return pipeline(task, model=model_dir, tokenizer=tokenizer, device=device, **kwargs)


class GalenoFillMask:
    """The pretrained MLM as a served model: the top-k fillers of every ``<mask>`` of every text.

    Input: texts. Param ``top_k`` (default 5). Output: one list per text of
    ``{mask, token, token_str, score, sequence}`` (``mask`` numbers the masks of a text from 0).
    MLflow's ``PythonModel`` is mixed in by :func:`pyfunc_model`.
    """

    def load_context(self, context) -> None:
        self.pipe = _pipeline("fill-mask", context.artifacts["model"])

    # No type hints on predict: MLflow would derive a schema from them instead of our signature.
    def predict(self, context, model_input, params=None):
        top_k = int((params or {}).get("top_k", 5))
        mask = self.pipe.tokenizer.mask_token
        out = []
        for i, text in enumerate(_texts(model_input)):
            if mask not in text:
                raise ValueError(f"text {i} has no {mask} to fill: {text[:80]!r}")
            found = self.pipe(text, top_k=top_k)
            per_mask = found if found and isinstance(found[0], list) else [found]
            out.append([{"mask": m, "token": int(p["token"]), "token_str": p["token_str"],
                         "score": float(p["score"]), "sequence": p["sequence"]}
                        for m, preds in enumerate(per_mask) for p in preds])
        return out


class GalenoNER:
    """A token-classification model as a served model: the entities of every text, with offsets.

    Input: texts. Output: one list per text of ``{entity_group, score, word, start, end}``
    (BIO tags merged into entities, ``aggregation_strategy="simple"``); ``text[start:end]`` is
    the entity. MLflow's ``PythonModel`` is mixed in by :func:`pyfunc_model`.
    """

    def load_context(self, context) -> None:
        self.pipe = _pipeline("token-classification", context.artifacts["model"], aggregation_strategy="simple")

    def predict(self, context, model_input, params=None):
        # A lone whitespace token (byte-level BPE's "Ġ") tags as an entity with an empty span: dropped.
        return [[{"entity_group": e["entity_group"], "score": float(e["score"]), "word": e["word"],
                  "start": int(e["start"]), "end": int(e["end"])} for e in self.pipe(text) if e["end"] > e["start"]]
                for text in _texts(model_input)]


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


def _requirements() -> list[str]:
    """Explicit pins of what the served model imports (MLflow's inference would add torchvision and more)."""
    from importlib.metadata import version

    dists = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "numpy", "pandas")
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
    tags = {k: str(v)[:_MAX_TAG_VALUE] for k, v in lineage.items()
            if isinstance(v, (str, int, float, bool)) and v != "" and len(k) <= _MAX_KEY}
    for key, value in metrics.items():
        number = _as_float(value)
        if number is not None:
            tags[METRIC_TAG + key] = repr(number)
    return tags


def register_model(model_dir: str | Path, name: str, *, kind: str = "fill-mask",
                   metrics: Mapping[str, Any] | None = None, lineage: Mapping[str, Any] | None = None,
                   run_id: str | None = None, cfg: TrackingConfig | None = None) -> str:
    """Log ``model_dir`` (an exported Hugging Face directory) as an MLflow model and register it as a
    new version of ``name``; returns the version.

    The weights are copied into the logged model (``artifacts/<folder name>``), not referenced. ``lineage`` is
    merged over the directory's ``galeno.json``; with ``metrics`` it becomes the version's tags
    (:func:`lineage_tags`) — ``base_model_version`` is how an NER model names the MLM version it
    was fine-tuned from. The model is logged in run ``run_id`` (the training run), or a new run.
    Sets the process's MLflow tracking and registry URI to ``cfg``'s, as ``mlflow.pyfunc.log_model``
    reads them from there.
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
    signature, example = _signature_and_example(kind, model_dir)

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
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
                pip_requirements=_requirements(), registered_model_name=name, tags=tags)
            if metrics:
                mlflow.log_metrics({k: _as_float(v) for k, v in metrics.items() if _as_float(v) is not None},
                                   model_id=info.model_id)
            ok = True
        finally:
            mlflow.end_run(status=previous or ("FINISHED" if ok else "FAILED"))
    version = str(info.registered_model_version)
    mc.set_registered_model_tag(name, "galeno.kind", kind)
    log.info("registered %s version %s (%s) from %s", name, version, kind, model_dir)
    return version


# --------------------------------------------------------------------------- loading by URI
def _parse_models_uri(uri: str, mc) -> tuple[str, str]:
    """``models:/NAME/N``, ``models:/NAME/latest`` or ``models:/NAME@alias`` as (name, version)."""
    rest = uri.removeprefix("models:/").strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, str(mc.get_model_version_by_alias(name, alias).version)
    name, _, version = rest.rpartition("/")
    if not name:
        raise ValueError(f"{uri!r}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    if version == "latest":
        found = mc.search_model_versions(f"name = '{name}'")
        if not found:
            raise ValueError(f"{uri!r}: {name} has no versions")
        version = str(max(int(v.version) for v in found))
    return name, version


def resolve_model(uri_or_path: str | Path, cfg: TrackingConfig | None = None,
                  cache: str | Path | None = None) -> str:
    """The local Hugging Face directory of a model path or registry URI.

    Jobs pass every model path they accept through this, so ``models:/galeno-mlm@champion`` and
    ``models:/galeno-mlm/3`` work wherever a folder does. A local path (or any other string) is
    returned as it is. A registry version is downloaded once into ``cache`` (default
    ``<artifact root>/mlflow/models/NAME/VERSION``) and its ``artifacts/model`` returned; an
    alias is resolved to its version at call time, so moving it takes effect at the next call.
    """
    text = str(uri_or_path)
    if not text.startswith("models:/"):
        return text
    import mlflow.artifacts
    from mlflow.models import Model

    uri = tracking_uri(cfg)
    name, version = _parse_models_uri(text, client(cfg))
    target = Path(cache) if cache else _mlflow_home() / "models"
    target = (target / name / version).resolve()
    if not (target / "MLmodel").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{version}-{uuid.uuid4().hex[:8]}"
        try:
            got = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(tmp),
                                                      tracking_uri=uri, registry_uri=uri)
            try:
                os.replace(got, target)  # atomic: concurrent workers on one node download at most twice
            except OSError:
                if not (target / "MLmodel").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    artifact = Model.load(str(target)).flavors["python_function"]["artifacts"]["model"]["path"]
    return str(target / artifact)


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
    return _as_float(version.tags.get(METRIC_TAG + metric))


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
        "who": user or _user(), "when": now.isoformat(timespec="seconds"), "why": reason,
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


def _chunks(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
