"""MinHash signatures and LSH banding for near-duplicate documents (the math, no Ray).

Follows Broder (1997) and datatrove's MinHash stage: a document is the set of its word
``ngram``-shingles; ``num_perm = bands * rows`` universal hash functions
``h(x) = ((a*x + b) mod (2^61 - 1)) mod 2^32`` give its signature; two documents whose
signatures agree on all ``rows`` values of any band share a bucket and become a candidate
pair, and a candidate pair only becomes an edge once the fraction of agreeing signature
values (an unbiased estimate of their Jaccard similarity) reaches ``threshold``.

Shingle hashes are folded to 32 bits so that ``a*x + b`` (with ``a, b < 2^32``) never leaves
uint64: numpy wraps silently on overflow, and a wrapped product would no longer be a
universal hash. One :class:`MinHashConfig` feeds signatures, bucketing and clustering, and
:meth:`MinHashConfig.tag` names the output folder, so changing any parameter never reuses
stale results.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

_WORD = re.compile(r"\w+")
_MERSENNE = np.uint64((1 << 61) - 1)
_MAX32 = np.uint64((1 << 32) - 1)
# Shingles per numpy chunk while hashing: bounds the (shingles x num_perm) uint64 matrix.
_CHUNK_SHINGLES = 16_384


@dataclass
class MinHashConfig:
    """Exact and near-duplicate documents: shingling, signature, LSH bands, verification."""

    enabled: bool = True
    """Run document-level deduplication (exact and near duplicates)."""
    ngram: int = 5
    """Words per shingle (casefolded ``\\w+`` tokens); shorter documents are one whole-text shingle."""
    bands: int = 20
    """LSH bands; a pair is a candidate when any band agrees entirely."""
    rows: int = 5
    """Signature values per band (``num_perm = bands * rows``)."""
    threshold: float = 0.7
    """Estimated Jaccard a candidate pair needs to become an edge; pairs at exactly this Jaccard pass half the time, pairs with Jaccard >= 0.8 more than 99%."""
    seed: int = 1
    """Seed of the permutations (a different seed gives different, equally valid signatures)."""
    max_bucket_size: int = 64
    """Buckets up to this size pair all members; larger ones pair sorted neighbours plus every member with the first."""

    def __post_init__(self) -> None:
        if self.ngram < 1:
            raise ValueError(f"minhash.ngram must be >= 1, got {self.ngram}")
        if self.bands < 1 or self.rows < 1:
            raise ValueError(f"minhash.bands and minhash.rows must be >= 1, got {self.bands}x{self.rows}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"minhash.threshold must be in (0, 1], got {self.threshold}")
        if self.max_bucket_size < 2:
            raise ValueError(f"minhash.max_bucket_size must be >= 2, got {self.max_bucket_size}")
        if self.seed < 0:
            raise ValueError(f"minhash.seed must be >= 0, got {self.seed}")

    @property
    def num_perm(self) -> int:
        """Signature length: one hash function per (band, row)."""
        return self.bands * self.rows

    def candidate_probability(self, jaccard: float) -> float:
        """Probability that a pair with this Jaccard shares at least one band (the LSH S-curve)."""
        return 1.0 - (1.0 - jaccard ** self.rows) ** self.bands

    def tag(self) -> str:
        """Short name of every parameter that changes the result (names the output folder)."""
        return (f"mh-n{self.ngram}-b{self.bands}x{self.rows}-t{self.threshold:g}"
                f"-s{self.seed}-m{self.max_bucket_size}")


# --------------------------------------------------------------------------- text -> shingles
def words(text: str) -> list[str]:
    """Casefolded word tokens (Unicode ``\\w+``): punctuation and spacing never matter."""
    return _WORD.findall(text.casefold())


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Bijective 64-bit finaliser (splitmix64): spreads a weak combination over all bits."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _position_constants(n: int, salt: int) -> np.ndarray:
    """Odd 64-bit multipliers, one per position of an n-gram (fixed: they define the hash)."""
    rng = np.random.default_rng(0x5EED0000 + salt)
    return rng.integers(1, 1 << 63, size=n, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def shingle_hashes(tokens: Sequence[str], ngram: int) -> np.ndarray:
    """64-bit hashes of the word ``ngram``-shingles of ``tokens`` (with repeats).

    A document shorter than ``ngram`` words is one shingle, the whole text, so short documents
    still compare (they are then near duplicates only when equal after tokenisation).
    Each word is hashed once with xxh64; a shingle is an order-sensitive combination of its
    words' hashes, which avoids building one string per shingle.
    """
    import xxhash

    if not tokens:
        return np.empty(0, dtype=np.uint64)
    wh = np.fromiter((xxhash.xxh64_intdigest(t.encode("utf-8")) for t in tokens), dtype=np.uint64, count=len(tokens))
    n = min(ngram, len(tokens))
    k = _position_constants(ngram, 0)
    m = len(tokens) - n + 1
    acc = np.zeros(m, dtype=np.uint64)
    for j in range(n):  # uint64 products wrap mod 2^64 on purpose: a hash, not arithmetic
        acc += wh[j:j + m] * k[j]
    return _splitmix64(acc + np.uint64(n))


# --------------------------------------------------------------------------- signatures
class Signer:
    """Computes MinHash signatures for one :class:`MinHashConfig` (same seed, same hashes)."""

    def __init__(self, cfg: MinHashConfig):
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        # a, b < 2^32 and 32-bit x keep a*x + b below 2^64 (no silent uint64 wrap-around).
        self.a = rng.integers(1, 1 << 32, size=cfg.num_perm, dtype=np.uint64)
        self.b = rng.integers(0, 1 << 32, size=cfg.num_perm, dtype=np.uint64)

    def _minhash(self, x32: np.ndarray, starts: np.ndarray) -> np.ndarray:
        phv = (x32[:, None] * self.a[None, :] + self.b[None, :]) % _MERSENNE & _MAX32
        return np.minimum.reduceat(phv, starts, axis=0).astype(np.uint32)

    def signatures(self, shingle_sets: Iterable[np.ndarray]) -> np.ndarray:
        """One ``num_perm`` uint32 signature per non-empty shingle array, stacked (docs x num_perm)."""
        out: list[np.ndarray] = []
        chunk: list[np.ndarray] = []
        size = 0

        def flush() -> None:
            nonlocal chunk, size
            if chunk:
                lens = np.fromiter((len(c) for c in chunk), dtype=np.int64, count=len(chunk))
                starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
                h = np.concatenate(chunk)
                out.append(self._minhash((h ^ (h >> np.uint64(32))) & _MAX32, starts))
            chunk, size = [], 0

        for sh in shingle_sets:
            if len(sh) == 0:
                raise ValueError("a document without shingles has no signature")
            chunk.append(sh)
            size += len(sh)
            if size >= _CHUNK_SHINGLES:
                flush()
        flush()
        if not out:
            return np.empty((0, self.cfg.num_perm), dtype=np.uint32)
        return np.concatenate(out)

    def signature_of(self, text: str) -> np.ndarray | None:
        """Signature of one text (``None`` when it has no word at all)."""
        sh = shingle_hashes(words(text), self.cfg.ngram)
        return self.signatures([sh])[0] if len(sh) else None


# --------------------------------------------------------------------------- LSH
def band_buckets(sigs: np.ndarray, cfg: MinHashConfig) -> np.ndarray:
    """(docs x bands) int64 bucket ids: a hash of each band's ``rows`` signature values.

    Two documents share a bucket of band ``b`` exactly when their band-``b`` values agree
    (up to a 2^-64 hash collision); the band index is a separate column downstream.
    """
    n = sigs.shape[0]
    bands = sigs.reshape(n, cfg.bands, cfg.rows).astype(np.uint64)
    k = _position_constants(cfg.rows, 1)
    acc = np.zeros((n, cfg.bands), dtype=np.uint64)
    for j in range(cfg.rows):
        acc = _splitmix64(acc ^ (bands[:, :, j] * k[j]))
    return acc.view(np.int64)


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Fraction of agreeing signature values (row-wise for 2-D inputs)."""
    return np.mean(sig_a == sig_b, axis=-1)


def bucket_pairs(n: int, max_bucket_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(i, j)``, ``i < j``, to compare inside a bucket of ``n`` members sorted by key.

    Small buckets give all pairs. A big bucket (a template, boilerplate) would give O(n^2)
    pairs; there we pair sorted neighbours plus everyone with the first member, which keeps
    the bucket connected in the graph with O(n) candidate pairs.
    """
    if n < 2:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    if n <= max_bucket_size:
        i, j = np.triu_indices(n, k=1)
        return i.astype(np.int64), j.astype(np.int64)
    first = np.zeros(n - 1, dtype=np.int64)
    rest = np.arange(1, n, dtype=np.int64)
    neigh_i = np.arange(1, n - 1, dtype=np.int64)
    return np.concatenate([first, neigh_i]), np.concatenate([rest, neigh_i + 1])
