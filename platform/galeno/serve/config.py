"""Config of the Ray Serve endpoints (``jobs/serve.py``, ``configs/serve/``): one object for the
models, the ingress and model deployments, their autoscaling and backpressure, and request limits.

The same :class:`ServeConfig` feeds ``galeno.serve.app.build_app`` whether the application is
started by our job (``python jobs/serve.py``) or by Ray's own CLI (``serve run`` / ``serve
deploy`` of a Serve config file whose application ``args`` are a ServeConfig overlay, see
:func:`preset_overlay`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from galeno.inference.precision import check_precision
from galeno.runtime import RayConfig
from galeno.serve.auth import AuthConfig, check_exposure
from galeno.tracking import TrackingConfig
#: The builder that ``serve run`` / ``serve deploy`` config files name as their ``import_path``.
IMPORT_PATH = "galeno.serve.app:app_builder"


@dataclass
class DeploymentConfig:
    """Replicas, autoscaling and backpressure of one Serve deployment."""

    min_replicas: int = 1
    """Fewest replicas; with max_replicas equal to it the deployment has a fixed size (no autoscaling)."""
    max_replicas: int = 1
    """Most replicas the autoscaler may start."""
    target_ongoing_requests: float = 4.0
    """Autoscaling target: requests in flight per replica (queued in the replica or being computed)."""
    upscale_delay_s: float = 10.0
    """Seconds the load must stay above target before a replica is added."""
    downscale_delay_s: float = 120.0
    """Seconds the load must stay below target before a replica is removed."""
    look_back_period_s: float = 30.0
    """Window over which the autoscaler averages the load (keep it above Ray's 10 s metrics push interval)."""
    max_ongoing_requests: int = 16
    """Requests one replica takes at a time; the rest wait in the caller's queue. For model
    deployments at least batch.max_batch_size (else Ray caps every batch at this number)."""
    max_queued_requests: int = 64
    """Requests allowed to wait for a replica; beyond this callers get 503 at once instead of
    queueing forever (-1: no limit, not recommended)."""
    num_cpus: float = 1.0
    """CPUs reserved per replica (fractions allowed)."""
    num_gpus: float = 0.0
    """GPUs per replica (a model deployment runs on CUDA when it gets one)."""

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ValueError("need 0 <= min_replicas <= max_replicas and max_replicas >= 1")
        if self.target_ongoing_requests <= 0 or self.look_back_period_s <= 0:
            raise ValueError("target_ongoing_requests and look_back_period_s must be > 0")
        if self.upscale_delay_s < 0 or self.downscale_delay_s < 0:
            raise ValueError("upscale_delay_s and downscale_delay_s must be >= 0")
        if self.max_ongoing_requests < 1 or (self.max_queued_requests < 1 and self.max_queued_requests != -1):
            raise ValueError("max_ongoing_requests must be >= 1 and max_queued_requests >= 1 (or -1)")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError("num_cpus and num_gpus must be >= 0")

    def options(self) -> dict[str, Any]:
        """Keyword arguments of ``Deployment.options``: a fixed size, or an autoscaling range."""
        opts: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
        }
        if self.min_replicas == self.max_replicas:
            opts["num_replicas"] = self.max_replicas
        else:
            opts["autoscaling_config"] = {
                "min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "initial_replicas": max(self.min_replicas, 1),
                "target_ongoing_requests": self.target_ongoing_requests,
                "upscale_delay_s": self.upscale_delay_s, "downscale_delay_s": self.downscale_delay_s,
                "look_back_period_s": self.look_back_period_s}
        return opts


@dataclass
class BatchConfig:
    """Dynamic batching of a model deployment (``@serve.batch``)."""

    max_batch_size: int = 8
    """Requests gathered into one call of the model (a request may hold several texts)."""
    batch_wait_timeout_s: float = 0.01
    """Longest wait for a batch to fill after its first request arrived."""
    forward_batch_size: int = 32
    """Most sequences (NER windows, fill-mask inputs) per forward pass; a batch is sorted by length
    and run in passes of at most this many."""
    forward_overhead_tokens: int = 64
    """What one forward pass costs whatever its size, in tokens of compute: a batch's sorted
    sequences are split into the passes that minimise passes × this + padded tokens, so a long
    sequence does not pad the short ones it came with. 0: passes of forward_batch_size, however
    much they pad. 64 measured best for a BERT-base encoder on CPU (docs/benchmarks.md)."""

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.forward_batch_size < 1 or self.batch_wait_timeout_s < 0:
            raise ValueError("max_batch_size and forward_batch_size must be >= 1, batch_wait_timeout_s >= 0")
        if self.forward_overhead_tokens < 0:
            raise ValueError("forward_overhead_tokens must be >= 0")


@dataclass
class ModelDeploymentConfig(DeploymentConfig):
    """A model deployment: replicas as any deployment, plus batching."""

    batch: BatchConfig = field(default_factory=BatchConfig)
    """How requests are batched for the model."""
    quantize: str = ""
    """"int8": dynamic int8 quantisation of the model's Linear layers (CPU replicas only); "": the
    weights as saved. Check the F1 first (jobs/evaluate_ner.py --quantize int8; docs/serve.md)."""
    dtype: str = ""
    """The model's float type: "" (as saved), "float32", "bfloat16" (CPUs with AMX or AVX512-BF16, and
    GPUs), "float16" (GPU replicas). Check the F1 first (jobs/evaluate_ner.py --dtype bfloat16)."""
    runtime: str = "torch"
    """"torch", or "onnxruntime" (CPU replicas): the model exported to ONNX Runtime when the replica
    loads it, its graph fused, and with quantize: int8 its MatMuls in int8 (docs/serve.md). Check the
    F1 first (jobs/evaluate_ner.py --runtime onnxruntime --quantize int8)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_precision(self.quantize, self.dtype, self.num_gpus > 0, self.runtime)
        if self.max_ongoing_requests < self.batch.max_batch_size:
            raise ValueError(f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= batch.max_batch_size "
                             f"({self.batch.max_batch_size}): a replica never holds more requests than that")


@dataclass
class LimitsConfig:
    """What one request may ask for; larger requests get 413, malformed ones 4xx (never a crash)."""

    max_chars: int = 20_000
    """Characters per text (a long clinical note is about 10,000)."""
    max_texts: int = 32
    """Texts per NER request (``texts``)."""
    max_top_k: int = 50
    """Largest fill-mask ``top_k``."""
    max_body_bytes: int = 1_048_576
    """Bytes of a request body, checked before it is parsed."""

    def __post_init__(self) -> None:
        if min(self.max_chars, self.max_texts, self.max_top_k, self.max_body_bytes) < 1:
            raise ValueError("limits must be >= 1")


def _ingress() -> DeploymentConfig:
    # The ingress only parses JSON and awaits the model deployments: no CPU reserved for it.
    return DeploymentConfig(num_cpus=0.0, max_ongoing_requests=100, max_queued_requests=200)


@dataclass
class ServeConfig:
    """The served models and how the Serve application around them is shaped."""

    fill_mask_model: str = ""
    """Masked-LM to serve: models:/NAME@alias, models:/NAME/N or a Hugging Face directory. Empty: no /fill-mask."""
    ner_model: str = ""
    """Token-classification model to serve (same forms). Empty: no /ner."""
    deid_model: str = ""
    """De-identification model for POST /deidentify (models:/galeno-ner-meddocan-deid@champion, same forms);
    the rules for structured identifiers run beside it. Empty: no /deidentify."""
    deid_keep_labels: list[str] = field(default_factory=lambda: ["SEXO_SUJETO_ASISTENCIA"])
    """Labels /deidentify finds but does not replace (the patient's sex is clinical content)."""
    reload: str = ""
    """The model deployments' user_config: a new value makes replicas resolve their model URIs again
    (an alias that moved). Changed in a Serve config file's deployments override it reloads running
    replicas in place; through serve.run (this job) Serve replaces the replicas, rolling."""
    follow_alias_s: float = 30.0
    """How often (seconds) a model replica serving an alias or ``latest`` (models:/NAME@champion) asks the
    registry where it points; when it moved, the replica loads the new version beside the old one and
    swaps it in: no restart, no failed request. 0: never (then a new ``reload`` value resolves it again)."""
    app_name: str = "galeno"
    """Serve application name."""
    route_prefix: str = "/"
    """HTTP path the application is mounted at."""
    host: str = "127.0.0.1"
    """Address the HTTP proxy listens on (0.0.0.0 to accept other machines), when this job starts Serve."""
    port: int = 8000
    """HTTP port, when this job starts Serve."""
    request_timeout_s: float = 30.0
    """Seconds the ingress waits for a model's answer before answering 504 (the proxy's own
    end-to-end timeout is set a little longer)."""
    max_length: int = 512
    """Sub-tokens per model input (capped by the model's positions); longer NER sentences are cut
    into sliding windows, longer fill-mask texts into a window around the mask."""
    stride: int = 32
    """Words shared by consecutive NER windows of a long sentence."""
    aggregation_strategy: Literal["simple", "first", "average", "max"] = "simple"
    """Default NER aggregation when a request names none (docs/serve.md says what each does)."""
    torch_threads: int = 0
    """Intra-op threads per model replica; 0: leave torch's default (Ray sets OMP_NUM_THREADS to the replica's CPUs)."""
    model_cache: str = ""
    """Where registry versions are downloaded; empty: <artifact root>/mlflow/models, resolved by the driver."""
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    """Request size limits."""
    auth: AuthConfig = field(default_factory=AuthConfig)
    """API keys and rate limits (``auth.mode=keys``); without keys only a loopback host is allowed."""
    ingress: DeploymentConfig = field(default_factory=_ingress)
    """The FastAPI ingress deployment."""
    fill_mask: ModelDeploymentConfig = field(default_factory=ModelDeploymentConfig)
    """The FillMask deployment."""
    ner: ModelDeploymentConfig = field(default_factory=ModelDeploymentConfig)
    """The NER deployment."""
    deid: ModelDeploymentConfig = field(default_factory=ModelDeploymentConfig)
    """The Deidentify deployment (/deidentify)."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Ray to start or join."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """MLflow store that models:/ URIs are resolved in."""

    def __post_init__(self) -> None:
        if not self.route_prefix.startswith("/"):
            raise ValueError("route_prefix must start with /")
        if not 0 < self.port < 65536 or self.request_timeout_s <= 0:
            raise ValueError("port must be in 1..65535 and request_timeout_s > 0")
        if self.max_length < 8 or self.stride < 0 or self.torch_threads < 0 or self.follow_alias_s < 0:
            raise ValueError("max_length must be >= 8, stride, torch_threads and follow_alias_s >= 0")
        check_exposure(self.auth, self.host)


def preset_overlay(data: dict[str, Any]) -> dict[str, Any]:
    """The ServeConfig overlay held by a YAML mapping: the mapping itself, or, for a Serve config
    file (``applications:``), the ``args`` of its galeno application plus its HTTP host and port.

    So one file in ``configs/serve/`` is both ``serve run``-able and a ``--config`` preset of our job.
    """
    if "applications" not in data:
        return data
    apps = [a for a in data["applications"] or [] if a.get("import_path") == IMPORT_PATH]
    if len(apps) != 1:
        raise ValueError(f"a Serve config file used as a preset needs exactly one application with "
                         f"import_path {IMPORT_PATH} (found {len(apps)})")
    overlay = dict(apps[0].get("args") or {})
    http = data.get("http_options") or {}
    overlay.update({k: http[k] for k in ("host", "port") if k in http})
    if apps[0].get("name"):
        overlay["app_name"] = apps[0]["name"]
    if apps[0].get("route_prefix"):
        overlay["route_prefix"] = apps[0]["route_prefix"]
    return overlay


def load_preset(path: str | Path, overrides: tuple[str, ...] = ()) -> ServeConfig:
    """A ServeConfig from a preset or Serve config file (see :func:`preset_overlay`) and dotted overrides."""
    from galeno.config import load, load_yaml

    return load(ServeConfig, None, overrides, extra=preset_overlay(load_yaml(path)))
