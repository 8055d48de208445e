"""Batch NER prediction on Ray Data (``jobs/predict_ner.py``): every document of some sources tagged.

Sources are read by the corpus stage's readers (``NAME=FORMAT:PATH``, the same formats), in shards
of about ``shard_mb``. An actor pool tags the documents: each actor loads the model once
(:func:`galeno.inference.loading.load_ner`) and runs :func:`galeno.inference.token_classification.predict_entities`,
the predictor Serve and evaluation run, on batches of ``batch_size`` documents. Actors are CPU or
GPU actors (``num_gpus``), ``actors`` of them (a fixed pool, or ``min,max`` to autoscale).

Output (``paths.predictions``): one Parquet row per input document, ``id``, ``source``, ``text`` (the
document text exactly as read: no normalisation, so offsets stay true), ``entities`` (a list of
``{label, start, end, text, score}`` with ``text == row.text[start:end]``) and ``reason``: null for a
tagged document; the reader's reason (``malformed_xml``, ``empty``, ...) for an input that could
not be read, or ``prediction_failed`` for a document the model failed on, each with no entities. So
every input document is a row, and the manifest (``paths.predictions_manifest``) counts them by
source and reason, the entities by label, and the throughput.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from galeno import paths
from galeno.corpus.config import SourceConfig
from galeno.inference.loading import load_ner, local_source
from galeno.inference.token_classification import AGGREGATIONS, predict_entities
from galeno.runtime import RayConfig, each
from galeno.tracking import TrackingConfig

log = logging.getLogger(__name__)


@dataclass
class PoolConfig:
    """Sources read in shards, an actor pool of a loaded model over them: what batch prediction and
    batch de-identification share."""

    sources: list[SourceConfig] = field(default_factory=list)
    """Documents to read (``--source NAME=FORMAT:PATH``, repeatable; the corpus readers' formats)."""
    batch_size: int = 16
    """Documents per call of an actor."""
    actors: str = "2"
    """Actors in the pool: a number, or MIN,MAX to let Ray Data autoscale the pool."""
    num_cpus: float = 1.0
    """CPUs per actor (also its torch threads, rounded; at least 1)."""
    num_gpus: float = 0.0
    """GPUs per actor: 1 puts each actor on a GPU."""
    shard_mb: float = 16.0
    """Input bytes per read task."""
    block_kb: int = 64
    """Text per block handed to an actor (a large file is cut into many): a block goes to one actor, so
    small blocks keep every actor of the pool busy. 64 KB is about twenty clinical notes."""
    read_concurrency: int = 2
    """Read (and write) tasks at a time. They ask Ray for no CPU, so a pool that holds every CPU never
    starves the tasks that feed it and drain it: the model is the bottleneck, reading is not."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Where to run."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """MLflow run of the job: config, counts and throughput, the manifest as an artifact."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be positive")
        if min(self.num_cpus, self.shard_mb, self.read_concurrency, self.block_kb) <= 0 or self.num_gpus < 0:
            raise ValueError("num_cpus, shard_mb, block_kb and read_concurrency must be positive, num_gpus >= 0")
        self.pool()  # validates actors
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")

    def pool(self) -> tuple[int, int]:
        """(min, max) actors."""
        try:
            low, _, high = str(self.actors).partition(",")
            pool = (int(low), int(high or low))
        except ValueError:
            raise ValueError(f"actors must be N or MIN,MAX, not {self.actors!r}") from None
        if not 1 <= pool[0] <= pool[1]:
            raise ValueError(f"actors must be N or MIN,MAX with 1 <= MIN <= MAX, not {self.actors!r}")
        return pool


@dataclass
class PredictConfig(PoolConfig):
    model: str = ""
    """The token-classification model: a Hugging Face folder or ``models:/NAME@alias`` (resolved once, on the driver)."""
    output: str = field(default_factory=lambda: paths.default_output("predictions"))
    """Output folder: predictions/*.parquet and manifest.json."""
    aggregation_strategy: str = "simple"
    """How sub-token probabilities make a word's label: simple, first, average or max (docs/serve.md)."""
    max_length: int = 512
    """Sub-tokens per window (capped by the model's positions); longer sentences get sliding windows."""
    stride: int = 32
    """Words shared by consecutive windows of a long sentence."""
    forward_batch_size: int = 32
    """Windows per forward pass inside a call."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.aggregation_strategy not in AGGREGATIONS:
            raise ValueError(f"aggregation_strategy must be one of {AGGREGATIONS}")
        if min(self.forward_batch_size, self.max_length) < 1 or self.stride < 0:
            raise ValueError("forward_batch_size and max_length must be positive, stride >= 0")


def predictions_schema():
    import pyarrow as pa

    entity = pa.struct([("label", pa.string()), ("start", pa.int64()), ("end", pa.int64()),
                        ("text", pa.string()), ("score", pa.float64())])
    return pa.schema([("id", pa.string()), ("source", pa.string()), ("text", pa.string()),
                      ("entities", pa.list_(entity)), ("reason", pa.string())])


def _read(shard: dict[str, Any]) -> list[dict[str, Any]]:
    from galeno.corpus.readers import read_file

    return [{"id": d.id, "source": d.source, "text": d.text, "reason": d.reason}
            for path in shard["files"] for d in read_file(path, shard["format"], shard["source"], root=shard["root"])]


class Tagger:
    """One actor of the pool: the model loaded once, then batches of documents tagged."""

    def __init__(self, model_dir: str, cfg: dict[str, Any]) -> None:
        import torch

        torch.set_num_threads(max(1, round(cfg["num_cpus"])))
        self.cfg = cfg
        self.loaded = load_ner(local_source(model_dir), cfg["max_length"], want_gpu=cfg["num_gpus"] > 0)

    def _tag(self, texts: list[str]) -> list[list[dict[str, Any]]]:
        return predict_entities(self.loaded, [(texts, self.cfg["aggregation_strategy"])], stride=self.cfg["stride"],
                                chunk=self.cfg["forward_batch_size"])[0]

    def __call__(self, batch):
        import pyarrow as pa

        rows = batch.to_pylist()
        todo = [i for i, r in enumerate(rows) if r["reason"] is None]
        tagged = each(self._tag, [rows[i]["text"] for i in todo], [rows[i]["id"] for i in todo], "tagging")
        found = {i: f for i, f in zip(todo, tagged) if f is not None}
        for i, row in enumerate(rows):
            row["entities"] = found.get(i, [])
            if row["reason"] is None and i not in found:
                row["reason"] = "prediction_failed"
        return pa.Table.from_pylist(rows, schema=predictions_schema())


def _count(files: list[Path]) -> dict[str, Any]:
    """Documents by source and reason, entities by label, from the written predictions."""
    import pyarrow.parquet as pq

    documents: Counter = Counter()
    reasons: dict[str, Counter] = {}
    labels: Counter = Counter()
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(columns=["source", "reason", "entities"]):
            for row in batch.to_pylist():
                documents[row["source"]] += 1
                reasons.setdefault(row["source"], Counter())[row["reason"] or "tagged"] += 1
                labels.update(e["label"] for e in row["entities"])
    return {"documents": dict(documents), "by_reason": {s: dict(c) for s, c in reasons.items()},
            "entities": dict(labels)}


def _check_pool(cfg: PoolConfig, resources: dict[str, float]) -> None:
    """Refuse a pool whose smallest size the cluster cannot place: Ray Data would wait for it forever."""
    low, _ = cfg.pool()
    for kind, per_actor in (("CPU", cfg.num_cpus), ("GPU", cfg.num_gpus)):
        if per_actor and low * per_actor > resources.get(kind, 0) + 1e-9:
            raise ValueError(f"actors={cfg.actors} with num_{kind.lower()}s={per_actor} needs {low * per_actor:g} "
                             f"{kind}s for its smallest pool; the cluster has {resources.get(kind, 0):g}")


@dataclass
class PoolJob:
    """What one pool job runs: the actor class and its arguments, where its rows go, how they are counted."""

    name: str
    """The MLflow job name and the log's noun (``predict_ner``, ``deidentify``)."""
    actor: type
    actor_kwargs: dict[str, Any]
    target: Path
    """The folder of Parquet files the rows end in (swapped in whole when the run succeeds)."""
    manifest: Path
    count: Callable[[list[Path]], dict[str, Any]]
    """Counts of the written rows for the manifest: ``documents`` (by source) at least."""
    metrics: Callable[[dict[str, Any]], dict[str, float]] = lambda counts: {}
    about: dict[str, Any] = field(default_factory=dict)
    """More manifest fields (the model, ...)."""
    after: Optional[Callable[[list[Path]], dict[str, Any]]] = None
    """Run on the written files before the manifest is written and tracked; its fields join the manifest."""


def pool_main(prog: str, cls: type, usage: str, flags, run_job: Callable[[Any], dict[str, Any]],
              keys: tuple[str, ...], argv=None) -> dict[str, Any]:
    """The command line of a pool job: parse ``cls`` with ``flags``, run it, print the manifest's ``keys``;
    a bad config, a pool the cluster cannot place, a missing model or input exits with one line."""
    import sys

    from galeno.config import parse_cli
    from galeno.runtime import setup_logging

    setup_logging()
    try:
        cfg = parse_cli(cls, argv, prog=prog, description=usage, flags=flags)
    except ValueError as err:
        sys.exit(f"{prog}: error: {err}")
    try:
        manifest = run_job(cfg)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"{prog}: error: {err}")
    print(json.dumps({k: manifest.get(k) for k in keys}, indent=2, ensure_ascii=False))
    return manifest


def run(cfg: PredictConfig) -> dict[str, Any]:
    """Tag every document of ``cfg.sources``; returns (and writes) the manifest."""
    from galeno.inference.source import resolve_model

    if not cfg.model or not cfg.sources:
        raise ValueError("give --model and at least one --source")
    out = Path(paths.absolute(cfg.output))
    model_dir = paths.absolute(resolve_model(cfg.model, cfg.tracking))
    settings = {k: getattr(cfg, k) for k in ("aggregation_strategy", "max_length", "stride",
                                              "forward_batch_size", "num_cpus", "num_gpus")}
    job = PoolJob("predict_ner", Tagger, {"model_dir": model_dir, "cfg": settings}, paths.predictions(out),
                  paths.predictions_manifest(out), _count,
                  lambda counts: {f"entities_{k}": v for k, v in counts["entities"].items()},
                  {"model": cfg.model, "model_dir": model_dir})
    return run_pool(cfg, job, out)


def run_pool(cfg: PoolConfig, job: PoolJob, out: Path) -> dict[str, Any]:
    """Read ``cfg.sources`` in shards, run ``job.actor`` over them as an actor pool, write its rows."""
    import ray
    import ray.data

    from galeno.corpus.pipeline import plan_shards
    from galeno.runtime import init_ray

    shards = plan_shards(cfg.sources, cfg.shard_mb)
    init_ray(cfg.ray)
    _check_pool(cfg, ray.cluster_resources())
    context = ray.data.DataContext.get_current()
    block_size = context.target_max_block_size
    # Ray Data hands a whole block to one actor: cut what the readers produce into small blocks
    context.target_max_block_size = cfg.block_kb * 1024
    try:
        return _pool_all(cfg, job, shards, out)
    finally:
        context.target_max_block_size = block_size


def _pool_all(cfg: PoolConfig, job: PoolJob, shards: list, out: Path) -> dict[str, Any]:
    import ray.data

    from galeno.config import to_dict
    from galeno.tracking import job_run

    start = time.time()
    with job_run(cfg.tracking, job.name, out, to_dict(cfg), run_name=job.name.replace("_", "-")) as tracker:
        work = out / f".{job.target.name}-{uuid.uuid4().hex[:8]}"
        low, high = cfg.pool()
        ds = ray.data.from_items([asdict(s) for s in shards], override_num_blocks=max(1, len(shards)))
        ds = ds.flat_map(_read, num_cpus=0,
                         compute=ray.data.TaskPoolStrategy(size=max(1, min(cfg.read_concurrency, len(shards)))))
        ds = ds.map_batches(job.actor, fn_constructor_kwargs=job.actor_kwargs,
                            batch_size=cfg.batch_size, batch_format="pyarrow",
                            compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high),
                            num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus)
        try:
            ds.write_parquet(str(work), ray_remote_args={"num_cpus": 0}, concurrency=cfg.read_concurrency)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)  # the previous output stays as it was
            raise
        if job.target.exists():
            shutil.rmtree(job.target)
        os.replace(work, job.target)
        elapsed = time.time() - start
        files = sorted(job.target.glob("*.parquet"))
        counts = job.count(files)
        n = sum(counts["documents"].values())
        cores = high * cfg.num_cpus
        if job.after is not None:
            counts.update(job.after(files))
        manifest = {**job.about, "output": str(job.target), "files": [f.name for f in files], **counts,
                    "documents_total": n, "elapsed_seconds": round(elapsed, 2),
                    "documents_per_second": round(n / elapsed, 3), "actors": [low, high],
                    "cpus_per_actor": cfg.num_cpus, "gpus_per_actor": cfg.num_gpus,
                    "documents_per_second_per_core": round(n / elapsed / cores, 3) if not cfg.num_gpus else None}
        job.manifest.write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
        tracker.log_metrics({"documents": n, "elapsed_seconds": elapsed, "documents_per_second": n / elapsed,
                             **job.metrics(counts)})
        tracker.log_artifact(job.manifest)
    log.info("%s: %d documents in %.1f s (%.2f documents/s)", job.name, n, elapsed, n / elapsed)
    return manifest
