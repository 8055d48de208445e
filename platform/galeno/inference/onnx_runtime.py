"""A replica's model on ONNX Runtime (``runtime: onnxruntime``), CPU only.

The Hugging Face model is exported to ONNX when the replica loads it (TorchScript exporter, eager
attention, dynamic batch and length), its graph fused for transformers (attention, GELU,
LayerNorm: ``onnxruntime.transformers.optimizer``) where ONNX Runtime recognises the architecture,
and with ``quantize: int8`` its MatMuls dynamically quantised (int8 weights, activations quantised
on the fly: ``onnxruntime.quantization.quantize_dynamic``). The files live in a temporary folder
only while the session is built. What comes back is called like the torch model it replaces
(``model(input_ids=..., attention_mask=...)`` → ``.logits`` as a torch tensor), so the replica's
code, ``galeno.inference.token_classification`` and ``jobs/evaluate_ner.py --runtime onnxruntime`` run it
unchanged. A masked LM is exported without its head: the replica runs the head in torch on the
mask's position only (:func:`galeno.inference.forward.mlm_parts`).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

log = logging.getLogger(__name__)

#: What ``runtime`` may name: torch (the default) or ONNX Runtime (CPU replicas).
RUNTIMES = ("torch", "onnxruntime")
OPSET = 17


class OnnxModel:
    """An ONNX Runtime session standing in for a Hugging Face model: ``model(input_ids=, attention_mask=)``
    returns an object whose ``field`` (``logits`` or ``last_hidden_state``) is a torch tensor."""

    def __init__(self, session, field: str, config, head=None, encoder: Optional["OnnxModel"] = None,
                 details: Optional[dict[str, Any]] = None):
        self.session, self.field, self.config = session, field, config
        self.details = details or {}
        # a masked LM: (encoder session, torch head), what the replica's fill-mask path looks for
        self.mlm_parts = (encoder, head) if head is not None else None

    def __call__(self, input_ids, attention_mask, **_: Any):
        import torch

        if self.mlm_parts is not None:  # the whole masked LM: the head on every position
            encoder, head = self.mlm_parts
            return SimpleNamespace(logits=head(encoder(input_ids, attention_mask).last_hidden_state))
        feed = {"input_ids": input_ids.cpu().numpy(), "attention_mask": attention_mask.cpu().numpy()}
        out = self.session.run(None, feed)[0]
        return SimpleNamespace(**{self.field: torch.from_numpy(out)})

    # what callers of a torch module do to it
    def eval(self) -> "OnnxModel":
        return self

    def to(self, device) -> "OnnxModel":
        if str(device).split(":")[0] != "cpu":
            raise ValueError("an ONNX Runtime model runs on the CPU here")
        return self


def _export(module, field: str, path: Path) -> None:
    import warnings

    import torch

    class Exportable(torch.nn.Module):  # (input_ids, attention_mask) → the one output tensor
        def __init__(self):
            super().__init__()
            self.inner = module

        def forward(self, input_ids, attention_mask):
            return getattr(self.inner(input_ids=input_ids, attention_mask=attention_mask), field)

    wrapped = Exportable().eval()
    ids = torch.full((2, 8), 5, dtype=torch.long)
    attention = torch.ones((2, 8), dtype=torch.long)
    axes = {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
            field: {0: "batch", 1: "length"}}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches
        torch.onnx.export(wrapped, (ids, attention), str(path), input_names=["input_ids", "attention_mask"],
                          output_names=[field], dynamic_axes=axes, opset_version=OPSET, dynamo=False)


def _fuse(path: Path, config) -> dict[str, int]:
    """Fuse the graph in place for a BERT-like encoder; returns the fused operators' counts ({} if not fused)."""
    heads, hidden = getattr(config, "num_attention_heads", 0), getattr(config, "hidden_size", 0)
    if not heads or not hidden:
        return {}
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        fused = optimize_model(str(path), model_type="bert", num_heads=heads, hidden_size=hidden)
        fused.save_model_to_file(str(path))
        return {k: v for k, v in fused.get_fused_operator_statistics().items() if v}
    except Exception as err:  # noqa: BLE001  (an architecture the fusion does not know: run unfused)
        log.warning("ONNX Runtime's transformer fusion failed (%s); running the graph unfused", type(err).__name__)
        return {}


def _quantize(src: Path, dst: Path, seven_bit: bool) -> None:
    """Dynamic int8: weights per output channel (a scale per row, not one per matrix). On a CPU without
    VNNI (AVX2 only) ONNX Runtime multiplies u8 activations by s8 weights with an instruction whose
    16-bit pair sums saturate, so there the weights get 7 bits (``seven_bit``: ``reduce_range``). Both
    measured on PharmaCoNER dev (docs/benchmarks.md): 8-bit per-tensor weights cost 1.5 F1 points on AVX2."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # it logs "pre-process before quantization" through the root logger
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=seven_bit,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # the fused ops' outputs
    finally:
        root.setLevel(level)


def cpu_has_vnni() -> bool:
    """Whether this CPU has int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX-INT8); False
    where the CPU's flags cannot be read (Linux's /proc/cpuinfo), which keeps the safe 7-bit weights."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def to_onnxruntime(model, quantize: str = "", threads: Optional[int] = None, mlm_parts=None) -> OnnxModel:
    """``model`` (a Hugging Face token classifier, or with ``mlm_parts=(encoder, head)`` a masked LM)
    exported, fused, quantised when ``quantize="int8"``, and loaded in an ONNX Runtime session with
    ``threads`` intra-op threads (torch's count by default). ``model`` itself is left on eager
    attention, the form that was exported; the callers drop it for what this returns."""
    import torch

    started = time.perf_counter()
    threads = threads or torch.get_num_threads()
    module, field = (mlm_parts[0], "last_hidden_state") if mlm_parts else (model, "logits")
    _eager_attention(model)
    with tempfile.TemporaryDirectory(prefix="galeno-onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        _export(module, field, path)
        fused = _fuse(path, model.config)
        seven_bit = quantize == "int8" and not cpu_has_vnni()  # only int8 weights care
        if quantize == "int8":
            _quantize(path, Path(tmp) / "model-int8.onnx", seven_bit)
            path = Path(tmp) / "model-int8.onnx"
        size = os.path.getsize(path)
        session = _session(path, threads)
    details = {"fused": fused, "onnx_mb": round(size / 1e6, 1), "threads": threads,
               **({"int8_weights": "per-channel, 7-bit" if seven_bit else "per-channel"}
                  if quantize == "int8" else {}),
               "build_s": round(time.perf_counter() - started, 1)}
    log.info("ONNX Runtime model built in %.1f s (%s, %.0f MB, fused: %s)", details["build_s"],
             quantize or "float32", size / 1e6, fused or "none")
    if mlm_parts:
        encoder = OnnxModel(session, field, model.config, details=details)
        return OnnxModel(session, "logits", model.config, head=mlm_parts[1].float(), encoder=encoder, details=details)
    return OnnxModel(session, field, model.config, details=details)


def _eager_attention(model) -> None:
    """Export the attention as plain matmuls and softmax, the pattern ONNX Runtime fuses (SDPA exports as
    a pattern it does not recognise)."""
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None:
        try:
            setter("eager")
            return
        except Exception:  # noqa: BLE001  (a model without that choice: export what it has)
            pass
    if hasattr(model.config, "_attn_implementation"):
        model.config._attn_implementation = "eager"
