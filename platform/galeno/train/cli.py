"""Command line of the pretraining job (``jobs/pretrain.py``)."""

from __future__ import annotations

import json
from typing import Any, Sequence

from galeno.config import Flag, parse_cli, set_field
from galeno.train.config import PretrainConfig

USAGE = """Pretrain a RoBERTa masked LM on the cleaned corpus (Ray Train + DeepSpeed).

examples:
  python jobs/pretrain.py --config configs/pretrain/tiny-cpu.yaml \\
      --corpus artifacts/corpus-sample --tokenizer artifacts/tokenizer-sample
  python jobs/pretrain.py --config configs/pretrain/tiny-cpu.yaml --corpus artifacts/corpus-sample \\
      --tokenizer artifacts/tokenizer-sample trainer.launcher=local trainer.max_steps=50
  ray job submit --working-dir . --runtime-env configs/ray/runtime-env.yaml -- \\
      python jobs/pipeline.py --config configs/pipeline/roberta-base-16xv100.yaml   # corpus, tokenizer, this
--corpus and --tokenizer name the upstream jobs' output folders (jobs/pipeline.py passes them itself).
Re-running with the same name and output resumes from the latest checkpoint.
"""

FLAGS = (
    Flag("--corpus", "output folder of jobs/clean_corpus.py", set_field("data.corpus"), "DIR"),
    Flag("--tokenizer", "output folder of jobs/train_tokenizer.py, or any tokenizer or model folder or models:/ URI",
         set_field("data.tokenizer"), "DIR"),
    Flag("--output", "run folder (packed data, checkpoints, metrics.jsonl, model/)", set_field("output"), "DIR"),
)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from galeno.runtime import setup_logging
    from galeno.train.pretrain import run

    setup_logging()
    cfg = parse_cli(PretrainConfig, argv, prog="pretrain.py", description=USAGE, flags=FLAGS)
    summary = run(cfg)
    print(json.dumps(summary, indent=2))
    return summary
