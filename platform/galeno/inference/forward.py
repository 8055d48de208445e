"""Batched forward passes: sequences sorted by length, cut into passes where padding would cost
more than another pass, and softmax probabilities back in input order."""

from __future__ import annotations

from typing import Any, Optional, Sequence


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


def mlm_parts(model):
    """(encoder, head) of a Hugging Face masked LM (``roberta`` + ``lm_head``, ``bert`` + ``cls``, ...):
    the model's base model and its one other child, or None where the model is not built that way; an
    ONNX Runtime masked LM says its own (:class:`galeno.inference.onnx_runtime.OnnxModel`)."""
    if getattr(model, "mlm_parts", None) is not None:
        return model.mlm_parts
    if not hasattr(model, "children"):
        return None
    base = getattr(model, "base_model", None)
    if base is None or base is model:
        return None
    heads = [child for child in model.children() if child is not base]
    return (base, heads[0]) if len(heads) == 1 else None


def forward_probs(loaded, sequences: Sequence[Sequence[int]], chunk: int,
                  positions: Optional[Sequence[int]] = None, overhead_tokens: int = 0) -> list[Any]:
    """Softmax probabilities of every sequence of ``loaded``'s model (a list of [length, classes] float arrays), computed in
    forward passes of at most ``chunk`` sequences sorted by length and split where padding would cost
    more than another pass (:func:`plan_chunks`). With ``positions`` (one per sequence), only that
    position's probabilities ([classes]): a masked LM then runs its head on that position alone (see
    :func:`mlm_parts`), not on every position of the batch."""
    import torch

    model, device = loaded.model, loaded.device
    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    parts = mlm_parts(model) if positions is not None else None
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
            ids, attention = ids.to(device), attention.to(device)
            if positions is None:
                logits = model(input_ids=ids, attention_mask=attention).logits
            else:
                at = (torch.arange(len(idx), device=ids.device),
                      torch.tensor([positions[i] for i in idx], device=ids.device))
                if parts is not None:
                    logits = parts[1](parts[0](input_ids=ids, attention_mask=attention).last_hidden_state[at])
                else:
                    logits = model(input_ids=ids, attention_mask=attention).logits[at]
            probs = logits.float().softmax(-1).cpu().numpy()
            for row, i in enumerate(idx):
                out[i] = probs[row, :len(sequences[i])] if positions is None else probs[row]
    return out
