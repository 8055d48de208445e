"""Where the corpus job's local phase spends its time: one process, no Ray, per step.

    python benchmarks/profile_corpus_local.py --mb 200 --docs 5000      # first 5000 docs of part-00000
    python benchmarks/profile_corpus_local.py --mb 200 --docs 5000 --cprofile 30

Runs exactly what a Ray worker runs for one shard (``galeno.corpus.pipeline.read_shard`` ->
``LocalSteps`` -> ``to_row`` -> Arrow table -> zstd Parquet) over the first ``--docs``
documents of a benchmark corpus file, with a wall-clock timer around every step of
``LocalSteps`` (encoding repair/NFC, sentence split, LID on the document, the document LID
predicate, each sentence filter by name, decontamination, sentence-level LID) plus reading,
row conversion and Parquet writing. ``--cprofile N`` adds cProfile's top N functions by own
time. Timers cost a little; the ``total`` line is measured without cProfile.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import json
import pstats
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_scaled_corpus import corpus_dir, data_dir  # noqa: E402


class Timers:
    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, name, fn):
        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.seconds[name] += time.perf_counter() - t
                self.calls[name] += 1
        return timed


def fresh(doc):
    """A copy of a freshly read document that a step may mutate."""
    from collections import Counter
    from dataclasses import replace

    return replace(doc, meta=dict(doc.meta), sentences=list(doc.sentences), sentence_drops=Counter())


def instrument(steps, cfg, timers: Timers) -> None:
    """Wrap every step a LocalSteps instance calls with a named timer (this process only)."""
    import galeno.corpus.normalize as normalize
    from galeno.corpus.filters import build_sentence_filters

    normalize.normalize_text = timers.wrap("normalize (ftfy hint + NFC)", normalize.normalize_text)
    steps.splitter.split = timers.wrap("sentence split", steps.splitter.split)
    steps.lid.detect = timers.wrap("lid.detect (document)", steps.lid.detect)
    steps.lid.document_predicate = timers.wrap("lid.document_predicate", steps.lid.document_predicate)
    names = [name for name, _ in build_sentence_filters(cfg.filters)]
    steps.filters = [timers.wrap(f"filter {n}", p) for n, p in zip(names, steps.filters)]
    if steps.decontam is not None:
        steps.decontam.predicate = timers.wrap("decontam", steps.decontam.predicate)
    make_pred = steps.lid.sentence_predicate
    steps.lid.sentence_predicate = lambda lang: timers.wrap("lid sentence-level", make_pred(lang))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--file", type=Path, help="a JSONL file (default: part-00000 of the corpus)")
    ap.add_argument("--docs", type=int, default=5000)
    ap.add_argument("--cprofile", type=int, default=0, help="print cProfile's top N functions")
    ap.add_argument("overrides", nargs="*", help="CorpusConfig overrides, key.path=value")
    args = ap.parse_args()

    import pyarrow as pa

    from galeno.config import load
    from galeno.corpus.config import CorpusConfig
    from galeno.corpus.document import to_row
    from galeno.corpus.pipeline import LocalSteps, commit_parquet, row_schema
    from galeno.corpus.readers import read_file

    path = args.file or data_dir(corpus_dir(args.mb, args.seed)) / "part-00000.jsonl"
    cfg = load(CorpusConfig, None, args.overrides,
               extra={"sources": [{"name": "bench", "format": "jsonl", "path": str(path)}]})

    t = time.perf_counter()
    docs = list(itertools.islice(read_file(str(path), "jsonl", "bench", root=str(path.parent)), args.docs))
    read_s = time.perf_counter() - t
    n_bytes = sum(len(d.text.encode("utf-8")) for d in docs)
    t = time.perf_counter()
    steps = LocalSteps(cfg)
    init_s = time.perf_counter() - t

    # 1. plain total (no timers), after one warm-up pass over 50 docs (lazy model loads)
    for d in docs[:50]:
        steps(fresh(d))
    t, c = time.perf_counter(), time.process_time()
    out = [steps(fresh(d)) for d in docs]
    steps_s, steps_cpu = time.perf_counter() - t, time.process_time() - c
    t = time.perf_counter()
    rows = [to_row(d, 0) for d in out]
    to_row_s = time.perf_counter() - t
    t = time.perf_counter()
    table = pa.Table.from_pylist(rows, schema=row_schema())
    arrow_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        commit_parquet(table, Path(tmp) / "x.parquet")
        parquet_s = time.perf_counter() - t

    # 2. per-step timers on a fresh instance
    timers = Timers()
    steps2 = LocalSteps(cfg)
    instrument(steps2, cfg, timers)
    for d in docs:
        steps2(fresh(d))

    total = read_s + steps_s + to_row_s + arrow_s + parquet_s
    report = {
        "file": str(path), "documents": len(docs), "text_mib": round(n_bytes / 2**20, 2),
        "model_init_seconds": round(init_s, 3), "local_steps_cpu_seconds": round(steps_cpu, 3),
        "seconds": {"read (jsonl reader)": read_s, "LocalSteps (all)": steps_s, "to_row": to_row_s,
                    "arrow table": arrow_s, "parquet write": parquet_s},
        "steps_seconds": dict(timers.seconds), "steps_calls": dict(timers.calls),
        "docs_per_s_one_core": round(len(docs) / total, 1),
        "mib_per_s_one_core": round(n_bytes / 2**20 / total, 3),
        "reasons": {},
    }
    for d in out:
        report["reasons"][d.reason or "kept"] = report["reasons"].get(d.reason or "kept", 0) + 1

    print(f"{len(docs)} docs, {n_bytes / 2**20:.2f} MiB text, one core, no Ray "
          f"(model init {init_s:.2f} s, not counted)")
    print(f"LocalSteps: {steps_s:.2f} s wall, {steps_cpu:.2f} s CPU of this process "
          f"(CPU < wall: the machine was busy with other work)")
    print(f"total {total:.2f} s = {len(docs) / total:.1f} docs/s, {n_bytes / 2**20 / total:.3f} MiB/s\n")
    print("| part | seconds | share | per doc (ms) |")
    print("|---|---:|---:|---:|")
    for k, v in report["seconds"].items():
        print(f"| {k} | {v:.2f} | {v / total:.0%} | {1000 * v / len(docs):.2f} |")
    timed = sum(timers.seconds.values())
    for k, v in sorted(timers.seconds.items(), key=lambda kv: -kv[1]):
        print(f"| &nbsp;&nbsp;{k} | {v:.2f} | {v / total:.0%} | {1000 * v / len(docs):.2f} |")
    print(f"\n(step timers sum to {timed:.2f} s of the {steps_s:.2f} s LocalSteps took untimed)")
    report["lid_decisions"] = dict(getattr(steps2.lid, "stats", {}))
    print("reasons:", json.dumps(report["reasons"]))
    print("LID decisions (documents: fast/langdetect; sentences: sentence_*):",
          json.dumps(report["lid_decisions"]))

    if args.cprofile:
        steps3 = LocalSteps(cfg)
        steps3(fresh(docs[0]))
        prof = cProfile.Profile()
        prof.enable()
        for d in docs:
            steps3(fresh(d))
        prof.disable()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(args.cprofile)
        print(s.getvalue())
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(args.cprofile)
        print(s.getvalue())
    out_path = HERE.parent / "artifacts" / "bench" / "profile_local.json"
    out_path.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
