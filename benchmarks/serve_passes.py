"""How a Serve replica splits a batch into forward passes: fixed passes against passes planned by
``galeno.inference.forward.plan_chunks`` (a pass's fixed cost against padding), on the replica's own
model code (``galeno.inference.token_classification.predict_entities``), in this process, without Serve.

    python benchmarks/serve_passes.py                          # BERT-base size, float32 and bfloat16
    python benchmarks/serve_passes.py --model minilm --rounds 5

Each batch is ``--batch`` requests of one PharmaCoNER dev sentence each (../shared/data, the
shipped sample without it), drawn at random as concurrent callers send them, so a batch mixes
short and long sentences. Arms, in rounds (every arm once per round, in turn, so that the
machine's drift hits all of them alike): ``one`` (each request alone: no batching), ``fixed``
(``forward_overhead_tokens: 0``: one pass per batch, padded to its longest sentence), and
``overhead-N`` (``forward_overhead_tokens: N``). Prints the median sequences/s over the rounds
and the ratio to ``fixed``; the result and the command go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from serve_load import build_models, sentences  # noqa: E402  (benchmarks/ is on sys.path as a script)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("minilm", "base"), default="base")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--batch", type=int, default=8, help="requests per batch (the callers in flight)")
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--overheads", default="32,64,128")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)

    import torch

    from galeno.inference.loading import load_ner, local_source
    from galeno.inference.token_classification import predict_entities

    rng = random.Random(0)
    texts = sentences(400)
    batches = [[([t], "simple") for t in rng.sample(texts, args.batch)] for _ in range(args.batches)]
    n = args.batch * args.batches
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = build_models(Path(tmp), args.model)["ner"]
        for dtype in args.dtypes.split(","):
            loaded = load_ner(local_source(path), 128, dtype="" if dtype == "float32" else dtype)
            arms = {"one": (1, 0), "fixed": (args.batch, 0)}
            arms.update({f"overhead-{o}": (args.batch, int(o)) for o in args.overheads.split(",")})
            predict_entities(loaded, batches[0], stride=32, chunk=32)  # warm-up
            row = results.setdefault(dtype, {})
            for _ in range(args.rounds):
                for arm, (per_call, overhead) in arms.items():
                    start = time.perf_counter()
                    for batch in batches:
                        for a in range(0, len(batch), per_call):
                            predict_entities(loaded, batch[a:a + per_call], stride=32, chunk=32, overhead_tokens=overhead)
                    row.setdefault(arm, []).append(n / (time.perf_counter() - start))
    print(f"{args.model}: {args.batches} batches of {args.batch} requests, {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads; median sequences/s (× fixed)")
    summary = {}
    for dtype, row in results.items():
        base = statistics.median(row["fixed"])
        summary[dtype] = {arm: {"median": statistics.median(v), "x_fixed": statistics.median(v) / base, "runs": v}
                          for arm, v in row.items()}
        print(dtype + ": " + ", ".join(f"{arm} {s['median']:.1f} ({s['x_fixed']:.2f}×)"
                                       for arm, s in summary[dtype].items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "results": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
