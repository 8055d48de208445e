"""Command line of ``jobs/deidentify.py``."""

from __future__ import annotations

from typing import Any, Sequence

from galeno.config import Flag, set_field
from galeno.corpus.cli import add_sources

USAGE = """De-identify clinical notes on Ray Data: every identifier the model or the rules find becomes [LABEL].

examples:
  python jobs/deidentify.py --model models:/galeno-ner-meddocan-deid@champion \\
      --source notes=text:'notes/**/*.txt' --output artifacts/deidentified/notes
  python jobs/deidentify.py --model rules --source notes=brat:notes/ --output /tmp/masked   # the rules alone
  ray job submit --working-dir . --runtime-env configs/ray/runtime-env.yaml -- \\
      python jobs/deidentify.py --model models:/galeno-ner-meddocan-deid@champion \\
      --source notes=text:/mnt/shared/notes --output /mnt/shared/deidentified actors=8 num_gpus=1
"""

FLAGS = (
    Flag("--model", "de-identification model: models:/NAME@alias, a fine-tuning output or Hugging Face folder, "
         "or 'rules' for the rules alone (sets deid.model)", set_field("deid.model"), "MODEL_URI"),
    Flag("--source", "notes to de-identify, NAME=FORMAT:PATH_OR_GLOB (repeatable; formats: "
         "jsonl text brat i2b2xml bioc conll warc pdf)", add_sources, "NAME=FORMAT:PATH", True),
    Flag("--output", "output folder (deidentified/, text/, manifest.json)", set_field("output"), "DIR"),
)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from galeno.deid.job import DeidentifyConfig, run
    from galeno.inference.batch import pool_main

    return pool_main("deidentify.py", DeidentifyConfig, USAGE, FLAGS, run,
                     ("output", "documents", "by_reason", "replacements_total", "text_files", "elapsed_seconds",
                      "documents_per_second"), argv)
