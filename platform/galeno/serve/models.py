"""What a model replica computes, without Serve: loading a model by URI, fill-mask and NER on a batch.

Kept apart from the deployments (``galeno.serve.app``) so it can be read and tested as plain
functions. Nothing here logs or raises with the text of a request: clinical text stays out of logs.

**Fill-mask.** A text has exactly one mask, written ``<mask>`` or as the tokenizer's own mask
token (``[MASK]`` for BERT); ``<mask>`` is mapped to the latter. A text longer than the model's
window is cut to a window of sub-tokens centred on the mask. Candidates are the ``top_k``
most probable non-special tokens at the mask; ``sequence`` is the *input text* with the mask
replaced by the candidate (not the tokenizer's decoding of the whole input, which would
normalise spaces or case).

**NER.** A text is split into sentences and words with character offsets by
:func:`galeno.ner.data.make_document` (the training-time tokenisation), encoded with sliding
windows by :func:`galeno.ner.align.encode_sentences`, and the windows' word predictions are
stitched back with :func:`galeno.ner.align.stitch`, as evaluation does. Entities are read from
the word labels as BIO (seqeval's default mode: an ``I-X`` after no ``X`` opens an entity);
``start``/``end`` are the character offsets of the first word's start and the last word's
end in the input, so ``text == input[start:end]``. Offsets count Unicode code points (Python
string indices), as the JSON string decodes.

Aggregation strategies (per request, ``aggregation_strategy``); the entity score is always the
mean of its words' scores:

* ``first``: a word's label is the argmax of its first sub-token's probabilities (what the model
  was trained on: labels sit on first sub-tokens); its score is that probability.
* ``simple`` (default): the same as ``first``. In Hugging Face's pipeline ``simple`` labels every
  sub-token on its own and may cut a word in two; here words come from ``make_document`` and
  only first sub-tokens carry trained labels, so that split cannot happen and both give the same.
* ``average``: the probabilities of all of a word's sub-tokens are averaged; label and score
  are the argmax of the average.
* ``max``: the word takes the label and probability of its single most confident sub-token.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

log = logging.getLogger(__name__)

#: The mask as clients write it, whatever the tokenizer's own mask token is.
MASK = "<mask>"


class InputError(ValueError):
    """A request the model cannot answer (no mask, several masks); ``code`` names the problem.

    The message never quotes the text.
    """

    def __init__(self, code: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.code, self.status = code, status


# --------------------------------------------------------------------------- loading
@dataclass
class ModelSource:
    """Where a loaded model came from: the URI asked for and, for a registry URI, name, version and run."""

    uri: str
    path: str
    name: Optional[str] = None
    version: Optional[str] = None
    run_id: Optional[str] = None

    def brief(self) -> dict[str, Any]:
        """The ``model`` field of every answer."""
        return {"uri": self.uri, "name": self.name, "version": self.version}


def follows(uri: str) -> bool:
    """Does ``uri`` name a registry version that can change under it (an alias, or ``latest``)?"""
    from galeno.registry import split_models_uri

    return uri.startswith("models:/") and split_models_uri(uri)[2] != "version"


def registry_version(uri: str, tracking_uri: str = "") -> tuple[str, str]:
    """``(name, version)`` that a ``models:/`` URI points at now: one registry call, nothing downloaded."""
    from galeno.registry import _parse_models_uri
    from galeno.tracking import TrackingConfig, client

    return _parse_models_uri(uri, client(TrackingConfig(tracking_uri=tracking_uri)))


def resolve_source(uri: str, tracking_uri: str = "", cache: str = "") -> ModelSource:
    """Resolve ``uri`` now: an alias gives the version it points at *now* (a moved alias is picked up)."""
    if not uri.startswith("models:/"):
        if not (Path(uri) / "config.json").is_file():
            raise FileNotFoundError(f"{uri} is not a Hugging Face model directory (no config.json)")
        return ModelSource(uri=uri, path=str(Path(uri).resolve()))
    from galeno.registry import _parse_models_uri, resolve_model
    from galeno.tracking import TrackingConfig, client

    cfg = TrackingConfig(tracking_uri=tracking_uri)
    mc = client(cfg)
    name, version = _parse_models_uri(uri, mc)
    # resolve the pinned version, not the alias again: the alias may move between two calls
    path = resolve_model(f"models:/{name}/{version}", cfg, cache or None)
    return ModelSource(uri=uri, path=path, name=name, version=version, run_id=mc.get_model_version(name, version).run_id)


def _device(want_gpu: bool):
    import torch

    return torch.device("cuda" if want_gpu and torch.cuda.is_available() else "cpu")


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


#: What ``quantize`` may name: "" (the weights as saved) or "int8".
QUANTIZE = ("", "int8")
#: What ``dtype`` may name: "" (the dtype as saved: float32 for the models we train) or a torch float type.
DTYPES = ("", "float32", "bfloat16", "float16")


def check_precision(quantize: str, dtype: str, gpu: bool, runtime: str = "torch") -> None:
    """Refuse a ``quantize``/``dtype``/``runtime`` choice that a replica (``gpu``: on a GPU) cannot run."""
    from galeno.serve.onnx_runtime import RUNTIMES

    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
    if runtime == "onnxruntime" and gpu:
        raise ValueError("runtime: onnxruntime is for CPU replicas; a GPU replica (num_gpus > 0) runs torch")
    if runtime == "onnxruntime" and dtype not in ("", "float32"):
        raise ValueError(f"runtime: onnxruntime runs float32 (or quantize: int8), not dtype {dtype}")
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {QUANTIZE}, not {quantize!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, not {dtype!r}")
    if quantize and gpu:
        raise ValueError("quantize: int8 is for CPU replicas; a GPU replica (num_gpus > 0) cannot use it")
    if quantize and dtype not in ("", "float32"):
        raise ValueError(f"quantize: int8 quantises a float32 model; it cannot be combined with dtype {dtype}")
    if dtype == "float16" and not gpu:
        raise ValueError("dtype float16 is for GPU replicas; a CPU replica uses bfloat16")


def prepare_model(model, device, quantize: str = "", dtype: str = "", runtime: str = "torch",
                  masked_lm: bool = False):
    """``model`` as a replica runs it on ``device``: cast to ``dtype`` (bfloat16 uses the AMX/AVX512-BF16
    units of recent CPUs, float16 is for GPUs), or with its ``nn.Linear`` layers dynamically quantised
    to int8 (``quantize="int8"``: weights stored in int8 with a scale per output channel, activations
    quantised on the fly;
    ``torch.ao.quantization.quantize_dynamic``, CPU only); unchanged when both are empty. With
    ``runtime="onnxruntime"``, exported to ONNX Runtime instead (fused, and quantised to int8 with
    ``quantize="int8"``: :mod:`galeno.serve.onnx_runtime`; a ``masked_lm`` without its head, which
    stays in torch). Check the F1 first:
    ``jobs/evaluate_ner.py --dtype bfloat16`` / ``--quantize int8`` / ``--runtime onnxruntime``."""
    import torch

    device = torch.device(device if device is not None else "cpu")
    check_precision(quantize, dtype, device.type != "cpu", runtime)
    if runtime == "onnxruntime":
        from galeno.serve.onnx_runtime import to_onnxruntime

        parts = _mlm_parts(model) if masked_lm else None
        if masked_lm and parts is None:
            raise ValueError(f"runtime: onnxruntime cannot split {type(model).__name__} into encoder and head")
        return to_onnxruntime(model, quantize, mlm_parts=parts)
    if dtype:
        if dtype == "bfloat16" and device.type == "cpu" and not _cpu_has_bf16():
            log.warning("this CPU has no native bfloat16 (AVX512-BF16 or AMX): dtype bfloat16 will run slower "
                        "than float32 here")
        model = model.to(getattr(torch, dtype))
    if not quantize:
        return model
    import warnings

    with warnings.catch_warnings():
        # torch 2.13 marks its quantised tensor API deprecated; the kernels are unchanged
        warnings.simplefilter("ignore")
        # a scale per output channel: per-tensor weights cost 3.6 F1 points on an AVX2 CPU, per-channel 0.3,
        # at the same speed (docs/benchmarks.md)
        spec = {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}
        return torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8)


def _cpu_has_bf16() -> bool:
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private torch API: if it is gone, do not warn
        return True


def load_fill_mask(source: ModelSource, max_length: int, want_gpu: bool = False, quantize: str = "",
                   dtype: str = "", runtime: str = "torch") -> Loaded:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.path, local_files_only=True)
    if tokenizer.mask_token is None:
        raise ValueError(f"{source.uri}: the tokenizer has no mask token; not a fill-mask model")
    device = _device(want_gpu)
    model = AutoModelForMaskedLM.from_pretrained(source.path, local_files_only=True).eval().to(device)
    limit = window_limit(model, tokenizer, max_length)
    return Loaded("fill-mask", source, prepare_model(model, device, quantize, dtype, runtime, masked_lm=True),
                  tokenizer, device, limit,
                  extra={"mask_token": tokenizer.mask_token, "specials": _specials(tokenizer),
                         "quantize": quantize or None, "dtype": dtype or None, "runtime": runtime})


def _specials(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens a single sequence gets before and after its own (``<s>`` ``</s>``, ``[CLS]`` ``[SEP]``),
    read off an encoding: transformers 5 tokenizers no longer build them from ids."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for k in range(len(full) - len(plain) + 1):
        if full[k:k + len(plain)] == plain:
            return full[:k], full[k + len(plain):]
    raise ValueError("cannot tell where the special tokens of this tokenizer go")


def load_ner(source: ModelSource, max_length: int, want_gpu: bool = False, quantize: str = "",
             dtype: str = "", runtime: str = "torch") -> Loaded:
    from transformers import AutoModelForTokenClassification

    from galeno.corpus.sentences import ClinicalSentenceSplitter
    from galeno.ner.task import load_tokenizer

    tokenizer = load_tokenizer(source.path)  # add_prefix_space for byte-level BPE, as in training
    device = _device(want_gpu)
    model = AutoModelForTokenClassification.from_pretrained(source.path, local_files_only=True).eval().to(device)
    labels = [_bio(model.config.id2label[i]) for i in range(len(model.config.id2label))]
    limit = window_limit(model, tokenizer, max_length)
    return Loaded("ner", source, prepare_model(model, device, quantize, dtype, runtime), tokenizer, device, limit,
                  extra={"labels": labels, "splitter": ClinicalSentenceSplitter(), "quantize": quantize or None,
                         "dtype": dtype or None, "runtime": runtime})


def _bio(label: str) -> str:
    """A label as a BIO tag; a bare type (``DRUG``) counts as inside that type."""
    return label if label == "O" or label[:2] in ("B-", "I-") else f"I-{label}"


def public_info(loaded: Optional[Loaded]) -> Optional[dict[str, Any]]:
    if loaded is None:
        return None
    return {k: v for k, v in loaded.info().items() if k not in ("splitter", "specials")}


# --------------------------------------------------------------------------- forward passes
def plan_chunks(lengths: Sequence[int], max_rows: int, overhead_tokens: int) -> list[tuple[int, int]]:
    """Split sequences sorted by length (``lengths`` ascending) into forward passes ``[start, end)``.

    A pass costs about ``overhead_tokens + rows × width`` (its width: its longest sequence, which
    every row is padded to), so the plan minimises the sum of that over the passes, with at most
    ``max_rows`` rows each (dynamic programming, O(n × max_rows)). The overhead stands for what a
    pass costs whatever its size: reading every weight once, one launch per layer. Large, few passes
    with some padding; small, passes of near-equal lengths. ``overhead_tokens=0``: fixed passes of
    ``max_rows``, however much they pad.
    """
    n = len(lengths)
    if overhead_tokens <= 0:
        return [(a, min(a + max_rows, n)) for a in range(0, n, max_rows)]
    best = [0] + [None] * n  # best[j]: least cost of the first j sequences
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        width = lengths[j - 1]
        for i in range(max(0, j - max_rows), j):
            cost = best[i] + overhead_tokens + (j - i) * width
            if best[j] is None or cost < best[j]:
                best[j], cut[j] = cost, i
    plan, j = [], n
    while j:
        plan.append((cut[j], j))
        j = cut[j]
    return plan[::-1]


def _forward(loaded: Loaded, sequences: Sequence[Sequence[int]], chunk: int,
             positions: Optional[Sequence[int]] = None, overhead_tokens: int = 0):
    """Softmax probabilities of every sequence (a list of [length, classes] float arrays), computed in
    forward passes of at most ``chunk`` sequences sorted by length and split where padding would cost
    more than another pass (:func:`plan_chunks`). With ``positions`` (one per sequence), only that
    position's probabilities ([classes]): a masked LM then runs its head on that position alone (see
    :func:`_mlm_parts`), not on every position of the batch."""
    import torch

    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    parts = _mlm_parts(loaded.model) if positions is not None else None
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out: list[Any] = [None] * len(sequences)
    with torch.inference_mode():
        for a, b in plan_chunks([len(sequences[i]) for i in order], chunk, overhead_tokens):
            idx = order[a:b]
            width = max(len(sequences[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            attention = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, :len(sequences[i])] = torch.tensor(list(sequences[i]), dtype=torch.long)
                attention[row, :len(sequences[i])] = 1
            ids, attention = ids.to(loaded.device), attention.to(loaded.device)
            if positions is None:
                logits = loaded.model(input_ids=ids, attention_mask=attention).logits
            else:
                at = (torch.arange(len(idx), device=ids.device),
                      torch.tensor([positions[i] for i in idx], device=ids.device))
                if parts is not None:
                    logits = parts[1](parts[0](input_ids=ids, attention_mask=attention).last_hidden_state[at])
                else:
                    logits = loaded.model(input_ids=ids, attention_mask=attention).logits[at]
            probs = logits.float().softmax(-1).cpu().numpy()
            for row, i in enumerate(idx):
                out[i] = probs[row, :len(sequences[i])] if positions is None else probs[row]
    return out


def _mlm_parts(model):
    """(encoder, head) of a Hugging Face masked LM (``roberta`` + ``lm_head``, ``bert`` + ``cls``, ...):
    the model's base model and its one other child, or None where the model is not built that way; an
    ONNX Runtime masked LM says its own (:class:`galeno.serve.onnx_runtime.OnnxModel`)."""
    if getattr(model, "mlm_parts", None) is not None:
        return model.mlm_parts
    if not hasattr(model, "children"):
        return None
    base = getattr(model, "base_model", None)
    if base is None or base is model:
        return None
    heads = [child for child in model.children() if child is not base]
    return (base, heads[0]) if len(heads) == 1 else None


# --------------------------------------------------------------------------- fill-mask
def _find_mask(text: str, mask_token: str) -> tuple[int, int]:
    """(start, end) of the one mask of ``text``, written ``<mask>`` or as ``mask_token``."""
    forms = {MASK, mask_token}
    found = sorted({(m, m + len(f)) for f in forms for m in _occurrences(text, f)})
    if not found:
        raise InputError("no_mask", f"the text has no {MASK}: exactly one is needed")
    if len(found) > 1:
        raise InputError("too_many_masks", f"the text has {len(found)} masks; exactly one {MASK} is supported")
    return found[0]


def _occurrences(text: str, part: str) -> list[int]:
    out, at = [], text.find(part)
    while at >= 0:
        out.append(at)
        at = text.find(part, at + 1)
    return out


def _prepare_fill_mask(loaded: Loaded, text: str) -> tuple[list[int], int, tuple[int, int]]:
    """Model input ids, the mask's position in them, and the mask's span in ``text``."""
    tok = loaded.tokenizer
    start, end = _find_mask(text, tok.mask_token)
    ids = tok(text[:start] + tok.mask_token + text[end:], add_special_tokens=False)["input_ids"]
    where = [i for i, t in enumerate(ids) if t == tok.mask_token_id]
    if len(where) != 1:
        raise InputError("no_mask", "the mask did not survive tokenisation as one token")
    budget = loaded.max_length - tok.num_special_tokens_to_add(pair=False)
    if len(ids) > budget:  # a window of the text centred on the mask
        left = max(0, min(where[0] - budget // 2, len(ids) - budget))
        ids = ids[left:left + budget]
    prefix, suffix = loaded.extra["specials"]
    full = [*prefix, *ids, *suffix]
    return full, full.index(tok.mask_token_id), (start, end)


def _filled(text: str, span: tuple[int, int], token_str: str) -> str:
    """``text`` with the mask replaced: a byte-level token's leading space becomes a space only where the
    text has none before the mask; a WordPiece continuation (``##ción``) is glued on."""
    start, end = span
    core = token_str.strip()
    core = core[2:] if core.startswith("##") and len(core) > 2 else core
    if token_str[:1].isspace() and start > 0 and not text[start - 1].isspace():
        core = " " + core
    return text[:start] + core + text[end:]


def fill_mask_batch(loaded: Loaded, items: Sequence[tuple[str, int]], chunk: int = 32,
                    overhead_tokens: int = 0) -> list[Any]:
    """For each ``(text, top_k)``: a dict ``{mask, candidates}``, or the :class:`InputError` of that item."""
    import numpy as np

    out: list[Any] = [None] * len(items)
    prepared: dict[int, tuple[list[int], int, tuple[int, int]]] = {}
    for i, (text, _) in enumerate(items):
        try:
            prepared[i] = _prepare_fill_mask(loaded, text)
        except InputError as err:
            out[i] = err
    keys = list(prepared)
    probs = _forward(loaded, [prepared[i][0] for i in keys], chunk, positions=[prepared[i][1] for i in keys],
                     overhead_tokens=overhead_tokens)
    special = np.array(sorted(set(loaded.tokenizer.all_special_ids)), dtype=np.int64)
    for i, p in zip(keys, probs):
        text, top_k = items[i]
        span = prepared[i][2]
        scores = p.copy()
        scores[special[special < len(scores)]] = -1.0  # a filler is never <s>, <pad>, ...
        best = np.argsort(-scores)[:top_k]
        candidates = []
        for token_id in best:
            token_str = loaded.tokenizer.decode([int(token_id)])
            candidates.append({"token": token_str.strip(), "token_id": int(token_id), "token_str": token_str,
                               "score": float(scores[token_id]), "sequence": _filled(text, span, token_str)})
        out[i] = {"mask": {"start": span[0], "end": span[1]}, "candidates": candidates}
    return out


# --------------------------------------------------------------------------- NER
def _word_values(window: dict[str, Any], probs) -> list[Any]:
    """Per word of ``window``: (first sub-token probs, mean probs, probs of the most confident sub-token)."""
    positions: dict[int, list[int]] = {}
    for k, w in enumerate(window["word_ids"]):
        if w is not None:
            positions.setdefault(w - window["word_start"], []).append(k)
    out: list[Any] = [None] * window["n_words"]
    for w, where in positions.items():
        rows = probs[where]
        out[w] = (rows[0], rows.mean(0), rows[int(rows.max(1).argmax())])
    return out


_STRATEGY_SLOT = {"simple": 0, "first": 0, "average": 1, "max": 2}


def ner_batch(loaded: Loaded, items: Sequence[tuple[Sequence[str], str]], *, stride: int,
              chunk: int = 32, overhead_tokens: int = 0) -> list[list[list[dict[str, Any]]]]:
    """For each ``(texts, aggregation_strategy)``: per text, its entities ``{label, text, start, end, score}``."""
    from galeno.ner.align import encode_sentences, stitch
    from galeno.ner.data import make_document
    from galeno.ner.metrics import bio_spans

    texts = [(i, j, text) for i, (group, _) in enumerate(items) for j, text in enumerate(group)]
    sentences, owner = [], []  # owner[n]: index into texts of sentence n
    for k, (_, _, text) in enumerate(texts):
        doc, _ = make_document("request", text, [], loaded.extra["splitter"])
        sentences += doc.sentences
        owner += [k] * len(doc.sentences)
    windows = encode_sentences(loaded.tokenizer, sentences, {"O": 0}, loaded.max_length, stride)
    probs = _forward(loaded, [w["input_ids"] for w in windows], chunk, overhead_tokens=overhead_tokens)
    per_word = stitch(windows, [_word_values(w, p) for w, p in zip(windows, probs)], default=None)
    labels = loaded.extra["labels"]
    out: list[list[list[dict[str, Any]]]] = [[[] for _ in group] for group, _ in items]
    for n, (sentence, values) in enumerate(zip(sentences, per_word)):
        i, j, text = texts[owner[n]]
        slot = _STRATEGY_SLOT[items[i][1]]
        tags, scores = [], []
        for v in values:
            if v is None:  # a word with no sub-token
                tags.append("O")
                scores.append(0.0)
                continue
            best = int(v[slot].argmax())
            tags.append(labels[best])
            scores.append(float(v[slot][best]))
        for label, first, last in bio_spans(tags, "default"):
            start, end = sentence.tokens[first].start, sentence.tokens[last - 1].end
            out[i][j].append({"label": label, "text": text[start:end], "start": start, "end": end,
                              "score": sum(scores[first:last]) / (last - first)})
    return out
