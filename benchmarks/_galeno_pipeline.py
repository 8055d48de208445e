"""The galeno side of ``corpus_throughput.py``: the corpus job on a folder of JSONL, timed.

Run by ``corpus_throughput.py`` in its own interpreter, like the datatrove side::

    .venv/bin/python benchmarks/_galeno_pipeline.py --input artifacts/bench/corpus-2mb-s0-v1/data \
        --output /tmp/galeno-bench --num-cpus 2 [key.path=value ...]

Ray is started first and timed on its own (``ray_init_seconds``), then
``galeno.corpus.pipeline.run`` is timed (``run_seconds``: everything after Ray is up,
including the first Ray Data job's worker start-up and each worker's model loading).
The output folder is emptied first, so no shard is skipped on resume. Prints one JSON
object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time


def object_store_stats() -> dict:
    """What the object store spilled to disk and restored over the run (Ray's own counters, as
    ``ray memory --stats-only`` prints them); empty if this Ray version words them otherwise."""
    import re

    try:
        from ray._private.internal_api import memory_summary

        text = memory_summary(stats_only=True)
    except Exception as err:  # noqa: BLE001  (an internal API: the benchmark still reports the rest)
        return {"error": type(err).__name__}
    out = {}
    for key, pattern in (("spilled_mib", r"Spilled (\d+) MiB, (\d+) objects"),
                         ("restored_mib", r"Restored (\d+) MiB, (\d+) objects")):
        m = re.search(pattern, text)
        if m:
            out[key], out[key.replace("_mib", "_objects")] = int(m.group(1)), int(m.group(2))
    if "spilled_mib" not in out and "Spilled" not in text:
        out["spilled_mib"] = out["spilled_objects"] = 0  # Ray prints the line only once something spilled
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True, help="folder of *.jsonl ({id, text})")
    ap.add_argument("--output", required=True, help="job output folder (emptied first)")
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("overrides", nargs="*", help="CorpusConfig overrides, key.path=value")
    args = ap.parse_args()

    t_import = time.perf_counter()
    import ray

    from galeno.config import load, to_dict
    from galeno.corpus.config import CorpusConfig
    from galeno.corpus.pipeline import run
    from galeno.runtime import init_ray

    shutil.rmtree(args.output, ignore_errors=True)
    cfg = load(CorpusConfig, None, [
        f"output={args.output}", f"ray.num_cpus={args.num_cpus}", "ray.progress_bars=false",
        *args.overrides,
    ], extra={"sources": [{"name": "bench", "format": "jsonl", "path": args.input}]})
    import_seconds = time.perf_counter() - t_import

    t0 = time.perf_counter()
    init_ray(cfg.ray)
    ray_init_seconds = time.perf_counter() - t0
    t1, wall0 = time.perf_counter(), time.time()
    manifest = run(cfg)
    run_seconds, wall1 = time.perf_counter() - t1, time.time()
    # Wall-clock marks of the two phases for the benchmark's CPU sampler: run() plans the
    # shards and runs the local phase, then the global phase, then writes the manifest
    # (a fraction of a second, counted in the global mark).
    split = wall1 - manifest["stage_seconds"].get("global_and_write", 0.0)
    marks = {"local_part": [wall0, split], "global_part": [split, wall1]}
    store = object_store_stats()
    ray.shutdown()

    total = manifest.get("total") or {}
    print(json.dumps({
        "import_seconds": round(import_seconds, 3),
        "ray_init_seconds": round(ray_init_seconds, 3),
        "run_seconds": round(run_seconds, 3),
        "elapsed_seconds": manifest["elapsed_seconds"],
        "stage_seconds": manifest["stage_seconds"],
        "documents_in": total.get("documents_in"),
        "documents_out": total.get("documents_out"),
        "document_drops": total.get("document_drops"),
        "sentences_in": total.get("sentences_in"),
        "sentences_out": total.get("sentences_out"),
        "sentence_drops": total.get("sentence_drops"),
        "words_in": total.get("words_in"),
        "words_out": total.get("words_out"),
        "shards": manifest.get("shards"),
        "marks": marks,
        "object_store": store,
        "config": {k: to_dict(getattr(cfg, k)) for k in
                   ("normalize", "langid", "filters", "line_dedup", "minhash")}
                  | {"shard_mb": cfg.shard_mb, "num_partitions": cfg.num_partitions,
                     "output_shards": cfg.output_shards},
    }))


if __name__ == "__main__":
    main()
