"""Where the corpus job's global phase spends its time: each Ray Data step materialised alone.

    python benchmarks/corpus_throughput.py --mb 200 --only galeno      # leaves local shards behind
    python benchmarks/profile_corpus_global.py                          # reads them from artifacts/bench/work/galeno

Re-runs ``galeno.corpus.pipeline.run``'s global phase on the local-phase Parquet shards of
the last benchmark run, on a local Ray with 2 CPUs, twice:

1. ``pipeline.run`` itself (all local shards are committed, so resume skips the local phase);
2. step by step with ``materialize()`` after each (read -> line dedup -> document dedup ->
   write), timed per step, with every Ray Data execution inside them (which galeno function
   forced it, how long it took) and Ray Data's per-operator wall times.

A gap between (1) and the sum of (2) is work the pipeline's chain does more than once (a
lazy dataset consumed twice is computed twice). Writes ``artifacts/bench/profile_global.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_RUN = HERE.parent / "artifacts" / "bench" / "work" / "galeno"


def operator_times(stats: str) -> list[tuple[str, float]]:
    """(operator, wall seconds) from the ``Operator N name: ... in Xs`` lines of Ray Data's stats()."""
    out = []
    for line in stats.splitlines():
        m = re.match(r"\s*Operator \d+ (.+?): .* in ([\d.]+)s", line)
        if m:
            out.append((m.group(1), float(m.group(2))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=DEFAULT_RUN, help="output folder of a galeno benchmark run")
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--steps-only", action="store_true", help="only the step-by-step pass (skip pipeline.run)")
    args = ap.parse_args()

    import ray
    import ray.data

    from galeno import paths
    from galeno.config import from_dict
    from galeno.corpus.config import CorpusConfig
    from galeno.corpus.dedup import dedup_documents, dedup_sentences
    from galeno.corpus.pipeline import local_tag, run, write_outputs
    from galeno.runtime import init_ray

    manifest = json.loads(paths.corpus_manifest(args.run).read_text())
    cfg = from_dict(CorpusConfig, manifest["config"])
    cfg.ray.num_cpus, cfg.ray.progress_bars, cfg.resume = args.num_cpus, False, True
    local_dir = paths.corpus_local_shards(args.run, local_tag(cfg))
    files = sorted(str(p) for p in local_dir.glob("*.parquet"))
    scratch = args.run.parent / "galeno-global-profile"
    init_ray(cfg.ray)
    result: dict = {"run": str(args.run), "shards": len(files), "num_partitions": cfg.num_partitions}

    if not args.steps_only:
        # pipeline.run itself: every local shard is committed, so resume skips the local
        # phase and this is exactly the job's global phase (it rewrites the same outputs).
        t = time.perf_counter()
        manifest = run(cfg)
        result["pipeline_global_seconds"] = round(time.perf_counter() - t, 2)
        result["pipeline_stage_seconds"] = manifest["stage_seconds"]
        print(f"pipeline.run global phase: {result['pipeline_global_seconds']} s "
              f"(stage_seconds {manifest['stage_seconds']})", flush=True)

    # Every Ray Data execution inside the steps, named by the galeno function that forced it.
    executions: list[tuple[str, str, float]] = []

    def timed(method):
        original = getattr(ray.data.Dataset, method)

        def wrapper(self, *a, **kw):
            import inspect

            caller = next((f.function for f in inspect.stack()[1:6]
                           if "galeno" in f.filename and "benchmarks" not in f.filename), "benchmark")
            t = time.perf_counter()
            try:
                return original(self, *a, **kw)
            finally:
                executions.append((caller, method, round(time.perf_counter() - t, 2)))
        setattr(ray.data.Dataset, method, wrapper)

    for method in ("materialize", "count", "take_all", "to_arrow_refs"):
        timed(method)

    steps: dict[str, float] = {}
    ops: dict[str, list] = {}

    def step(name, make):
        t = time.perf_counter()
        ds = make().materialize()
        steps[name] = round(time.perf_counter() - t, 2)
        ops[name] = operator_times(ds.stats())
        print(f"  {name}: {steps[name]} s ({ds.count()} rows)", flush=True)
        for op, s in ops[name]:
            print(f"      {op}: {s:.2f} s", flush=True)
        return ds

    print("step by step:", flush=True)
    ds = step("read_parquet", lambda: ray.data.read_parquet(files))
    ds = step("dedup_sentences", lambda: dedup_sentences(ds, cfg.line_dedup, cfg.num_partitions))
    ds = step("dedup_documents", lambda: dedup_documents(ds, cfg.minhash, cfg.num_partitions))
    t = time.perf_counter()
    write_outputs(ds, cfg, scratch / "steps")
    steps["write_outputs"] = round(time.perf_counter() - t, 2)
    print(f"  write_outputs: {steps['write_outputs']} s", flush=True)
    print("Ray Data executions (galeno caller, method, seconds):", flush=True)
    for caller, method, sec in executions:
        print(f"  {caller:28s} {method:14s} {sec:7.2f}", flush=True)
    result["executions"] = executions
    result.update(step_seconds=steps, step_sum=round(sum(steps.values()), 2), operators=ops)
    print(f"sum of steps: {result['step_sum']} s", flush=True)
    (HERE.parent / "artifacts" / "bench" / "profile_global.json").write_text(json.dumps(result, indent=2) + "\n")
    ray.shutdown()


if __name__ == "__main__":
    main()
