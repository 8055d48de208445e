"""Pretraining throughput: Galeno's training loop vs a plain Hugging Face ``Trainer``, same model and data.

    python benchmarks/pretrain_throughput.py                      # CPU: 4 x 256 RoBERTa, seq 128, 2 repeats
    python benchmarks/pretrain_throughput.py --smoke              # a few steps of each side, to check it runs
    python benchmarks/pretrain_throughput.py --model base --seq-len 512 --device cuda \
        --micro-batch 32 --vocab-size 52000 --steps 50 --warmup 10   # RoBERTa-base on one GPU (MFU)

Both sides train the same ``RobertaForMaskedLM`` (built by ``galeno.train.mlm.build_roberta``
from one ``ModelConfig``, the same seed, so the same initial weights and SDPA attention) on
the same packed sequences (``galeno.train.packing.pack_corpus`` output), with the same micro
batch, AdamW hyper-parameters (lr 5e-4, betas 0.9/0.98, eps 1e-6, weight decay 0.01 off
biases and LayerNorms, no gradient clipping), linear warmup and decay, 15% dynamic masking
(80/10/10), fp32 on CPU or bf16 on GPU, one process, ``torch.set_num_threads(--threads)``.

- galeno: ``galeno.train.loop.run_worker`` with world size 1 and no Ray (what
  ``trainer.launcher=local`` runs), once with the DeepSpeed engine (ZeRO-1; on CPU
  ``DS_ACCELERATOR=cpu``) and once with the plain PyTorch engine. Its ``MaskedLM`` runs the
  LM head (dense + LayerNorm + vocabulary projection) on the masked positions only.
- hf: ``transformers.Trainer`` with ``DataCollatorForLanguageModeling`` over the same rows;
  ``RobertaForMaskedLM`` computes logits over the whole vocabulary at every position. The
  optimizer is the Trainer's default (``adamw_torch_fused``).

What is timed: the sides run at the same time, one fresh process each, in lock-step turns
(``Turns``): a side runs one optimizer step while the others wait, so other work on a shared
machine slows all sides alike. A step is timed from the moment its turn is granted to the end
of its optimizer step (a ``TrainerCallback.on_step_end`` for hf, the loop's per-step report for
galeno): the previous step's logging, fetching and collating the batch, forward, backward and
optimizer step. Steps ``--warmup + 1`` to ``--warmup + --steps`` count; each side runs one step
more, because galeno's last step evaluates and checkpoints. Tokens are the non-padding tokens
of each batch (``attention_mask`` sum, ``<s>`` and ``</s>`` included), counted the same way on
both sides. Each repeat starts new processes and rotates the order of the turns. Three
estimates per side: the median over repeats of tokens / timed seconds, the best repeat, and
mean tokens per step / the first quartile of all its step times (other work only ever
lengthens a step). Per-step CPU-seconds (``time.process_time``) give "cores used": well under
``--threads`` means the side did not get its cores.

Writes ``artifacts/bench/pretrain_throughput.json`` (and a copy named by model, sequence
length, vocabulary and device; ``--smoke``: ``pretrain_throughput-smoke.json`` only) and prints a Markdown table for
``docs/benchmarks.md``. Data, tokenizer and packed sequences are built once and reused from
``artifacts/bench/pretrain_throughput/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ROOT = REPO / "artifacts" / "bench"
WORK = ROOT / "pretrain_throughput"
SHARED_PHARMACONER = REPO.parent / "shared" / "data" / "pharmaconer" / "train.conll"

PRESETS = {  # RoBERTa shapes: layers x hidden, heads, feed-forward width
    "small": {"num_layers": 4, "hidden_size": 256, "num_heads": 4, "intermediate_size": 1024},
    "base": {"num_layers": 12, "hidden_size": 768, "num_heads": 12, "intermediate_size": 3072},
}
SIDES = ("hf", "galeno-torch", "galeno-ds")
LABELS = {"hf": "HF Trainer", "galeno-torch": "Galeno, PyTorch engine", "galeno-ds": "Galeno, DeepSpeed engine (ZeRO-1)"}
LR, BETAS, EPS, WEIGHT_DECAY, MLM_PROBABILITY = 5e-4, (0.9, 0.98), 1e-6, 0.01, 0.15


# --------------------------------------------------------------------------- data
def prepare_data(data: str, vocab_size: int, seq_len: int, pack_mode: str, tokenizer: str | None) -> dict:
    """Corpus (the corpus job's layout), tokenizer and packed sequences, built once per setting."""
    from galeno.runtime import RayConfig, init_ray
    from galeno.tokenizer import TokenizerConfig, train_tokenizer
    from galeno.train.config import MLMDataConfig
    from galeno.train.packing import pack_corpus, packing_identity, packing_tag

    sys.path.insert(0, str(REPO))  # tests.builders writes the corpus layout
    from tests.builders import write_corpus

    base = WORK / f"data-{data}"
    corpus = base / "corpus"
    if not (corpus / "manifest.json").is_file():
        shutil.rmtree(corpus, ignore_errors=True)
        write_corpus(corpus, _documents(data))
    if tokenizer:
        tokenizer = str(Path(tokenizer).resolve())  # the sides' processes read it too
    else:
        tokenizer = str(base / f"tokenizer-v{vocab_size}")
        if not (Path(tokenizer) / "tokenizer.json").is_file():
            train_tokenizer(TokenizerConfig(corpus=str(corpus), output=tokenizer, vocab_size=vocab_size,
                                            eval_fraction=0.0, progress=False))
    cfg = MLMDataConfig(corpus=str(corpus), tokenizer=tokenizer, seq_len=seq_len, pack_mode=pack_mode,
                        val_fraction=0.02)
    packed = base / f"packed-{packing_tag(packing_identity(cfg))}"
    if not (packed / "manifest.json").is_file():
        init_ray(RayConfig(num_cpus=2, progress_bars=False))
        pack_corpus(cfg, packed)
        import ray

        ray.shutdown()  # no Ray processes left to share the cores with the timed runs
    manifest = json.loads((packed / "manifest.json").read_text())
    return {"data": data, "corpus": str(corpus), "tokenizer": tokenizer, "packed": str(packed),
            "pack_mode": pack_mode, "train": manifest["splits"]["train"], "val": manifest["splits"]["val"]}


def _documents(data: str) -> list[dict]:
    if data == "sample":
        from tests.train.conftest import sample_documents

        return sample_documents()
    from galeno.corpus.readers import read_file

    return [{"id": d.id, "source": "pharmaconer", "text": d.text}
            for d in read_file(str(SHARED_PHARMACONER), "conll", "pharmaconer") if (d.text or "").strip()]


# --------------------------------------------------------------------------- one run (a fresh interpreter)
def pretrain_config(spec: dict, deepspeed: bool, output: str):
    """The galeno config of a run; the hf side takes its ``model`` group too, so both build one model."""
    from galeno.config import load
    from galeno.train.config import PretrainConfig

    cuda = spec["device"] == "cuda"
    overrides = {
        "name": "pretrain-throughput", "output": output, "data.tokenizer": spec["tokenizer"],
        "data.seq_len": spec["seq_len"], "data.mlm_probability": MLM_PROBABILITY,
        **{f"model.{k}": v for k, v in PRESETS[spec["model"]].items()},
        "model.max_position_embeddings": spec["seq_len"] + 2,
        "optim.lr": LR, "optim.betas": list(BETAS), "optim.eps": EPS, "optim.weight_decay": WEIGHT_DECAY,
        "optim.warmup_steps": spec["warmup"], "optim.schedule": "linear", "optim.grad_clip": 0.0,
        "trainer.max_steps": spec["total_steps"], "trainer.global_batch": spec["micro_batch"],
        "trainer.micro_batch": spec["micro_batch"], "trainer.launcher": "local", "trainer.deepspeed": deepspeed,
        "trainer.use_gpu": cuda, "trainer.precision": "bf16" if cuda else "fp32",
        "trainer.cpus_per_worker": spec["threads"], "trainer.seed": spec["seed"], "trainer.log_every": 1,
        "trainer.eval_every": 0, "trainer.eval_batches": 1, "trainer.checkpoint_every": 10**9,
        "trainer.keep_checkpoints": 1,
    }
    return load(PretrainConfig, None, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])


def _clock_now(cuda: bool) -> tuple[float, float]:
    """(wall, CPU) seconds; on GPU after the queued kernels have run."""
    if cuda:
        import torch

        torch.cuda.synchronize()
    return time.perf_counter(), time.process_time()


class Turns:
    """Lock-step turns: a side runs one optimizer step, then waits while the other sides run theirs.

    All sides run at once, one process each, but only one of them computes at any moment, so
    other work on a shared machine slows every side alike instead of whichever run it lands on.
    A step is timed from the moment its turn is granted to its end: the previous step's logging
    and reporting, fetching and collating the batch, forward, backward and optimizer step.
    """

    def __init__(self, ctx, cuda: bool):
        self.go, self.done, self.cuda = ctx.Event(), ctx.Event(), cuda
        self.starts: dict[int, tuple[float, float]] = {}
        self.ends: dict[int, tuple[float, float]] = {}

    def begin(self, step: int) -> None:
        """Wait for this side's turn at ``step``."""
        self.go.wait()
        self.go.clear()
        self.starts[step] = _clock_now(self.cuda)

    def end(self, step: int, total: int) -> None:
        """``step`` is done: hand the turn back, and wait for the next one unless it was the last."""
        self.ends[step] = _clock_now(self.cuda)
        self.done.set()
        if step < total:
            self.begin(step + 1)


def _window(turns: Turns, tokens: dict[int, int], losses: dict[int, float], spec: dict) -> dict:
    """Rates over steps warmup+1 .. warmup+steps from per-step times, token counts and losses.

    ``tokens_per_second`` is the whole window; the step times are kept for the quiet-step
    estimate of ``summarise``.
    """
    steps = range(spec["warmup"] + 1, spec["warmup"] + spec["steps"] + 1)
    step_seconds = [turns.ends[s][0] - turns.starts[s][0] for s in steps]
    wall = sum(step_seconds)
    cpu = sum(turns.ends[s][1] - turns.starts[s][1] for s in steps)
    n = sum(tokens[s] for s in steps)
    tail = [losses[s] for s in steps if s in losses][-10:]
    return {"timed_steps": len(steps), "tokens": n, "seconds": round(wall, 3), "cpu_seconds": round(cpu, 2),
            "tokens_per_second": n / wall, "tokens_per_cpu_second": n / cpu if cpu else None,
            "cores_used": round(cpu / wall, 2), "step_seconds": [round(t, 4) for t in step_seconds],
            "final_loss": statistics.fmean(tail) if tail else None, "first_loss": losses.get(1)}


def run_galeno(spec: dict, deepspeed: bool, turns: Turns) -> dict:
    if spec["device"] == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from galeno import paths
    from galeno.train.loop import LocalReporter, parquet_batches, run_worker
    from galeno.train.mlm import MLMTask

    out = Path(spec["run_dir"])
    cfg = pretrain_config(spec, deepspeed, str(out))

    class TurnReporter(LocalReporter):
        """The loop reports every step (``log_every=1``): the report is the step's end."""

        def report(self, metrics, save=None):
            super().report(metrics, save)  # saves only at the last step, which is never timed
            turns.end(metrics["step"], spec["total_steps"])

    t = cfg.trainer
    train = paths.packed_split(spec["packed"], "train")
    val = paths.packed_split(spec["packed"], "val")
    task = MLMTask(cfg.model, cfg.data.tokenizer, cfg.data.seq_len, cfg.data.mlm_probability, t.seed)
    turns.begin(1)  # model, engine and the loop's peak probe are built in the first (untimed) turn
    run_worker(task, t, cfg.optim,
               train_epoch=lambda epoch: parquet_batches(train, t.micro_batch, rank=0, world_size=1, seed=t.seed,
                                                         epoch=epoch, columns=["input_ids"]),
               val_batches=lambda: parquet_batches(val, t.micro_batch, rank=0, world_size=1, seed=0,
                                                   drop_last=False, shuffle=False, columns=["input_ids"]),
               reporter=TurnReporter(out, t.keep_checkpoints), output=out)
    rows = {r["step"]: r for r in map(json.loads, paths.metrics_log(out).read_text().splitlines())}
    tokens = {s: r["tokens_seen"] - rows.get(s - 1, {"tokens_seen": 0})["tokens_seen"] for s, r in rows.items()}
    result = _window(turns, tokens, {s: r["loss"] for s, r in rows.items()}, spec)
    timed = [rows[s] for s in range(spec["warmup"] + 1, spec["warmup"] + spec["steps"] + 1)]
    # The loop's own timer (top of the step to the end of its reduction), as a cross-check.
    result["in_loop_tokens_per_second"] = (sum(r["tokens_per_second"] * r["step_seconds"] for r in timed)
                                           / sum(r["step_seconds"] for r in timed))
    result["mfu_reported"] = statistics.median(r["mfu"] or 0.0 for r in timed)  # against the loop's peak
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return result


def run_hf(spec: dict, turns: Turns) -> dict:
    import pyarrow.parquet as pq
    import torch
    from galeno import paths
    from galeno.train.mlm import build_roberta
    from galeno.train.packing import load_tokenizer
    from transformers import (
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    cuda = spec["device"] == "cuda"
    if not cuda:
        torch.set_num_threads(spec["threads"])
    cfg = pretrain_config(spec, False, spec["run_dir"])
    tok = load_tokenizer(spec["tokenizer"])
    model = build_roberta(cfg.model, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, spec["seed"])
    rows = pq.read_table(str(paths.packed_split(spec["packed"], "train")), columns=["input_ids"])
    rows = rows.column("input_ids").to_pylist()

    class PackedRows(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            return {"input_ids": rows[i]}

    # Masks from torch's global generator, which the Trainer seeds (the collator's own ``seed``
    # refuses to run outside the main process).
    mlm = DataCollatorForLanguageModeling(tok, mlm_probability=MLM_PROBABILITY)
    batch_tokens: list[int] = []  # one entry per collated batch, in the order the steps consume them

    def collate(examples):
        batch = mlm(examples)
        batch_tokens.append(int(batch["attention_mask"].sum()))
        return batch

    losses: dict[int, float] = {}

    class Turn(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            turns.end(state.global_step, spec["total_steps"])

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses[state.global_step] = logs["loss"]

    args = TrainingArguments(
        output_dir=spec["run_dir"], per_device_train_batch_size=spec["micro_batch"], max_steps=spec["total_steps"],
        learning_rate=LR, adam_beta1=BETAS[0], adam_beta2=BETAS[1], adam_epsilon=EPS, weight_decay=WEIGHT_DECAY,
        max_grad_norm=0.0, warmup_steps=spec["warmup"], lr_scheduler_type="linear", logging_steps=1,
        report_to=[], save_strategy="no", dataloader_num_workers=0, dataloader_drop_last=True,
        dataloader_pin_memory=cuda, use_cpu=not cuda, bf16=cuda, disable_tqdm=True, seed=spec["seed"])
    trainer = Trainer(model=model, args=args, train_dataset=PackedRows(), data_collator=collate, callbacks=[Turn()])
    turns.begin(1)  # the Trainer's own set-up (optimizer, accelerate) runs in the first (untimed) turn
    trainer.train()
    tokens = {s: batch_tokens[s - 1] for s in range(1, spec["total_steps"] + 1)}
    result = _window(turns, tokens, losses, spec)
    result["optimizer"] = str(args.optim)
    return result


def _side_process(spec: dict, turns: Turns, results) -> None:
    """A side's process: its output goes to ``run.log``; its result (or failure) to the queue."""
    log = open(Path(spec["run_dir"]) / "run.log", "w")  # noqa: SIM115 - the process's stdout/stderr
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    import torch

    side = spec["side"]
    result = run_hf(spec, turns) if side == "hf" else run_galeno(spec, side == "galeno-ds", turns)
    result.update(side=side, torch_threads=torch.get_num_threads())
    results.put(result)


# --------------------------------------------------------------------------- driver
def run_round(spec: dict, order: list[str], repeat: int) -> list[dict]:
    """One repeat: every side in its own fresh process, stepping in turns in ``order``."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no state shared between sides
    results = ctx.Queue()
    turns = {side: Turns(ctx, spec["device"] == "cuda") for side in order}
    procs = {}
    for side in order:
        run_dir = WORK / "runs" / f"{side}-{repeat}"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        procs[side] = ctx.Process(target=_side_process, args=({**spec, "side": side, "run_dir": str(run_dir)},
                                                              turns[side], results))
        procs[side].start()
    load0 = os.getloadavg()[0]
    try:
        for _ in range(spec["total_steps"]):
            for side in order:
                turns[side].go.set()
                while not turns[side].done.wait(5.0):
                    if not procs[side].is_alive():
                        raise RuntimeError(f"{side} died; log: {WORK / 'runs' / f'{side}-{repeat}' / 'run.log'}")
                turns[side].done.clear()
        runs = [results.get(timeout=600) for _ in order]
    finally:
        for proc in procs.values():
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
    for run in runs:
        run.update(repeat=repeat, load_average_before=round(load0, 2), load_average_after=round(os.getloadavg()[0], 2))
    return sorted(runs, key=lambda r: order.index(r["side"]))


ESTIMATES = (("tokens_per_second", "median of runs"), ("best_run", "best run"),
             ("tokens_per_second_quiet_steps", "fastest quarter of steps"))


def summarise(runs: list[dict], sides: list[str], model: dict) -> dict:
    """Per side over its runs: median and best window rate, and a quiet-machine estimate; ratios
    galeno / hf; MFU on GPU.

    Other work on a shared machine only ever lengthens a step, so the quiet-machine estimate
    divides the mean tokens of a step by the first quartile of all the side's timed step times
    (its runs pooled): the pace of its undisturbed steps.
    """
    out: dict = {}
    for side in sides:
        mine = [r for r in runs if r["side"] == side]
        m = {k: statistics.median(r[k] for r in mine) for k in
             ("tokens_per_second", "tokens_per_cpu_second", "final_loss", "cores_used")}
        m["best_run"] = max(r["tokens_per_second"] for r in mine)
        steps = [t for r in mine for t in r["step_seconds"]]
        m["step_seconds_q1"] = statistics.quantiles(steps, n=4)[0]
        m["tokens_per_second_quiet_steps"] = (sum(r["tokens"] for r in mine) / len(steps)) / m["step_seconds_q1"]
        m["runs"] = len(mine)
        m["per_run_tokens_per_second"] = [round(r["tokens_per_second"]) for r in mine]
        m["per_run_cores_used"] = [r["cores_used"] for r in mine]
        if model.get("peak_tflops"):  # the same model FLOPs per token for both sides
            m["mfu"] = m["tokens_per_second"] * model["flops_per_token"] / (model["peak_tflops"] * 1e12)
        out[side] = m
    if "hf" in out:
        for side in sides:
            out[side]["ratio_vs_hf"] = {k: out[side][k] / out["hf"][k] for k, _ in ESTIMATES}
    return out


def markdown(result: dict) -> str:
    s, d = result["settings"], result["data"]
    mfu = bool(s["peak_tflops"])
    intro = (f"{s['model']} RoBERTa ({s['layers_x_hidden']}, {s['parameters']:,} parameters, vocabulary "
             f"{s['vocab']:,}), seq {s['seq_len']}, micro batch {s['micro_batch']}, {s['steps']} timed steps after "
             f"{s['warmup']}, {s['device']}, {s['precision']}, {s['threads']} threads; "
             f"{d['train']['sequences']:,} packed train sequences ({d['data']}, {d['pack_mode']}, fill "
             f"{d['train']['fill']}); {s['repeats']} runs per side.")
    columns = ["side"] + [f"tokens/s, {name} | ratio" for _, name in ESTIMATES] + ["cores used", "final train loss"]
    columns += ["MFU"] if mfu else []
    lines = [intro, "", "| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(ESTIMATES) * 2 + 2 + mfu)]
    for side, m in result["summary"].items():
        ratios = m.get("ratio_vs_hf", {})
        cells = [LABELS[side]]
        for key, name in ESTIMATES:
            ratio = f"{ratios[key]:.2f}x" if key in ratios else ""
            cells += [f"{m[key]:,.0f}", f"**{ratio}**" if side != "hf" and key == "tokens_per_second" else ratio]
        cells += [" / ".join(f"{c:.2f}" for c in m["per_run_cores_used"]), f"{m['final_loss']:.3f}"]
        lines.append("| " + " | ".join(cells + ([f"{m['mfu']:.1%}"] if mfu else [])) + " |")
    if mfu:
        lines += ["", (f"MFU: tokens/s (median of runs) x {s['flops_per_token'] / 1e6:.1f} MFLOP per token "
                       "(Galeno's count: 6 x non-embedding parameters + 12 x layers x hidden x seq) / "
                       f"{s['peak_tflops']:g} TFLOP/s ({s['gpu']}, dense bf16).")]
    per_run = "; ".join(f"{LABELS[k]} {v['per_run_tokens_per_second']}" for k, v in result["summary"].items())
    loads = [r["load_average_before"] for r in result["runs"]]
    lines += ["", f"Per-run tokens/s, in run order per side: {per_run}.",
              (f"Load average (1 min) before each run: {min(loads):.1f}-{max(loads):.1f} "
               f"(at the start: {result['load_average_at_start']:.1f}); whole benchmark "
               f"{result['elapsed_seconds']:.0f} s.")]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=("sample", "shared"),
                    help="text: data/sample, or ../shared/data PharmaCoNER train (default: shared when present)")
    ap.add_argument("--model", choices=tuple(PRESETS), default="small", help="small: 4 x 256; base: 12 x 768")
    ap.add_argument("--seq-len", type=int, default=128, help="tokens per packed sequence")
    ap.add_argument("--pack-mode", choices=("full_sentences", "doc_sentences"), default="full_sentences")
    ap.add_argument("--vocab-size", type=int, default=8000, help="BPE vocabulary trained for the run")
    ap.add_argument("--tokenizer", help="an existing tokenizer folder instead of training one")
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=40, help="timed optimizer steps")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (also the LR warmup)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per side, alternated")
    ap.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated subset of {','.join(SIDES)}")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: bf16 on both sides")
    ap.add_argument("--threads", type=int, default=2, help="torch threads on CPU, both sides")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--smoke", action="store_true", help="sample data, 3 timed steps, 1 repeat")
    args = ap.parse_args()
    if args.smoke:
        args.data, args.steps, args.warmup, args.repeats = "sample", 3, 1, 1
    args.data = args.data or ("shared" if SHARED_PHARMACONER.is_file() else "sample")
    if args.warmup < 1 or args.steps < 1:
        sys.exit("--warmup and --steps must be >= 1 (the window starts at the end of a step)")
    sides = [s for s in args.sides.split(",") if s]
    if not set(sides) <= set(SIDES):
        sys.exit(f"--sides: choose from {', '.join(SIDES)}")

    t0, load0, started = time.perf_counter(), os.getloadavg()[0], time.strftime("%Y-%m-%dT%H:%M:%S")
    data = prepare_data(args.data, args.vocab_size, args.seq_len, args.pack_mode, args.tokenizer)
    print(f"data: {data['train']['sequences']:,} train sequences, {data['train']['tokens']:,} tokens, "
          f"fill {data['train']['fill']} ({data['packed']})", flush=True)
    spec = {"model": args.model, "seq_len": args.seq_len, "micro_batch": args.micro_batch, "steps": args.steps,
            "warmup": args.warmup, "total_steps": args.warmup + args.steps + 1, "device": args.device,
            "threads": args.threads, "seed": args.seed, "tokenizer": data["tokenizer"], "packed": data["packed"]}
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the sides' processes inherit these
    if args.device == "cpu":
        os.environ["DS_ACCELERATOR"] = "cpu"
    runs = []
    for repeat in range(args.repeats):
        order = sides[repeat % len(sides):] + sides[:repeat % len(sides)]  # rotate: no side always goes first
        for run in run_round(spec, order, repeat):
            runs.append(run)
            print(f"  {run['side']:13s} repeat {repeat}: {run['tokens_per_second']:6.0f} tok/s, median step "
                  f"{statistics.median(run['step_seconds']):.3f} s, {run['cores_used']} cores, "
                  f"loss {run['final_loss']:.3f}, load {run['load_average_before']}", flush=True)

    model = _model_facts(spec)
    result = {
        "settings": {**spec, "repeats": args.repeats, "precision": "bf16" if args.device == "cuda" else "fp32",
                     "layers_x_hidden": f"{PRESETS[args.model]['num_layers']} x {PRESETS[args.model]['hidden_size']}",
                     **model},
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "data": data, "runs": runs, "summary": summarise(runs, sides, model),
        "load_average_at_start": round(load0, 2), "elapsed_seconds": round(time.perf_counter() - t0, 1),
        "started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    result["markdown"] = markdown(result)
    text = json.dumps(result, indent=2, ensure_ascii=False) + "\n"
    setting = f"{args.model}-seq{args.seq_len}-v{model['vocab']}-{args.device}"
    names = ["pretrain_throughput-smoke.json"] if args.smoke else ["pretrain_throughput.json",
                                                                   f"pretrain_throughput-{setting}.json"]
    for name in names:
        (ROOT / name).write_text(text)
    out = ROOT / names[0]
    print()
    print(result["markdown"])
    print(f"\nwrote {out}")


def _model_facts(spec: dict) -> dict:
    """Size of the model both sides train (built on the meta device: no memory), its FLOPs per
    token as Galeno counts them for MFU, and on GPU the peak those are measured against."""
    import torch
    from galeno.train.engine import peak_tflops
    from galeno.train.mlm import MLMTask

    cfg = pretrain_config(spec, False, str(WORK / "runs"))
    task = MLMTask(cfg.model, spec["tokenizer"], spec["seq_len"], MLM_PROBABILITY, 0)
    with torch.device("meta"):
        model = task.build_model()
    cuda = spec["device"] == "cuda"
    return {"parameters": sum(p.numel() for p in model.parameters()), "vocab": len(task.tokenizer),
            "padded_vocab": cfg.model.padded_vocab(len(task.tokenizer)),
            "flops_per_token": task.flops_per_token(model),
            "peak_tflops": peak_tflops(torch.device("cuda", 0), "bf16") if cuda else None,
            "gpu": torch.cuda.get_device_name(0) if cuda else None}


if __name__ == "__main__":
    main()
