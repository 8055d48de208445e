"""Tracking: one configuration for every job's MLflow runs, and the logger that never stops a run.

:class:`TrackingConfig` serves every job. Its default is an embedded store — a SQLite file and an
artifact folder under the artifact root — because MLflow refuses the old ``./mlruns`` file store
since 3.13; production points ``tracking_uri`` (or ``$MLFLOW_TRACKING_URI``) at an ``mlflow
server`` with PostgreSQL and S3 behind it (docs/mlflow.md).

:class:`RunLogger` is a job's run (rank 0's, in training). It buffers metrics in memory and a
background thread sends them with ``log_batch``; when the server is down the training loop
notices nothing but one warning, the points wait (bounded) and go out once it answers again.
:func:`job_run` starts one for a job's output folder and continues the folder's run on a rerun.

MLflow is imported inside the functions that need it: importing this module must stay cheap
(it takes seconds to import MLflow, and every Ray worker imports ``galeno``).
"""

from __future__ import annotations

import collections
import dataclasses
import getpass
import hashlib
import json
import logging
import os
import platform
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

from galeno import paths

log = logging.getLogger(__name__)

# MLflow's own limits (mlflow.utils.validation): a longer value is rejected, not cut.
_MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
_MAX_BATCH_METRICS = 1000
_MAX_BATCH_PARAMS_TAGS = 100
_VALID_KEY = re.compile(rf"^[/\w.\- :]{{1,{MAX_KEY}}}$")
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


def tracking_uri(cfg: TrackingConfig | None = None) -> str:
    """The store ``cfg`` points at: its own URI, else ``$MLFLOW_TRACKING_URI``, else the embedded SQLite file."""
    cfg = cfg or TrackingConfig()
    return cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "") or embedded_uri()


def embedded_uri() -> str:
    """The embedded SQLite store under the artifact root."""
    return "sqlite:///" + str(paths.mlflow_db().resolve())


def _is_local_store(uri: str) -> bool:
    return uri.startswith("sqlite:")


def artifact_location(cfg: TrackingConfig | None = None) -> Optional[str]:
    """Where an experiment we create keeps its artifacts; None lets a server decide."""
    cfg = cfg or TrackingConfig()
    if cfg.artifact_location:
        loc = cfg.artifact_location
        return loc if "://" in loc else Path(loc).resolve().as_uri()
    if _is_local_store(tracking_uri(cfg)):
        return paths.mlflow_artifacts().resolve().as_uri()
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
        if len(name) > MAX_KEY:
            log.warning("param %s... skipped: keys are limited to %d characters", name[:40], MAX_KEY)
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


def current_user() -> str:
    """Who acts: the tracking server login where there is one, else the OS user."""
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()


def system_tags() -> dict[str, str]:
    """Where a run ran: Python, torch and CUDA (if the job imported torch), host, git commit."""
    import galeno

    tags = {"mlflow.user": current_user(), "galeno.version": galeno.__version__,
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
    import urllib.parse
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

    def end(self, status: Optional[str] = "FINISHED") -> bool:
        """Send what is left and close the run with ``status``; waits at most ``end_timeout`` seconds.

        ``status=None`` sends what is left but leaves the run open: a training worker logging into
        the driver's run ends its logger that way, and the driver closes the run.
        Returns whether everything reached MLflow; if not, the warning says how many points are lost.
        """
        if not self.cfg.enabled or self._ended or self._run_request is None:
            return True
        self._ended = True
        if status:
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
                        value = as_float(value)
                        if value is None:
                            continue
                    if not _VALID_KEY.match(key):
                        if key not in self._bad_keys:
                            self._bad_keys.add(key)
                            log.warning("metric %r not sent to MLflow: keys are letters, digits, _ - . / : "
                                        "and spaces, at most %d characters", key, MAX_KEY)
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
    def wake(self) -> None:
        """Ask the background thread to send now (before a checkpoint, say); returns at once."""
        if self._thread is not None:
            self._wake.set()

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
                                          tags={"mlflow.user": current_user()})
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
        items = ((k, v[:MAX_TAG_VALUE]) for k, v in tags.items() if len(k) <= MAX_KEY)
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


def as_float(value: Any) -> Optional[float]:
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


def _chunks(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# --------------------------------------------------------------------------- a job's run
def job_run(cfg: TrackingConfig, job: str, output: str | Path, config: Mapping[str, Any], *, run_name: str,
            tags: Mapping[str, Any] | None = None) -> RunLogger:
    """Start the MLflow run of a job writing to ``output``, or continue the one a previous attempt started.

    The run is created now when the store answers (so Ray workers can log into it by id) and its
    id is kept in ``<output>/mlflow_run.json``: rerunning the job on the same folder, store,
    experiment and run name continues that run, as a resumed training run continues its steps.
    When the store does not answer, the logger creates the run later, at its first successful flush.
    """
    cfg = resolved(cfg)
    record = paths.mlflow_run_file(output)
    # the store by hash: a URI may carry credentials (http://user:pass@host), and this file is not a secret
    store = hashlib.sha256(cfg.tracking_uri.encode()).hexdigest()[:16]
    key = {"store": store, "experiment": cfg.experiment, "run_name": run_name}
    previous = None
    if cfg.enabled and record.is_file():
        saved = json.loads(record.read_text(encoding="utf-8"))
        if all(saved.get(k) == v for k, v in key.items()) and _run_exists(cfg, saved.get("run_id", "")):
            previous = saved["run_id"]
    logger = RunLogger(cfg).start(config, tags={"galeno.job": job, **(tags or {})}, run_name=run_name,
                                  run_id=previous)
    if cfg.enabled and logger.flush() and logger.run_id:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({**key, "run_id": logger.run_id}, indent=2), encoding="utf-8")
        if previous:
            log.info("MLflow: continuing run %s of %s", previous, output)
    return logger


def flat_metrics(tree: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a nested report as dotted metric names (``pharmaconer.words_out``); the rest skipped."""
    out: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_metrics(value, name + "."))
        elif not isinstance(value, bool) and as_float(value) is not None:
            out[name] = float(value)
    return out


def _run_exists(cfg: TrackingConfig, run_id: str) -> bool:
    """Whether ``run_id`` is a live run of the store; an unreachable store counts as yes (retried later)."""
    if not run_id:
        return False
    if not _reachable(cfg.tracking_uri):
        return True
    try:
        return client(cfg).get_run(run_id).info.lifecycle_stage == "active"
    except Exception:  # noqa: BLE001 - deleted, or another store: start a new run
        return False
