"""Packing: document boundaries, no token dropped, over-long sentences cut and counted, stable splits."""

from __future__ import annotations

import json

import pytest

from galeno import paths
from galeno.hashing import is_heldout
from galeno.train.config import MLMDataConfig
from galeno.train.packing import pack_corpus, pack_units

BOS, EOS = 0, 2


def _docs():
    # token ids say which document they come from: doc d uses ids d*1000 + n
    return [("a", [[1000 + i for i in range(5)], [1100 + i for i in range(7)]]),
            ("b", [[2000 + i for i in range(30)]]),           # longer than one sequence: cut
            ("c", [[3000, 3001], [3002, 3003, 3004]])]


def _content(row):
    ids = row["input_ids"]
    assert ids[0] == BOS and ids[-1] == EOS
    return ids[1:-1]


def test_doc_sentences_never_cross_documents_and_keep_every_token():
    rows = list(pack_units(_docs(), max_content=10, bos=BOS, eos=EOS, cross_documents=False))
    for row in rows:
        docs_in_row = {t // 1000 for t in _content(row)}
        assert len(docs_in_row) == 1, row
        assert len(row["input_ids"]) <= 12
    flat = [t for row in rows for t in _content(row)]
    assert flat == [t for _, sents in _docs() for s in sents for t in s]  # order kept, nothing lost
    assert sum(r["content_tokens"] for r in rows) == 5 + 7 + 30 + 5
    assert sum(r["docs"] for r in rows) == 3
    assert sum(r["cut_sentences"] for r in rows) == 1
    # sentence boundaries respected: doc a's two sentences (5 + 7 > 10) land in two sequences
    assert _content(rows[0]) == list(range(1000, 1005))


def test_full_sentences_fill_across_documents_with_a_separator():
    docs = [("a", [[1000, 1001, 1002]]), ("b", [[2000, 2001]]), ("c", [[3000, 3001, 3002, 3003]])]
    rows = list(pack_units(docs, max_content=10, bos=BOS, eos=EOS, cross_documents=True))
    assert _content(rows[0]) == [1000, 1001, 1002, EOS, 2000, 2001, EOS, 3000, 3001, 3002, 3003][:10] or \
        len(rows) == 2
    real = [t for row in rows for t in _content(row) if t != EOS]
    assert real == [1000, 1001, 1002, 2000, 2001, 3000, 3001, 3002, 3003]
    assert sum(r["docs"] for r in rows) == 3
    assert len(rows) < 3  # fewer, fuller sequences than one per document


@pytest.fixture(scope="module")
def packed(ray_local, tiny_corpus, tiny_tokenizer, tmp_path_factory):
    import shutil

    from tests.builders import write_corpus
    from tests.train.conftest import sample_documents

    corpus = tmp_path_factory.mktemp("corpus-with-empty")
    shutil.rmtree(corpus)
    write_corpus(corpus, sample_documents() + [{"id": "blank", "source": "crawl", "text": "  \n \n"}])
    cfg = MLMDataConfig(corpus=str(corpus), tokenizer=str(tiny_tokenizer), seq_len=64, val_fraction=0.1)
    out = tmp_path_factory.mktemp("packed") / "p"
    return cfg, out, pack_corpus(cfg, out)


def test_pack_corpus_accounts_for_every_document_and_token(packed):
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from tests.train.conftest import sample_documents

    cfg, out, manifest = packed
    docs = sample_documents()
    tok = AutoTokenizer.from_pretrained(cfg.tokenizer)
    expected_tokens = sum(len(ids) for d in docs for ids in
                          tok([s for s in d["text"].split("\n") if s.strip()], add_special_tokens=False)["input_ids"])
    splits = manifest["splits"]
    assert splits["train"]["content_tokens"] + splits["val"]["content_tokens"] == expected_tokens
    assert manifest["rejected"] == {"empty_document": 1}
    assert manifest["documents_in"] == len(docs) + 1
    expected_val = sum(is_heldout(d["source"], d["id"], cfg.val_fraction) for d in docs)
    assert splits["val"]["documents"] == expected_val > 0
    for split in ("train", "val"):
        table = pq.read_table(paths.packed_split(out, split))
        assert table.num_rows == splits[split]["sequences"]
        lengths = [len(x) for x in table["input_ids"].to_pylist()]
        assert max(lengths) <= cfg.seq_len and sum(lengths) == splits[split]["tokens"]
    assert set(manifest["sources"]) == {"pharmaconer", "meddocan"}
    assert json.loads(paths.packed_manifest(out).read_text()) == manifest


def test_pack_corpus_reuses_a_finished_folder(packed):
    cfg, out, manifest = packed
    stamp = paths.packed_manifest(out).stat().st_mtime_ns
    assert pack_corpus(cfg, out) == manifest
    assert paths.packed_manifest(out).stat().st_mtime_ns == stamp


def test_missing_inputs_are_clear_errors(tmp_path, tiny_tokenizer):
    with pytest.raises(FileNotFoundError, match="run jobs/clean_corpus.py"):
        pack_corpus(MLMDataConfig(corpus=str(tmp_path / "nope"), tokenizer=str(tiny_tokenizer)), tmp_path / "o")
