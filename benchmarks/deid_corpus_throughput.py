"""The corpus job with and without its de-identification step, side by side on the same input and Ray.

    python benchmarks/deid_corpus_throughput.py --model artifacts/ner/meddocan-deid \
        [--source ../shared/data/meddocan/dev/brat] [--cpus 2]

Runs ``galeno.corpus.pipeline.run`` on one local Ray (``--cpus`` CPUs): a warm-up run without the step
(discarded: the first run of a process pays Ray Data's and the readers' start-up), then without the
step, with ``--deidentify rules`` and with ``--deidentify MODEL`` (model + rules), each into a fresh
output folder (nothing reused). Reports input documents per second of the whole run and of the local phase
(where the step runs), per core, and each rate as a ratio to the run without the step.
Writes artifacts/bench/deid_corpus_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))


def main() -> None:
    from galeno.config import load
    from galeno.corpus.config import CorpusConfig
    from galeno.corpus.pipeline import run
    from galeno.runtime import RayConfig, init_ray, setup_logging

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--source", default=str(REPO.parent / "shared" / "data" / "meddocan" / "dev" / "brat"))
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "artifacts" / "bench" / "deid_corpus_throughput.json"))
    args = parser.parse_args()
    setup_logging("WARNING")
    init_ray(RayConfig(num_cpus=args.cpus))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in (("warm-up", ""), ("without", ""), ("rules", "rules"), ("model+rules", args.model)):
            cfg = load(CorpusConfig, None, [f"output={tmp}/{name.replace('+', '-')}", "tracking.enabled=false",
                                            f"deid.model={model}", "shard_mb=0.25"],
                       extra={"sources": [{"name": "notes", "format": "brat", "path": args.source}]})
            t0 = time.perf_counter()
            manifest = run(cfg)
            seconds = time.perf_counter() - t0
            docs = manifest["total"]["documents_in"]
            local = manifest["stage_seconds"]["local"]
            results[name] = {"documents": docs, "seconds": round(seconds, 2), "local_seconds": round(local, 2),
                             "documents_per_second_per_core": round(docs / seconds / args.cpus, 3),
                             "local_documents_per_second_per_core": round(docs / local / args.cpus, 3),
                             "replacements": sum(manifest["total"].get("deid_replacements", {}).values())}
            print(name, results[name], flush=True)
    results.pop("warm-up")
    base = results["without"]
    for r in results.values():
        r["ratio_whole"] = round(r["documents_per_second_per_core"] / base["documents_per_second_per_core"], 3)
        r["ratio_local"] = round(r["local_documents_per_second_per_core"] / base["local_documents_per_second_per_core"], 3)
    meta = {"model": args.model, "source": args.source, "cpus": args.cpus, "date": time.strftime("%Y-%m-%d")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, **results}, indent=2))
    print("\n| corpus job | documents/s per core, whole run | ratio | local phase | ratio |\n|---|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['documents_per_second_per_core']:.2f} | {r['ratio_whole']:.2f} | "
              f"{r['local_documents_per_second_per_core']:.2f} | {r['ratio_local']:.2f} |")


if __name__ == "__main__":
    main()
