"""Command lines of ``jobs/finetune_ner.py``, ``jobs/evaluate_ner.py`` and ``jobs/predict_ner.py``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from galeno.config import Flag, parse_cli, set_field
from galeno.corpus.cli import add_sources
from galeno.ner.config import NERConfig

FINETUNE_USAGE = """Fine-tune a pretrained encoder for NER (token classification, BIO tags) on the shared loop.

examples:
  python jobs/finetune_ner.py --config configs/ner/pharmaconer.yaml --model artifacts/pretrain/tiny-cpu/model
  python jobs/finetune_ner.py --config configs/ner/pharmaconer.yaml --config configs/ner/best.yaml \\
      --model models:/galeno-mlm@champion seeds=[1,2,3]
  ray job submit --working-dir . --runtime-env configs/ray/runtime-env.yaml -- \\
      python jobs/finetune_ner.py --config configs/ner/meddocan.yaml --model models:/galeno-mlm@champion
Several --config files are layered in order (a task preset, then a recipe). sweep.enabled=true runs a
Ray Tune search (ASHA) over learning rate, batch size and warmup instead, and writes <output>/sweep.json.
"""

FLAGS = (
    Flag("--model", "pretrained model: a Hugging Face directory or models:/NAME@alias", set_field("model"), "PATH_OR_URI"),
    Flag("--output", "run folder", set_field("output"), "DIR"),
)


def finetune_main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from galeno.ner.finetune import run
    from galeno.runtime import setup_logging

    setup_logging()
    cfg = parse_cli(NERConfig, argv, prog="finetune_ner.py", description=FINETUNE_USAGE, flags=FLAGS)
    results = run(cfg)
    print(json.dumps(results, indent=2))
    return results


EVALUATE_USAGE = """Score a token-classification model on annotated data: entity-level micro P/R/F1 in seqeval's
default (conlleval) and strict IOB2 modes, per entity type, and for brat / i2b2 XML data exact
character-span P/R/F1. Prints one JSON object.

examples:
  python jobs/evaluate_ner.py --model artifacts/ner/pharmaconer/seed-42/best --data ../shared/data/pharmaconer/dev.conll
  python jobs/evaluate_ner.py --model models:/galeno-ner-meddocan@champion \\
      --data '../shared/data/meddocan/dev/brat' --format brat --write-brat predictions/
"""


def evaluate_main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from galeno.inference.onnx_runtime import RUNTIMES
    from galeno.inference.precision import DTYPES, QUANTIZE, check_precision, choose_device
    from galeno.inference.source import resolve_model
    from galeno.ner.data import detect_format, read_ner
    from galeno.ner.evaluate import evaluate, write_predictions_brat, write_predictions_table
    from galeno.runtime import setup_logging
    from galeno.tracking import TrackingConfig

    parser = argparse.ArgumentParser(prog="evaluate_ner.py", description=EVALUATE_USAGE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, metavar="PATH_OR_URI", help="model directory or models:/ URI")
    parser.add_argument("--data", required=True, metavar="FILE_OR_DIR", help="CoNLL file, brat folder/glob, i2b2 XML")
    parser.add_argument("--format", choices=("conll", "brat", "i2b2xml"), help="default: from the file names")
    parser.add_argument("--max-length", type=int, default=512, help="sub-tokens per window (default 512)")
    parser.add_argument("--stride", type=int, default=32, help="words shared by consecutive windows (default 32)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="", help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--quantize", choices=QUANTIZE, default="",
                        help="int8: score the model dynamically quantised, as a Serve replica with quantize: int8 runs it (CPU)")
    parser.add_argument("--dtype", choices=DTYPES, default="",
                        help="score the model cast to this type, as a Serve replica with that dtype runs it")
    parser.add_argument("--runtime", choices=RUNTIMES, default="torch",
                        help="onnxruntime: score the model exported to ONNX Runtime (with --quantize int8: its "
                             "int8 graph), as a Serve replica with that runtime runs it (CPU)")
    parser.add_argument("--write-brat", metavar="DIR", help="write predictions as brat .txt/.ann files")
    parser.add_argument("--write-table", metavar="FILE", help="write token TAB gold TAB predicted")
    parser.add_argument("--tracking-uri", default="", metavar="URI", help="MLflow store for models:/ URIs")
    args = parser.parse_args(argv)
    setup_logging("WARNING")
    try:  # before the data and model are read
        check_precision(args.quantize, args.dtype,
                        choose_device(args.device, quantize=args.quantize, runtime=args.runtime).type != "cpu",
                        args.runtime)
    except ValueError as err:
        parser.error(str(err))

    fmt = args.format or detect_format(args.data)
    try:
        docs, stats = read_ner(args.data, fmt)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    if not any(d.sentences for d in docs):
        parser.error(f"no sentences in {args.data}")
    model_dir = resolve_model(args.model, TrackingConfig(tracking_uri=args.tracking_uri))
    result, predicted = evaluate(model_dir, docs, fmt, max_length=args.max_length, stride=args.stride,
                                 batch_size=args.batch_size, device=args.device, quantize=args.quantize,
                                 dtype=args.dtype, runtime=args.runtime)
    result["data"] = {"path": args.data, "format": fmt, **stats}
    result.update({k: v for k, v in (("quantize", args.quantize), ("dtype", args.dtype)) if v})
    result["runtime"] = args.runtime
    if args.write_brat:
        result["brat_files"] = write_predictions_brat(docs, predicted, args.write_brat)
    if args.write_table:
        write_predictions_table(docs, predicted, args.write_table)
    json.dump(result, sys.stdout, indent=2, ensure_ascii=False)
    print()
    return result


PREDICT_USAGE = """Tag every document of some sources with a token-classification model, on Ray Data: an actor
pool loads the model once per actor (CPU or GPU actors) and runs the predictor Serve and evaluation run.
Writes <output>/predictions/*.parquet (id, source, text as read, entities, reason) and <output>/manifest.json.

examples:
  python jobs/predict_ner.py --model models:/galeno-ner-meddocan@champion \\
      --source notes=brat:'notes/**/*.txt' --output artifacts/predictions/notes
  python jobs/predict_ner.py --model artifacts/ner/pharmaconer/seed-42/best \\
      --source scielo=bioc:../shared/data/scielo/es-health.bioc.xml --output artifacts/predictions/scielo actors=2
  ray job submit --working-dir . --runtime-env configs/ray/runtime-env.yaml -- \\
      python jobs/predict_ner.py --model models:/galeno-ner-meddocan@champion \\
      --source notes=text:/mnt/shared/notes --output /mnt/shared/predictions/notes actors=8 num_gpus=1
"""

PREDICT_FLAGS = (
    Flag("--model", "token-classification model: a Hugging Face directory or models:/NAME@alias",
         set_field("model"), "PATH_OR_URI"),
    Flag("--source", "documents to tag, NAME=FORMAT:PATH_OR_GLOB (repeatable; formats: "
         "jsonl text brat i2b2xml bioc conll warc pdf)", add_sources, "NAME=FORMAT:PATH", True),
    Flag("--output", "output folder (predictions/, manifest.json)", set_field("output"), "DIR"),
)


def predict_main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from galeno.inference.batch import PredictConfig, pool_main, run

    return pool_main("predict_ner.py", PredictConfig, PREDICT_USAGE, PREDICT_FLAGS, run,
                     ("output", "documents", "by_reason", "entities", "elapsed_seconds", "documents_per_second"), argv)
