"""How a model runs: its device, its dtype, int8 weights, and the runtime (torch or ONNX Runtime).

One device rule and one set of precision checks for every caller: Serve replicas, ``jobs/evaluate_ner.py``
(which scores a model the way a replica with the same settings runs it), fine-tuning's dev scoring
and the registered MLflow model.
"""

from __future__ import annotations

import logging

from galeno.inference.forward import mlm_parts
from galeno.inference.onnx_runtime import RUNTIMES

log = logging.getLogger(__name__)

#: What ``quantize`` may name: "" (the weights as saved) or "int8".
QUANTIZE = ("", "int8")
#: What ``dtype`` may name: "" (the dtype as saved: float32 for the models we train) or a torch float type.
DTYPES = ("", "float32", "bfloat16", "float16")


def choose_device(device: str = "", *, gpu: bool = True, quantize: str = "", runtime: str = "torch"):
    """``device`` when one is named; else the CPU for an int8 or ONNX Runtime model or where ``gpu`` is
    False; else CUDA when there is one."""
    import torch

    if device:
        return torch.device(device)
    if not gpu or quantize or runtime != "torch":
        return torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_precision(quantize: str, dtype: str, gpu: bool, runtime: str = "torch") -> None:
    """Refuse a ``quantize``/``dtype``/``runtime`` choice that a model on ``gpu`` (or the CPU) cannot run."""
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
    """``model`` as it runs on ``device``: cast to ``dtype`` (bfloat16 uses the AMX/AVX512-BF16
    units of recent CPUs, float16 is for GPUs), or with its ``nn.Linear`` layers dynamically quantised
    to int8 (``quantize="int8"``: weights stored in int8 with a scale per output channel, activations
    quantised on the fly; ``torch.ao.quantization.quantize_dynamic``, CPU only); unchanged when both
    are empty. With ``runtime="onnxruntime"``, exported to ONNX Runtime instead (fused, and quantised
    to int8 with ``quantize="int8"``: :mod:`galeno.inference.onnx_runtime`; a ``masked_lm`` without
    its head, which stays in torch). Check the F1 first:
    ``jobs/evaluate_ner.py --dtype bfloat16`` / ``--quantize int8`` / ``--runtime onnxruntime``."""
    import torch

    device = torch.device(device if device is not None else "cpu")
    check_precision(quantize, dtype, device.type != "cpu", runtime)
    if runtime == "onnxruntime":
        from galeno.inference.onnx_runtime import to_onnxruntime

        parts = mlm_parts(model) if masked_lm else None
        if masked_lm and parts is None:
            raise ValueError(f"runtime: onnxruntime cannot split {type(model).__name__} into encoder and head")
        return to_onnxruntime(model, quantize, mlm_parts=parts)
    if dtype:
        if dtype == "bfloat16" and device.type == "cpu" and not cpu_has_bf16():
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


def cpu_has_bf16() -> bool:
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private torch API: if it is gone, do not warn
        return True
