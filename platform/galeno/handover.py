"""What a finished stage hands to the next: one small typed record per output folder.

Every training-side stage ends by writing ``<output>/outputs.json`` (:func:`galeno.paths.stage_record`),
after everything it names is on disk, so the record is also the proof that the stage finished.
The next stage, and ``jobs/pipeline.py``, read it with :func:`read` and take file locations from it,
never from a path built by hand:

========== ==================== ============================================================
stage      record               what the next stage takes from it
========== ==================== ============================================================
corpus     :class:`CorpusOutputs`    ``documents`` (Parquet) and ``manifest``: tokenizer, pretraining
tokenizer  :class:`TokenizerOutputs` ``tokenizer`` (a Hugging Face tokenizer folder): pretraining
pretrain   :class:`PretrainOutputs`  ``model`` and ``registered_model``: NER, promotion, Serve
ner        :class:`NEROutputs`       ``model`` and ``registered_model``: promotion, Serve
========== ==================== ============================================================

File locations are stored relative to the output folder, so a folder that is moved or copied (to a
cluster's shared disk, say) still reads; :func:`read` returns them absolute.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from galeno import paths
from galeno.config import ConfigError

SCHEMA = 1


class HandoverError(ConfigError, FileNotFoundError):
    """An upstream output that is missing, unfinished, or of another stage: a config error (jobs print
    it as one line) and a missing file (as readers of a folder expect)."""


@dataclass(frozen=True)
class _Outputs:
    """What every record holds: the output folder, and what the run reused or decided (resumed,
    restarted, not registered again), for the pipeline to say."""

    STAGE: ClassVar[str]
    JOB: ClassVar[str]
    output: Path
    notes: list[str] = field(default_factory=list, kw_only=True)


@dataclass(frozen=True)
class CorpusOutputs(_Outputs):
    """The corpus job's output (docs/corpus.md)."""

    STAGE: ClassVar[str] = "corpus"
    JOB: ClassVar[str] = "jobs/clean_corpus.py"
    documents: Path
    """Folder of Parquet files, one row per kept document (id, source, text, meta)."""
    manifest: Path
    """Counts per source and reason, timings, config (manifest.json)."""
    report: Path
    """The per-corpus token table (report.md)."""
    documents_out: int
    words_out: int
    documents_digest: str
    """Digest of the document files' contents: what the corpus is, the same after a rerun that
    writes the same documents (the manifest's own hash is not: it holds timings)."""


@dataclass(frozen=True)
class TokenizerOutputs(_Outputs):
    """The tokenizer job's output (docs/tokenizer.md)."""

    STAGE: ClassVar[str] = "tokenizer"
    JOB: ClassVar[str] = "jobs/train_tokenizer.py"
    tokenizer: Path
    """A Hugging Face tokenizer folder (tokenizer.json, tokenizer_config.json)."""
    report: Path
    """Fertility and unknown rate per evaluation set (tokenizer_report.json)."""
    vocab_size: int


@dataclass(frozen=True)
class PretrainOutputs(_Outputs):
    """The pretraining job's output (docs/pretraining.md)."""

    STAGE: ClassVar[str] = "pretrain"
    JOB: ClassVar[str] = "jobs/pretrain.py"
    model: Path
    """The exported Hugging Face masked-LM folder (weights, tokenizer, galeno.json lineage)."""
    summary: Path
    metrics: Path
    registered_model: str | None
    """``models:/NAME/VERSION`` when the model was registered (tracking on and the store reachable)."""


@dataclass(frozen=True)
class NEROutputs(_Outputs):
    """The NER fine-tuning job's output (docs/ner.md)."""

    STAGE: ClassVar[str] = "ner"
    JOB: ClassVar[str] = "jobs/finetune_ner.py"
    model: Path
    """The best dev seed's token-classification model folder."""
    results: Path
    """Per-seed and aggregate dev scores (results.json)."""
    task: str
    registered_model: str | None


Record = CorpusOutputs | TokenizerOutputs | PretrainOutputs | NEROutputs
R = TypeVar("R", CorpusOutputs, TokenizerOutputs, PretrainOutputs, NEROutputs)
RECORDS: dict[str, type] = {cls.STAGE: cls for cls in (CorpusOutputs, TokenizerOutputs, PretrainOutputs, NEROutputs)}


def _path_fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.type in ("Path", Path) and f.name != "output"]


def record(cls: type[R], output: str | Path, **fields: Any) -> R:
    """A record of ``cls`` for ``output``; its path fields are made absolute (relative ones are taken
    from the current directory, as every path a job is given)."""
    resolved = {k: Path(v).resolve() if k in _path_fields(cls) else v for k, v in fields.items()}
    return cls(output=Path(output).resolve(), **resolved)


def write(rec: Record) -> Path:
    """Write ``rec`` to ``<output>/outputs.json`` (atomically: a reader never sees half a record)."""
    out = Path(rec.output)
    data: dict[str, Any] = {"schema": SCHEMA, "stage": rec.STAGE}
    for f in dataclasses.fields(rec):
        if f.name == "output":
            continue
        value = getattr(rec, f.name)
        if f.name in _path_fields(type(rec)):
            if not Path(value).exists():
                raise HandoverError(f"{rec.STAGE} record names {value}, which does not exist")
            value = os.path.relpath(value, out)
        data[f.name] = value
    target = paths.stage_record(out)
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, target)
    return target


def clear(output: str | Path) -> None:
    """Remove ``output``'s record as a stage starts: until it is written again, the folder does not
    pass for a finished output (a rerun that fails half-way leaves no stale record behind)."""
    paths.stage_record(output).unlink(missing_ok=True)


def exists(output: str | Path) -> bool:
    """Whether ``output`` holds a finished stage's record."""
    return bool(output) and paths.stage_record(output).is_file()


def read(output: str | Path, cls: type[R]) -> R:
    """The record of the finished ``cls`` stage in ``output``, its paths absolute and checked.

    Raises :class:`HandoverError` with what to run when the folder is not such an output."""
    if not output:
        raise HandoverError(f"no {cls.STAGE} output given: name the output folder of {cls.JOB} "
                            f"(jobs/pipeline.py passes it itself)")
    target = paths.stage_record(output)
    if not target.is_file():
        hint = " (it does not exist)" if not Path(output).exists() else " (an unfinished run, or not a Galeno output)"
        raise HandoverError(f"{output} is not a finished {cls.STAGE} output: no {target.name}{hint}; "
                            f"run {cls.JOB} with output={output} first")
    try:
        data = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise HandoverError(f"{target} is unreadable ({err}): rerun {cls.JOB}") from err
    if data.get("stage") != cls.STAGE:
        raise HandoverError(f"{output} holds a {data.get('stage')!r} output, not a {cls.STAGE} output "
                            f"(written by {cls.JOB})")
    if data.get("schema") != SCHEMA:
        raise HandoverError(f"{target} has schema {data.get('schema')}, this Galeno reads {SCHEMA}: rerun {cls.JOB}")
    names = {f.name for f in dataclasses.fields(cls)} - {"output"}
    required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING} - {"output"}
    missing = required - data.keys()
    if missing:
        raise HandoverError(f"{target} lacks {sorted(missing)}: rerun {cls.JOB}")
    out = Path(output).resolve()
    rec = record(cls, out, **{k: out / data[k] if k in _path_fields(cls) else data[k] for k in names if k in data})
    for name in _path_fields(cls):
        if not Path(getattr(rec, name)).exists():
            raise HandoverError(f"{output}: the {cls.STAGE} output's {name} ({getattr(rec, name)}) is gone: "
                                f"rerun {cls.JOB}")
    return rec


def _stage_of(spec: str) -> str | None:
    """The stage whose finished output ``spec`` is, or None (a plain folder, a URI, nothing)."""
    if spec and "://" not in spec and not spec.startswith("models:/") and exists(spec):
        return json.loads(paths.stage_record(spec).read_text(encoding="utf-8")).get("stage")
    return None


def model_folder(spec: str) -> str:
    """``spec`` as a model location: a pretraining or NER output folder becomes the model its record
    names; anything else (a Hugging Face folder, a ``models:/`` URI) is returned as is."""
    stage = _stage_of(spec)
    return str(read(spec, RECORDS[stage]).model) if stage in ("pretrain", "ner") else spec


def tokenizer_folder(spec: str) -> str:
    """``spec`` as a tokenizer folder: the folder a tokenizer, pretraining or NER output's record
    names (a model folder holds its tokenizer), or ``spec`` itself (any Hugging Face tokenizer folder)."""
    if _stage_of(spec) == "tokenizer":
        return str(read(spec, TokenizerOutputs).tokenizer)
    return model_folder(spec)
