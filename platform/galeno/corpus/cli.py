"""Command line of the corpus job (``jobs/clean_corpus.py``)."""

from __future__ import annotations

import json
import sys
from typing import Any, Sequence

from galeno.config import Flag, parse_cli, set_field
from galeno.corpus.config import CorpusConfig, parse_source

USAGE = """Clean, deduplicate and decontaminate biomedical corpora on Ray Data.

examples:
  python jobs/clean_corpus.py --config configs/corpus/sample.yaml
  python jobs/clean_corpus.py --source pharmaconer=conll:../shared/data/pharmaconer/train.conll \\
      --source meddocan=brat:'../shared/data/meddocan/train/brat' \\
      --decontaminate ../shared/data/pharmaconer/dev.conll --decontaminate '../shared/data/meddocan/dev/brat' \\
      --output artifacts/corpus
  python jobs/clean_corpus.py --config configs/corpus/shared.yaml --deidentify models:/galeno-ner-meddocan-deid@champion
  ray job submit --working-dir . -- python jobs/clean_corpus.py --config configs/corpus/shared.yaml
"""


def add_sources(data: dict[str, Any], values: list[str]) -> None:
    """Flag action of ``--source NAME=FORMAT:PATH`` (this job's, and batch prediction's)."""
    data.setdefault("sources", [])
    data["sources"] = list(data["sources"]) + [parse_source(v) for v in values]


def _add_decontam(data: dict[str, Any], values: list[str]) -> None:
    section = data.setdefault("decontaminate", {})
    section["paths"] = list(section.get("paths", [])) + list(values)


FLAGS = (
    Flag("--source", "a corpus to read, NAME=FORMAT:PATH_OR_GLOB (repeatable; formats: "
         "jsonl text brat i2b2xml bioc conll warc pdf)", add_sources, "NAME=FORMAT:PATH", True),
    Flag("--decontaminate", "an evaluation set (CoNLL/brat/text; file, dir or glob) whose long "
         "n-grams must not appear in the corpus (repeatable)", _add_decontam, "PATH", True),
    Flag("--deidentify", "de-identify clinical sources first with this model (models:/NAME@alias, a folder, or "
         "'rules' for the rules alone): sets deid.model; a source opts out with deid: false",
         set_field("deid.model"), "MODEL_URI"),
    Flag("--output", "output folder (documents/, rejected/, manifest.json, report.md)",
         set_field("output"), "DIR"),
)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from galeno.corpus.pipeline import run
    from galeno.runtime import setup_logging

    setup_logging()
    try:
        cfg = parse_cli(CorpusConfig, argv, prog="clean_corpus.py", description=USAGE, flags=FLAGS)
    except ValueError as err:  # e.g. a malformed --source
        sys.exit(f"clean_corpus.py: error: {err}")
    manifest = run(cfg)
    t = manifest["total"]
    print(json.dumps({"output": cfg.output, "documents_in": t["documents_in"],
                      "documents_out": t["documents_out"], "words_out": t["words_out"],
                      "elapsed_seconds": manifest["elapsed_seconds"]}, indent=2))
    return manifest
