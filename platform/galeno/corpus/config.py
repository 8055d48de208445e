"""The corpus job's config: the sources to read and one config group per step.

Each step owns its config class next to its code (``NormalizeConfig`` in ``normalize.py``,
``MinHashConfig`` in ``dedup.py`` ...); this module only composes them, so the YAML preset and
the ``--help`` of ``jobs/clean_corpus.py`` mirror the pipeline's order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from galeno import paths
from galeno.corpus.decontam import DecontamConfig
from galeno.deid.deidentify import DeidConfig
from galeno.corpus.dedup import LineDedupConfig, MinHashConfig
from galeno.corpus.filters import FilterConfig
from galeno.corpus.langid import LangIdConfig
from galeno.corpus.normalize import NormalizeConfig
from galeno.corpus.readers import FORMATS
from galeno.runtime import RayConfig
from galeno.tracking import TrackingConfig


@dataclass
class SourceConfig:
    name: str = ""
    """Short corpus name; it prefixes generated ids and names the row in the report."""
    format: str = "text"
    """Reader: jsonl, text, brat, i2b2xml, bioc, conll, warc or pdf."""
    path: str = ""
    """A file, a directory, or a glob (``**`` allowed)."""
    priority: Optional[int] = None
    """Keep rule across corpora: the copy in the lowest priority wins (default: order of listing)."""
    description: str = ""
    """One line for the corpus table in report.md."""
    deid: bool = True
    """De-identify this source when the job has ``deid.model`` (``--deidentify``); ``false`` opts a public
    source out (SciELO articles hold no patients), where the user says so."""

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"source {self.name!r}: unknown format {self.format!r}; use one of {FORMATS}")
        if not self.name or not self.path:
            raise ValueError("every source needs a name and a path (NAME=FORMAT:PATH)")
        if any(c in self.name for c in "\x1f/:"):
            raise ValueError(f"source name {self.name!r} may not contain '/', ':' or control characters")


@dataclass
class SplitConfig:
    extra_abbreviations: list[str] = field(default_factory=list)
    """Abbreviations (with their final dot) never followed by a sentence break, added to the built-in clinical list."""


@dataclass
class CorpusConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    """Inputs, in keep-priority order (``--source NAME=FORMAT:PATH``, repeatable)."""
    output: str = field(default_factory=lambda: paths.default_output("corpus"))
    """Output folder: documents/, rejected/, manifest.json, report.md, outputs.json (what the tokenizer and pretraining read)."""
    deid: DeidConfig = field(default_factory=DeidConfig)
    """Step 0: de-identification (``--deidentify MODEL``), before every other step: each identifier
    the model or the rules find becomes ``[LABEL]``, so no later step, file, log or MLflow run sees it."""
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    """Step 1: encoding repair and Unicode normalisation."""
    split: SplitConfig = field(default_factory=SplitConfig)
    """Step 2: clinical sentence splitting."""
    langid: LangIdConfig = field(default_factory=LangIdConfig)
    """Step 3: language identification (fast model, langdetect where it matters)."""
    filters: FilterConfig = field(default_factory=FilterConfig)
    """Step 4: ill-formed sentence filters."""
    minhash: MinHashConfig = field(default_factory=MinHashConfig)
    """Step 5: exact and near-duplicate documents (MinHash LSH), globally, dropped whole."""
    line_dedup: LineDedupConfig = field(default_factory=LineDedupConfig)
    """Step 6: repeated sentences, within a source and across corpora, in the documents step 5 kept."""
    decontaminate: DecontamConfig = field(default_factory=DecontamConfig)
    """Step 7: drop sentences sharing a long n-gram with an evaluation set."""
    shard_mb: float = 16.0
    """Input bytes per shard (the unit of parallelism and of resume)."""
    num_partitions: int = 8
    """Partitions of each distributed shuffle (dedup); raise it with the cluster size."""
    output_shards: int = 4
    """Parquet files in documents/ and rejected/ (rows are hash-assigned by id, so reruns match)."""
    resume: bool = True
    """Skip input shards already committed by an interrupted run with the same config."""
    node_loss_retries: int = 2
    """Times a phase interrupted by the loss of a node runs again in the same submission, on the nodes left,
    from the shards committed so far (0: fail at once, with an error that says a resubmission resumes)."""
    global_driver: Optional[bool] = None
    """Run the global phase in a driver process of its own, restarted when a node is lost (docs/corpus.md).
    Default: when the cluster has more than one node. On one node no node can be lost without the job, and
    a driver of its own costs seconds of start-up (a new driver and its workers)."""
    shuffle_fetch_timeout_s: float = 300.0
    """A shuffle task that has waited this long for its inputs fails (Ray Data's own default: 1800 s). A
    second guard against a job that stands still: such a task holds its CPU while it waits."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Where to run."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """MLflow run of the job: config, per-corpus counts, manifest and report (docs/mlflow.md)."""

    def __post_init__(self) -> None:
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        if self.shard_mb <= 0 or self.num_partitions < 1 or self.output_shards < 1:
            raise ValueError("shard_mb, num_partitions and output_shards must be positive")
        if self.node_loss_retries < 0 or self.shuffle_fetch_timeout_s <= 0:
            raise ValueError("node_loss_retries must be >= 0 and shuffle_fetch_timeout_s > 0")

    def priority(self, source: SourceConfig) -> int:
        return keep_priority(self.sources, source)


def keep_priority(sources: Sequence[SourceConfig], source: SourceConfig) -> int:
    """The keep rule across corpora: the source's own ``priority``, else its place in ``sources``."""
    return source.priority if source.priority is not None else list(sources).index(source)


def parse_source(spec: str) -> dict[str, str]:
    """``NAME=FORMAT:PATH_OR_GLOB`` (the ``--source`` flag) as a SourceConfig dict."""
    name, sep, rest = spec.partition("=")
    fmt, sep2, path = rest.partition(":")
    if not (sep and sep2 and name and fmt and path):
        raise ValueError(f"--source {spec!r}: expected NAME=FORMAT:PATH_OR_GLOB")
    return {"name": name, "format": fmt, "path": path}
