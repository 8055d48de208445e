"""NER as a task of the shared training loop (``galeno.train.loop.fit``).

Prediction on a trained model is :mod:`galeno.inference.token_classification`'s; this module
decodes the loop's own dev batches with the same windows and stitching.

Sentences are encoded once, on the driver, into windows (``galeno.inference.align``) stored as
Parquet; every worker reads its share. A training batch is a set of windows padded to the
longest one. Evaluation batches never split a sentence's windows, so each batch can stitch
its sentences back, decode BIO tags and count entities: the counts (gold, predicted, correct,
per type, in both seqeval modes) are sums, all-reduced over the ranks like the MLM's loss,
and the loop's target is the dev entity-level micro F1 (seqeval default mode, what the
published table used).
"""

from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from galeno.inference.align import IGNORE, encode_sentences, stitch, word_predictions
from galeno.inference.loading import load_tokenizer
from galeno.inference.text import Sentence
from galeno.ner.metrics import MODES, entity_scores, f_beta, prf

log = logging.getLogger(__name__)

#: Columns of the encoded windows (word ids -1 where the sub-token is special; word_labels: gold
#: label id of each word of the window, so scoring does not depend on sub-token labels).
WINDOW_COLUMNS = ("input_ids", "labels", "word_ids", "word_labels", "sentence", "word_start", "n_words", "length")


def encode_rows(tokenizer, sentences: Sequence[Sentence], label2id: dict[str, int], max_length: int,
                stride: int) -> list[dict[str, Any]]:
    """Windows of ``sentences`` as Parquet-ready rows (``WINDOW_COLUMNS``)."""
    rows = []
    for w in encode_sentences(tokenizer, sentences, label2id, max_length, stride):
        tags = sentences[w["sentence"]].tags[w["word_start"]:w["word_start"] + w["n_words"]]
        rows.append({"input_ids": list(w["input_ids"]), "labels": w["labels"],
                     "word_ids": [-1 if i is None else i for i in w["word_ids"]],
                     "word_labels": [label2id[t] for t in tags], "sentence": w["sentence"],
                     "word_start": w["word_start"], "n_words": w["n_words"], "length": len(w["input_ids"])})
    return rows


def write_rows(rows: list[dict[str, Any]], path: str | Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _read(path: str | Path) -> dict[str, list]:
    import pyarrow.parquet as pq

    return pq.read_table(str(path)).to_pydict()


def _take(table: dict[str, list], idx: Sequence[int]) -> dict[str, list]:
    return {k: [v[i] for i in idx] for k, v in table.items()}


def train_batches(path: str | Path, batch_size: int, *, rank: int, world_size: int, seed: int, epoch: int,
                  group_by_length: bool, equal_tokens: bool = False, weight_by_tokens: bool = False
                  ) -> Iterator[dict[str, Any]]:
    """One epoch of this rank's training windows; equal batch counts on every rank.

    ``group_by_length``: windows are shuffled, cut into chunks of 50 batches, sorted by length
    inside each chunk and batched, and the batches shuffled (the Hugging Face
    ``group_by_length`` idea): far less padding, still a random order.

    ``equal_tokens`` (with ``group_by_length``): each sorted chunk is cut into the same number of
    batches, but by tokens instead of windows (``balanced_batches``): many short windows
    to a batch, few long ones. Every step then sees about as many words as a random batch does,
    where fixed-size grouped batches range from a few dozen words to thousands (docs/ner.md).

    ``weight_by_tokens``: each batch carries ``loss_scale``, its labelled tokens over the mean of
    this epoch's batches. A batch's loss is a mean over its labelled tokens, so a batch of short
    sentences would otherwise move the model as far as a batch of long ones; scaled, every
    labelled token weighs the same, as in randomly mixed batches.
    """
    import numpy as np

    table = _read(path)
    rng = np.random.default_rng((seed, epoch))
    order = rng.permutation(len(table["length"]))
    per_rank = len(order) // world_size
    order = order[rank * per_rank:(rank + 1) * per_rank]  # equal shares, or collectives hang
    batches = [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
    if group_by_length:
        chunk = batch_size * 50
        regrouped = []
        for c in range(0, len(batches) * batch_size, chunk):
            part = sorted(order[c:min(c + chunk, len(batches) * batch_size)], key=lambda i: table["length"][i])
            if equal_tokens:
                regrouped += balanced_batches(part, [table["length"][i] for i in part], len(part) // batch_size)
            else:
                regrouped += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
        batches = [regrouped[i] for i in rng.permutation(len(regrouped))]
    if weight_by_tokens:
        labelled = [sum(1 for tag in row if tag != IGNORE) for row in table["labels"]]
        counts = [sum(labelled[i] for i in idx) for idx in batches]
        mean = max(sum(counts) / max(len(counts), 1), 1.0)
    for n, idx in enumerate(batches):
        raw: dict[str, Any] = _take(table, idx)
        if weight_by_tokens:
            raw["loss_scale"] = counts[n] / mean
        yield raw


def balanced_batches(items: Sequence[int], lengths: Sequence[int], n: int) -> list[list[int]]:
    """``items`` (sorted by ascending ``lengths``) cut into ``n`` consecutive batches of about equal tokens.

    Batch k ends where the running sum of lengths reaches k/n of the total, so each batch holds
    about total/n tokens; every batch keeps at least one window. Sorted windows pad little, so
    padded sizes come out about equal too.
    """
    if n < 1 or len(items) < n:
        raise ValueError(f"cannot cut {len(items)} windows into {n} batches")
    before = list(itertools.accumulate(lengths, initial=0))  # before[j]: tokens of items[:j]
    ends, j = [], 0
    for k in range(1, n):
        while j < len(items) and before[j] + lengths[j] / 2 < k * before[-1] / n:  # nearest cut to the target
            j += 1
        j = min(max(j, (ends[-1] if ends else 0) + 1), len(items) - (n - k))  # nonempty, room for the rest
        ends.append(j)
    bounds = [0, *ends, len(items)]
    return [list(items[bounds[k]:bounds[k + 1]]) for k in range(n)]


def eval_batches(path: str | Path, batch_size: int, *, rank: int, world_size: int) -> Iterator[dict[str, list]]:
    """This rank's dev sentences (``sentence % world_size == rank``), all windows of a sentence in one batch."""
    table = _read(path)
    by_sentence: dict[int, list[int]] = {}
    for i, n in enumerate(table["sentence"]):
        if n % world_size == rank:
            by_sentence.setdefault(n, []).append(i)
    batch: list[int] = []
    for windows in by_sentence.values():
        if batch and len(batch) + len(windows) > batch_size:
            yield _take(table, batch)
            batch = []
        batch += windows
    if batch:
        yield _take(table, batch)


def _pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def _window(word_ids: Sequence[int], sentence: int, word_start: int, n_words: int) -> dict[str, Any]:
    """A stored window as ``galeno.inference.align`` reads it (word id -1 back to None)."""
    return {"word_ids": [None if i < 0 else i for i in word_ids], "sentence": sentence,
            "word_start": word_start, "n_words": n_words}


def decode(raw: dict[str, list], token_predictions: Sequence[Sequence[int]], id2label: Sequence[str]
           ) -> tuple[list[list[str]], list[list[str]]]:
    """Gold and predicted tags of the sentences whose windows are all in ``raw``, in sentence order."""
    windows = [_window(*w) for w in zip(raw["word_ids"], raw["sentence"], raw["word_start"], raw["n_words"])]
    local = {n: j for j, n in enumerate(dict.fromkeys(w["sentence"] for w in windows))}
    for w in windows:  # stitch wants sentences numbered 0..n-1
        w["sentence"] = local[w["sentence"]]
    predictions = [word_predictions(w, p) for w, p in zip(windows, token_predictions)]
    pred = [[id2label[i] for i in s] for s in stitch(windows, predictions, default=0)]
    gold = [["O"] * len(s) for s in pred]
    for w, labels in zip(windows, raw["word_labels"]):
        gold[w["sentence"]][w["word_start"]:w["word_start"] + w["n_words"]] = [id2label[i] for i in labels]
    return gold, pred


class NERTask:
    """Token classification with a linear head on a pretrained encoder, for the shared loop."""

    name = "ner"
    _weights: torch.Tensor | None = None  # per-label loss weights (o_weight), or None: the model's own loss
    _labels: torch.Tensor | None = None  # the last collated batch's labels, kept when the loss weighs O apart

    def __init__(self, model_dir: str, labels: Sequence[str], *, init: str = "pretrained", seed: int = 0,
                 o_weight: float = 1.0, select: str = "dev_f1"):
        self.model_dir = model_dir
        self.labels = list(labels)
        self.init = init
        self.seed = seed
        self.target = (select, True)
        self._loss_scale = 1.0  # set by collate from the batch (train_batches' weight_by_tokens)
        if o_weight != 1.0:
            self._weights = torch.tensor([o_weight if t == "O" else 1.0 for t in self.labels])
        self.tokenizer = load_tokenizer(model_dir)
        self.types = sorted({t[2:] for t in self.labels if t != "O"})
        self.eval_keys = ("loss_sum", "n_labels") + tuple(
            f"{mode}.{kind}.{what}" for mode in MODES for kind in ["ALL", *self.types]
            for what in ("gold", "predicted", "correct"))

    # -- model
    def build_model(self) -> nn.Module:
        from transformers import AutoConfig, AutoModelForTokenClassification

        torch.manual_seed(self.seed)  # the head (and a random init) is the same on every rank
        id2label = dict(enumerate(self.labels))
        label2id = {v: k for k, v in id2label.items()}
        if self.init == "random":
            config = AutoConfig.from_pretrained(self.model_dir, num_labels=len(self.labels), id2label=id2label,
                                                label2id=label2id, local_files_only=True)
            return AutoModelForTokenClassification.from_config(config)
        return AutoModelForTokenClassification.from_pretrained(
            self.model_dir, num_labels=len(self.labels), id2label=id2label, label2id=label2id,
            ignore_mismatched_sizes=True, local_files_only=True)

    def collate(self, raw: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        # the loop calls step_loss on this batch's outputs next (train_batches' weight_by_tokens)
        self._loss_scale = float(raw.get("loss_scale", 1.0))
        ids = _pad(raw["input_ids"], self.tokenizer.pad_token_id)
        lengths = torch.tensor([len(r) for r in raw["input_ids"]])
        attention = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
        labels = _pad(raw["labels"], IGNORE)
        self._labels = labels if self._weights is not None else None
        return {"input_ids": ids, "attention_mask": attention, "labels": labels}

    @staticmethod
    def tokens(batch: dict[str, torch.Tensor]) -> int:
        return int(batch["attention_mask"].sum())

    def step_loss(self, outputs) -> tuple[torch.Tensor, dict[str, float]]:
        if self._weights is None or self._labels is None:
            return outputs.loss * self._loss_scale, {}
        # O weighed apart: a weighted mean over the labelled sub-tokens (torch's weighted
        # cross-entropy divides by the summed weights, so the loss keeps its scale)
        logits = outputs.logits.float()
        weights = self._weights.to(logits.device)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), self._labels.to(logits.device).reshape(-1),
                                           weight=weights, ignore_index=IGNORE)
        return loss * self._loss_scale, {}

    # -- evaluation
    def eval_sums(self, outputs, raw: dict[str, list]) -> dict[str, float]:
        logits = outputs.logits.float()
        labels = _pad(raw["labels"], IGNORE).to(logits.device)
        n = int((labels != IGNORE).sum())
        sums = {"loss_sum": float(outputs.loss) * n, "n_labels": float(n)}
        gold, pred = decode(raw, logits.argmax(-1).tolist(), self.labels)
        for mode in MODES:
            scores = entity_scores(gold, pred, mode)
            for kind, s in [("ALL", scores), *scores["per_type"].items()]:
                for what, key in (("gold", "support"), ("predicted", "predicted"), ("correct", "correct")):
                    sums[f"{mode}.{kind}.{what}"] = sums.get(f"{mode}.{kind}.{what}", 0.0) + s[key]
        return sums

    def eval_summary(self, sums: dict[str, float]) -> dict[str, float]:
        out = {"dev_loss": sums["loss_sum"] / max(sums["n_labels"], 1.0)}
        for mode in MODES:
            suffix = "" if mode == "default" else "_strict"
            for kind in ["ALL", *self.types]:
                s = prf(sums[f"{mode}.{kind}.correct"], sums[f"{mode}.{kind}.predicted"], sums[f"{mode}.{kind}.gold"])
                if kind == "ALL":
                    out.update({f"dev_precision{suffix}": s["precision"], f"dev_recall{suffix}": s["recall"],
                                f"dev_f1{suffix}": s["f1"], f"dev_f2{suffix}": f_beta(s["precision"], s["recall"], 2.0)})
                elif mode == "default":
                    out[f"dev_f1.{kind}"] = s["f1"]
        return out

    def flops_per_token(self, model: nn.Module) -> float:
        params = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
        return 6.0 * params

    # -- output
    def export(self, model: nn.Module, out_dir: str) -> None:
        """A Hugging Face token-classification directory (fp32 weights, label map, tokenizer)."""
        state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
        model.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
        self.tokenizer.save_pretrained(out_dir)

    save_best = export


def steps_per_epoch(windows: int, global_batch: int) -> int:
    return max(1, windows // global_batch)


def total_steps(windows: int, global_batch: int, epochs: float) -> int:
    return max(1, math.ceil(steps_per_epoch(windows, global_batch) * epochs))
