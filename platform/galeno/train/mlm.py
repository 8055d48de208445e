"""The masked-LM task plugged into the shared loop: model, dynamic masking, loss, metrics.

Masking is dynamic (RoBERTa §4.1): each batch is masked afresh when it is collated, from a
generator seeded by (seed, rank, step), so a resumed run masks the same way as an unbroken
one. The LM head runs only on the selected positions: with 15% masking that skips 85% of
the vocabulary projection, the largest matrix of a 52k-vocabulary base model.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from galeno.inference.forward import mlm_parts
from galeno.train.config import ModelConfig

IGNORE = -100

log = logging.getLogger(__name__)


def mask_tokens(input_ids: torch.Tensor, special: torch.Tensor, *, mask_id: int, vocab_size: int,
                probability: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 rule on the non-special positions; returns (inputs, labels with -100 elsewhere)."""
    inputs = input_ids.clone()
    labels = input_ids.clone()
    probs = torch.full(inputs.shape, probability)
    probs.masked_fill_(special, 0.0)
    selected = torch.bernoulli(probs, generator=generator).bool()
    labels[~selected] = IGNORE
    to_mask = torch.bernoulli(torch.full(inputs.shape, 0.8), generator=generator).bool() & selected
    inputs[to_mask] = mask_id
    to_random = torch.bernoulli(torch.full(inputs.shape, 0.5), generator=generator).bool() & selected & ~to_mask
    inputs[to_random] = torch.randint(vocab_size, inputs.shape, generator=generator)[to_random]
    return inputs, labels


def pad_batch(sequences: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence of the batch (no fixed-length padding waste)."""
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, :len(s)] = torch.as_tensor(np.asarray(s, dtype=np.int64))
    return ids, ids.ne(pad_id)


class MaskedLM(nn.Module):
    """A Hugging Face masked LM (RoBERTa, BERT, ...) whose forward computes the loss on selected positions only."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, input_ids, attention_mask, labels):
        encoder, head = mlm_parts(self.hf)
        hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        selected = labels.ne(IGNORE)
        logits = head(hidden[selected])
        target = labels[selected]
        loss_sum = nn.functional.cross_entropy(logits.float(), target, reduction="sum")
        correct = (logits.argmax(-1) == target).sum()
        return loss_sum, selected.sum(), correct


def build_roberta(model: ModelConfig, vocab_size: int, pad_id: int, bos_id: int, eos_id: int, seed: int):
    from transformers import RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(seed)
    config = RobertaConfig(
        vocab_size=model.padded_vocab(vocab_size), hidden_size=model.hidden_size,
        num_hidden_layers=model.num_layers, num_attention_heads=model.num_heads,
        intermediate_size=model.intermediate_size, max_position_embeddings=model.max_position_embeddings,
        hidden_dropout_prob=model.dropout, attention_probs_dropout_prob=model.dropout,
        type_vocab_size=1, pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id,
        layer_norm_eps=1e-5)
    config._attn_implementation = model.attention
    return RobertaForMaskedLM(config)


def load_masked_lm(path: str, seed: int, dropout: float | None = None):
    """A Hugging Face checkpoint as a masked LM, for continual pretraining (``model.init_from``).

    Returns ``(model, new)``: ``new`` names the weights the checkpoint lacked, freshly initialised from
    ``seed``; only the MLM head may be new (a sentence-transformers BERT is saved without one). Weights load
    in fp32 whatever the checkpoint's dtype: the loop's precision setting decides what runs in half.
    """
    from transformers import AutoConfig, AutoModelForMaskedLM

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if dropout is not None:
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if hasattr(config, key):
                setattr(config, key, dropout)
    torch.manual_seed(seed)
    hf, info = AutoModelForMaskedLM.from_pretrained(path, config=config, local_files_only=True,
                                                    output_loading_info=True, dtype=torch.float32)
    parts = mlm_parts(hf)
    if parts is None:
        raise ValueError(f"model.init_from={path}: {type(hf).__name__} is not an encoder plus one MLM head; "
                         "continual pretraining supports BERT- and RoBERTa-style masked LMs")
    head = {name for name, module in hf.named_children() if module is parts[1]}
    new = sorted(k for k in info["missing_keys"] if not tied_to_embeddings(k))
    foreign = [k for k in new if k.split(".")[0] not in head]
    if foreign or info.get("mismatched_keys"):
        raise ValueError(f"model.init_from={path}: the checkpoint does not hold this model's encoder (missing "
                         f"{foreign[:5]}, mismatched {list(info.get('mismatched_keys') or [])[:5]}): it would "
                         "train from random weights")
    return hf, new


def tied_to_embeddings(key: str) -> bool:
    """The output projection is tied to the input embeddings: never missing in substance."""
    return key.endswith(("decoder.weight", "decoder.bias"))


def transformer_flops_per_token(n_params_non_embedding: int, num_layers: int, hidden: int, seq_len: int) -> float:
    """Training FLOPs per token: 6·N for the weights plus 12·L·H·S for attention (PaLM, App. B)."""
    return 6.0 * n_params_non_embedding + 12.0 * num_layers * hidden * seq_len


class MLMTask:
    """Masked-LM pretraining for the shared loop (``galeno.train.loop.fit``)."""

    name = "mlm"
    #: metric the loop keeps the best checkpoint on, and whether higher is better
    target = ("val_loss", False)
    #: what ``eval_sums`` returns; every rank all-reduces exactly these
    eval_keys = ("loss_sum", "n", "correct")

    def __init__(self, model_cfg: ModelConfig, tokenizer_dir: str, seq_len: int, mlm_probability: float, seed: int):
        from galeno.train.packing import load_tokenizer

        self.model_cfg = model_cfg
        self.tokenizer_dir = tokenizer_dir
        self.tokenizer = load_tokenizer(tokenizer_dir)
        self.seq_len = seq_len
        self.probability = mlm_probability
        self.seed = seed
        tok = self.tokenizer
        self.pad_id, self.mask_id = tok.pad_token_id, tok.mask_token_id
        self.special_ids = torch.tensor(sorted(set(tok.all_special_ids)))

    def build_model(self) -> nn.Module:
        tok = self.tokenizer
        if self.model_cfg.init_from:
            hf, new = load_masked_lm(self.model_cfg.init_from, self.seed, self.model_cfg.dropout)
            if new:
                log.info("continual pretraining from %s: %d tensors not in the checkpoint, initialised fresh "
                         "(seed %d): %s", self.model_cfg.init_from, len(new), self.seed, ", ".join(new[:6]))
            if hf.get_input_embeddings().num_embeddings < len(tok):
                raise ValueError(f"{self.model_cfg.init_from}: {hf.get_input_embeddings().num_embeddings} embeddings "
                                 f"for a tokenizer of {len(tok)}")
            return MaskedLM(hf)
        hf = build_roberta(self.model_cfg, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, self.seed)
        return MaskedLM(hf)

    def collate(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, torch.Tensor]:
        ids, attention = pad_batch(list(batch["input_ids"]), self.pad_id)
        special = torch.isin(ids, self.special_ids)
        inputs, labels = mask_tokens(ids, special, mask_id=self.mask_id, vocab_size=len(self.tokenizer),
                                     probability=self.probability, generator=generator)
        return {"input_ids": inputs, "attention_mask": attention, "labels": labels}

    @staticmethod
    def tokens(batch: dict[str, torch.Tensor]) -> int:
        """Real (non-padding) tokens: what tokens/s and MFU count."""
        return int(batch["attention_mask"].sum())

    def step_loss(self, outputs) -> tuple[torch.Tensor, dict[str, float]]:
        loss_sum, n, correct = outputs
        n = n.clamp(min=1)
        return loss_sum / n, {}

    def eval_sums(self, outputs, raw: dict[str, Any]) -> dict[str, float]:
        loss_sum, n, correct = outputs
        return {"loss_sum": float(loss_sum), "n": float(n), "correct": float(correct)}

    def eval_summary(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums.get("n", 0.0), 1.0)
        loss = sums.get("loss_sum", 0.0) / n
        return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50.0)),
                "val_accuracy": sums.get("correct", 0.0) / n, "val_predictions": sums.get("n", 0.0)}

    def flops_per_token(self, model: nn.Module) -> float:
        hf = model.hf
        embed = sum(p.numel() for n, p in hf.named_parameters() if "embeddings" in n)
        non_embed = sum(p.numel() for p in hf.parameters()) - embed
        return transformer_flops_per_token(non_embed, hf.config.num_hidden_layers, hf.config.hidden_size, self.seq_len)

    def export(self, model: nn.Module, out_dir: str) -> None:
        """Hugging Face directory: trimmed vocabulary, tied weights, tokenizer; loads in AutoModelForMaskedLM."""
        hf = model.hf
        hf.resize_token_embeddings(len(self.tokenizer))
        hf.config.architectures = [type(hf).__name__]
        hf.save_pretrained(out_dir, safe_serialization=True)
        self.tokenizer.save_pretrained(out_dir)
