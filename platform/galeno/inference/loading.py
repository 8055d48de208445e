"""A trained model loaded to predict: weights, tokenizer, device, window limit and labels, in one object.

A Serve replica holds one :class:`Loaded` per model and swaps the whole object on reload; evaluation,
fine-tuning's dev scoring and the registered MLflow model load theirs the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

from galeno.corpus.sentences import ClinicalSentenceSplitter
from galeno.inference.bio import as_bio
from galeno.inference.precision import choose_device, prepare_model
from galeno.inference.source import ModelSource


def load_tokenizer(model_dir: str):
    """The model's fast tokenizer, with ``add_prefix_space`` for byte-level BPE (RoBERTa) vocabularies."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    pre = type(tok.backend_tokenizer.pre_tokenizer).__name__ if getattr(tok, "is_fast", False) else ""
    if "ByteLevel" in pre or "ByteLevel" in str(tok.backend_tokenizer.pre_tokenizer):
        tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, add_prefix_space=True)
    return tok


def window_limit(model, tokenizer, max_length: int) -> int:
    """Sub-tokens the model takes, special tokens included: ours, the tokenizer's and the positions' limit."""
    positions = getattr(model.config, "max_position_embeddings", max_length) or max_length
    # RoBERTa numbers positions from padding_idx + 1: two fewer usable (harmless for BERT)
    limit = min(max_length, positions - 2)
    if getattr(tokenizer, "model_max_length", 0) and tokenizer.model_max_length < 1_000_000:
        limit = min(limit, tokenizer.model_max_length)
    return limit


@dataclass
class Loaded:
    """A model, its tokenizer and where they came from; a replica swaps the whole object on reload."""

    kind: str
    source: ModelSource
    model: Any
    tokenizer: Any
    device: Any
    max_length: int
    loaded_at: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.source.brief(), "run_id": self.source.run_id, "path": self.source.path,
                "device": str(self.device), "max_length": self.max_length,
                "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)), **self.extra,
                **({"onnx": self.model.details} if getattr(self.model, "details", None) else {})}


def public_info(loaded: Optional[Loaded]) -> Optional[dict[str, Any]]:
    """What ``/models`` says of a loaded model (without the objects it holds)."""
    if loaded is None:
        return None
    return {k: v for k, v in loaded.info().items() if k not in ("splitter", "specials")}


def local_source(path: str) -> ModelSource:
    """The :class:`ModelSource` of a model folder (see :func:`galeno.inference.source.resolve_source` for URIs)."""
    return ModelSource(uri=str(path), path=str(path))


def specials(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens a single sequence gets before and after its own (``<s>`` ``</s>``, ``[CLS]`` ``[SEP]``),
    read off an encoding: transformers 5 tokenizers no longer build them from ids."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for k in range(len(full) - len(plain) + 1):
        if full[k:k + len(plain)] == plain:
            return full[:k], full[k + len(plain):]
    raise ValueError("cannot tell where the special tokens of this tokenizer go")


def load_fill_mask(source: ModelSource, max_length: int, want_gpu: bool = False, quantize: str = "",
                   dtype: str = "", runtime: str = "torch", device: str = "") -> Loaded:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.path, local_files_only=True)
    if tokenizer.mask_token is None:
        raise ValueError(f"{source.uri}: the tokenizer has no mask token; not a fill-mask model")
    where = choose_device(device, gpu=want_gpu, quantize=quantize, runtime=runtime)
    model = AutoModelForMaskedLM.from_pretrained(source.path, local_files_only=True).eval().to(where)
    limit = window_limit(model, tokenizer, max_length)
    return Loaded("fill-mask", source, prepare_model(model, where, quantize, dtype, runtime, masked_lm=True),
                  tokenizer, where, limit,
                  extra={"mask_token": tokenizer.mask_token, "specials": specials(tokenizer),
                         "quantize": quantize or None, "dtype": dtype or None, "runtime": runtime})


def load_ner(source: ModelSource, max_length: int, want_gpu: bool = False, quantize: str = "",
             dtype: str = "", runtime: str = "torch", device: str = "") -> Loaded:
    from transformers import AutoModelForTokenClassification

    tokenizer = load_tokenizer(source.path)  # add_prefix_space for byte-level BPE, as in training
    where = choose_device(device, gpu=want_gpu, quantize=quantize, runtime=runtime)
    model = AutoModelForTokenClassification.from_pretrained(source.path, local_files_only=True).eval().to(where)
    labels = [as_bio(model.config.id2label[i]) for i in range(len(model.config.id2label))]
    limit = window_limit(model, tokenizer, max_length)
    return Loaded("ner", source, prepare_model(model, where, quantize, dtype, runtime), tokenizer, where, limit,
                  extra={"labels": labels, "splitter": ClinicalSentenceSplitter(), "quantize": quantize or None,
                         "dtype": dtype or None, "runtime": runtime})
