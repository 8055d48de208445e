"""Global deduplication on Ray Data: repeated sentences, exact and near-duplicate documents.

Runs after the per-shard phase, on the Arrow rows of :mod:`galeno.corpus.document`. Every
step is a hash-partitioned shuffle (``repartition(keys=...)``) followed by a ``map_batches``
that sees whole partitions, so no process ever holds more than one partition: there is no
dictionary of all hashes anywhere. Whenever copies compete, the row with the smallest
``key`` (source priority, then source, then id) keeps its copy, so the result does not
depend on the number of partitions or on the order in which blocks arrive.

* :func:`dedup_sentences`: a sentence repeated anywhere in the corpus is kept once
  (``duplicate_line`` within a source, ``cross_corpus_duplicate`` across sources; the
  Gopher/RefinedWeb line-level dedup, applied to clinical sentences). A document left
  with no sentence is dropped as ``duplicate_lines``.
* :func:`dedup_documents`: exact duplicates (hash of the normalised text) and near
  duplicates (MinHash LSH, :mod:`galeno.corpus.minhash`) collapse to the smallest key of
  their connected component. Candidate pairs are verified on their signatures before they
  become edges, so a chain of bucket collisions cannot merge unrelated documents.
* :func:`connected_components`: alternating large-star / small-star (Kiveris et al.,
  "Connected Components in MapReduce and Beyond", SoCC 2014), one shuffle per half-round,
  until every component is a star around its smallest key.

Both dedup functions return rows with :data:`OUT_COLUMNS`: the ``ROW_COLUMNS`` plus
``duplicate_of_source`` (the source of ``duplicate_of``; null where not applicable).
Row order is not preserved (the rows come out of a shuffle by key).
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from galeno.corpus.document import ROW_COLUMNS, document_key
from galeno.corpus.minhash import MinHashConfig, Signer, band_buckets, bucket_pairs, shingle_hashes, words

if TYPE_CHECKING:
    import ray.data

__all__ = [
    "LineDedupConfig", "MinHashConfig", "OUT_COLUMNS", "ROW_SCHEMA",
    "dedup_sentences", "dedup_fuzzy_sentences", "dedup_documents", "connected_components",
]

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w+")

#: Arrow schema of the rows the dedup functions return (``ROW_COLUMNS`` + ``duplicate_of_source``).
ROW_SCHEMA = pa.schema([
    ("key", pa.string()), ("id", pa.string()), ("source", pa.string()), ("priority", pa.int64()),
    ("meta", pa.string()), ("reason", pa.string()), ("duplicate_of", pa.string()),
    ("sentences", pa.list_(pa.string())), ("sentence_drops", pa.string()),
    ("n_sentences_in", pa.int64()), ("n_words_in", pa.int64()), ("bad_bytes", pa.int64()),
    ("lang", pa.string()), ("lang_score", pa.float64()), ("duplicate_of_source", pa.string()),
])
OUT_COLUMNS = tuple(ROW_SCHEMA.names)
assert OUT_COLUMNS[:len(ROW_COLUMNS)] == ROW_COLUMNS, "ROW_SCHEMA must follow document.ROW_COLUMNS"


@dataclass
class LineDedupConfig:
    """Repeated sentences, within a source and across corpora (first copy by key is kept)."""

    enabled: bool = True
    """Run sentence-level deduplication."""
    min_words: int = 1
    """Sentences with fewer ``\\w+`` words than this are never deduplicated (short headers, list markers)."""
    fuzzy: bool = False
    """Also drop a sentence most of whose word n-grams already appeared earlier in the corpus (the BSC
    cleaner's ``onion`` idea): boilerplate that varies (a cookie banner with a date, a menu with a
    counter), which exact sentence dedup misses. Off by default: formulaic clinical sentences share
    n-grams too (docs/corpus.md reports what it removes on the shared data)."""
    fuzzy_ngram: int = 5
    """Words per n-gram of the fuzzy check; a sentence with fewer words is never a fuzzy duplicate."""
    fuzzy_threshold: float = 0.5
    """A sentence goes when at least this share of its distinct n-grams appeared before it (in a
    document with a smaller key, or earlier in its own document)."""

    def __post_init__(self) -> None:
        if self.min_words < 0:
            raise ValueError(f"line_dedup.min_words must be >= 0, got {self.min_words}")
        if self.fuzzy_ngram < 2 or not 0 < self.fuzzy_threshold <= 1:
            raise ValueError("line_dedup.fuzzy_ngram must be >= 2 and fuzzy_threshold in (0, 1]")


# --------------------------------------------------------------------------- shared helpers
def normalize_for_hash(text: str) -> str:
    """Casefolded, whitespace-collapsed text: copies that differ only in case or spacing hash equal."""
    return " ".join(text.casefold().split())


def _hash64(text: str) -> int:
    """xxh64 of the text as a signed int64 (Arrow hash-partitions it like any integer)."""
    import xxhash

    h = xxhash.xxh64_intdigest(text.encode("utf-8"))
    return h - (1 << 64) if h >= 1 << 63 else h


def key_parts(key: str) -> tuple[str, str]:
    """``(source, id)`` of a key made by :func:`document_key` (the id may contain anything)."""
    _, source, doc_id = key.split("\x1f", 2)
    return source, doc_id


def _check_key(key: str, priority: int, source: str, doc_id: str) -> None:
    # Kept copies are named by their key alone (ids and sources are not carried through the
    # shuffles), so the key must round-trip to (source, id).
    if key != document_key(priority, source, doc_id) or key_parts(key) != (source, doc_id):
        raise ValueError(f"row key {key!r} does not encode (priority={priority}, source={source!r}, "
                         f"id={doc_id!r}); rows must come from document.to_row")


def _conform(t: pa.Table, schema: pa.Schema) -> pa.Table:
    """``t`` with exactly ``schema``'s columns, in order; missing ones are nulls."""
    cols = []
    for f in schema:
        if f.name in t.column_names:
            col = t[f.name]
            cols.append(col if col.type == f.type else col.cast(f.type))
        else:
            cols.append(pa.nulls(t.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def _column(t: pa.Table, name: str) -> np.ndarray:
    """A column as numpy (object arrays for strings)."""
    return t[name].to_numpy()


def _group_starts(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start index of each run of equal values, run id of each element) of a sorted array."""
    if len(sorted_keys) == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    new = np.empty(len(sorted_keys), dtype=bool)
    new[0] = True
    new[1:] = sorted_keys[1:] != sorted_keys[:-1]
    return np.flatnonzero(new), np.cumsum(new) - 1


def _attach(docs: "ray.data.Dataset", side: "ray.data.Dataset", side_schema: pa.Schema,
            num_partitions: int, apply: Callable[[pa.Table], pa.Table]) -> "ray.data.Dataset":
    """Bring per-key side rows (drops, labels) to their documents: union, shuffle by key, apply.

    One shuffle instead of a join: side rows are document rows whose document columns are
    null (``id`` is null), so both sides share one schema.
    """
    schema = pa.schema(list(ROW_SCHEMA) + list(side_schema))
    left = docs.map_batches(_conform, fn_kwargs={"schema": schema}, batch_format="pyarrow")
    right = side.map_batches(_conform, fn_kwargs={"schema": schema}, batch_format="pyarrow")
    return (left.union(right).repartition(num_partitions, keys=["key"])
            .map_batches(apply, batch_format="pyarrow", batch_size=None))


def _split_side(t: pa.Table) -> tuple[pa.Table, pa.Table]:
    is_doc = pc.is_valid(t["id"])
    return t.filter(is_doc), t.filter(pc.invert(is_doc))


def _rebuild(docs: pa.Table, touched: pa.Array, update: Callable[[dict], None]) -> pa.Table:
    """Apply ``update`` to the touched rows only (as dicts); the others stay Arrow."""
    keep = docs.filter(pc.invert(touched)).select(OUT_COLUMNS)
    rows = docs.filter(touched).select(OUT_COLUMNS).to_pylist()
    for row in rows:
        update(row)
    return pa.concat_tables([keep, pa.Table.from_pylist(rows, schema=ROW_SCHEMA)])


def _check_partitions(num_partitions: int) -> None:
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")


# --------------------------------------------------------------------------- sentences
_OCCURRENCE = pa.schema([("h", pa.int64()), ("key", pa.string()), ("pos", pa.int64())])
_LINE_SIDE = pa.schema([("_pos", pa.int64()), ("_why", pa.string()), ("_kept", pa.string())])


def _explode_sentences(t: pa.Table, min_words: int) -> pa.Table:
    """One row per dedup-eligible sentence of a kept document: (hash, key, position)."""
    hs, keys, poss = [], [], []
    for key, prio, source, doc_id, reason, sents in zip(
            *(t[c].to_pylist() for c in ("key", "priority", "source", "id", "reason", "sentences"))):
        if reason is not None or not sents:
            continue
        _check_key(key, prio, source, doc_id)
        for i, s in enumerate(sents):
            norm = normalize_for_hash(s)
            if min_words and len(_WORD.findall(norm)) < min_words:
                continue
            hs.append(_hash64(norm))
            keys.append(key)
            poss.append(i)
    return pa.table({"h": pa.array(hs, pa.int64()), "key": pa.array(keys, pa.string()),
                     "pos": pa.array(poss, pa.int64())}, schema=_OCCURRENCE)


def _mark_line_duplicates(t: pa.Table) -> pa.Table:
    """Per sentence hash (whole partition): keep the smallest (key, pos), drop the others."""
    t = t.take(pc.sort_indices(t, [("h", "ascending"), ("key", "ascending"), ("pos", "ascending")]))
    keys, pos = _column(t, "key"), _column(t, "pos")
    starts, gid = _group_starts(_column(t, "h"))
    later = np.ones(len(keys), dtype=bool)
    later[starts] = False
    drop = np.flatnonzero(later)
    # The same occurrence twice (a document id repeated in the input) is not a copy of itself.
    drop = drop[(keys[drop] != keys[drop - 1]) | (pos[drop] != pos[drop - 1])]
    kept = keys[starts[gid[drop]]]
    why = ["duplicate_line" if key_parts(a)[0] == key_parts(b)[0] else "cross_corpus_duplicate"
           for a, b in zip(keys[drop], kept)]
    return pa.table({"key": pa.array(keys[drop], pa.string()), "_pos": pa.array(pos[drop], pa.int64()),
                     "_why": pa.array(why, pa.string()), "_kept": pa.array(kept, pa.string())})


def _apply_line_drops(t: pa.Table) -> pa.Table:
    """Per document (whole key partition): remove dropped sentences, count them, reject emptied ones."""
    docs, side = _split_side(t)
    drops: dict[str, dict[int, tuple[str, str]]] = defaultdict(dict)
    for key, p, why, kept in zip(*(side[c].to_pylist() for c in ("key", "_pos", "_why", "_kept"))):
        drops[key][p] = (why, kept)
    touched = pc.and_(pc.is_in(docs["key"], value_set=pa.array(list(drops), pa.string())),
                      pc.is_null(docs["reason"]))

    def update(row: dict) -> None:
        gone = drops[row["key"]]
        sentences = row["sentences"] or []
        kept = [s for i, s in enumerate(sentences) if i not in gone]
        counts = json.loads(row["sentence_drops"] or "{}")
        for i in range(len(sentences)):
            if i in gone:
                counts[gone[i][0]] = counts.get(gone[i][0], 0) + 1
        row["sentence_drops"] = json.dumps(dict(sorted(counts.items())))
        row["sentences"] = kept
        if sentences and not kept:
            source, doc_id = key_parts(gone[0][1])  # every sentence went, so the first did too
            row.update(reason="duplicate_lines", duplicate_of=doc_id, duplicate_of_source=source)

    return _rebuild(docs, touched, update)


def dedup_sentences(ds: "ray.data.Dataset", cfg: LineDedupConfig, num_partitions: int) -> "ray.data.Dataset":
    """Keep each normalised sentence once corpus-wide: in the document with the smallest key.

    Sentences are compared casefolded and whitespace-collapsed (xxh64). Within one hash, the
    occurrence with the smallest (key, position) stays; every other occurrence is dropped as
    ``duplicate_line`` (same source as the kept copy) or ``cross_corpus_duplicate`` and counted
    in the row's ``sentence_drops``. A document that loses every sentence is rejected as
    ``duplicate_lines`` with ``duplicate_of``/``duplicate_of_source`` naming the document that
    holds the kept copy of its first sentence. Only rows whose ``reason`` is null take part;
    sentences with fewer than ``cfg.min_words`` words are never touched. Two shuffles: by
    sentence hash, then by document key. The input is read twice (sentences, then documents).
    """
    _check_partitions(num_partitions)
    docs = ds.map_batches(_conform, fn_kwargs={"schema": ROW_SCHEMA}, batch_format="pyarrow")
    if not cfg.enabled:
        return docs
    drops = (docs.map_batches(_explode_sentences, fn_kwargs={"min_words": cfg.min_words},
                              batch_format="pyarrow")
             .repartition(num_partitions, keys=["h"])
             .map_batches(_mark_line_duplicates, batch_format="pyarrow", batch_size=None))
    return _attach(docs, drops, _LINE_SIDE, num_partitions, _apply_line_drops)


# --------------------------------------------------------------------------- fuzzy sentences
_NGRAM = pa.schema([("g", pa.int64()), ("key", pa.string()), ("pos", pa.int64())])
_FUZZY_SIDE = pa.schema([("_pos", pa.int64()), ("_seen", pa.int64())])


def _sentence_ngrams(sentence: str, n: int) -> np.ndarray:
    """The distinct word ``n``-gram hashes of a sentence (empty when it has fewer than ``n`` words)."""
    tokens = words(sentence)
    if len(tokens) < n:
        return np.empty(0, dtype=np.int64)
    return np.unique(shingle_hashes(tokens, n).view(np.int64))


def _explode_ngrams(t: pa.Table, n: int) -> pa.Table:
    """One (n-gram hash, key, position) row per distinct n-gram of each sentence of a kept document."""
    gs, keys, poss = [], [], []
    for key, reason, sents in zip(*(t[c].to_pylist() for c in ("key", "reason", "sentences"))):
        if reason is not None or not sents:
            continue
        for i, sentence in enumerate(sents):
            g = _sentence_ngrams(sentence, n)
            gs.append(g)
            keys += [key] * len(g)
            poss += [i] * len(g)
    g = np.concatenate(gs) if gs else np.empty(0, dtype=np.int64)
    return pa.table({"g": pa.array(g, pa.int64()), "key": pa.array(keys, pa.string()),
                     "pos": pa.array(poss, pa.int64())}, schema=_NGRAM)


def _count_seen(t: pa.Table) -> pa.Table:
    """Per n-gram (whole partition): every occurrence after the first (by key, position) was seen
    before; returns how many seen n-grams each (key, position) has in this partition."""
    t = t.take(pc.sort_indices(t, [("g", "ascending"), ("key", "ascending"), ("pos", "ascending")]))
    starts, _ = _group_starts(_column(t, "g"))
    later = np.ones(t.num_rows, dtype=bool)
    later[starts] = False
    seen = t.filter(pa.array(later)).group_by(["key", "pos"]).aggregate([("g", "count")])
    return pa.table({"key": seen["key"], "_pos": seen["pos"], "_seen": seen["g_count"]})


def _apply_fuzzy_drops(t: pa.Table, n: int, threshold: float) -> pa.Table:
    """Per document: drop sentences with ``seen / n-grams >= threshold``; reject emptied documents."""
    docs, side = _split_side(t)
    seen: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for key, p, k in zip(*(side[c].to_pylist() for c in ("key", "_pos", "_seen"))):
        seen[key][p] += k
    touched = pc.and_(pc.is_in(docs["key"], value_set=pa.array(list(seen), pa.string())), pc.is_null(docs["reason"]))

    def update(row: dict) -> None:
        counts = json.loads(row["sentence_drops"] or "{}")
        sentences = row["sentences"] or []
        kept = []
        for i, sentence in enumerate(sentences):
            total = len(_sentence_ngrams(sentence, n))
            if total and seen[row["key"]].get(i, 0) >= threshold * total:
                counts["fuzzy_duplicate_line"] = counts.get("fuzzy_duplicate_line", 0) + 1
            else:
                kept.append(sentence)
        row["sentence_drops"] = json.dumps(dict(sorted(counts.items())))
        row["sentences"] = kept
        if sentences and not kept:
            row["reason"] = "fuzzy_duplicate_lines"

    return _rebuild(docs, touched, update)


def dedup_fuzzy_sentences(ds: "ray.data.Dataset", cfg: LineDedupConfig, num_partitions: int) -> "ray.data.Dataset":
    """Drop sentences most of whose word n-grams appeared earlier in the corpus (``cfg.fuzzy``).

    Every distinct ``cfg.fuzzy_ngram``-gram of every sentence of a kept document is a row; one
    shuffle by n-gram finds, for each, its first occurrence (smallest key, then position), and
    every other occurrence counts as seen for its sentence. A second shuffle by document key
    brings the counts home: a sentence whose seen n-grams reach ``cfg.fuzzy_threshold`` of its
    own is dropped as ``fuzzy_duplicate_line``; a document left with none is rejected as
    ``fuzzy_duplicate_lines``. The first copy of a varying banner keeps it; later ones lose it.
    """
    _check_partitions(num_partitions)
    docs = ds.map_batches(_conform, fn_kwargs={"schema": ROW_SCHEMA}, batch_format="pyarrow")
    if not cfg.fuzzy:
        return docs
    seen = (docs.map_batches(_explode_ngrams, fn_kwargs={"n": cfg.fuzzy_ngram}, batch_format="pyarrow")
            .repartition(num_partitions, keys=["g"])
            .map_batches(_count_seen, batch_format="pyarrow", batch_size=None))
    return _attach(docs, seen, _FUZZY_SIDE, num_partitions,
                   partial(_apply_fuzzy_drops, n=cfg.fuzzy_ngram, threshold=cfg.fuzzy_threshold))


# --------------------------------------------------------------------------- documents
def _signature_schema(cfg: MinHashConfig) -> pa.Schema:
    return pa.schema([("key", pa.string()), ("eh", pa.int64()),
                      ("sig", pa.list_(pa.uint32(), cfg.num_perm))])


_NODE = pa.schema([("node", pa.string()), ("other", pa.string())])
_BAND = pa.schema([("band", pa.int32()), ("bucket", pa.int64()), ("key", pa.string())])
_PAIR = pa.schema([("u", pa.string()), ("v", pa.string())])
_DOC_SIDE = pa.schema([("_rep", pa.string()), ("_root", pa.string())])


def _sig_column(mat: np.ndarray, valid: np.ndarray | None, num_perm: int) -> pa.Array:
    values = pa.array(mat.reshape(-1).astype(np.uint32), pa.uint32())
    mask = None if valid is None else pa.array(~valid)
    return pa.FixedSizeListArray.from_arrays(values, num_perm, mask=mask)


def _sig_matrix(col: pa.ChunkedArray | pa.Array, num_perm: int) -> np.ndarray:
    """(rows x num_perm) uint32 of a signature column without nulls."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, num_perm)


def _doc_signatures(t: pa.Table, cfg: MinHashConfig) -> pa.Table:
    """Kept documents -> (key, hash of normalised text, MinHash signature or null if wordless)."""
    signer = _signer(cfg)
    keys, ehs, shingles, valid = [], [], [], []
    for key, prio, source, doc_id, reason, sents in zip(
            *(t[c].to_pylist() for c in ("key", "priority", "source", "id", "reason", "sentences"))):
        if reason is not None:
            continue
        norm = normalize_for_hash("\n".join(sents or []))
        if not norm:
            continue  # an empty document is another filter's business, not everyone's duplicate
        _check_key(key, prio, source, doc_id)
        sh = shingle_hashes(words(norm), cfg.ngram)
        keys.append(key)
        ehs.append(_hash64(norm))
        valid.append(len(sh) > 0)
        if len(sh):
            shingles.append(sh)
    valid_a = np.array(valid, dtype=bool)
    mat = np.zeros((len(keys), cfg.num_perm), dtype=np.uint32)
    if shingles:
        mat[valid_a] = signer.signatures(shingles)
    return pa.table({"key": pa.array(keys, pa.string()), "eh": pa.array(ehs, pa.int64()),
                     "sig": _sig_column(mat, valid_a, cfg.num_perm)}, schema=_signature_schema(cfg))


def _signer(cfg: MinHashConfig) -> Signer:
    return _signer_for(cfg.seed, cfg.bands, cfg.rows)


@lru_cache(maxsize=4)
def _signer_for(seed: int, bands: int, rows: int) -> Signer:
    """One Signer per worker process and parameters (the permutations are drawn once)."""
    return Signer(MinHashConfig(seed=seed, bands=bands, rows=rows))


def _sort_exact(t: pa.Table) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Rows of one eh-partition sorted by (hash, key); the first of each hash is its representative."""
    t = t.take(pc.sort_indices(t, [("eh", "ascending"), ("key", "ascending")]))
    starts, gid = _group_starts(_column(t, "eh"))
    return t, starts, gid


def _exact_links(t: pa.Table) -> pa.Table:
    """Star edges member -> representative (smallest key) of each exact-duplicate group."""
    t, starts, gid = _sort_exact(t)
    keys = _column(t, "key")
    rep = keys[starts][gid] if len(keys) else keys
    member = rep != keys  # also drops a repeated key (the same document twice)
    return pa.table({"u": pa.array(keys[member], pa.string()), "v": pa.array(rep[member], pa.string())},
                    schema=_PAIR)


def _exact_reps(t: pa.Table) -> pa.Table:
    """The representative of each exact-duplicate group, with its signature (only they enter LSH)."""
    t, starts, _ = _sort_exact(t)
    t = t.take(pa.array(starts, pa.int64()))
    return t.filter(pc.is_valid(t["sig"])).select(["key", "sig"])


def _band_rows(t: pa.Table, cfg: MinHashConfig) -> pa.Table:
    """One (band, bucket, key) row per representative and band."""
    n = t.num_rows
    buckets = band_buckets(_sig_matrix(t["sig"], cfg.num_perm), cfg) if n else np.empty((0, cfg.bands), np.int64)
    keys = _column(t, "key")
    return pa.table({
        "band": pa.array(np.tile(np.arange(cfg.bands, dtype=np.int32), n), pa.int32()),
        "bucket": pa.array(buckets.reshape(-1), pa.int64()),
        "key": pa.array(np.repeat(keys, cfg.bands), pa.string()),
    }, schema=_BAND)


def _bucket_candidates(t: pa.Table, max_bucket_size: int) -> pa.Table:
    """Candidate pairs (u < v) inside each (band, bucket) of a whole partition."""
    t = t.take(pc.sort_indices(t, [("band", "ascending"), ("bucket", "ascending"), ("key", "ascending")]))
    band, bucket, keys = _column(t, "band"), _column(t, "bucket"), _column(t, "key")
    if len(keys) == 0:
        return _PAIR.empty_table()
    new = np.empty(len(keys), dtype=bool)
    new[0] = True
    new[1:] = (band[1:] != band[:-1]) | (bucket[1:] != bucket[:-1])
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(keys))
    us, vs = [], []
    for s, e in zip(starts, ends):
        if e - s < 2:
            continue
        i, j = bucket_pairs(int(e - s), max_bucket_size)
        us.append(keys[s + i])
        vs.append(keys[s + j])
    if not us:
        return _PAIR.empty_table()
    u, v = np.concatenate(us), np.concatenate(vs)
    differ = u != v  # a repeated key would pair with itself
    return pa.table({"u": pa.array(u[differ], pa.string()), "v": pa.array(v[differ], pa.string())},
                    schema=_PAIR)


def _node_schema(num_perm: int) -> pa.Schema:
    return pa.schema(list(_NODE) + [("sig", pa.list_(pa.uint32(), num_perm))])


def _as_pair_rows(t: pa.Table, num_perm: int) -> pa.Table:
    """Pair (u, v) as a node row of u asking for v (no signature)."""
    return pa.table({"node": t["u"], "other": t["v"],
                     "sig": pa.nulls(t.num_rows, pa.list_(pa.uint32(), num_perm))},
                    schema=_node_schema(num_perm))


def _as_sig_rows(t: pa.Table, num_perm: int) -> pa.Table:
    """Representative (key, sig) as the node row that owns the signature (other is null)."""
    return pa.table({"node": t["key"], "other": pa.nulls(t.num_rows, pa.string()), "sig": t["sig"]},
                    schema=_node_schema(num_perm))


def _sort_nodes(t: pa.Table) -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray]:
    """Sorted by (node, other) with the signature owner (other null) first in each node."""
    t = t.take(pc.sort_indices(t, [("node", "ascending"), ("other", "ascending")], null_placement="at_start"))
    starts, gid = _group_starts(_column(t, "node"))
    owner = pc.is_null(t["other"]).to_numpy(zero_copy_only=False)
    return t, starts, gid, owner


def _carry_signature(t: pa.Table, num_perm: int) -> pa.Table:
    """Partition by u: send u's signature along each distinct pair (u, v), now addressed to v."""
    t, starts, gid, owner = _sort_nodes(t)
    node, other = _column(t, "node"), _column(t, "other")
    if len(node) == 0:
        return _node_schema(num_perm).empty_table()
    has_owner = owner[starts]
    first_dup = np.zeros(len(node), dtype=bool)
    first_dup[1:] = (node[1:] == node[:-1]) & (other[1:] == other[:-1])
    ask = ~owner & ~first_dup & has_owner[gid]  # distinct pairs whose u has a signature
    idx = np.flatnonzero(ask)
    owner_row = starts[gid[idx]]
    sig = t["sig"].combine_chunks().take(pa.array(owner_row, pa.int64()))
    return pa.table({"node": pa.array(other[idx], pa.string()), "other": pa.array(node[idx], pa.string()),
                     "sig": sig}, schema=_node_schema(num_perm))


def _verify_pairs(t: pa.Table, num_perm: int, threshold: float) -> pa.Table:
    """Partition by v: compare v's signature with each carried u signature; keep pairs >= threshold."""
    t, starts, gid, owner = _sort_nodes(t)
    node, other = _column(t, "node"), _column(t, "other")
    if len(node) == 0:
        return _PAIR.empty_table()
    carried = np.flatnonzero(~owner & owner[starts][gid])
    if len(carried) == 0:
        return _PAIR.empty_table()
    sig = t["sig"].combine_chunks()
    mine = _sig_matrix(sig.take(pa.array(starts[gid[carried]], pa.int64())), num_perm)
    theirs = _sig_matrix(sig.take(pa.array(carried, pa.int64())), num_perm)
    # Compare agreement counts as integers: a float mean can land a hair under the threshold.
    ok = np.count_nonzero(mine == theirs, axis=1) >= np.ceil(threshold * num_perm - 1e-9)
    return pa.table({"u": pa.array(other[carried[ok]], pa.string()),
                     "v": pa.array(node[carried[ok]], pa.string())}, schema=_PAIR)


def _label_side(t: pa.Table, column: str) -> pa.Table:
    """Edges (u, v) as side rows keyed by u: ``_rep`` (exact links) or ``_root`` (components)."""
    cols = {"key": t["u"], "_rep": t["v"], "_root": t["v"]}
    for other in {"_rep", "_root"} - {column}:
        cols[other] = pa.nulls(t.num_rows, pa.string())
    return pa.table(cols, schema=pa.schema([("key", pa.string())] + list(_DOC_SIDE)))


def _apply_doc_labels(t: pa.Table) -> pa.Table:
    """Per document: reject it when its component's smallest key is another document."""
    docs, side = _split_side(t)
    rep, root = {}, {}
    for key, r, rt in zip(*(side[c].to_pylist() for c in ("key", "_rep", "_root"))):
        if r is not None:
            rep[key] = r
        if rt is not None:
            root[key] = rt
    touched = pc.and_(pc.is_in(docs["key"], value_set=pa.array(list(root), pa.string())),
                      pc.is_null(docs["reason"]))

    def update(row: dict) -> None:
        kept = root[row["key"]]
        source, doc_id = key_parts(kept)
        # Same text as the kept copy <=> the exact-duplicate representative is the root itself.
        reason = "exact_duplicate" if rep.get(row["key"]) == kept else "near_duplicate"
        row.update(reason=reason, duplicate_of=doc_id, duplicate_of_source=source, sentences=[])

    return _rebuild(docs, touched, update)


def dedup_documents(ds: "ray.data.Dataset", cfg: MinHashConfig, num_partitions: int) -> "ray.data.Dataset":
    """Collapse exact and near-duplicate documents to the smallest key of each cluster.

    1. Signature map: hash of the normalised text and a MinHash signature per kept row.
    2. Shuffle by text hash: each exact-duplicate group becomes star edges to its smallest
       key (no O(n^2) pairs); only that representative goes on to LSH.
    3. Shuffle by (band, bucket): candidate pairs inside each bucket.
    4. Two shuffles (by u, then by v) carry both signatures to each distinct pair; pairs
       whose estimated Jaccard reaches ``cfg.threshold`` become edges.
    5. :func:`connected_components` over exact and near edges; the component's smallest key
       keeps its copy, the others get ``exact_duplicate`` (same normalised text as the kept
       copy) or ``near_duplicate``, with ``duplicate_of``/``duplicate_of_source``.
    """
    _check_partitions(num_partitions)
    docs = ds.map_batches(_conform, fn_kwargs={"schema": ROW_SCHEMA}, batch_format="pyarrow")
    if not cfg.enabled:
        return docs
    P = cfg.num_perm
    by_text = (docs.map_batches(_doc_signatures, fn_kwargs={"cfg": cfg}, batch_format="pyarrow")
               .repartition(num_partitions, keys=["eh"]).materialize())
    links = by_text.map_batches(_exact_links, batch_format="pyarrow", batch_size=None)
    reps = by_text.map_batches(_exact_reps, batch_format="pyarrow", batch_size=None)
    pairs = (reps.map_batches(_band_rows, fn_kwargs={"cfg": cfg}, batch_format="pyarrow")
             .repartition(num_partitions, keys=["band", "bucket"])
             .map_batches(_bucket_candidates, fn_kwargs={"max_bucket_size": cfg.max_bucket_size},
                          batch_format="pyarrow", batch_size=None))
    sig_rows = reps.map_batches(_as_sig_rows, fn_kwargs={"num_perm": P}, batch_format="pyarrow")
    carried = (pairs.map_batches(_as_pair_rows, fn_kwargs={"num_perm": P}, batch_format="pyarrow")
               .union(sig_rows).repartition(num_partitions, keys=["node"])
               .map_batches(_carry_signature, fn_kwargs={"num_perm": P}, batch_format="pyarrow",
                            batch_size=None))
    near = (carried.union(sig_rows).repartition(num_partitions, keys=["node"])
            .map_batches(_verify_pairs, fn_kwargs={"num_perm": P, "threshold": cfg.threshold},
                         batch_format="pyarrow", batch_size=None))
    edges = links.union(near).materialize()
    n_edges = edges.count()
    log.info("dedup_documents[%s]: %d edges (exact links + verified near pairs)", cfg.tag(), n_edges)

    if not n_edges:
        # Nothing to label. (Also sidesteps Ray Data's reduce, which cannot concatenate the
        # schema-less empty blocks an empty side produces with typed document blocks.)
        return docs
    side = links.map_batches(_label_side, fn_kwargs={"column": "_rep"}, batch_format="pyarrow")
    if n_edges:
        labels, rounds = connected_components(edges, num_partitions)
        log.info("dedup_documents[%s]: connected components converged in %d rounds", cfg.tag(), rounds)
        side = side.union(labels.map_batches(_label_side, fn_kwargs={"column": "_root"},
                                             batch_format="pyarrow"))
    return _attach(docs, side, _DOC_SIDE, num_partitions, _apply_doc_labels)


# --------------------------------------------------------------------------- connected components
_EDGE = pa.schema([("u", pa.string()), ("v", pa.string()), ("unsettled", pa.int64())])
_ADJ = pa.schema([("node", pa.string()), ("nbr", pa.string()), ("unsettled", pa.int64())])
#: Up to this many bytes of edges, a round's statistics are read in the driver (see _unsettled_count).
_LOCAL_COUNT_BYTES = 64 << 20


def _edge_table(u, v, unsettled: int | None = None) -> pa.Table:
    t = pa.table({"u": pa.array(u, pa.string()), "v": pa.array(v, pa.string()),
                  "unsettled": pa.array(np.zeros(len(u), dtype=np.int64))}, schema=_EDGE)
    if unsettled is None:
        return t
    stat = pa.table({"u": pa.nulls(1, pa.string()), "v": pa.nulls(1, pa.string()),
                     "unsettled": pa.array([unsettled], pa.int64())}, schema=_EDGE)
    return pa.concat_tables([t, stat])


def _both_directions(t: pa.Table) -> pa.Table:
    t = t.filter(pc.is_valid(t["u"]))
    zeros = pa.array(np.zeros(2 * t.num_rows, dtype=np.int64))
    return pa.table({"node": pa.concat_arrays([t["u"].combine_chunks(), t["v"].combine_chunks()]),
                     "nbr": pa.concat_arrays([t["v"].combine_chunks(), t["u"].combine_chunks()]),
                     "unsettled": zeros}, schema=_ADJ)


def _orient_down(t: pa.Table) -> pa.Table:
    """Edge (u, v) as (node=max, nbr=min); statistics rows (null u) pass through."""
    u, v = t["u"], t["v"]
    larger = pc.fill_null(pc.greater(u, v), True)
    return pa.table({"node": pc.if_else(larger, u, v), "nbr": pc.if_else(larger, v, u),
                     "unsettled": t["unsettled"]}, schema=_ADJ)


def _sorted_adjacency(t: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (node, nbr) pairs without self-loops, sorted by node then neighbour."""
    t = t.filter(pc.is_valid(t["node"]))
    t = t.take(pc.sort_indices(t, [("node", "ascending"), ("nbr", "ascending")]))
    node, nbr = _column(t, "node"), _column(t, "nbr")
    if len(node) == 0:
        return node, nbr
    keep = np.ones(len(node), dtype=bool)
    keep[1:] = (node[1:] != node[:-1]) | (nbr[1:] != nbr[:-1])
    keep &= node != nbr
    return node[keep], nbr[keep]


def _large_star(t: pa.Table) -> pa.Table:
    """Per node u: link every larger neighbour to the smallest of u and its neighbours.

    Also counts the nodes that are not yet settled: a node is settled when it has no smaller
    neighbour (a centre) or exactly one neighbour, which is smaller (a leaf). When every node
    is settled each component is a star around its smallest key, and the algorithm is done.
    """
    node, nbr = _sorted_adjacency(t)
    if len(node) == 0:
        return _edge_table([], [], unsettled=0)
    starts, gid = _group_starts(node)
    first, centre = nbr[starts], node[starts]
    smaller = (first < centre).astype(bool)
    m = np.where(smaller, first, centre)
    degree = np.diff(np.append(starts, len(node)))
    unsettled = int(np.count_nonzero(smaller & (degree > 1)))
    out = (nbr > node).astype(bool)
    return _edge_table(nbr[out], m[gid[out]], unsettled=unsettled)


def _small_star(t: pa.Table) -> pa.Table:
    """Per node u with its smaller neighbours N: link u and every member of N to min(N)."""
    stats = t.filter(pc.is_null(t["node"]))
    node, nbr = _sorted_adjacency(t)
    passthrough = pa.table({"u": pa.nulls(stats.num_rows, pa.string()),
                            "v": pa.nulls(stats.num_rows, pa.string()),
                            "unsettled": stats["unsettled"]}, schema=_EDGE)
    if len(node) == 0:
        return passthrough
    starts, gid = _group_starts(node)
    m = nbr[starts]  # oriented edges: every neighbour here is smaller than the node
    others = nbr != m[gid]
    u = np.concatenate([node[starts], nbr[others]])
    v = np.concatenate([m, m[gid[others]]])
    return pa.concat_tables([_edge_table(u, v), passthrough])


def _unsettled_count(ds: "ray.data.MaterializedDataset") -> int:
    """Sum of the statistics rows of a materialized round, without a Ray Data aggregation."""
    import ray

    refs = ds.to_arrow_refs()
    if (ds.size_bytes() or 0) <= _LOCAL_COUNT_BYTES:
        # A small graph is cheaper to read here (zero-copy from the local object store) than
        # a task per block, which can mean starting a worker process per round.
        return int(sum(_sum_unsettled(t) for t in ray.get(refs)))
    return int(sum(ray.get([_sum_unsettled_task().remote(r) for r in refs])))


def _sum_unsettled(t: pa.Table) -> int:
    return int(pc.sum(t["unsettled"]).as_py() or 0) if t.num_rows else 0


@lru_cache(maxsize=1)
def _sum_unsettled_task():
    import ray

    return ray.remote(num_cpus=0.25)(_sum_unsettled)


def _to_labels(t: pa.Table) -> pa.Table:
    t = t.filter(pc.is_valid(t["u"]))
    return pa.table({"u": t["u"], "v": t["v"]}, schema=_PAIR)


def connected_components(edges: "ray.data.Dataset", num_partitions: int,
                         max_rounds: int = 64) -> tuple["ray.data.Dataset", int]:
    """Connected components of an undirected graph given as string edges ``(u, v)``.

    Returns ``(labels, rounds)``: ``labels`` has one row ``(u=node, v=root)`` per node that
    is not the smallest of its component (``root`` is that smallest node); nodes missing
    from it are their own roots. Each round is a large-star then a small-star, each a
    hash-partitioned shuffle by node; the large-star also counts unsettled nodes, and the
    round in which that count is zero (its input was already a forest of stars) is the last.
    A path of n nodes takes O(log n) rounds; dedup graphs of small clusters take two.
    """
    _check_partitions(num_partitions)
    current = edges.map_batches(_conform, fn_kwargs={"schema": _EDGE}, batch_format="pyarrow")
    for rounds in range(1, max_rounds + 1):
        current = (current.map_batches(_both_directions, batch_format="pyarrow")
                   .repartition(num_partitions, keys=["node"])
                   .map_batches(_large_star, batch_format="pyarrow", batch_size=None)
                   .map_batches(_orient_down, batch_format="pyarrow")
                   .repartition(num_partitions, keys=["node"])
                   .map_batches(_small_star, batch_format="pyarrow", batch_size=None)
                   .materialize())
        unsettled = _unsettled_count(current)
        log.info("connected components: round %d, %d unsettled nodes before it", rounds, unsettled)
        if unsettled == 0:
            return current.map_batches(_to_labels, batch_format="pyarrow"), rounds
    raise RuntimeError(f"connected components did not converge in {max_rounds} rounds")
