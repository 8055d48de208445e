"""Stable identities shared by the stages: held-out documents and file digests for lineage."""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=None)
def code_digest(*modules: str, length: int = 12) -> str:
    """sha256 prefix over Galeno's version and the source of ``modules`` (dotted names; a package
    counts all its ``.py`` files): what decides whether earlier output of that code may be reused."""
    import importlib.util

    from galeno import __version__

    digest = hashlib.sha256(__version__.encode())
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ValueError(f"no module {name!r} to take the digest of")
        origin = Path(spec.origin)
        files = sorted(origin.parent.rglob("*.py")) if origin.name == "__init__.py" else [origin]
        for path in files:
            digest.update(str(path.relative_to(origin.parent)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:length]


#: Files of an exported model that record where it came from, not what it computes.
_NOT_MODEL = ("galeno.json", "best_step.txt")


def model_digest(model_dir: str | Path, length: int = 16) -> str:
    """sha256 prefix over a Hugging Face model folder's files (weights, config, tokenizer), names
    included, lineage files (galeno.json) left out: equal digests mean the same model."""
    root = Path(model_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name not in _NOT_MODEL):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:length]


def folder_digest(folder: str | Path, pattern: str = "*.parquet", length: int = 16) -> str:
    """sha256 prefix over the files of ``folder`` matching ``pattern`` (names and contents): the
    identity of a stage's data, which a rerun that writes the same files keeps."""
    from galeno import storage

    digest = hashlib.sha256()
    if storage.is_uri(folder):  # an object store's prefix: its direct children, read in chunks
        import fnmatch

        prefix = str(folder).partition("?")[0].rstrip("/") + "/"
        for uri, _, _ in storage.list_files(folder):
            name = uri.partition("?")[0][len(prefix):]
            if "/" not in name and fnmatch.fnmatchcase(name, pattern):
                inner = hashlib.sha256()
                for chunk in storage.iter_chunks(uri):
                    inner.update(chunk)
                digest.update(name.encode() + b"\0" + inner.digest())
        return digest.hexdigest()[:length]
    for path in sorted(Path(folder).glob(pattern)):
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:length]
