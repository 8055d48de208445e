"""Global dedup on a real local Ray: sentences, exact + near-duplicate documents, components.

Ray Data shuffles cost seconds each on a small machine, so each distributed function runs on
one dataset built to hold every case at once, and checks are many asserts on that output.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter

import numpy as np
import pytest

from galeno.config import field_docs, from_dict, to_dict
from galeno.corpus import dedup
from galeno.corpus.dedup import (
    OUT_COLUMNS,
    LineDedupConfig,
    MinHashConfig,
    connected_components,
    dedup_documents,
    dedup_sentences,
    normalize_for_hash,
)
from galeno.corpus.document import ROW_COLUMNS, Document, document_key, to_row
from galeno.corpus.minhash import Signer, band_buckets, bucket_pairs, estimated_jaccard, shingle_hashes, words


def make_row(source: str, priority: int, doc_id: str, sentences: list[str], reason: str | None = None) -> dict:
    doc = Document(id=doc_id, source=source, text="\n".join(sentences), sentences=list(sentences),
                   n_sentences_in=len(sentences), reason=reason)
    return to_row(doc, priority)


def by_id(rows: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in rows}


def canonical(rows: list[dict]) -> list[tuple]:
    return sorted(tuple(json.dumps(r[c], sort_keys=True) for c in OUT_COLUMNS) for r in rows)


# --------------------------------------------------------------------------- configs
def test_configs_validate_document_and_name_their_output():
    for bad in ({"min_words": -1},):
        with pytest.raises(ValueError):
            LineDedupConfig(**bad)
    for bad in ({"ngram": 0}, {"bands": 0}, {"rows": 0}, {"threshold": 0.0}, {"threshold": 1.5},
                {"max_bucket_size": 1}, {"seed": -1}):
        with pytest.raises(ValueError):
            MinHashConfig(**bad)
    for cls in (LineDedupConfig, MinHashConfig):  # every field has its --help line
        assert set(field_docs(cls)) == {f for f in cls.__dataclass_fields__}
    cfg = MinHashConfig()
    assert cfg.num_perm == cfg.bands * cfg.rows
    assert from_dict(MinHashConfig, to_dict(cfg)) == cfg
    changed = [MinHashConfig(ngram=4), MinHashConfig(bands=10), MinHashConfig(rows=4),
               MinHashConfig(threshold=0.85), MinHashConfig(seed=2), MinHashConfig(max_bucket_size=10)]
    assert len({cfg.tag(), *(c.tag() for c in changed)}) == 1 + len(changed)
    # The defaults put the LSH S-curve well left of 0.8: planted pairs are found, then verified.
    assert cfg.candidate_probability(0.8) > 0.999 and cfg.candidate_probability(0.2) < 0.01


# --------------------------------------------------------------------------- signature math
def _random_doc(rng: random.Random, n: int, vocab: int = 50_000) -> list[str]:
    return [f"w{rng.randrange(vocab)}" for _ in range(n)]


def _perturb(tokens: list[str], n_edits: int, rng: random.Random) -> list[str]:
    out = list(tokens)
    for _ in range(n_edits):
        op, i = rng.random(), rng.randrange(len(out))
        if op < 0.5:
            out[i] = f"x{rng.randrange(10**9)}"
        elif op < 0.75 and len(out) > 10:
            del out[i]
        else:
            out.insert(i, f"x{rng.randrange(10**9)}")
    return out


def _jaccard(a: list[str], b: list[str], n: int) -> float:
    sa, sb = set(shingle_hashes(a, n).tolist()), set(shingle_hashes(b, n).tolist())
    return len(sa & sb) / len(sa | sb)


def _linked(sa: np.ndarray, sb: np.ndarray, cfg: MinHashConfig) -> bool:
    """What the pipeline does to a pair: share a band bucket, then pass verification."""
    share = bool(np.any(band_buckets(sa[None], cfg) == band_buckets(sb[None], cfg)))
    agree = int(np.count_nonzero(sa == sb))
    return share and agree >= np.ceil(cfg.threshold * cfg.num_perm - 1e-9)


def test_signatures_estimate_jaccard_and_keep_short_documents():
    cfg = MinHashConfig()
    signer = Signer(cfg)
    rng = random.Random(1)
    errors = []
    for _ in range(40):
        a = _random_doc(rng, 200)
        b = _perturb(a, rng.randrange(1, 30), rng)
        sa, sb = signer.signatures([shingle_hashes(a, cfg.ngram), shingle_hashes(b, cfg.ngram)])
        errors.append(abs(float(estimated_jaccard(sa, sb)) - _jaccard(a, b, cfg.ngram)))
    assert np.mean(errors) < 0.04 and max(errors) < 0.15  # sd of the estimate is <= 0.05 at P=100
    # Deterministic across instances, and a different seed gives different permutations.
    sig = Signer(cfg).signature_of("El paciente presenta fiebre y tos desde hace tres días.")
    assert sig.dtype == np.uint32 and sig.shape == (cfg.num_perm,)
    assert np.array_equal(sig, signer.signature_of("EL PACIENTE presenta fiebre, y tos desde hace tres días"))
    assert not np.array_equal(sig, Signer(MinHashConfig(seed=7)).signature_of(
        "El paciente presenta fiebre y tos desde hace tres días."))
    # Shorter than ngram: one whole-text shingle, equal only when the words are equal.
    assert len(shingle_hashes(words("Hola, mundo."), 5)) == 1
    assert np.array_equal(signer.signature_of("Hola, mundo."), signer.signature_of("hola mundo"))
    assert estimated_jaccard(signer.signature_of("hola mundo"), signer.signature_of("hola amigo")) < 0.1
    assert signer.signature_of(" ... ") is None
    assert normalize_for_hash("  Hola\n\tMUNDO ") == "hola mundo"


def test_minhash_recall_on_planted_pairs_and_false_positives_on_distinct_documents():
    cfg = MinHashConfig()
    signer = Signer(cfg)
    rng = random.Random(7)
    found, total = 0, 0
    while total < 300:
        a = _random_doc(rng, rng.randrange(60, 400))
        b = _perturb(a, rng.randrange(0, max(2, len(a) // 25)), rng)
        if _jaccard(a, b, cfg.ngram) < 0.8:
            continue
        sa, sb = signer.signatures([shingle_hashes(a, cfg.ngram), shingle_hashes(b, cfg.ngram)])
        found += _linked(sa, sb, cfg)
        total += 1
    assert found / total >= 0.95, f"recall {found}/{total} at Jaccard >= 0.8"

    distinct = signer.signatures([shingle_hashes(_random_doc(rng, rng.randrange(30, 300), 3000), cfg.ngram)
                                  for _ in range(300)])
    buckets = band_buckets(distinct, cfg)
    false = 0
    for i in range(len(distinct)):
        for j in range(i + 1, len(distinct)):
            if np.any(buckets[i] == buckets[j]):  # candidates only; then verified like the pipeline
                false += _linked(distinct[i], distinct[j], cfg)
    pairs = len(distinct) * (len(distinct) - 1) // 2
    assert false / pairs <= 0.005


def test_big_buckets_stay_connected_with_linear_pairs():
    i, j = bucket_pairs(5, max_bucket_size=8)
    assert len(i) == 10 and np.all(i < j)
    i, j = bucket_pairs(100, max_bucket_size=8)
    assert len(i) == 99 + 98 and np.all(i < j)
    parent = list(range(100))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in zip(i, j):
        parent[find(int(b))] = find(int(a))
    assert len({find(x) for x in range(100)}) == 1
    assert len(bucket_pairs(1, 8)[0]) == 0


# --------------------------------------------------------------------------- sentence dedup
SENTENCES = [
    "El paciente ingresó por dolor torácico.",
    "Se realizó una TAC craneal sin hallazgos.",
    "Tratamiento con amoxicilina 500 mg cada 8 horas.",
    "No refiere alergias medicamentosas conocidas.",
    "Evolución favorable.",
    "Hemograma normal.",
    "Se decide alta hospitalaria.",
    "Fiebre.",  # one word: below min_words=2, never deduplicated
]


def _line_dedup_rows() -> list[dict]:
    rng = random.Random(3)
    rows = [
        # "a" (priority 0) holds the first copies; "b" and "c" repeat them.
        make_row("a", 0, "a1", [SENTENCES[0], SENTENCES[1], "  el PACIENTE ingresó   por dolor torácico. "]),
        make_row("b", 1, "b1", [SENTENCES[1], SENTENCES[0]]),            # emptied by copies in "a"
        make_row("b", 1, "b2", ["Texto propio de b.", SENTENCES[1]]),
        make_row("a", 0, "a2", [SENTENCES[2], SENTENCES[2], "Fiebre.", "Fiebre."]),
        make_row("c", 2, "c1", [SENTENCES[2]], reason="too_short"),      # rejected rows do not compete
        make_row("c", 2, "c2", []),
    ]
    for k in range(40):  # many random overlaps across sources
        src, prio = rng.choice([("a", 0), ("b", 1), ("c", 2)])
        rows.append(make_row(src, prio, f"r{k:02d}", rng.sample(SENTENCES, rng.randrange(1, 5))))
    return rows


def _reference_line_dedup(rows: list[dict], min_words: int) -> dict[str, tuple]:
    """The keep rule in one process, for a handful of rows: the first (key, position) wins."""
    live = sorted((r for r in rows if r["reason"] is None), key=lambda r: r["key"])
    owner: dict[str, str] = {}
    for row in live:
        for s in row["sentences"]:
            owner.setdefault(normalize_for_hash(s), row["key"])
    out = {r["id"]: (r["sentences"], {}, r["reason"], None, None) for r in rows if r["reason"] is not None}
    for row in live:
        kept, drops, seen, first_owner = [], Counter(), set(), None
        for pos, s in enumerate(row["sentences"]):
            h = normalize_for_hash(s)
            if len(words(h)) < min_words or (owner[h] == row["key"] and h not in seen):
                kept.append(s)
                seen.add(h)
                continue
            same = owner[h].split("\x1f")[1] == row["source"]
            drops["duplicate_line" if same else "cross_corpus_duplicate"] += 1
            first_owner = owner[h] if pos == 0 else first_owner
        if row["sentences"] and not kept:
            _, src, doc = first_owner.split("\x1f", 2)
            out[row["id"]] = ([], dict(drops), "duplicate_lines", doc, src)
        else:
            out[row["id"]] = (kept, dict(drops), None, None, None)
    return out


@pytest.fixture(scope="module")
def line_dedup_runs(ray_local):
    import ray.data

    rows = _line_dedup_rows()
    cfg = LineDedupConfig(min_words=2)
    runs = {}
    for n in (16, 3):  # many (mostly tiny or empty) partitions, then few: same answer
        ds = ray.data.from_items(rows, override_num_blocks=3)
        runs[n] = dedup_sentences(ds, cfg, num_partitions=n).take_all()
    return rows, runs


def test_sentence_dedup_keeps_first_copy_by_key(line_dedup_runs):
    rows, runs = line_dedup_runs
    out = by_id(runs[16])
    assert set(out) == {r["id"] for r in rows} and all(tuple(r) == OUT_COLUMNS for r in runs[16])
    a1 = out["a1"]
    assert a1["sentences"] == [SENTENCES[0], SENTENCES[1]]  # the casefolded/respaced copy goes
    assert json.loads(a1["sentence_drops"]) == {"duplicate_line": 1}
    assert out["b2"]["sentences"] == ["Texto propio de b."]
    assert json.loads(out["b2"]["sentence_drops"]) == {"cross_corpus_duplicate": 1}
    assert out["a2"]["sentences"] == [SENTENCES[2], "Fiebre.", "Fiebre."]  # short lines untouched
    # Emptied document: rejected, pointing at the holder of its first sentence's kept copy.
    b1 = out["b1"]
    assert (b1["reason"], b1["duplicate_of"], b1["duplicate_of_source"], b1["sentences"]) == \
        ("duplicate_lines", "a1", "a", [])
    assert json.loads(b1["sentence_drops"]) == {"cross_corpus_duplicate": 2}
    # Rejected and empty rows pass through untouched.
    assert (out["c1"]["reason"], out["c1"]["sentences"]) == ("too_short", [SENTENCES[2]])
    assert out["c2"]["reason"] is None and out["c2"]["duplicate_of_source"] is None


def test_sentence_dedup_matches_reference_for_any_partitioning(line_dedup_runs):
    rows, runs = line_dedup_runs
    expected = _reference_line_dedup(rows, min_words=2)
    got = {r["id"]: (r["sentences"], json.loads(r["sentence_drops"]), r["reason"], r["duplicate_of"],
                     r["duplicate_of_source"]) for r in runs[16]}
    assert got == expected
    assert canonical(runs[16]) == canonical(runs[3])  # deterministic whatever the partitioning
    reasons = Counter(k for v in got.values() for k in v[1])
    assert reasons["duplicate_line"] > 5 and reasons["cross_corpus_duplicate"] > 5


# --------------------------------------------------------------------------- connected components
def test_connected_components_on_a_known_graph(ray_local, caplog):
    import ray.data

    rng = random.Random(5)
    labels = [f"n{i:03d}" for i in range(16)]
    rng.shuffle(labels)  # a long path whose labels are not in path order
    edges = [(labels[i], labels[i + 1]) for i in range(len(labels) - 1)]
    edges += [("s0", f"s{i}") for i in range(1, 6)] + [("s3", "s0")]        # star + repeated edge
    edges += [("t2", "t1"), ("t1", "t3"), ("t3", "t2")]                     # triangle
    edges += [("p1", "p0"), ("q0", "q0")]                                  # pair, self-loop
    ds = ray.data.from_items([{"u": u, "v": v} for u, v in edges], override_num_blocks=2)
    with caplog.at_level(logging.INFO, logger="galeno.corpus.dedup"):
        result, rounds = connected_components(ds, num_partitions=5)
    root = {r["u"]: r["v"] for r in result.take_all()}

    expected = {}
    for comp in (labels, [f"s{i}" for i in range(6)], ["t1", "t2", "t3"], ["p0", "p1"]):
        expected.update({n: min(comp) for n in comp if n != min(comp)})
    assert root == expected  # roots and isolated nodes ("q0") have no row
    assert 2 <= rounds <= 6  # O(log n): a 16-node path takes 4
    assert any("round" in m for m in caplog.messages)


def _star_rounds_in_one_partition(edges: list[tuple[str, str]]) -> dict[str, str]:
    """The per-partition steps of connected_components with everything in one partition."""
    import pyarrow as pa

    cur = dedup._conform(pa.table({"u": [u for u, _ in edges], "v": [v for _, v in edges]}), dedup._EDGE)
    for _ in range(64):
        cur = dedup._small_star(dedup._orient_down(dedup._large_star(dedup._both_directions(cur))))
        if dedup._sum_unsettled(cur) == 0:
            labels = dedup._to_labels(cur)
            return dict(zip(labels["u"].to_pylist(), labels["v"].to_pylist()))
    raise AssertionError("no convergence")


def test_star_steps_match_union_find_on_random_graphs():
    rng = random.Random(9)
    for trial in range(20):
        n = rng.randrange(2, 300)
        nodes = [f"{rng.randrange(10**6):06d}" for _ in range(n)]
        edges = [(rng.choice(nodes), rng.choice(nodes)) for _ in range(rng.randrange(1, 2 * n))]
        parent = {x: x for e in edges for x in e}

        def find(x: str) -> str:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for u, v in edges:
            a, b = find(u), find(v)
            parent[max(a, b)] = min(a, b)  # union by smaller label: the root is the component min
        expected = {x: find(x) for x in parent if find(x) != x}
        assert _star_rounds_in_one_partition(edges) == expected, trial


# --------------------------------------------------------------------------- document dedup
def _chain(rng: random.Random) -> list[list[str]]:
    """Five documents, each two substitutions from the previous (J ~ 0.8 neighbours, ~0.4 ends)."""
    docs = [_random_doc(rng, 100, 3000)]
    for k in range(4):
        nxt = list(docs[-1])
        for p in (5 + 20 * k, 55 + 10 * k):
            nxt[p] = f"sub{k}_{p}"
        docs.append(nxt)
    return docs


def _doc_dedup_rows() -> list[dict]:
    rng = random.Random(11)
    chain = [" ".join(d) for d in _chain(rng)]
    rows = [
        # The chain's smallest key is its middle document: it is kept, everything else points to it.
        make_row("a", 1, "c0", [chain[0]]),
        make_row("a", 1, "c1", [chain[1]]),
        make_row("a", 0, "c2", [chain[2]]),
        make_row("b", 2, "c3", [chain[3]]),
        make_row("b", 2, "c4", [chain[4]]),
        make_row("b", 2, "c2copy", [chain[2].upper()]),                      # exact copy of the kept doc
        make_row("b", 2, "c0copy", ["  " + chain[0].replace(" ", "\n", 3)]),  # exact copy of c0
        # Short documents (< ngram words): equal words dedup, different words do not.
        make_row("a", 1, "short1", ["Hola mundo."]),
        make_row("b", 2, "short2", ["hola   MUNDO."]),
        make_row("b", 2, "short3", ["Hola, mundo"]),
        make_row("b", 2, "short4", ["Hola amigo."]),
        make_row("c", 3, "gone", [chain[2]], reason="lang_pt"),               # rejected rows do not compete
    ]
    rows += [make_row("c", 3, f"d{k:02d}", [" ".join(_random_doc(rng, rng.randrange(20, 200), 3000))])
             for k in range(60)]
    return rows


@pytest.fixture(scope="module")
def doc_dedup_output(ray_local):
    import ray.data

    ds = ray.data.from_items(_doc_dedup_rows(), override_num_blocks=2)
    return dedup_documents(ds, MinHashConfig(), num_partitions=12).take_all()


def test_dedup_documents_collapses_chain_to_smallest_key(doc_dedup_output):
    out = by_id(doc_dedup_output)
    assert all(tuple(r) == OUT_COLUMNS for r in doc_dedup_output)
    assert out["c2"]["reason"] is None and out["c2"]["sentences"]
    for doc_id, reason in [("c0", "near_duplicate"), ("c1", "near_duplicate"), ("c3", "near_duplicate"),
                           ("c4", "near_duplicate"), ("c2copy", "exact_duplicate"),
                           ("c0copy", "near_duplicate")]:  # text = c0's, but c0 is not the kept copy
        row = out[doc_id]
        assert (row["reason"], row["duplicate_of"], row["duplicate_of_source"], row["sentences"]) == \
            (reason, "c2", "a", []), doc_id
    assert out["short1"]["reason"] is None
    assert (out["short2"]["reason"], out["short2"]["duplicate_of"]) == ("exact_duplicate", "short1")
    assert (out["short3"]["reason"], out["short3"]["duplicate_of_source"]) == ("near_duplicate", "a")
    assert out["short4"]["reason"] is None
    assert out["gone"]["reason"] == "lang_pt" and out["gone"]["duplicate_of"] is None
    distinct = [r for i, r in out.items() if i.startswith("d")]
    assert all(r["reason"] is None for r in distinct)  # no false positive among distinct documents


def test_document_dedup_checks_row_keys(ray_local):
    import ray.data

    row = make_row("a", 0, "x", ["Un texto cualquiera."])
    row["key"] = document_key(0, "a", "another-id")
    with pytest.raises(Exception, match="does not encode"):
        dedup_documents(ray.data.from_items([row]), MinHashConfig(), num_partitions=2).take_all()


def test_row_schema_follows_document_columns():
    assert OUT_COLUMNS == ROW_COLUMNS + ("duplicate_of_source",)
