"""``jobs/deidentify.py``: a folder of notes de-identified on Ray Data, for users who need only that.

Sources are read by the corpus readers (``--source NAME=FORMAT:PATH``), an actor pool runs
:class:`~galeno.deid.deidentify.Deidentifier` (the model loaded once per actor) and writes one
Parquet row per input document (``paths.deidentified``): ``id``, ``source``, ``text`` (masked),
``spans`` (``{label, start, end, by}``: offsets into the input text, ``by`` = ``model`` or the rule's
name; never the identifier itself) and ``reason`` (null, a reader's reason, or ``deid_failed``).
With ``text_files`` the masked texts are also written as ``text/<source>/<id>.txt``.
The manifest counts documents by source and reason and replacements by label and source.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from galeno import paths
from galeno.config import to_dict
from galeno.deid.deidentify import DeidConfig, Deidentifier
from galeno.inference.batch import PoolConfig, PoolJob, run_pool
from galeno.runtime import each

log = logging.getLogger(__name__)


@dataclass
class DeidentifyConfig(PoolConfig):
    """De-identify every document of some sources (``jobs/deidentify.py``)."""

    output: str = field(default_factory=lambda: paths.default_output("deidentified"))
    """Output folder: deidentified/*.parquet, text/ (with text_files), manifest.json."""
    deid: DeidConfig = field(default_factory=lambda: DeidConfig(model="rules"))
    """The model (``--model``; ``rules`` for the rules alone) and how it is applied."""
    text_files: bool = True
    """Also write each masked document as text/<source>/<id>.txt (ids made file-safe)."""


def schema():
    import pyarrow as pa

    span = pa.struct([("label", pa.string()), ("start", pa.int64()), ("end", pa.int64()), ("by", pa.string())])
    return pa.schema([("id", pa.string()), ("source", pa.string()), ("text", pa.string()),
                      ("spans", pa.list_(span)), ("reason", pa.string())])


class DeidActor:
    """One actor of the pool: the de-identifier built once, then batches of documents masked."""

    def __init__(self, cfg: dict[str, Any], model_dir: str, num_cpus: float, num_gpus: float) -> None:
        import torch

        from galeno.config import from_dict

        torch.set_num_threads(max(1, round(num_cpus)))
        self.deid = Deidentifier(from_dict(DeidConfig, cfg), model_dir, want_gpu=num_gpus > 0)

    def __call__(self, batch):
        import pyarrow as pa

        rows = batch.to_pylist()
        todo = [i for i, r in enumerate(rows) if r["reason"] is None]
        results = dict(zip(todo, each(self.deid, [rows[i]["text"] for i in todo], [rows[i]["id"] for i in todo],
                                      "de-identification")))
        for i, row in enumerate(rows):
            r = results.get(i)
            row["spans"] = [] if r is None else [{"label": s.label, "start": s.start, "end": s.end, "by": s.rule}
                                                 for s in r.spans]
            if i in results and r is None:
                row["reason"] = "deid_failed"
            row["text"] = r.text if r is not None else ""  # a failed document is never written un-masked
        return pa.Table.from_pylist(rows, schema=schema())


def _count(files: list[Path]) -> dict[str, Any]:
    import pyarrow.parquet as pq

    documents: Counter = Counter()
    reasons: dict[str, Counter] = {}
    labels: dict[str, Counter] = {}
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(columns=["source", "reason", "spans"]):
            for row in batch.to_pylist():
                documents[row["source"]] += 1
                reasons.setdefault(row["source"], Counter())[row["reason"] or "deidentified"] += 1
                labels.setdefault(row["source"], Counter()).update(s["label"] for s in row["spans"])
    total: Counter = sum(labels.values(), Counter())
    return {"documents": dict(documents), "by_reason": {s: dict(c) for s, c in reasons.items()},
            "replacements": {s: dict(sorted(c.items())) for s, c in labels.items()},
            "replacements_total": dict(sorted(total.items()))}


_UNSAFE = re.compile(r"[^\w.-]+")


def write_text_files(files: list[Path], folder: Path) -> int:
    """Each masked document as ``folder/<source>/<id>.txt`` (``<id>-2.txt`` where two ids make one
    file-safe name); returns how many were written."""
    import pyarrow.parquet as pq

    n, used = 0, set()
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(columns=["id", "source", "text", "reason"]):
            for row in batch.to_pylist():
                if row["reason"] is not None:
                    continue
                name = _UNSAFE.sub("_", row["id"]).strip("._")[:200] or f"document-{n}"
                target = folder / _UNSAFE.sub("_", row["source"]) / f"{name}.txt"
                k = 1
                while target in used:  # two ids that are one once made file-safe: neither is overwritten
                    k += 1
                    target = target.with_name(f"{name}-{k}.txt")
                used.add(target)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(row["text"], encoding="utf-8")
                n += 1
    return n


def run(cfg: DeidentifyConfig) -> dict[str, Any]:
    """De-identify every document of ``cfg.sources``; returns (and writes) the manifest."""
    import shutil

    from galeno.inference.source import resolve_model

    if not cfg.sources:
        raise ValueError("give at least one --source NAME=FORMAT:PATH")
    if not cfg.deid.enabled:
        raise ValueError("give --model (a de-identification model, or 'rules' for the rules alone)")
    out = Path(paths.absolute(cfg.output))
    model_dir = paths.absolute(resolve_model(cfg.deid.model, cfg.tracking)) if cfg.deid.uses_model else ""
    texts = paths.deidentified_text(out)
    shutil.rmtree(texts, ignore_errors=True)
    job = PoolJob("deidentify", DeidActor, {"cfg": to_dict(cfg.deid), "model_dir": model_dir,
                                            "num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
                  paths.deidentified(out), paths.deidentified_manifest(out), _count,
                  lambda counts: {f"replaced_{k}": v for k, v in counts["replacements_total"].items()},
                  {"model": cfg.deid.model, "model_dir": model_dir, "rules": cfg.deid.rules,
                   "keep_labels": cfg.deid.keep_labels},
                  after=(lambda files: {"text_files": write_text_files(files, texts)}) if cfg.text_files else None)
    return run_pool(cfg, job, out)
