"""Builders of stage outputs for tests: a corpus folder in the corpus job's output layout."""

from __future__ import annotations

import json
from pathlib import Path

from galeno import paths


def write_corpus(out: Path, docs: list[dict]) -> Path:
    """``docs`` as the corpus job writes them: documents/part-NNNNN.parquet and manifest.json."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = paths.corpus_documents(out)
    folder.mkdir(parents=True)
    rows = [{"id": d["id"], "source": d["source"], "text": d["text"],
             "n_sentences": d["text"].count("\n") + 1, "n_words": len(d["text"].split()),
             "n_chars": len(d["text"]), "lang": "es", "meta": "{}"} for d in docs]
    schema = pa.schema([("id", pa.string()), ("source", pa.string()), ("text", pa.string()),
                        ("n_sentences", pa.int64()), ("n_words", pa.int64()),
                        ("n_chars", pa.int64()), ("lang", pa.string()), ("meta", pa.string())])
    half = len(rows) // 2
    for n, part in enumerate((rows[:half], rows[half:])):
        pq.write_table(pa.Table.from_pylist(part, schema=schema), folder / f"part-{n:05d}.parquet")
    paths.corpus_manifest(out).write_text(json.dumps({"total": {"documents_out": len(rows)}}))
    return out


def tracked_run(output):
    """The MLflow run a job recorded for its output folder (jobs track into the test session's store)."""
    from galeno import paths
    from galeno.tracking import client

    record = json.loads(paths.mlflow_run_file(output).read_text())
    mc = client()
    return mc, mc.get_run(record["run_id"])
