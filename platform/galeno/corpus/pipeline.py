"""The corpus job: raw multi-format sources -> clean, deduplicated Spanish corpus on Ray Data.

Two phases, both Ray Data transformations:

1. **Local** (per document, embarrassingly parallel): read -> repair encoding -> split
   sentences -> language id -> sentence filters -> decontamination. Input files are grouped
   into shards of ``shard_mb``; each shard's rows are committed atomically as one Parquet file
   named after the shard's files and the config of these steps. An interrupted run resumes at
   shard granularity: committed shards are skipped, nothing is written twice.
2. **Global** (needs shuffles): exact and near-duplicate documents (MinHash LSH, verified pairs,
   distributed connected components), dropped whole; then repeated sentences within and across
   corpora in the documents that remain.

Finally rows are hash-assigned by key to ``output_shards`` files, sorted, and written, so a
rerun with the same config gives byte-identical Parquet. Every input document ends up exactly
once in ``documents/`` or, with a reason, in ``rejected/`` (docs/corpus.md: the contract).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from galeno import __version__, handover, paths, storage
from galeno.config import config_hash, from_dict, to_dict
from galeno.corpus.config import CorpusConfig, SourceConfig, keep_priority
from galeno.corpus.document import Document, to_row
from galeno.hashing import code_digest, file_hash, folder_digest

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- shard plan
@dataclass(frozen=True)
class Shard:
    """A group of input files of one source: the unit of parallelism and of resume."""

    id: str
    source: str
    format: str
    priority: int
    root: str
    files: tuple[str, ...]
    deid: bool = True  # de-identified when the job has a deid model, unless its source opted out


def plan_shards(sources: Sequence[SourceConfig], shard_mb: float) -> list[Shard]:
    """Group each source's files into shards of about ``shard_mb``; names change with content.

    A source's keep priority is its own ``priority``, else its place in ``sources``."""
    from galeno.corpus.readers import expand_source, source_root

    shards: list[Shard] = []
    budget = shard_mb * 2**20
    for src in sources:
        files = expand_source(src.path, src.format)
        root = source_root(src.path)
        stat = _stats(files)
        groups: list[list[str]] = [[]]
        size = 0.0
        for path in files:
            fsize = stat[path][0]
            if groups[-1] and size + fsize > budget:
                groups.append([])
                size = 0.0
            groups[-1].append(path)
            size += fsize
        for i, group in enumerate(g for g in groups if g):
            stamp = config_hash([[p, *stat[p]] for p in group], 8)
            shards.append(Shard(f"{src.name}-{i:05d}-{stamp}", src.name, src.format,
                                keep_priority(sources, src), root, tuple(group), src.deid))
    return shards


def _stats(files: list[str]) -> dict[str, tuple[int, int]]:
    """(size, whole-second mtime) of each input file; an object store's in one listing request per file
    batch, not one request per file."""
    if not files or not storage.is_uri(files[0]):
        return {p: (os.path.getsize(p), int(os.path.getmtime(p))) for p in files}
    filesystem, _ = storage.resolve(files[0])
    infos = filesystem.get_file_info([storage.resolve(p)[1] for p in files])
    return {p: (int(i.size), int(i.mtime.timestamp()) if i.mtime else 0) for p, i in zip(files, infos)}


def local_tag(cfg: CorpusConfig, deid_digest: str = "") -> str:
    """Hash of everything the local phase depends on: a changed parameter never reuses output.
    ``deid_digest``: what the de-identification model's files are (``hashing.model_digest``)."""
    identity: dict[str, Any] = {
        "code": code_digest("galeno.corpus"),
        "sources": [[s.name, s.format, cfg.priority(s)] for s in cfg.sources],
        "steps": [to_dict(cfg.normalize), to_dict(cfg.split), to_dict(cfg.langid),
                  to_dict(cfg.filters), to_dict(cfg.decontaminate)],
    }
    if cfg.deid.enabled:  # without it the tag stays what it was, so earlier committed shards still count
        identity["deid"] = {**to_dict(cfg.deid), "model": deid_digest, "code": code_digest("galeno.deid"),
                            "sources": [s.name for s in cfg.sources if s.deid]}
    return config_hash(identity)


# --------------------------------------------------------------------------- local phase
class LocalSteps:
    """Steps 1-4 and 7 on one document; built once per Ray worker (models load once). Step 0,
    de-identification, runs on a shard's documents together first (:meth:`deidentify`)."""

    def __init__(self, cfg: CorpusConfig, deid_model_dir: str = ""):
        from galeno.corpus.decontam import Decontaminator
        from galeno.corpus.filters import build_sentence_filters
        from galeno.corpus.langid import LanguageIdentifier
        from galeno.corpus.sentences import ClinicalSentenceSplitter

        self.cfg = cfg
        self.splitter = ClinicalSentenceSplitter(cfg.split.extra_abbreviations)
        self.lid = LanguageIdentifier(cfg.langid)
        self.filters = [pred for _, pred in build_sentence_filters(cfg.filters)]
        self.decontam = (Decontaminator.from_config(cfg.decontaminate)
                         if cfg.decontaminate.paths else None)
        self.deid = None
        if cfg.deid.enabled:
            from galeno.deid.deidentify import Deidentifier

            self.deid = Deidentifier(cfg.deid, deid_model_dir)

    def deidentify(self, docs: list[Document]) -> list[Document]:
        """Step 0 on a shard's readable documents: each identifier becomes ``[LABEL]`` and the document's
        ``meta["deid"]`` counts them by label. A document the model fails on is rejected
        (``deid_failed``) and its text dropped: it never goes on un-masked."""
        if self.deid is None:
            return docs
        from galeno.runtime import each

        todo = [d for d in docs if d.reason is None and d.text.strip()]
        step = self.cfg.deid.batch_size
        for i in range(0, len(todo), step):
            part = todo[i:i + step]
            results = each(self.deid, [d.text for d in part], [d.id for d in part], "de-identification")
            for d, r in zip(part, results):
                if r is None:  # never goes on un-masked
                    d.text = ""
                    d.reject("deid_failed")
                    continue
                d.text = r.text
                d.meta["deid"] = r.counts()
        return docs

    def __call__(self, doc: Document) -> Document:
        from galeno.corpus.normalize import normalize_text

        if doc.reason:  # rejected by the reader (malformed record, corrupt file, ...)
            return doc
        text, fixes = normalize_text(doc.text, self.cfg.normalize)
        fixes = {k: v for k, v in fixes.items() if v}
        if fixes:
            doc.meta["fixes"] = fixes
        doc.text = text
        doc.n_words_in = len(text.split())
        if not text.strip():
            return doc.reject("empty")
        doc.sentences = self.splitter.split(text)
        doc.n_sentences_in = len(doc.sentences)
        if not doc.sentences:
            return doc.reject("no_sentences")
        lang, score, _ = self.lid.detect(text)
        doc.lang, doc.lang_score = lang, score
        why = self.lid.document_predicate(text)
        if why:
            return doc.reject(why)
        for predicate in self.filters:
            doc.apply(predicate)
        if self.decontam is not None:
            doc.apply(self.decontam.predicate)
        if self.cfg.langid.sentence_level:
            doc.apply(self.lid.sentence_predicate(self.cfg.langid.language))
        if not doc.sentences:
            return doc.reject("all_sentences_dropped")
        return doc


def row_schema():
    import pyarrow as pa

    return pa.schema([
        ("key", pa.string()), ("id", pa.string()), ("source", pa.string()),
        ("priority", pa.int32()), ("meta", pa.string()), ("reason", pa.string()),
        ("duplicate_of", pa.string()), ("sentences", pa.list_(pa.string())),
        ("sentence_drops", pa.string()), ("n_sentences_in", pa.int64()),
        ("n_words_in", pa.int64()), ("bad_bytes", pa.int64()), ("lang", pa.string()),
        ("lang_score", pa.float64()),
    ])


def read_shard(shard: Shard) -> Iterator[Document]:
    from galeno.corpus.readers import read_file

    if not storage.is_uri(shard.root):
        for path in shard.files:
            yield from read_file(path, shard.format, shard.source, root=shard.root)
        return
    # On an object store: each file is copied to this worker's disk, at the same place relative to the
    # source's root, and read there, so its documents get the ids a local copy of the tree would give.
    # A file that cannot be copied is read as missing: an "unreadable" document, counted like any other.
    import tempfile

    root = shard.root.partition("?")[0].rstrip("/") + "/"
    with tempfile.TemporaryDirectory(prefix="galeno-shard-") as tmp:
        for uri in shard.files:
            rel = uri.partition("?")[0][len(root):]
            local = os.path.join(tmp, *rel.split("/"))
            siblings = [(uri, local)]
            if shard.format == "brat":  # its annotations say whether the text is a brat document
                siblings.append((_with_suffix(uri, ".ann"), os.path.splitext(local)[0] + ".ann"))
            for remote, path in siblings:
                try:
                    storage.download(remote, path)
                except OSError as err:
                    if remote == uri:
                        log.warning("corpus: could not copy %s from the object store (%s)", uri, err)
            yield from read_file(local, shard.format, shard.source, root=tmp)
            for _, path in siblings:
                if os.path.exists(path):
                    os.remove(path)


def _with_suffix(uri: str, suffix: str) -> str:
    head, sep, query = uri.partition("?")
    return os.path.splitext(head)[0] + suffix + sep + query


def commit_parquet(table, path: Path | str) -> None:
    """Write so that a reader (or a resumed run) never sees a half-written file: locally to a temporary
    name, then renamed; on an object store one upload, which appears whole or not at all."""
    import pyarrow.parquet as pq

    if storage.is_uri(path):
        filesystem, inner = storage.resolve(path)
        pq.write_table(table, inner, filesystem=filesystem, compression="zstd")
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


class ShardWorker:
    """Ray Data actor: one input shard in, one committed Parquet file of rows out."""

    def __init__(self, cfg: dict[str, Any], out_dir: str, deid_model_dir: str = ""):
        self.cfg = from_dict(CorpusConfig, cfg)
        self.out_dir = out_dir
        self.steps = LocalSteps(self.cfg, deid_model_dir)
        import ray

        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        import pyarrow as pa

        done: dict[str, list] = {"shard": [], "documents": [], "seconds": []}
        for spec in batch["spec"]:
            t0 = time.perf_counter()
            shard = Shard(**{**json.loads(spec), "files": tuple(json.loads(spec)["files"])})
            docs = list(read_shard(shard))
            if shard.deid:
                docs = self.steps.deidentify(docs)
            rows = [to_row(self.steps(doc), shard.priority) for doc in docs]
            commit_parquet(pa.Table.from_pylist(rows, schema=row_schema()),
                           storage.join(self.out_dir, f"{shard.id}.parquet"))
            done["shard"].append(shard.id)
            done["documents"].append(len(rows))
            done["seconds"].append(time.perf_counter() - t0)
            log.info("corpus: shard %s committed: %d documents in %.1f s on node %s", shard.id, len(rows),
                     done["seconds"][-1], self.node)
        return done


def _read_rows(batch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for path in batch["path"].to_pylist():
        filesystem, inner = storage.resolve(path)
        tables.append(pq.read_table(inner, filesystem=filesystem, schema=row_schema()))
    return pa.concat_tables(tables)


def read_local_shards(files: list[str]):
    """The committed local shards as one dataset, read by plain Ray tasks, which Ray retries when
    their node is lost. Not ``ray.data.read_parquet``: in Ray 2.60 it lists files with actors placed
    SPREAD and never restarted, so one that lands on a node that is dying fails the whole job."""
    import ray.data

    return (ray.data.from_items([{"path": f} for f in files], override_num_blocks=max(1, len(files)))
            .map_batches(_read_rows, batch_size=1, batch_format="pyarrow"))


def committed_shards(cfg: CorpusConfig, shards: list[Shard], out_dir: Path | str) -> set[str]:
    """Ids of the ``shards`` already committed in ``out_dir`` (none with ``resume`` off)."""
    if not cfg.resume:
        return set()
    names = {storage.name(p) for p, _, _ in storage.list_files(out_dir)}
    return {s.id for s in shards if f"{s.id}.parquet" in names}


def run_local_phase(cfg: CorpusConfig, shards: list[Shard], out_dir: Path | str,
                    deid_model_dir: str = "") -> dict[str, Any]:
    import ray
    import ray.data

    committed = committed_shards(cfg, shards, out_dir)
    pending = [s for s in shards if s.id not in committed]
    skipped = len(shards) - len(pending)
    if skipped:
        log.info("corpus: reusing %d of %d input shards that an earlier run or attempt committed in %s (same "
                 "input files, config and corpus code); resume=false, or deleting that folder, redoes them",
                 skipped, len(shards), out_dir)
    if pending:
        cpus = int(ray.available_resources().get("CPU", 1)) or 1
        specs = [{"spec": json.dumps(asdict(s))} for s in pending]
        ds = ray.data.from_items(specs, override_num_blocks=len(specs))
        # A pool of its full size from the start: one that grows on demand stayed at one actor while 16 quick
        # shards queued (Ray 2.60), leaving the cluster's other nodes idle. An actor lost with its node is
        # restarted where there is room, and the shards it held are redone by the actors left.
        ds.map_batches(ShardWorker, batch_size=1,
                       compute=ray.data.ActorPoolStrategy(size=max(1, min(cpus, len(pending)))),
                       fn_constructor_kwargs={"cfg": to_dict(cfg), "out_dir": str(out_dir),
                                              "deid_model_dir": deid_model_dir}).materialize()
    return {"shards": len(shards), "shards_skipped_on_resume": skipped}


# --------------------------------------------------------------------------- output
def _out_columns():
    import pyarrow as pa

    documents = pa.schema([
        ("id", pa.string()), ("source", pa.string()), ("text", pa.string()),
        ("n_sentences", pa.int64()), ("n_words", pa.int64()), ("n_chars", pa.int64()),
        ("lang", pa.string()), ("meta", pa.string()),
    ])
    rejected = pa.schema([
        ("id", pa.string()), ("source", pa.string()), ("reason", pa.string()),
        ("duplicate_of", pa.string()), ("duplicate_of_source", pa.string()), ("meta", pa.string()),
    ])
    return documents, rejected


def _shard_of(key: str, n: int) -> int:
    import xxhash

    return xxhash.xxh64_intdigest(key.encode()) % n


def write_output_part(df, tmp_dir: str):
    """Write the rows of one or more output shards, sorted by key; returns their counts per source.

    A Ray Data *task*, not an actor: an actor would hold its CPU for the whole job while the tasks
    it waits for queue behind it; with one CPU left after a node is lost, the job hung (issue 21)."""
    import pandas as pd
    import pyarrow as pa

    tmp = tmp_dir
    doc_schema, rej_schema = _out_columns()
    stats = []
    for shard, part in df.groupby("out_shard", sort=True):
        part = part.sort_values("key", kind="stable")
        dup_key = part["key"].duplicated(keep="first")
        kept, rejected = [], []
        counts: dict[str, dict] = {}
        for row, is_dup in zip(part.to_dict("records"), dup_key):
            reason = "duplicate_id" if is_dup else row["reason"]
            c = counts.setdefault(row["source"], _empty_counts())
            sentences = list(row["sentences"]) if reason is None else []
            _count(c, row, reason, sentences)
            if reason is None:
                text = "\n".join(sentences)
                kept.append({"id": row["id"], "source": row["source"], "text": text,
                             "n_sentences": len(sentences), "n_words": len(text.split()),
                             "n_chars": len(text), "lang": row["lang"], "meta": row["meta"]})
            else:
                rejected.append({"id": row["id"], "source": row["source"], "reason": reason,
                                 "duplicate_of": row.get("duplicate_of"),
                                 "duplicate_of_source": row.get("duplicate_of_source"),
                                 "meta": row["meta"]})
        commit_parquet(pa.Table.from_pylist(kept, schema=doc_schema),
                       storage.join(tmp, "documents", f"part-{int(shard):05d}.parquet"))
        commit_parquet(pa.Table.from_pylist(rejected, schema=rej_schema),
                       storage.join(tmp, "rejected", f"part-{int(shard):05d}.parquet"))
        stats.extend({"shard": int(shard), "source": s, "counts": json.dumps(c)}
                     for s, c in counts.items())
    return pd.DataFrame(stats, columns=["shard", "source", "counts"])


def _empty_counts() -> dict[str, Any]:
    return {"documents_in": 0, "documents_out": 0, "sentences_in": 0, "sentences_out": 0,
            "sentences_dropped_with_documents": 0, "words_in": 0, "words_out": 0,
            "chars_out": 0, "bad_bytes": 0, "document_drops": {}, "sentence_drops": {},
            "fixes": {}, "deid_documents": 0, "deid_replacements": {}}


def _count(c: dict[str, Any], row: dict[str, Any], reason: str | None, kept: list[str]) -> None:
    drops = json.loads(row["sentence_drops"]) if row["sentence_drops"] else {}
    c["documents_in"] += 1
    c["sentences_in"] += int(row["n_sentences_in"])
    c["words_in"] += int(row["n_words_in"])
    c["bad_bytes"] += int(row["bad_bytes"])
    for k, v in drops.items():
        c["sentence_drops"][k] = c["sentence_drops"].get(k, 0) + int(v)
    meta = json.loads(row["meta"])
    for k, v in meta.get("fixes", {}).items():
        c["fixes"][k] = c["fixes"].get(k, 0) + int(v)
    if "deid" in meta:  # counted whether the document is kept or not: every replacement was made
        c["deid_documents"] += 1
        for k, v in meta["deid"].items():
            c["deid_replacements"][k] = c["deid_replacements"].get(k, 0) + int(v)
    if reason is None:
        c["documents_out"] += 1
        c["sentences_out"] += len(kept)
        c["words_out"] += sum(len(s.split()) for s in kept)
        c["chars_out"] += len("\n".join(kept))
    else:
        c["document_drops"][reason] = c["document_drops"].get(reason, 0) + 1
        c["sentences_dropped_with_documents"] += max(
            0, int(row["n_sentences_in"]) - sum(int(v) for v in drops.values()))


def _merge_counts(total: dict[str, Any], part: dict[str, Any]) -> None:
    for k, v in part.items():
        if isinstance(v, dict):
            for r, n in v.items():
                total[k][r] = total[k].get(r, 0) + n
        else:
            total[k] += v


def write_outputs(ds, cfg: CorpusConfig, out: Path | str, swap: bool = True) -> dict[str, dict[str, Any]]:
    """Hash-assign rows to output shards, write them sorted, swap the folders in (:func:`swap_outputs`;
    ``swap=False`` leaves that to the caller)."""
    import pyarrow as pa

    n = cfg.output_shards
    tmp = storage.join(paths.corpus_work(out), "output.tmp")
    storage.remove_tree(tmp)

    def assign(df):
        df["out_shard"] = [_shard_of(k, n) for k in df["key"]]
        return df

    stats = (ds.map_batches(assign, batch_format="pandas")
               .repartition(n, keys=["out_shard"])
               .map_batches(write_output_part, batch_format="pandas", batch_size=None,
                            fn_kwargs={"tmp_dir": str(tmp)})
               .take_all())
    doc_schema, rej_schema = _out_columns()
    for i in range(n):  # shards that received no rows still exist, so the layout is fixed
        for sub, schema in (("documents", doc_schema), ("rejected", rej_schema)):
            f = storage.join(tmp, sub, f"part-{i:05d}.parquet")
            if not storage.exists(f):
                commit_parquet(pa.Table.from_pylist([], schema=schema), f)
    if swap:
        swap_outputs(out)
    per_source: dict[str, dict[str, Any]] = {}
    for row in sorted(stats, key=lambda r: (r["source"], r["shard"])):
        _merge_counts(per_source.setdefault(row["source"], _empty_counts()), json.loads(row["counts"]))
    return per_source


def swap_outputs(out: Path | str) -> None:
    """Move the written ``output.tmp`` folders into place, replacing an earlier run's."""
    tmp = storage.join(paths.corpus_work(out), "output.tmp")
    for sub, final in (("documents", paths.corpus_documents(out)), ("rejected", paths.corpus_rejected(out))):
        storage.replace_tree(storage.join(tmp, sub), final)


# --------------------------------------------------------------------------- job
def absolute_paths(cfg: CorpusConfig) -> CorpusConfig:
    """Resolve every path against the driver's working directory before workers see them.

    On a multi-node cluster, inputs and ``output`` must live on storage all nodes mount
    (NFS, EFS, Lustre): workers write their shards there directly.
    """
    cfg = from_dict(CorpusConfig, to_dict(cfg))
    for src in cfg.sources:
        src.path = paths.absolute(src.path)
    cfg.decontaminate.paths = [os.path.abspath(p) for p in cfg.decontaminate.paths]
    cfg.output = paths.absolute(cfg.output)
    return cfg


def run(cfg: CorpusConfig) -> dict[str, Any]:
    """Run the whole corpus job, tracked as an MLflow run; returns the manifest (also in ``manifest.json``)."""
    from galeno.tracking import flat_metrics, job_run

    if not cfg.sources:
        raise ValueError("no sources: give --source NAME=FORMAT:PATH or a --config with sources")
    cfg = absolute_paths(cfg)
    out = Path(driver_folder(cfg))  # cfg.output itself, unless that is an object store
    handover.clear(out)
    deid_dir, deid_digest = _deid_model(cfg)
    tag = local_tag(cfg, deid_digest)
    with job_run(cfg.tracking, "corpus", out, to_dict(cfg), run_name=f"corpus-{storage.name(cfg.output)}",
                 tags={"galeno.local_tag": tag, "galeno.output": cfg.output}) as tracker:
        manifest = _run(cfg, tag, deid_dir)
        # per-corpus counts (words_out is the token count of the report), drops by reason, timings
        tracker.log_metrics(flat_metrics({"total": manifest["total"], "source": manifest["sources"],
                                          "seconds": manifest["stage_seconds"]}))
        tracker.set_tags({"galeno.corpus_manifest_hash": file_hash(paths.corpus_manifest(out))})
        tracker.log_artifact(paths.corpus_manifest(out))
        tracker.log_artifact(paths.corpus_report(out))
    if storage.is_uri(cfg.output):
        # beside the data on the object store; the stage record (what the next stage reads from a local
        # folder) is not written: the next stage needs the documents on a local or mounted path
        for local in (paths.corpus_manifest(out), paths.corpus_report(out)):
            storage.upload(str(local), storage.join(cfg.output, local.name))
        log.info("corpus: wrote %s (documents/, rejected/, manifest.json, report.md); the manifest and report "
                 "are also in %s", cfg.output, out)
        return manifest
    skipped = manifest.get("shards_skipped_on_resume", 0)
    notes = [f"reused {skipped} of {manifest['shards']} input shards that an earlier run committed (same input "
             f"files, config and corpus code)"] if skipped else []
    handover.write(handover.record(
        handover.CorpusOutputs, out, documents=paths.corpus_documents(out), manifest=paths.corpus_manifest(out),
        report=paths.corpus_report(out), documents_out=int(manifest["total"].get("documents_out", 0)),
        words_out=int(manifest["total"].get("words_out", 0)), documents_digest=manifest["documents_digest"],
        notes=notes))
    return manifest


def driver_folder(cfg: CorpusConfig) -> str:
    """Where the job's driver keeps its own files (manifest, report, stage record, MLflow's local files,
    the global phase's spec): ``output`` itself, or, when that is an object-store URI, a local folder
    (:func:`galeno.paths.corpus_staging`) whose manifest and report are copied up at the end."""
    if not storage.is_uri(cfg.output):
        return cfg.output
    folder = paths.corpus_staging(cfg.output).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder)


def _deid_model(cfg: CorpusConfig) -> tuple[str, str]:
    """The de-identification model's folder (resolved once, on the driver) and its digest; ("", "")
    without one. Refuses a config that names a model but de-identifies no source."""
    if not cfg.deid.enabled:
        return "", ""
    if not any(s.deid for s in cfg.sources):
        raise ValueError("deid.model is set but every source opts out (deid: false): nothing to de-identify")
    if not cfg.deid.uses_model:
        return "", "rules"
    from galeno.hashing import model_digest
    from galeno.inference.source import resolve_model

    model_dir = os.path.abspath(resolve_model(cfg.deid.model, cfg.tracking))
    return model_dir, model_digest(model_dir)


def global_phase(cfg: CorpusConfig, files: list[str], swap: bool = True) -> dict[str, dict[str, Any]]:
    """Steps 5 and 6 over the committed local shards ``files``, then the output; per-source counts."""
    from galeno.corpus.dedup import dedup_documents, dedup_fuzzy_sentences, dedup_sentences

    ds = read_local_shards(files)
    # Whole documents first: a near-copy (a republished page with a date line added and a few words
    # changed) must go whole, as near_duplicate. Were repeated sentences removed first, the copy would
    # shrink to the few sentences that differ, no longer be near its original, and survive as a fragment.
    if cfg.minhash.enabled:
        # sentence dedup reads its input twice: materialise so the document shuffles run once
        ds = dedup_documents(ds, cfg.minhash, cfg.num_partitions).materialize()
    if cfg.line_dedup.enabled:
        ds = dedup_sentences(ds, cfg.line_dedup, cfg.num_partitions)
        if cfg.line_dedup.fuzzy:
            ds = dedup_fuzzy_sentences(ds.materialize(), cfg.line_dedup, cfg.num_partitions)
    return write_outputs(ds, cfg, cfg.output, swap)


def run_global_phase(cfg: CorpusConfig, files: list[str]) -> dict[str, dict[str, Any]]:
    """:func:`global_phase`, started again (at most ``node_loss_retries`` times) when a node is lost while it
    runs; in a driver process of its own on a multi-node cluster, in this process on one node
    (``global_driver``).

    Its shuffles keep their intermediate blocks in the object store. When a node goes, Ray recomputes
    the lost blocks from their lineage, but a shuffle task waiting for them holds its CPU meanwhile:
    with one CPU left, the job stood still (issue 21). A driver of its own is what makes a clean restart
    possible: when it is killed, Ray ends every task and actor it owns, and the phase starts again from
    the committed local shards, which no node loss can take. Its output is swapped in only at the end,
    so a killed attempt leaves nothing behind."""
    import ray

    client = ray.util.client.ray.is_connected()  # ray://: the cluster's GCS address is not for this machine
    if client or not (len(_alive_nodes()) > 1 if cfg.global_driver is None else cfg.global_driver):
        _set_shuffle_timeout(cfg)
        return after_node_loss(cfg.node_loss_retries, "the global phase", lambda: global_phase(cfg, files))
    work = Path(paths.corpus_work(driver_folder(cfg)))
    work.mkdir(parents=True, exist_ok=True)
    spec = work / "global.json"
    spec.write_text(json.dumps({"config": to_dict(cfg), "files": files,
                                "address": ray.get_runtime_context().gcs_address}))
    return after_node_loss(cfg.node_loss_retries, "the global phase",
                           lambda: _global_phase_child(spec, cfg.output))


class NodeLost(RuntimeError):
    """Raised by a watcher that saw node(s) of the cluster go while its work ran."""

    def __init__(self, nodes: list[str]):
        super().__init__(f"node(s) {', '.join(nodes)} lost")
        self.nodes = nodes


def _global_phase_child(spec: Path, out: str) -> dict[str, dict[str, Any]]:
    """One attempt of the global phase in a child driver (``python -m galeno.corpus.pipeline SPEC``),
    watched: killed, and :class:`NodeLost` raised, as soon as a node of the cluster goes. Its output is
    swapped in here, after it exited 0, so a killed child cannot leave documents/ and rejected/ out of step."""
    import subprocess
    import sys

    result = spec.with_name("global-result.json")
    result.unlink(missing_ok=True)
    before = _alive_nodes()
    # cwd: a folder of the job's own, not the working directory Ray unpacked for the job, which Ray may
    # clean up once no worker of the job uses it any more. The same process group as the job, so that
    # `ray job stop` (or Ctrl-C) stops it too.
    child = subprocess.Popen([sys.executable, "-m", "galeno.corpus.pipeline", str(spec)], cwd=spec.parent)
    try:
        while child.poll() is None:
            lost = sorted(before - _alive_nodes())
            if lost:
                raise NodeLost(lost)
            time.sleep(2)
    finally:  # a node lost, or this process interrupted: the child never outlives the watch
        if child.poll() is None:
            child.kill()  # its tasks and actors end with it
            child.wait()
    if child.returncode != 0 or not result.is_file():
        raise RuntimeError(f"corpus: the global phase's driver failed (exit code {child.returncode}); its log is "
                           "above")
    swap_outputs(out)
    return json.loads(result.read_text())


def _global_phase_main(spec_path: str) -> None:
    """``python -m galeno.corpus.pipeline SPEC``: the child driver of :func:`run_global_phase`."""
    import ray

    from galeno.runtime import WORKER_SETUP_HOOK, init_ray, setup_logging

    setup_logging()
    spec = json.loads(Path(spec_path).read_text())
    cfg = from_dict(CorpusConfig, spec["config"])
    if not ray.is_initialized():
        # under `ray job submit` the job's runtime environment comes with the inherited environment
        runtime_env = None if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") else {
            "worker_process_setup_hook": WORKER_SETUP_HOOK}
        ray.init(address=spec["address"], include_dashboard=False, log_to_driver=True, configure_logging=False,
                 runtime_env=runtime_env)
    init_ray(cfg.ray)
    _set_shuffle_timeout(cfg)
    per_source = global_phase(cfg, spec["files"], swap=False)  # the parent swaps, once this driver is done
    result = Path(spec_path).with_name("global-result.json")
    tmp = result.with_suffix(".tmp")
    tmp.write_text(json.dumps(per_source))
    os.replace(tmp, result)


def _set_shuffle_timeout(cfg: CorpusConfig) -> None:
    import ray.data

    ray.data.DataContext.get_current().hash_shuffle_reduce_get_timeout_s = cfg.shuffle_fetch_timeout_s


def _alive_nodes() -> set[str]:
    import ray

    return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}


def _lost_since(before: set[str], settle_s: float = 30.0) -> list[str]:
    """Nodes of ``before`` that are no longer alive. A failure can reach the job before Ray has declared
    the node that caused it dead (after missed heartbeats), so on a multi-node cluster it waits up to
    ``settle_s`` for that before it answers none."""
    deadline = time.time() + (settle_s if len(before) > 1 else 0)
    while True:
        lost = sorted(before - _alive_nodes())
        if lost or time.time() >= deadline:
            return lost
        time.sleep(2)


def after_node_loss(retries: int, what: str, phase: Callable[[], Any]) -> Any:
    """``phase()``, run again (at most ``retries`` times) when it fails after the cluster lost a node
    while it ran. Both phases may: the local one skips the shards it committed, the global one reads
    only committed shards and swaps its output in at the end. A failure with every node still alive
    is raised as it is; one after a node loss, once the retries are spent, says how to resume."""
    attempt = 0
    while True:
        before = _alive_nodes()
        try:
            return phase()
        except Exception as err:  # noqa: BLE001  (re-raised below unless a node was lost)
            lost = err.nodes if isinstance(err, NodeLost) else _lost_since(before)
            if not lost:
                raise
            if attempt == retries:
                raise RuntimeError(
                    f"corpus: {what} was interrupted by the loss of node(s) {', '.join(lost)} "
                    f"({type(err).__name__}), {retries + 1} time(s); resubmit the same job: it resumes from "
                    "the input shards committed so far") from err
            attempt += 1
            log.warning("corpus: %s was interrupted by the loss of node(s) %s (%s); running it again on the "
                        "nodes left, from the shards committed so far (retry %d of %d)", what, ", ".join(lost),
                        type(err).__name__, attempt, retries)


def _run(cfg: CorpusConfig, tag: str, deid_dir: str = "") -> dict[str, Any]:
    """The job's work; ``tag`` is :func:`local_tag` (the committed local shards it may reuse)."""
    from galeno.corpus.report import write_manifest_and_report
    from galeno.runtime import init_ray

    t0 = time.time()
    out = cfg.output  # documents/, rejected/ and the committed shards: a folder, or an object-store URI
    init_ray(cfg.ray)
    timings: dict[str, float] = {}

    shards = plan_shards(cfg.sources, cfg.shard_mb)
    local_dir = paths.corpus_local_shards(out, tag)
    log.info("corpus: %d sources, %d shards -> %s", len(cfg.sources), len(shards), out)
    t = time.time()
    if cfg.deid.enabled:
        log.info("corpus: de-identifying %s with %s first", ", ".join(s.name for s in cfg.sources if s.deid),
                 cfg.deid.describe())
    reused = len(committed_shards(cfg, shards, local_dir))  # by earlier runs, before this one started
    resume_info = after_node_loss(cfg.node_loss_retries, "the local phase",
                                  lambda: run_local_phase(cfg, shards, local_dir, deid_dir))
    # a retry after a node loss also skips what its failed attempt committed: not a resume
    resume_info["shards_skipped_on_resume"] = reused
    timings["local"] = time.time() - t

    t = time.time()
    per_source = run_global_phase(cfg, [str(storage.join(local_dir, f"{s.id}.parquet")) for s in shards])
    timings["global_and_write"] = time.time() - t

    manifest = {
        "galeno_version": __version__,
        "config": to_dict(cfg),
        "config_hash": config_hash(cfg),
        "local_tag": tag,
        "sources": per_source,
        "elapsed_seconds": round(time.time() - t0, 2),
        "stage_seconds": {k: round(v, 2) for k, v in timings.items()},
        **resume_info,
        # what the documents are, not when they were made: a rerun that writes the same files keeps it
        "documents_digest": folder_digest(paths.corpus_documents(out)),
    }
    write_manifest_and_report(manifest, cfg, Path(driver_folder(cfg)))
    return manifest


if __name__ == "__main__":
    import sys

    _global_phase_main(sys.argv[1])
