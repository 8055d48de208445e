"""Stable identities shared by the stages: held-out documents and file digests for lineage."""

from __future__ import annotations

import hashlib
from pathlib import Path


def is_heldout(source: str, doc_id: str, fraction: float) -> bool:
    """Whether a corpus document is kept out of training: a hash, so no state and no drift.

    Source and id rather than the corpus's internal sort key: that key holds the source's
    priority, which changes when the corpus config lists its sources in another order. The
    sets are nested (held out at 1% ⇒ held out at 5%), so the tokenizer's held-out documents
    are also MLM validation documents whenever its fraction is not larger.
    """
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{source}\x1f{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


def file_hash(path: str | Path, length: int = 12) -> str:
    """sha256 prefix of a file; empty string where it is absent."""
    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest()[:length] if p.is_file() else ""
