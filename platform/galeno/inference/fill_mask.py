"""Fill-mask: the most probable fillers of a mask, with the input text filled in.

The mask is written ``<mask>`` or as the tokenizer's own mask token (``[MASK]`` for BERT); ``<mask>``
is mapped to the latter. A text longer than the model's window is cut to a window of sub-tokens
centred on its masks. Candidates are the ``top_k`` most probable non-special tokens at a mask;
``sequence`` is the *input text* with that mask replaced by the candidate (not the tokenizer's
decoding of the whole input, which would normalise spaces or case). The model reads the text around
the masks normalised as the corpus stage normalises (``normalize_mapped``: NFC and the rest), so a
decomposed accent reads as the word it learned; ``sequence`` and the mask's offsets stay in the
caller's text. Serve answers one mask per
text (:func:`fill_mask_batch`); the registered MLflow model answers every mask (:func:`fill_masks`).
Nothing here logs or raises with the text of a request: clinical text stays out of logs.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from galeno.corpus.normalize import normalize_mapped
from galeno.inference.forward import forward_probs
from galeno.inference.loading import Loaded

#: The mask as clients write it, whatever the tokenizer's own mask token is.
MASK = "<mask>"


class InputError(ValueError):
    """A request the model cannot answer (no mask, several masks); ``code`` names the problem.

    The message never quotes the text.
    """

    def __init__(self, code: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.code, self.status = code, status


def _occurrences(text: str, part: str) -> list[int]:
    out, at = [], text.find(part)
    while at >= 0:
        out.append(at)
        at = text.find(part, at + 1)
    return out


def _find_masks(text: str, mask_token: str, max_masks: Optional[int]) -> list[tuple[int, int]]:
    """(start, end) of each mask of ``text``, written ``<mask>`` or as ``mask_token``."""
    forms = {MASK, mask_token}
    found = sorted({(m, m + len(f)) for f in forms for m in _occurrences(text, f)})
    if not found:
        raise InputError("no_mask", f"the text has no {MASK}: exactly one is needed" if max_masks == 1
                         else f"the text has no {MASK}")
    if max_masks is not None and len(found) > max_masks:
        raise InputError("too_many_masks", f"the text has {len(found)} masks; exactly one {MASK} is supported"
                         if max_masks == 1 else f"the text has {len(found)} masks; at most {max_masks} are supported")
    return found


def _prepare(loaded: Loaded, text: str, max_masks: Optional[int]) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """Model input ids, the masks' positions in them, and the masks' spans in ``text``."""
    tok = loaded.tokenizer
    spans = _find_masks(text, tok.mask_token, max_masks)
    pieces, at = [], 0
    for start, end in spans:  # the text around the masks normalised as the corpus was (NFC, ...)
        pieces += [normalize_mapped(text[at:start])[0], tok.mask_token]
        at = end
    ids = tok("".join(pieces) + normalize_mapped(text[at:])[0], add_special_tokens=False)["input_ids"]
    where = [i for i, t in enumerate(ids) if t == tok.mask_token_id]
    if len(where) != len(spans):
        raise InputError("no_mask", "a mask did not survive tokenisation as one token")
    budget = loaded.max_length - tok.num_special_tokens_to_add(pair=False)
    if len(ids) > budget:  # a window of the text centred on the masks
        if where[-1] - where[0] >= budget:
            raise InputError("masks_too_far_apart", "the masks do not fit in one window of the model")
        centre = (where[0] + where[-1]) // 2
        left = max(0, min(centre - budget // 2, len(ids) - budget))
        ids = ids[left:left + budget]
        where = [w - left for w in where]
    prefix, suffix = loaded.extra["specials"]
    return [*prefix, *ids, *suffix], [w + len(prefix) for w in where], spans


def _filled(text: str, span: tuple[int, int], token_str: str) -> str:
    """``text`` with the mask replaced: a byte-level token's leading space becomes a space only where the
    text has none before the mask; a WordPiece continuation (``##ción``) is glued on."""
    start, end = span
    core = token_str.strip()
    core = core[2:] if core.startswith("##") and len(core) > 2 else core
    if token_str[:1].isspace() and start > 0 and not text[start - 1].isspace():
        core = " " + core
    return text[:start] + core + text[end:]


def fill_masks(loaded: Loaded, items: Sequence[tuple[str, int]], chunk: int = 32, overhead_tokens: int = 0,
               max_masks: Optional[int] = None) -> list[Any]:
    """For each ``(text, top_k)``: one ``{mask: {start, end}, candidates}`` per mask, in text order, or
    the :class:`InputError` of that item. Every mask is predicted with the others still masked."""
    import numpy as np

    out: list[Any] = [None] * len(items)
    prepared: dict[int, tuple[list[int], list[int], list[tuple[int, int]]]] = {}
    for i, (text, _) in enumerate(items):
        try:
            prepared[i] = _prepare(loaded, text, max_masks)
        except InputError as err:
            out[i] = err
    keys = [(i, m) for i in prepared for m in range(len(prepared[i][1]))]
    probs = forward_probs(loaded, [prepared[i][0] for i, _ in keys], chunk,
                          positions=[prepared[i][1][m] for i, m in keys], overhead_tokens=overhead_tokens)
    special = np.array(sorted(set(loaded.tokenizer.all_special_ids)), dtype=np.int64)
    for i in prepared:
        out[i] = []
    for (i, m), p in zip(keys, probs):
        text, top_k = items[i]
        span = prepared[i][2][m]
        scores = p.copy()
        scores[special[special < len(scores)]] = -1.0  # a filler is never <s>, <pad>, ...
        candidates = []
        for token_id in np.argsort(-scores)[:top_k]:
            token_str = loaded.tokenizer.decode([int(token_id)])
            candidates.append({"token": token_str.strip(), "token_id": int(token_id), "token_str": token_str,
                               "score": float(scores[token_id]), "sequence": _filled(text, span, token_str)})
        out[i].append({"mask": {"start": span[0], "end": span[1]}, "candidates": candidates})
    return out


def fill_mask_batch(loaded: Loaded, items: Sequence[tuple[str, int]], chunk: int = 32,
                    overhead_tokens: int = 0) -> list[Any]:
    """For each ``(text, top_k)`` with exactly one mask: ``{mask, candidates}``, or the :class:`InputError`."""
    return [r if isinstance(r, InputError) else r[0]
            for r in fill_masks(loaded, items, chunk, overhead_tokens, max_masks=1)]
