"""Near-duplicate detection quality of ``dedup_documents`` on real Spanish clinical text.

Plants near-duplicates among distinct documents and measures what the distributed MinHash
dedup finds::

    .venv/bin/python benchmarks/neardup_quality.py                      # defaults below
    .venv/bin/python benchmarks/neardup_quality.py --planted 400 --num-cpus 2 minhash.threshold=0.75
    .venv/bin/python benchmarks/neardup_quality.py --planted 600 --job    # through the whole corpus job

``--job`` runs the whole corpus job (``galeno.corpus.pipeline.run``: the local steps, then document
dedup, then repeated-sentence removal) on the same documents written as JSONL, one file per source,
and reads its documents/ and rejected/: what a user gets, not the dedup function alone.

* Distinct documents: MEDDOCAN clinical cases (train + dev, brat ``.txt``) and SciELO
  Spanish titles/abstracts from ``../shared/data``.
* Planted pairs: ``--planted`` MEDDOCAN cases each get one copy, perturbed by random word
  substitutions, deletions and insertions until the true Jaccard of their word 5-gram
  shingles reaches a target drawn uniformly from [0.5, 1.0]. The copy's source has a
  higher priority number, so the original is the copy that must be kept.
* Ground truth for "distinct": a document is distinct when no other document of the run
  (copies excluded) reaches true Jaccard 0.5 with it (inverted shingle index, exact).

Reports recall per true-Jaccard band (a planted pair counts when the copy ends in the
original's cluster), recall at J >= 0.8, the false-positive rate (distinct documents
removed / distinct documents, and wrongly merged distinct pairs), connected-component
rounds and docs/s (whole ``dedup_documents`` wall time on local Ray, start-up excluded),
as a Markdown table. Goal: recall >= 0.95 at J >= 0.8 and FPR <= 0.5%.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import random
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("GALENO_SHARED_DATA", REPO.parent / "shared" / "data"))
BANDS = [(0.5, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 1.0), (1.0, 1.01)]


def load_meddocan() -> list[tuple[str, str]]:
    out = []
    for path in sorted(glob.glob(str(DATA / "meddocan" / "*" / "brat" / "*.txt"))):
        out.append((Path(path).stem, Path(path).read_text(encoding="utf-8")))
    return out


def load_scielo_es() -> list[tuple[str, str]]:
    xml = (DATA / "scielo" / "es-health.bioc.xml").read_text(encoding="utf-8")
    out = []
    for doc in re.findall(r"<document>(.*?)</document>", xml, flags=re.S):
        doc_id = re.search(r"<id>([^<]*)</id>", doc).group(1)
        text = "\n".join(re.findall(r"<text>([^<]*)</text>", doc))
        if text.strip():
            out.append((doc_id, text))
    return out


def shingles(text: str, ngram: int) -> set[int]:
    from galeno.corpus.minhash import shingle_hashes, words

    return set(shingle_hashes(words(text), ngram).tolist())


def jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def perturb_to(text: str, target: float, ngram: int, rng: random.Random, vocab: list[str]) -> tuple[str, float]:
    """Apply a random edit sequence, as many edits as bring the Jaccard closest to ``target``."""
    base_words = text.split()
    base = shingles(text, ngram)
    edits = []
    for _ in range(len(base_words)):
        op = rng.random()
        edits.append(("sub" if op < 0.5 else "del" if op < 0.75 else "ins", rng.random(), rng.choice(vocab)))

    def apply(k: int) -> str:
        ws = list(base_words)
        for op, where, word in edits[:k]:
            i = int(where * len(ws))
            if op == "sub" and ws:
                ws[min(i, len(ws) - 1)] = word
            elif op == "del" and len(ws) > 1:
                del ws[min(i, len(ws) - 1)]
            else:
                ws.insert(i, word)
        return " ".join(ws)

    lo, hi = 0, len(edits)  # Jaccard falls (roughly monotonically) with the number of edits
    while lo < hi:
        mid = (lo + hi) // 2
        if jaccard(base, shingles(apply(mid), ngram)) > target:
            lo = mid + 1
        else:
            hi = mid
    best = min({max(lo - 1, 0), lo}, key=lambda k: abs(jaccard(base, shingles(apply(k), ngram)) - target))
    out = apply(best)
    return out, jaccard(base, shingles(out, ngram))


def truly_similar(texts: dict[str, str], ngram: int, level: float = 0.5, max_df: int = 64) -> set[str]:
    """Ids with some other document at true Jaccard >= ``level`` (exact, via an inverted index).

    Shingles in more than ``max_df`` documents (headers, boilerplate) are not used to find
    candidates; pairs made only of those are caught by the exact-text check instead.
    """
    sets = {i: shingles(t, ngram) for i, t in texts.items()}
    index: dict[int, list[str]] = defaultdict(list)
    for i, s in sets.items():
        for h in s:
            index[h].append(i)
    shared: Counter = Counter()
    for ids in index.values():
        if 1 < len(ids) <= max_df:
            for a in range(len(ids)):
                for b in range(a + 1, len(ids)):
                    shared[(ids[a], ids[b])] += 1
    similar = set()
    for (a, b), n in shared.items():
        if n >= level * min(len(sets[a]), len(sets[b])) and jaccard(sets[a], sets[b]) >= level:
            similar.update((a, b))
    by_text: dict[tuple, list[str]] = defaultdict(list)
    for i, t in texts.items():
        by_text[tuple(sorted(sets[i]))].append(i)
    for ids in by_text.values():
        if len(ids) > 1:
            similar.update(ids)
    return similar


class _RoundsHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.rounds = 0

    def emit(self, record: logging.LogRecord) -> None:
        m = re.search(r"converged in (\d+) rounds", record.getMessage())
        if m:
            self.rounds = int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--planted", type=int, default=300, help="planted near-duplicate pairs")
    ap.add_argument("--scielo", type=int, default=4000, help="SciELO documents among the distinct ones")
    ap.add_argument("--num-partitions", type=int, default=8)
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--job", action="store_true", help="run the whole corpus job, not dedup_documents alone")
    ap.add_argument("overrides", nargs="*", help="MinHashConfig overrides: minhash.bands=16 ...")
    args = ap.parse_args()

    from galeno.corpus.dedup import MinHashConfig

    fields = {}
    for item in args.overrides:
        key, _, value = item.partition("=")
        name = key.removeprefix("minhash.")
        tp = type(getattr(MinHashConfig(), name))
        fields[name] = tp(value) if tp is not bool else value.lower() in ("1", "true", "yes")
    cfg = MinHashConfig(**fields)

    if not (DATA / "meddocan").is_dir():
        sys.exit(f"needs the shared corpora at {DATA}")
    rng = random.Random(args.seed)
    meddocan = load_meddocan()
    scielo = load_scielo_es()[: args.scielo]
    vocab = sorted({w for _, t in meddocan[:200] for w in t.split()})
    bases = rng.sample(meddocan, args.planted)

    rows, truth = [], {}  # rows: (source, priority, id, text); truth: copy -> (original, true J)
    rows += [("meddocan", 0, doc_id, text) for doc_id, text in meddocan]
    rows += [("scielo", 0, doc_id, text) for doc_id, text in scielo]
    distinct_texts = {f"{src}:{i}": t for src, _, i, t in rows}
    t0 = time.time()
    for doc_id, text in bases:
        copy, j = perturb_to(text, rng.uniform(0.5, 1.0), cfg.ngram, rng, vocab)
        rows.append(("planted", 1, f"{doc_id}~copy", copy))
        truth[f"planted:{doc_id}~copy"] = (f"meddocan:{doc_id}", j)
    similar = truly_similar(distinct_texts, cfg.ngram)
    prep = time.time() - t0

    handler = _RoundsHandler()
    logging.getLogger("galeno.corpus.dedup").addHandler(handler)
    logging.getLogger("galeno.corpus.dedup").setLevel(logging.INFO)
    if args.job:
        out, wall, n_items = run_job(rows, cfg, args)
    else:
        out, wall, n_items = run_dedup(rows, cfg, args)

    rec = {f"{r['source']}:{r['id']}": r for r in out}
    dup = ("near_duplicate", "exact_duplicate")
    root = {k: (f"{r['duplicate_of_source']}:{r['duplicate_of']}" if r["reason"] in dup else k) for k, r in rec.items()}
    per_band = {b: [0, 0] for b in BANDS}
    for copy_key, (base_key, j) in truth.items():
        found = rec[copy_key]["reason"] in ("near_duplicate", "exact_duplicate") and root[copy_key] == root[base_key]
        for lo, hi in BANDS:
            if lo <= j < hi:
                per_band[(lo, hi)][0] += found
                per_band[(lo, hi)][1] += 1
    hi_found = sum(v[0] for (lo, _), v in per_band.items() if lo >= 0.8)
    hi_total = sum(v[1] for (lo, _), v in per_band.items() if lo >= 0.8)

    distinct = [k for k in distinct_texts if k not in similar]
    # through the job a document may also go for other reasons (language, filters): only dedup counts here
    removed = [k for k in distinct if rec[k]["reason"] in ("near_duplicate", "exact_duplicate")]
    clusters: Counter = Counter(root[k] for k in distinct)
    merged_pairs = sum(n * (n - 1) // 2 for n in clusters.values())
    n_pairs = len(distinct) * (len(distinct) - 1) // 2

    print(f"\n### Near-duplicate quality — `{cfg.tag()}` (num_perm={cfg.num_perm}), "
          f"{n_items} docs, {args.num_partitions} partitions, {args.num_cpus} CPUs"
          f"{', the whole corpus job' if args.job else ''}\n")
    print("| true Jaccard of planted pair | pairs | found | recall |")
    print("|---|---:|---:|---:|")
    for (lo, hi), (f, n) in per_band.items():
        label = "1.0 (same words)" if lo == 1.0 else f"[{lo:.1f}, {hi:.1f})"
        print(f"| {label} | {n} | {f} | {f / n:.3f} |" if n else f"| {label} | 0 | 0 | - |")
    print(f"| **>= 0.8** | {hi_total} | {hi_found} | **{hi_found / max(hi_total, 1):.3f}** |")
    print()
    print("| metric | value |")
    print("|---|---:|")
    print(f"| distinct documents (no other doc at J >= 0.5) | {len(distinct)} |")
    print(f"| documents with a true J >= 0.5 partner (not 'distinct') | {len(similar)} |")
    print(f"| distinct documents removed (FPR) | {len(removed)} ({len(removed) / len(distinct):.4%}) |")
    print(f"| wrongly merged distinct pairs | {merged_pairs} / {n_pairs} ({merged_pairs / n_pairs:.2e}) |")
    print(f"| documents removed as duplicates in total | "
          f"{sum(1 for r in out if r['reason'] in ('near_duplicate', 'exact_duplicate'))} |")
    if args.job:
        print(f"| documents removed for other reasons | "
              f"{dict(Counter(r['reason'] for r in out if r['reason'] and 'duplicate' not in r['reason']))} |")
    print(f"| connected-component rounds | {handler.rounds} |")
    print(f"| {'corpus job' if args.job else 'dedup_documents'} wall time | {wall:.1f} s ({n_items / wall:.0f} docs/s) |")
    print(f"| planting + ground truth (single process) | {prep:.1f} s |")
    if removed:
        print("\nremoved distinct documents:", ", ".join(removed[:10]))


def run_dedup(rows, cfg, args):
    """``dedup_documents`` alone on rows made here (one sentence per line)."""
    import ray
    import ray.data

    from galeno.corpus.dedup import dedup_documents
    from galeno.corpus.document import Document, to_row

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False,
             _system_config={"num_workers_soft_limit": 4 * args.num_cpus,
                             "idle_worker_killing_time_threshold_ms": 300_000})
    ray.data.DataContext.get_current().enable_progress_bars = False
    items = []
    for src, prio, doc_id, text in rows:
        sents = [s for s in text.split("\n") if s.strip()]
        items.append(to_row(Document(id=doc_id, source=src, text=text, sentences=sents,
                                     n_sentences_in=len(sents)), prio))
    ds = ray.data.from_items(items, override_num_blocks=2 * args.num_cpus).materialize()
    t0 = time.time()
    out = dedup_documents(ds, cfg, args.num_partitions).take_all()
    wall = time.time() - t0
    ray.shutdown()
    return out, wall, len(items)


def run_job(rows, cfg, args):
    """The whole corpus job on ``rows`` written as JSONL (one file per source, its priority kept)."""
    import dataclasses
    import json
    import tempfile

    import pyarrow.parquet as pq

    from galeno.corpus.config import CorpusConfig, SourceConfig
    from galeno.corpus.pipeline import run
    from galeno.runtime import RayConfig, init_ray

    with tempfile.TemporaryDirectory() as tmp:
        sources = []
        for src in dict.fromkeys(r[0] for r in rows):
            path = Path(tmp) / f"{src}.jsonl"
            with open(path, "w", encoding="utf-8") as fh:
                for s, prio, doc_id, text in rows:
                    if s == src:
                        fh.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
            prio = next(p for s, p, _, _ in rows if s == src)
            sources.append(SourceConfig(name=src, format="jsonl", path=str(path), priority=prio))
        job = CorpusConfig(sources=sources, output=str(Path(tmp) / "out"), minhash=dataclasses.replace(cfg),
                           num_partitions=args.num_partitions, ray=RayConfig(num_cpus=args.num_cpus))
        job.tracking.enabled = False
        init_ray(job.ray)
        t0 = time.time()
        run(job)
        wall = time.time() - t0
        out = []
        for sub in ("documents", "rejected"):
            for f in sorted((Path(tmp) / "out" / sub).glob("*.parquet")):
                for r in pq.read_table(f).to_pylist():
                    out.append({"source": r["source"], "id": r["id"], "reason": r.get("reason"),
                                "duplicate_of": r.get("duplicate_of"),
                                "duplicate_of_source": r.get("duplicate_of_source")})
    return out, wall, len(rows)


if __name__ == "__main__":
    main()
