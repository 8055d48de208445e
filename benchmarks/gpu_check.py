"""The first thing to run on a GPU machine: one script, at most 8 minutes on one H100, one JSON file.

    python benchmarks/gpu_check.py                 # on the GPU box: writes artifacts/bench/gpu_check.json
    python benchmarks/gpu_check.py --dry-run       # the same code paths on CPU with tiny dimensions (CI runs it)

No preparation: it needs this repository, its virtualenv (``make install``) and nothing from the network or
../shared (the data is the sample shipped in data/sample). Four checks run in order, each timed; one that
fails is recorded with its error and the next still runs, and the JSON is rewritten after every check, so a
machine taken away mid-run still leaves what was measured:

1. ``mlm_bf16``: RoBERTa-base (12 x 768, 52,000 embedding rows), sequences of 512 tokens, bf16, with our
   training loop (``galeno.train.loop.run_worker``) at world size 1 on the plain PyTorch engine:
   tokens/s and MFU (median over the timed steps, after warm-up), peak GPU memory, the loss.
2. ``deepspeed_fp16``: the same model for a few steps under the DeepSpeed engine, ZeRO-1, fp16 with dynamic
   loss scaling (V100's precision): the loss must be finite, tokens/s.
3. ``ner_finetune``: the whole NER job (``galeno.ner.finetune.run``) on CUDA, from check 1's exported model,
   on the sample PharmaCoNER slice: one epoch of 600 sentences (about 38 steps of 16), then dev prediction
   through the inference layer. Without check 1's model (it failed, or ``--only`` left it out) checks 3 and
   4 use an untrained model of the same shape.
4. ``serve_cuda``: Ray Serve with a fill-mask and an NER replica on the GPU, real HTTP requests; ``/models``
   must say ``cuda``.

``--dry-run`` shrinks the model to 2 x 64 and the runs to a few steps on CPU (fp32 where fp16 needs a GPU);
the checks are otherwise the same code. Figures go to docs/benchmarks.md with the card that gave them. MFU is
against the dense bf16 peak of the card's name (``galeno.train.engine.GPU_PEAK_TFLOPS``: 989 TFLOP/s for an
H100, the SXM figure; a PCIe H100's is lower, so its MFU reads low).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SAMPLE = REPO / "data" / "sample"
OUT = REPO / "artifacts" / "bench" / "gpu_check.json"

log = logging.getLogger("gpu_check")

BASE = {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "intermediate_size": 3072}
TINY = {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128}


class Plan:
    """Sizes of one run: the real check on a GPU, or the dry run on CPU."""

    def __init__(self, dry: bool):
        self.dry = dry
        self.model = TINY if dry else BASE
        self.seq_len = 64 if dry else 512
        self.micro = 2 if dry else 32
        self.vocab_rows = 512 if dry else 52_000
        self.warmup, self.timed = (1, 2) if dry else (5, 20)
        self.ds_steps = 2 if dry else 6
        self.ner_sentences = 32 if dry else 600
        self.use_gpu = not dry
        self.threads = 2 if dry else max(1, (os.cpu_count() or 2) - 2)


# --------------------------------------------------------------------------- data
def sample_text() -> list[str]:
    """Sentences of the shipped sample: PharmaCoNER CoNLL tokens joined, MEDDOCAN and crawl text lines."""
    lines: list[str] = []
    words: list[str] = []
    for line in (SAMPLE / "pharmaconer" / "train.conll").read_text(encoding="utf-8").splitlines():
        if line.strip():
            words.append(line.split()[0])
        elif words:
            lines.append(" ".join(words))
            words = []
    for path in sorted((SAMPLE / "meddocan").rglob("*.txt")):
        lines += [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return lines


def build_tokenizer(out: Path, lines: list[str]) -> Path:
    """A byte-level BPE on the sample, built as jobs/train_tokenizer.py builds one (the model's rows are padded
    to 52k, the published vocabulary)."""
    from galeno.tokenizer import TokenizerConfig, _save, _train

    cfg = TokenizerConfig(output=str(out), vocab_size=4000, max_length=512, progress=False)
    out.mkdir(parents=True, exist_ok=True)
    _save(_train(iter(lines), cfg, len(lines)), cfg)
    return out


def full_sequences(tokenizer_dir: Path, lines: list[str], seq_len: int, count: int) -> list[list[int]]:
    """``count`` sequences of exactly ``seq_len`` tokens (<s> ... </s>), cut from the sample's running text."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    stream = [t for ids in tok(lines, add_special_tokens=False)["input_ids"] for t in ids]
    body = seq_len - 2
    out = []
    for n in range(count):
        start = (n * body) % max(1, len(stream) - body)
        out.append([tok.bos_token_id, *stream[start:start + body], tok.eos_token_id])
    return out


# --------------------------------------------------------------------------- checks
def _train(plan: Plan, work: Path, tokenizer: Path, sequences: list[list[int]], *, name: str, deepspeed: bool,
           precision: str, steps: int) -> dict[str, Any]:
    """Our loop at world size 1 on synthetic-order real tokens; the metrics it wrote, summarised."""
    import torch

    from galeno.train.config import ModelConfig, OptimConfig, TrainerConfig
    from galeno.train.loop import LocalReporter, run_worker
    from galeno.train.mlm import MLMTask

    model_cfg = ModelConfig(**plan.model, max_position_embeddings=plan.seq_len + 2, vocab_multiple=plan.vocab_rows,
                            dropout=0.1)
    task = MLMTask(model_cfg, str(tokenizer), plan.seq_len, 0.15, 1234)
    trainer = TrainerConfig(max_steps=steps, global_batch=plan.micro, micro_batch=plan.micro, use_gpu=plan.use_gpu,
                            precision=precision, deepspeed=deepspeed, zero_stage=1, log_every=5, eval_every=0,
                            eval_batches=2, checkpoint_every=0, keep_checkpoints=1, cpus_per_worker=plan.threads)
    optim = OptimConfig(lr=5e-4, warmup_steps=min(5, steps - 1), schedule="linear")
    out = work / name

    def epoch(n: int):
        for i in range(0, len(sequences) - plan.micro + 1, plan.micro):
            yield {"input_ids": sequences[i:i + plan.micro]}

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run_worker(task, trainer, optim, train_epoch=epoch, val_batches=lambda: epoch(0),
               reporter=LocalReporter(out, 1), output=out)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if r["step"] > min(plan.warmup, len(rows) - 1)] or rows
    result = {"steps": len(rows), "timed_steps": len(timed), "micro_batch": plan.micro, "seq_len": plan.seq_len,
              "precision": precision, "deepspeed": deepspeed,
              "tokens_per_second": statistics.median(r["tokens_per_second"] for r in timed),
              "mfu": statistics.median(r["mfu"] for r in timed) if timed[0].get("mfu") is not None else None,
              "first_loss": rows[0]["loss"], "last_loss": rows[-1]["loss"],
              "losses_finite": all(r["loss"] == r["loss"] and abs(r["loss"]) != float("inf") for r in rows),
              "seconds": round(time.perf_counter() - t0, 1)}
    if torch.cuda.is_available():
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if not result["losses_finite"]:
        raise RuntimeError(f"{name}: a loss was not finite: {[r['loss'] for r in rows]}")
    return result


def check_mlm(plan: Plan, ctx: dict[str, Any]) -> dict[str, Any]:
    from galeno.train.config import ModelConfig
    from galeno.train.mlm import MLMTask

    result = _train(plan, ctx["work"], ctx["tokenizer"], ctx["sequences"], name="mlm-bf16", deepspeed=False,
                    precision="bf16", steps=plan.warmup + plan.timed)
    ctx["mlm_model"] = export_mlm(plan, ctx, sorted((ctx["work"] / "mlm-bf16" / "checkpoints").glob("checkpoint-*"))[-1])
    return result


def export_mlm(plan: Plan, ctx: dict[str, Any], checkpoint: Path | None) -> Path:
    """Check 1's trained model (or, when check 1 did not run, an untrained one of its shape), exported as
    jobs/pretrain.py exports: what checks 3 and 4 fine-tune and serve."""
    from galeno.train.config import ModelConfig
    from galeno.train.engine import consolidated_state_dict
    from galeno.train.loop import CHECKPOINT_TAG
    from galeno.train.mlm import MLMTask, tied_to_embeddings

    task = MLMTask(ModelConfig(**plan.model, max_position_embeddings=plan.seq_len + 2,
                               vocab_multiple=plan.vocab_rows), str(ctx["tokenizer"]), plan.seq_len, 0.15, 1234)
    model = task.build_model()
    if checkpoint is not None:
        missing, unexpected = model.load_state_dict(consolidated_state_dict(checkpoint, CHECKPOINT_TAG), strict=False)
        missing = [k for k in missing if not tied_to_embeddings(k)]
        if missing or unexpected:
            raise RuntimeError(f"checkpoint {checkpoint} does not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
    out = ctx["work"] / "mlm-model"
    task.export(model, str(out))
    return out


def check_deepspeed(plan: Plan, ctx: dict[str, Any]) -> dict[str, Any]:
    import deepspeed

    precision = "fp32" if plan.dry else "fp16"  # fp16 needs a GPU
    result = _train(plan, ctx["work"], ctx["tokenizer"], ctx["sequences"], name="deepspeed", deepspeed=True,
                    precision=precision, steps=plan.ds_steps)
    result["deepspeed_version"] = deepspeed.__version__
    return result


def check_ner(plan: Plan, ctx: dict[str, Any]) -> dict[str, Any]:
    if "mlm_model" not in ctx:  # check 1 failed or was left out: NER on CUDA is still worth knowing
        ctx["mlm_model"] = export_mlm(plan, ctx, None)
    from galeno.config import load
    from galeno.ner.config import NERConfig
    from galeno.ner.finetune import run

    out = ctx["work"] / "ner"
    overrides = [f"model={ctx['mlm_model']}", f"output={out}", "task=gpu-check",
                 f"data.train={SAMPLE / 'pharmaconer' / 'train.conll'}", f"data.dev={SAMPLE / 'pharmaconer' / 'dev.conll'}",
                 f"data.train_sentences={plan.ner_sentences}", "data.max_length=128", "epochs=1",
                 "trainer.launcher=local", f"trainer.use_gpu={str(plan.use_gpu).lower()}",
                 "trainer.global_batch=16", "trainer.micro_batch=16", f"trainer.cpus_per_worker={plan.threads}",
                 "optim.lr=1e-4", "tracking.enabled=false"]
    t0 = time.perf_counter()
    results = run(load(NERConfig, None, overrides))
    seed = results["seeds"][0]
    ctx["ner_model"] = seed["model"]
    metrics = [json.loads(x) for x in (Path(seed["model"]).parent / "metrics.jsonl").read_text().splitlines()]
    return {"steps": results["max_steps"], "dev_f1": seed["dev_f1"], "train_sentences": results["train_sentences"],
            "steps_per_second": statistics.median(1 / r["step_seconds"] for r in metrics),
            "seconds": round(time.perf_counter() - t0, 1)}


def check_serve(plan: Plan, ctx: dict[str, Any]) -> dict[str, Any]:
    if "mlm_model" not in ctx:
        ctx["mlm_model"] = export_mlm(plan, ctx, None)
    if "ner_model" not in ctx:  # check 3 failed or was left out: serve an untrained tagger of the same model
        ctx["ner_model"] = untrained_tagger(ctx["mlm_model"], ctx["work"] / "ner-untrained")
    import ray
    from ray import serve

    from galeno.config import load
    from galeno.serve.cli import request, start
    from galeno.serve.config import ServeConfig

    gpus = "0.5" if plan.use_gpu else "0"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = load(ServeConfig, None, [f"fill_mask_model={ctx['mlm_model']}", f"ner_model={ctx['ner_model']}",
                                   f"fill_mask.num_gpus={gpus}", f"ner.num_gpus={gpus}", f"port={port}",
                                   "tracking.enabled=false", "ray.num_cpus=4"])
    t0 = time.perf_counter()
    try:
        try:
            url = start(cfg)
        except Exception as err:  # noqa: BLE001 - a proxy that missed its start-up health check: once more
            log.warning("serve did not start (%s: %s); trying once more", type(err).__name__, str(err)[:200])
            serve.shutdown()
            ray.shutdown()
            url = start(cfg)
        started = time.perf_counter() - t0
        status_fill, fill = request(f"{url}/fill-mask", {"text": "El paciente presenta <mask> abdominal.", "top_k": 3})
        status_ner, ner = request(f"{url}/ner", {"text": "Se administró paracetamol 1 g cada 8 horas."})
        status_models, models = request(f"{url}/models")
    finally:
        serve.shutdown()
        ray.shutdown()
    devices = sorted({m.get("device", "") for m in _model_entries(models)})
    result = {"start_seconds": round(started, 1), "fill_mask_status": status_fill, "ner_status": status_ner,
              "models_status": status_models, "devices": devices,
              "fill_mask_answer": fill,
              "ner_answer": ner}
    want = "cuda" if plan.use_gpu else "cpu"
    if (status_fill, status_ner, status_models) != (200, 200, 200) or not devices or \
            not all(d.startswith(want) for d in devices):
        raise RuntimeError(f"serve: statuses {status_fill}/{status_ner}/{status_models}, devices {devices} "
                           f"(want {want}): {fill} {ner}")
    return result


def untrained_tagger(mlm: Path, out: Path) -> Path:
    from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer

    labels = {0: "O", 1: "B-X", 2: "I-X"}
    config = AutoConfig.from_pretrained(mlm, num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()})
    AutoModelForTokenClassification.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(mlm).save_pretrained(out)
    return out


def _model_entries(models: Any) -> list[dict[str, Any]]:
    """The per-replica entries of a /models answer, whatever its nesting."""
    if isinstance(models, dict):
        if "device" in models:
            return [models]
        return [e for v in models.values() for e in _model_entries(v)]
    if isinstance(models, list):
        return [e for v in models for e in _model_entries(v)]
    return []


CHECKS: list[tuple[str, Callable[[Plan, dict[str, Any]], dict[str, Any]], float]] = [
    # name, function, seconds it needs at least on the GPU (skipped when less of the budget is left)
    ("mlm_bf16", check_mlm, 60),
    ("deepspeed_fp16", check_deepspeed, 60),
    ("ner_finetune", check_ner, 60),
    ("serve_cuda", check_serve, 60),
]


def environment() -> dict[str, Any]:
    import torch
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "cuda_available": torch.cuda.is_available(), "cpu_count": os.cpu_count(), "host": platform.node()}
    if torch.cuda.is_available():
        env.update({"gpu": torch.cuda.get_device_name(0), "gpu_count": torch.cuda.device_count(),
                    "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
                    "bf16_supported": torch.cuda.is_bf16_supported(), "cuda": torch.version.cuda,
                    "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)})
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny dimensions: the same code paths (CI)")
    parser.add_argument("--out", default="", help=f"JSON file (default {OUT}, or gpu_check-dry-run.json)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="stop starting checks after this (default 450)")
    parser.add_argument("--only", default="", help="comma-separated check names (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, str(REPO / "platform"))
    plan = Plan(args.dry_run)
    if not plan.dry:
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device here; use --dry-run on a CPU machine", file=sys.stderr)
            return 2
    out = Path(args.out) if args.out else (OUT.with_name("gpu_check-dry-run.json") if plan.dry else OUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "dry_run": plan.dry,
                              "environment": environment(), "checks": {}}
    wanted = {n for n in args.only.split(",") if n} or {name for name, _, _ in CHECKS}
    with tempfile.TemporaryDirectory(prefix="galeno-gpu-check-") as tmp:
        work = Path(tmp)
        lines = sample_text()
        tokenizer = build_tokenizer(work / "tokenizer", lines)
        count = plan.micro * (plan.warmup + plan.timed + 1)
        ctx: dict[str, Any] = {"work": work, "tokenizer": tokenizer,
                               "sequences": full_sequences(tokenizer, lines, plan.seq_len, count)}
        for name, fn, needs in CHECKS:
            if name not in wanted:
                continue
            left = args.budget_s - (time.perf_counter() - t0)
            if left < (5 if plan.dry else needs):
                report["checks"][name] = {"status": "skipped", "reason": f"{left:.0f} s of the budget left"}
                continue
            started = time.perf_counter()
            try:
                report["checks"][name] = {"status": "ok", **fn(plan, ctx)}
            except Exception as err:  # noqa: BLE001 - one failed check must not hide the others
                report["checks"][name] = {"status": "failed", "error": f"{type(err).__name__}: {err}"[:2000],
                                          "traceback": traceback.format_exc()[-4000:]}
            report["checks"][name]["check_seconds"] = round(time.perf_counter() - started, 1)
            report["elapsed_seconds"] = round(time.perf_counter() - t0, 1)
            out.write_text(json.dumps(report, indent=2, default=str))
            log.info("%s: %s", name, report["checks"][name]["status"])
    report["elapsed_seconds"] = round(time.perf_counter() - t0, 1)
    report["ok"] = all(c["status"] == "ok" for c in report["checks"].values())
    out.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: report[k] for k in ("ok", "elapsed_seconds", "dry_run")}
                     | {n: {k: v for k, v in c.items() if k in ("status", "tokens_per_second", "mfu", "error")}
                        for n, c in report["checks"].items()}, indent=2))
    print(f"wrote {out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
