"""Tokenise the cleaned corpus and pack it into fixed-length MLM sequences (Ray Data).

RoBERTa (Liu et al. 2019, §4.2) compares two ways to fill a 512-token input with whole
sentences: DOC-SENTENCES, which never crosses a document, and FULL-SENTENCES, which runs on
into the next document with an extra separator. ``doc_sentences`` (the default, what the
corpus job's document boundaries are for) and ``full_sentences`` are both here, as one greedy
rule with a different action at a document boundary. A sentence longer than a sequence is cut
into pieces (counted), never truncated, so every token of the corpus lands in exactly one
sequence: ``content_tokens`` in the manifest equals the tokenizer's count of the corpus.

Held-out validation documents are chosen by a stable hash of the document key before packing,
so the same documents are held out whatever the packing or the number of workers.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from galeno import handover, paths
from galeno.config import config_hash, to_dict
from galeno.hashing import code_digest, file_hash, is_heldout
from galeno.train.config import MLMDataConfig

log = logging.getLogger(__name__)

PACKED_COLUMNS = ("input_ids", "length", "content_tokens", "split", "source", "docs", "cut_sentences", "reason")


def tokenizer_digest(tokenizer_dir: str | Path) -> str:
    return file_hash(Path(tokenizer_dir) / "tokenizer.json")


@lru_cache(maxsize=4)
def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    if not (Path(path) / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer at {path} (cwd {Path.cwd()}): run jobs/train_tokenizer.py, or "
                                "pass a path every worker can read")
    return AutoTokenizer.from_pretrained(path, local_files_only=True)  # never reach for the Hub


def sequence_ends(tok) -> tuple[int, int]:
    """The ids that open and close a sequence (<s> ... </s> for RoBERTa, [CLS] ... [SEP] for BERT): what the
    tokenizer itself adds, as fine-tuning and inference see it (``galeno.inference.loading.specials``)."""
    from galeno.inference.loading import specials

    before, after = specials(tok)
    if len(before) != 1 or len(after) != 1:
        raise ValueError(f"tokenizer {tok.name_or_path} adds {before} before and {after} after a sequence: "
                         "packing needs one token on each side")
    return before[0], after[0]


def pack_units(units: Iterable[tuple[str, list[list[int]]]], max_content: int, bos: int, eos: int,
               cross_documents: bool) -> Iterator[dict[str, Any]]:
    """Greedy packing of documents (a list of token-id sentences each) into sequences.

    Yields rows ``input_ids`` (with <s> ... </s>), ``content_tokens`` (corpus tokens in it),
    ``docs`` (documents that start in it) and ``cut_sentences`` (over-long sentences cut in it).
    In FULL-SENTENCES mode a </s> separates two documents inside one sequence.
    """
    current: list[int] = []
    content = docs = cut = 0

    def flush():
        nonlocal current, content, docs, cut
        row = {"input_ids": [bos, *current, eos], "content_tokens": content, "docs": docs, "cut_sentences": cut}
        current, content, docs, cut = [], 0, 0, 0
        return row

    for _, sentences in units:
        if cross_documents and current and len(current) + 1 <= max_content:
            current.append(eos)  # document separator (FULL-SENTENCES)
        elif current:
            yield flush()
        docs += 1
        for sent in sentences:
            if not sent:
                continue
            if len(current) + len(sent) <= max_content:
                current.extend(sent)
                content += len(sent)
                continue
            if current:
                yield flush()
            if len(sent) > max_content:
                cut += 1
                pieces = [sent[i:i + max_content] for i in range(0, len(sent), max_content)]
                for piece in pieces[:-1]:
                    current = list(piece)
                    content += len(piece)
                    yield flush()
                sent = pieces[-1]
            current = list(sent)
            content += len(sent)
    if current:
        yield flush()


def pack_batch(batch: dict[str, np.ndarray], cfg: dict[str, Any]):
    """Ray Data batch function: documents in, packed sequences (and empty-document rejects) out."""
    import pyarrow as pa

    data = MLMDataConfig(**cfg)
    tok = load_tokenizer(data.tokenizer)
    max_content = data.seq_len - 2
    out: dict[str, list] = {c: [] for c in PACKED_COLUMNS}
    groups: dict[tuple[str, str], list[tuple[str, list[list[int]]]]] = {}
    for doc_id, source, text in zip(batch["id"], batch["source"], batch["text"]):
        sentences = [s for s in str(text or "").split("\n") if s.strip()]  # one sentence per line
        ids = tok(sentences, add_special_tokens=False, verbose=False)["input_ids"] if sentences else []
        if not any(ids):
            _add(out, {"input_ids": [], "content_tokens": 0, "docs": 1, "cut_sentences": 0},
                 "rejected", source, "empty_document")
            continue
        split = "val" if is_heldout(str(source), str(doc_id), data.val_fraction) else "train"
        groups.setdefault((split, source), []).append((f"{source}/{doc_id}", ids))
    cross = data.pack_mode == "full_sentences"
    ends = sequence_ends(tok)
    for (split, source), units in groups.items():
        for row in pack_units(units, max_content, *ends, cross):
            _add(out, row, split, source, "")
    return pa.table({
        "input_ids": pa.array(out["input_ids"], type=pa.list_(pa.int32())),
        **{c: out[c] for c in PACKED_COLUMNS if c != "input_ids"},
    })


def _add(out, row, split, source, reason):
    out["input_ids"].append(row["input_ids"])
    out["length"].append(len(row["input_ids"]))
    out["content_tokens"].append(row["content_tokens"])
    out["docs"].append(row["docs"])
    out["cut_sentences"].append(row["cut_sentences"])
    out["split"].append(split)
    out["source"].append(str(source))
    out["reason"].append(reason)


def packing_identity(cfg: MLMDataConfig) -> dict[str, Any]:
    """What the packed data depends on: tokenizer and corpus identities plus the packing settings."""
    return {"tokenizer": tokenizer_digest(cfg.tokenizer),
            "corpus": handover.read(cfg.corpus, handover.CorpusOutputs).documents_digest,
            "seq_len": cfg.seq_len, "pack_mode": cfg.pack_mode, "val_fraction": cfg.val_fraction,
            "code": code_digest("galeno.train.packing")}


def packing_tag(identity: dict[str, Any]) -> str:
    """Names the packed folder: a changed tokenizer, corpus or packing never reuses stale data."""
    return config_hash(identity)


def pack_corpus(cfg: MLMDataConfig, out_dir: str | Path, num_blocks: int | None = None) -> dict[str, Any]:
    """Pack ``cfg.corpus`` into ``out_dir/{train,val}/*.parquet`` + manifest; reuses a finished folder."""
    import ray.data

    out = Path(out_dir).resolve()
    manifest_path = paths.packed_manifest(out)
    if manifest_path.is_file():
        log.info("reusing the packed sequences in %s: an earlier run packed the same corpus and tokenizer "
                 "with the same settings and packing code", out)
        return json.loads(manifest_path.read_text())
    docs_dir = handover.read(cfg.corpus, handover.CorpusOutputs).documents
    if not list(docs_dir.glob("*.parquet")):
        raise FileNotFoundError(f"no corpus documents in {docs_dir}: run jobs/clean_corpus.py first")
    if not (Path(cfg.tokenizer) / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer at {cfg.tokenizer}: run jobs/train_tokenizer.py first")
    t0 = time.time()
    identity = packing_identity(cfg)
    cfg_dict = to_dict(cfg)
    cfg_dict["tokenizer"] = str(Path(cfg.tokenizer).resolve())
    ds = ray.data.read_parquet(str(docs_dir.resolve()), columns=["id", "source", "text"],
                               override_num_blocks=num_blocks)
    packed = ds.map_batches(pack_batch, fn_kwargs={"cfg": cfg_dict}, batch_size=cfg.pack_batch_docs,
                            batch_format="numpy")
    tmp = out.with_name(out.name + ".tmp")
    packed = packed.materialize()
    for split in ("train", "val"):
        (packed.filter(expr=f"split == '{split}'").select_columns(["input_ids", "length", "source"])
         .write_parquet(str(paths.packed_split(tmp, split).resolve()), min_rows_per_file=4096))
    groups = packed.map_batches(_batch_totals, batch_format="pyarrow").take_all()  # one row per block
    manifest: dict[str, Any] = {
        "config": cfg_dict, "tag": packing_tag(identity), "tokenizer_hash": identity["tokenizer"],
        "corpus_manifest_hash": file_hash(handover.read(cfg.corpus, handover.CorpusOutputs).manifest),
        "corpus_documents_digest": identity["corpus"],
        "splits": {s: _totals([], cfg.seq_len) for s in ("train", "val")}, "sources": {}, "rejected": {}}
    for g in sorted(groups, key=lambda g: (g["split"], g["source"], g["reason"])):
        if g["split"] == "rejected":
            manifest["rejected"][g["reason"]] = manifest["rejected"].get(g["reason"], 0) + int(g["documents"])
            continue
        by_source = manifest["sources"].setdefault(g["source"], {})
        by_source[g["split"]] = _totals([by_source.get(g["split"], {}), g], cfg.seq_len)
        manifest["splits"][g["split"]] = _totals([manifest["splits"][g["split"]], g], cfg.seq_len)
    manifest["documents_in"] = (sum(s["documents"] for s in manifest["splits"].values())
                                + sum(manifest["rejected"].values()))
    manifest["elapsed_seconds"] = round(time.time() - t0, 2)
    paths.packed_manifest(tmp).write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    log.info("packed %s documents into %s train / %s val sequences in %.1fs", manifest["documents_in"],
             manifest["splits"]["train"]["sequences"], manifest["splits"]["val"]["sequences"],
             manifest["elapsed_seconds"])
    return manifest


def _batch_totals(batch):
    """Per (split, source, reason) sums of one block: the manifest is a sum of these, no shuffle."""
    import pyarrow as pa

    rows: dict[tuple[str, str, str], dict[str, int]] = {}
    cols = batch.drop_columns(["input_ids"]).to_pydict()
    for i in range(batch.num_rows):
        key = (cols["split"][i], cols["source"][i], cols["reason"][i])
        acc = rows.setdefault(key, {"sequences": 0, "documents": 0, "tokens": 0, "content_tokens": 0,
                                    "cut_sentences": 0})
        acc["sequences"] += cols["split"][i] != "rejected"
        acc["documents"] += cols["docs"][i]
        acc["tokens"] += cols["length"][i]
        acc["content_tokens"] += cols["content_tokens"][i]
        acc["cut_sentences"] += cols["cut_sentences"][i]
    return pa.Table.from_pylist([{"split": k[0], "source": k[1], "reason": k[2], **v} for k, v in rows.items()])


def _totals(parts: list[dict[str, Any]], seq_len: int) -> dict[str, Any]:
    """Sum of per-block totals; ``fill`` is the share of the sequences' slots holding real tokens."""
    keys = ("sequences", "documents", "tokens", "content_tokens", "cut_sentences")
    out = {k: sum(int(p.get(k, 0)) for p in parts) for k in keys}
    out["fill"] = round(out["tokens"] / (out["sequences"] * seq_len), 4) if out["sequences"] else 0.0
    return out
