"""Where every stage reads and writes: one artifact root, one path function per stage output.

Stages find each other's outputs only through these functions, never through hand-built
strings, so moving a folder is a one-line change here.
"""

from __future__ import annotations

import os
from pathlib import Path


def absolute(path: str) -> str:
    """``path`` made absolute for workers that start in another directory; empty strings, URIs
    (``s3://``, ``http://``) and registry URIs (``models:/NAME@alias``) stay as they are."""
    if not path or "://" in path or path.startswith("models:/"):
        return path
    return str(Path(path).resolve())


def artifact_root() -> Path:
    """``$GALENO_HOME`` or ``./artifacts``: the default parent of every stage's output."""
    return Path(os.environ.get("GALENO_HOME", "artifacts"))


def default_output(stage: str) -> str:
    """A job's output folder when neither its preset nor the command line names one."""
    return str(artifact_root() / stage)


def stage_record(out: str | Path) -> Path:
    """The typed record a finished stage leaves in its output folder (galeno.handover): what the
    next stage reads, and the proof that the stage finished."""
    return Path(out) / "outputs.json"


def _under(out: str | Path, *parts: str) -> Path | str:
    """``out/parts``: a Path, or a URI string when ``out`` is on an object store (``s3://``)."""
    from galeno import storage

    return storage.join(str(out), *parts) if storage.is_uri(out) else Path(out).joinpath(*parts)


# --- corpus stage (output contract: docs/corpus.md). Its data folders may be object-store URIs: they
# are read and written through galeno.storage; its manifest, report and record stay on the driver's disk.
def corpus_documents(out: str | Path) -> Path | str:
    return _under(out, "documents")


def corpus_rejected(out: str | Path) -> Path | str:
    return _under(out, "rejected")


def corpus_manifest(out: str | Path) -> Path:
    return Path(out) / "manifest.json"


def corpus_report(out: str | Path) -> Path:
    return Path(out) / "report.md"


def corpus_work(out: str | Path) -> Path | str:
    """Intermediate state of a corpus run (resumable shards); safe to delete after a run."""
    return _under(out, "_work")


def corpus_local_shards(out: str | Path, tag: str) -> Path | str:
    """Per-input-shard output of the document-local steps; ``tag`` hashes the config they used."""
    return _under(out, "_work", f"local-{tag}")


def corpus_staging(out: str) -> Path:
    """The driver's own folder for a corpus run whose output is an object-store URI: its manifest, report,
    stage record and MLflow files are written here first, then copied beside the data."""
    import hashlib

    return artifact_root() / "corpus-staging" / hashlib.sha256(out.encode()).hexdigest()[:16]


# --- tokenizer stage
def tokenizer_report(out: str | Path) -> Path:
    """Fertility / unknown-rate report written beside the Hugging Face tokenizer files."""
    return Path(out) / "tokenizer_report.json"


# --- pretraining stage (docs/pretraining.md)
def packed_data(out: str | Path, tag: str) -> Path:
    """Packed, tokenised sequences of one run; ``tag`` hashes corpus, tokenizer and packing config."""
    return Path(out) / f"packed-{tag}"


def packed_split(packed: str | Path, split: str) -> Path:
    return Path(packed) / split


def packed_manifest(packed: str | Path) -> Path:
    return Path(packed) / "manifest.json"


def train_storage(out: str | Path) -> Path:
    """Ray Train storage of a run: checkpoints (DeepSpeed shards per rank) and run state."""
    return Path(out) / "ray"


def model_export(out: str | Path) -> Path:
    """The final Hugging Face model directory (consolidated weights + tokenizer)."""
    return Path(out) / "model"


def pretrain_summary(out: str | Path) -> Path:
    """Steps, losses, throughput and the registered model of a finished run."""
    return Path(out) / "summary.json"


def run_identity(out: str | Path) -> Path:
    """What a training run's checkpoints depend on (config, data, code): resume only when it matches."""
    return Path(out) / "run_identity.json"


def local_checkpoints(out: str | Path) -> Path:
    """Checkpoints of a run with the local launcher (world size 1, no Ray)."""
    return Path(out) / "checkpoints"


def metrics_log(out: str | Path) -> Path:
    """Per-step metrics of rank 0 as JSON lines (also reported to Ray Train and MLflow)."""
    return Path(out) / "metrics.jsonl"


# --- NER fine-tuning stage (docs/ner.md)
def ner_results(out: str | Path) -> Path:
    """Per-seed and aggregate dev scores, the best seed and the registered model."""
    return Path(out) / "results.json"


def ner_seed(out: str | Path, seed: int) -> Path:
    """One seed's run: checkpoints, best/ (the model kept), dev metrics and predictions."""
    return Path(out) / f"seed-{seed}"


def ner_best(seed_dir: str | Path) -> Path:
    return Path(seed_dir) / "best"


def ner_data(out: str | Path, split: str) -> Path:
    """One split's encoded windows (Parquet), written by the job before training."""
    return Path(out) / "data" / f"{split}.parquet"


def ner_data_manifest(out: str | Path) -> Path:
    """Labels, windows and digests of the encoded data."""
    return Path(out) / "data" / "manifest.json"


def ner_dev_metrics(seed_dir: str | Path) -> Path:
    return Path(seed_dir) / "dev_metrics.json"


def ner_dev_predictions(seed_dir: str | Path) -> Path:
    """Gold and predicted tag per dev word, a TSV for error analysis."""
    return Path(seed_dir) / "dev_predictions.tsv"


def ner_sweep(out: str | Path) -> Path:
    """Every trial of a Ray Tune sweep and the best configuration."""
    return Path(out) / "sweep.json"


# --- batch prediction (jobs/predict_ner.py; galeno.inference.batch)
def predictions(out: str | Path) -> Path:
    """One Parquet row per input document: id, source, text as read, entities, reason."""
    return Path(out) / "predictions"


def predictions_manifest(out: str | Path) -> Path:
    return Path(out) / "manifest.json"


# --- batch de-identification (jobs/deidentify.py; galeno.deid.job)
def deidentified(out: str | Path) -> Path:
    """One Parquet row per input document: id, source, masked text, replaced spans (no identifier), reason."""
    return Path(out) / "deidentified"


def deidentified_text(out: str | Path) -> Path:
    """The masked documents as text/<source>/<id>.txt."""
    return Path(out) / "text"


def deidentified_manifest(out: str | Path) -> Path:
    return Path(out) / "manifest.json"


# --- logs
def pipeline_logs(stamp: str) -> Path:
    """The full output of each stage of one ``jobs/pipeline.py`` run (``stamp``: its start time)."""
    return artifact_root() / "logs" / f"pipeline-{stamp}"


# --- tracking (docs/mlflow.md)
def mlflow_home() -> Path:
    """The embedded MLflow store (mlflow.db), its artifacts and registry models downloaded by jobs."""
    return artifact_root() / "mlflow"


def mlflow_db() -> Path:
    """The embedded store's SQLite file (runs, registry)."""
    return mlflow_home() / "mlflow.db"


def mlflow_artifacts() -> Path:
    """Where the embedded store's experiments keep logged files and model weights."""
    return mlflow_home() / "artifacts"


def mlflow_ui_log() -> Path:
    """What ``mlflow ui`` prints, kept out of the console by jobs/mlflow_ui.py."""
    return mlflow_home() / "ui.log"


def mlflow_run_file(out: str | Path) -> Path:
    """The MLflow run of a job's output folder: a rerun of the same folder continues that run."""
    return Path(out) / "mlflow_run.json"
