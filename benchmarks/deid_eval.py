"""De-identification on MEDDOCAN dev: leak rate and precision for the rules alone, the model alone and both.

    python benchmarks/deid_eval.py --model artifacts/ner/meddocan-deid [--dev ../shared/data/meddocan/dev/brat]

A gold PHI string leaks unless all its non-space characters are masked (galeno.deid.evaluate); the
patient's sex is excluded from the overall rate. Writes artifacts/bench/deid_eval.json and prints a
Markdown table for docs/results.md. Also times the three (documents/s on this process's threads).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))


def main() -> None:
    from galeno.deid.deidentify import DeidConfig, Deidentifier
    from galeno.deid.evaluate import read_brat_gold, score
    from galeno.inference.source import resolve_model
    from galeno.tracking import TrackingConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the de-identification model (folder, output folder or models:/)")
    parser.add_argument("--dev", default=str(REPO.parent / "shared" / "data" / "meddocan" / "dev" / "brat"))
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--out", default=str(REPO / "artifacts" / "bench" / "deid_eval.json"))
    args = parser.parse_args()
    docs = read_brat_gold(args.dev)
    texts = [text for _, text, _ in docs]
    model_dir = resolve_model(args.model, TrackingConfig())
    runs = {"rules": DeidConfig(model="rules", keep_labels=[]),
            "model": DeidConfig(model=args.model, rules=False, keep_labels=[], max_length=args.max_length),
            "both": DeidConfig(model=args.model, keep_labels=[], max_length=args.max_length)}
    loaded = None
    results = {}
    for name, cfg in runs.items():
        deid = Deidentifier(cfg, model_dir if cfg.uses_model and loaded is None else None, loaded=loaded)
        loaded = loaded or deid.loaded
        t0 = time.perf_counter()
        out = deid(texts)
        seconds = time.perf_counter() - t0
        scores = score((text, gold, [(s.label, s.start, s.end) for s in r.spans])
                       for (_, text, gold), r in zip(docs, out))
        scores.update({"seconds": round(seconds, 2), "documents_per_second": round(len(texts) / seconds, 3)})
        results[name] = scores
        print(f"{name}: leak rate {scores['leak_rate']:.4f} ({scores['leaked']}/{scores['gold']}), "
              f"precision {scores['precision']:.4f}, {scores['documents_per_second']:.2f} documents/s", flush=True)
    import torch

    meta = {"model": args.model, "model_dir": str(model_dir), "dev": args.dev, "documents": len(docs),
            "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, **results}, indent=2))
    types = sorted(results["both"]["per_type"])
    print("\n| type | gold | leaked: rules | model | both |\n|---|---:|---:|---:|---:|")
    for t in types:
        row = [results[k]["per_type"][t] for k in runs]
        print(f"| {t} | {row[0]['gold']} | " + " | ".join(f"{r['leaked']} ({r['leak_rate']:.1%})" for r in row) + " |")
    print("| **all but sex** | " + str(results["both"]["gold"]) + " | " + " | ".join(
        f"**{results[k]['leaked']} ({results[k]['leak_rate']:.2%})**" for k in runs) + " |")
    print("| precision | | " + " | ".join(f"{results[k]['precision']:.3f}" for k in runs) + " |")
    print("| documents/s | | " + " | ".join(f"{results[k]['documents_per_second']:.2f}" for k in runs) + " |")


if __name__ == "__main__":
    main()
