"""Does the corpus job's cost grow linearly with its input? The job at 20 MB, 200 MB and 1 GB (issue 21).

    python benchmarks/corpus_scale.py                       # 20, 200 and 1024 MiB (about 45 min on 2 quiet cores)
    python benchmarks/corpus_scale.py --sizes 2,20          # a quick look
    python benchmarks/corpus_scale.py --sizes 1024 --keep   # one size; results merge into the same JSON

Input: ``make_scaled_corpus.py``'s crawl-like JSONL at each size, built from ``../shared/data`` (MEDDOCAN,
SciELO, PharmaCoNER): mostly distinct documents (variants with ~15% of their words edited and sentences
of other documents spliced in), with planted near-duplicates (~3% edits), exact copies and crawl
boilerplate lines. The same generator and seed at every size, so the mix is the same and only the size
changes.

Each size runs ``_galeno_pipeline.py`` (``galeno.corpus.pipeline.run`` on a local Ray of ``--num-cpus``
CPUs, one interpreter per size) with a configuration that scales the way a user is told to scale it
(docs/corpus.md, "At scale"): ``num_partitions`` = input MiB / ``--partition-mb`` (8 at least),
``output_shards`` likewise (one task writes each output shard and holds it in memory), and an object store of ``--object-store-mb``. Per-task
memory is then bounded by the configuration, not by the input.

Recorded per size, from /proc while it runs (the job's whole process tree: driver, raylet, GCS, workers):
wall time, CPU seconds, s/MB of both, the peak of the tree's summed PSS (proportional set size: the
object store's shared pages counted once, not once per process that maps them) and, beside it, the peak of
its summed RSS; the object store's spill and restore (Ray's counters); the peak disk the job used
(its output folder plus Ray's session folder, spill files included) and the final output's size.

Goals (issue 21): s/MB at 1 GB within 1.25x of s/MB at 20 MB; peak memory under 8 GiB at 1 GB.
Writes ``artifacts/bench/corpus_scale.json`` and prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from corpus_throughput import TreeCPU, process_kind, run_sampled  # noqa: E402
from make_scaled_corpus import DEFAULT_ROOT, data_dir, make_corpus  # noqa: E402

RESULT = DEFAULT_ROOT / "corpus_scale.json"
GIB = 2**30
MIB = 2**20


def folder_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (files that vanish while it walks are skipped)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


class TreeMemory(TreeCPU):
    """:class:`TreeCPU` that also samples the tree's memory (summed PSS and RSS, from
    ``/proc/PID/smaps_rollup``) and the disk under ``folders``; keeps the peaks."""

    def __init__(self, root: int, folders: list[Path], interval: float = 0.5):
        super().__init__(root, interval)
        self.folders = folders
        self.peak_pss = self.peak_rss = self.peak_disk = 0
        self.peak_pss_by_kind: dict[str, int] = {}
        self.peak_at = 0.0
        self.peak_processes: list[tuple[int, str]] = []  # (PSS MiB, command) of the biggest at the peak
        self.memory_timeline: list[tuple[float, float, int]] = []  # (epoch s, PSS GiB, live processes)
        self.samples = 0

    def _title(self, pid: int) -> str:
        """A Ray worker's current title (``ray::HashShuffleReduce...``), which its cmdline at start lacks."""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f.read(120).replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            return "?"

    def sample(self) -> None:
        super().sample()
        pss = rss = 0
        by_kind: dict[str, int] = {}
        each: list[tuple[int, str]] = []
        for pid in list(self.members):
            try:
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    fields = dict(line.split(":", 1) for line in f if line[:3] in ("Rss", "Pss"))
            except (OSError, ValueError):
                continue
            p = int(fields.get("Pss", "0 kB").split()[0]) * 1024
            pss += p
            rss += int(fields.get("Rss", "0 kB").split()[0]) * 1024
            kind = process_kind(self.names.get(pid, "?"), pid == self.root)
            by_kind[kind] = by_kind.get(kind, 0) + p
            each.append((p // MIB, self._title(pid)))
        if pss > self.peak_pss:
            self.peak_pss, self.peak_pss_by_kind, self.peak_at = pss, by_kind, time.time()
            self.peak_processes = sorted(each, reverse=True)[:12]
        if self.samples % 4 == 0:
            self.memory_timeline.append((round(time.time(), 1), round(pss / GIB, 2), len(each)))
        self.peak_rss = max(self.peak_rss, rss)
        if self.samples % 4 == 0:  # the disk every 2 s: walking the folders costs more than /proc
            self.peak_disk = max(self.peak_disk, sum(folder_bytes(f) for f in self.folders))
        self.samples += 1


def config_for(mb: float, partition_mb: float, object_store_mb: int) -> dict:
    return {"num_partitions": max(8, math.ceil(mb / partition_mb)),
            "output_shards": max(4, math.ceil(mb / partition_mb)),
            "ray.object_store_mb": object_store_mb}


def run_size(mb: float, args) -> dict:
    t = time.perf_counter()
    corpus = make_corpus(mb, args.seed)
    make_seconds = time.perf_counter() - t
    stats = json.loads((corpus / "stats.json").read_text())
    work = DEFAULT_ROOT / "scale"
    out = work / f"out-{mb:g}mb"
    ray_tmp = Path(f"/tmp/ray-scale-{os.getpid()}")  # short: Ray's socket paths must fit 107 characters
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    settings = config_for(mb, args.partition_mb, args.object_store_mb)
    cmd = [sys.executable, str(HERE / "_galeno_pipeline.py"), "--input", str(data_dir(corpus)), "--output", str(out),
           "--num-cpus", str(args.num_cpus), f"ray.temp_dir={ray_tmp}",
           *[f"{k}={v}" for k, v in settings.items()]]
    log_path = work / f"run-{mb:g}mb.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()[0]
    print(f"[{time.strftime('%H:%M:%S')}] {mb:g} MiB: {' '.join(cmd[1:])}", flush=True)
    t0, t_start = time.perf_counter(), time.time()
    with open(log_path, "w") as log:
        proc, stdout, _, cpu, sampler = run_sampled(cmd, lambda pid: TreeMemory(pid, [out, ray_tmp]), stderr=log)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"the job failed at {mb:g} MiB (exit {proc.returncode}); log: {log_path}")
    job = json.loads(stdout.strip().splitlines()[-1])
    input_mib = stats["bytes"] / MIB
    output = {sub: folder_bytes(out / sub) / MIB for sub in ("documents", "rejected")}
    local_shards = folder_bytes(out / "_work") / MIB
    run_s = job["run_seconds"]
    result = {
        "mb": mb, "input_mib": round(input_mib, 1), "input_files": stats["files"], "documents_in": job["documents_in"],
        "documents_out": job["documents_out"], "words_in": job.get("words_in"), "words_out": job.get("words_out"),
        "settings": settings, "make_corpus_seconds": round(make_seconds, 1),
        "wall_seconds": round(run_s, 1), "process_seconds": round(wall, 1),
        "stage_seconds": job["stage_seconds"], "cpu_seconds": round(cpu, 1),
        "cpu_seconds_by_part": {name: round(sampler.between(a, b), 1) for name, (a, b) in job["marks"].items()},
        "cpu_by_kind": sampler.by_kind(),
        "s_per_mib": round(run_s / input_mib, 3), "cpu_s_per_mib": round(cpu / input_mib, 3),
        "local_s_per_mib": round(job["stage_seconds"]["local"] / input_mib, 3),
        "global_s_per_mib": round(job["stage_seconds"]["global_and_write"] / input_mib, 3),
        "peak_pss_gib": round(sampler.peak_pss / GIB, 2), "peak_rss_sum_gib": round(sampler.peak_rss / GIB, 2),
        "peak_pss_by_kind_gib": {k: round(v / GIB, 2) for k, v in sorted(sampler.peak_pss_by_kind.items())},
        "peak_pss_at_seconds": round(sampler.peak_at - t_start, 1),
        "peak_pss_processes_mib": sampler.peak_processes,
        "memory_timeline": [(round(t - t_start, 1), g, n) for t, g, n in sampler.memory_timeline],
        "phase_marks_seconds": {k: [round(a - t_start, 1), round(b - t_start, 1)] for k, (a, b) in job["marks"].items()},
        "object_store": job.get("object_store", {}),
        "peak_disk_mib": round(sampler.peak_disk / MIB, 1),
        "output_mib": {k: round(v, 1) for k, v in output.items()}, "work_mib": round(local_shards, 1),
        "load_average_before": round(load0, 2),
    }
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    print(json.dumps(result), flush=True)
    return result


def markdown(results: list[dict]) -> str:
    base = results[0]
    lines = [
        "| input | docs in | wall s | s/MiB | ×smallest | CPU s | CPU-s/MiB | ×smallest | local s/MiB | global s/MiB "
        "| peak PSS GiB | peak RSS-sum GiB | spilled MiB | peak disk MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['input_mib']:.0f} MiB | {r['documents_in']:,} | {r['wall_seconds']:.0f} | {r['s_per_mib']:.2f} | "
            f"{r['s_per_mib'] / base['s_per_mib']:.2f} | {r['cpu_seconds']:.0f} | {r['cpu_s_per_mib']:.2f} | "
            f"{r['cpu_s_per_mib'] / base['cpu_s_per_mib']:.2f} | {r['local_s_per_mib']:.2f} | "
            f"{r['global_s_per_mib']:.2f} | {r['peak_pss_gib']:.2f} | {r['peak_rss_sum_gib']:.2f} | "
            f"{r['object_store'].get('spilled_mib', '?')} | {r['peak_disk_mib']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="20,200,1024", help="MiB of JSONL, comma-separated; the first is the baseline")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--partition-mb", type=float, default=32.0, help="input MiB per global-phase partition")
    ap.add_argument("--object-store-mb", type=int, default=2048)
    ap.add_argument("--keep", action="store_true", help="keep each size's output folder")
    args = ap.parse_args()
    # `kill` as well as Ctrl-C takes the job's Ray down with the benchmark (run_size kills its session)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sizes = [float(s) for s in args.sizes.split(",") if s]
    previous = json.loads(RESULT.read_text()) if RESULT.is_file() else {}
    results = {f"{r['mb']:g}": r for r in previous.get("results", [])}
    for mb in sizes:
        results[f"{mb:g}"] = run_size(mb, args)
        ordered = sorted(results.values(), key=lambda r: r["mb"])
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(json.dumps({
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "processor": platform.processor() or platform.machine()},
            "command": "python benchmarks/corpus_scale.py " + " ".join(sys.argv[1:]),
            "results": ordered}, indent=2) + "\n")
    ordered = sorted(results.values(), key=lambda r: r["mb"])
    print(f"\n{markdown(ordered)}\n\nwrote {RESULT}")


if __name__ == "__main__":
    main()
