"""The corpus job end to end on real local Ray: output contract, accounting, determinism, resume."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from galeno import paths
from galeno.config import load
from galeno.corpus.config import CorpusConfig
from galeno.corpus.pipeline import plan_shards, run
from galeno.corpus.readers import expand_source, read_file, source_root
from tests.builders import tracked_run

REPO = Path(__file__).resolve().parents[2]
SAMPLE_PRESET = REPO / "configs" / "corpus" / "sample.yaml"


def sample_config(out: Path, *overrides: str) -> CorpusConfig:
    cfg = load(CorpusConfig, SAMPLE_PRESET, [f"output={out}", *overrides])
    for src in cfg.sources:  # the preset's paths are relative to the repo root
        src.path = str(REPO / src.path)
    cfg.decontaminate.paths = [str(REPO / p) for p in cfg.decontaminate.paths]
    return cfg


def input_ids(cfg: CorpusConfig) -> Counter:
    """Every document the readers see, independently of the pipeline."""
    ids: Counter = Counter()
    for src in cfg.sources:
        for path in expand_source(src.path, src.format):
            for doc in read_file(path, src.format, src.name, root=source_root(src.path)):
                ids[(src.name, doc.id)] += 1
    return ids


def output_rows(out: Path, sub: str) -> list[dict]:
    rows = []
    for f in sorted((out / sub).glob("*.parquet")):
        rows.extend(pq.read_table(f).to_pylist())
    return rows


def digest(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.glob("*.parquet"))}


@pytest.fixture(scope="module")
def sample_run(ray_local, tmp_path_factory):
    """The sample preset run as users run it: ``jobs/clean_corpus.py --config ...`` from the repo root."""
    from galeno.corpus.cli import main

    out = tmp_path_factory.mktemp("corpus-sample")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)  # the preset's paths are relative to the repo root
        manifest = main(["--config", str(SAMPLE_PRESET), f"output={out}"])
    return sample_config(out), out, manifest


def test_output_contract(sample_run):
    cfg, out, manifest = sample_run
    docs = output_rows(out, "documents")
    rejected = output_rows(out, "rejected")
    assert docs and rejected
    assert {"id", "source", "text", "n_sentences", "n_words"} <= set(docs[0])
    assert {"id", "source", "reason", "duplicate_of"} <= set(rejected[0])
    assert all(d["text"] and d["n_sentences"] == len(d["text"].split("\n")) for d in docs)
    assert all(r["reason"] for r in rejected)
    on_disk = json.loads(paths.corpus_manifest(out).read_text())
    assert on_disk["config_hash"] == manifest["config_hash"]
    report = paths.corpus_report(out).read_text()
    assert "| Name | Tokens | Description |" in report
    for src in cfg.sources:
        assert f"| {src.name} |" in report


def test_the_run_is_tracked_with_per_corpus_counts(sample_run):
    cfg, out, manifest = sample_run
    mc, mlrun = tracked_run(out)
    assert mlrun.info.status == "FINISHED" and mlrun.data.tags["galeno.job"] == "corpus"
    assert mlrun.data.params["minhash.threshold"] == str(cfg.minhash.threshold)
    for name, counts in manifest["sources"].items():  # the report's token counts, per corpus
        assert mlrun.data.metrics[f"source.{name}.words_out"] == counts["words_out"]
    assert mlrun.data.metrics["total.document_drops.lang_pt"] == manifest["total"]["document_drops"]["lang_pt"]
    assert {"manifest.json", "report.md"} <= {a.path for a in mc.list_artifacts(mlrun.info.run_id)}


def test_every_input_document_is_kept_or_rejected_exactly_once(sample_run):
    cfg, out, manifest = sample_run
    seen = Counter((r["source"], r["id"]) for r in output_rows(out, "documents") + output_rows(out, "rejected"))
    assert seen == input_ids(cfg)
    total = manifest["total"]
    assert total["documents_in"] == sum(seen.values())
    assert total["documents_out"] + sum(total["document_drops"].values()) == total["documents_in"]
    # sentences: every one is kept, dropped with a reason, or gone with its document
    assert total["sentences_in"] == (total["sentences_out"] + sum(total["sentence_drops"].values())
                                     + total["sentences_dropped_with_documents"])


def test_bad_and_foreign_records_are_rejected_with_reasons(sample_run):
    cfg, out, manifest = sample_run
    rejected = {r["id"]: r for r in output_rows(out, "rejected") if r["source"] == "crawl"}
    reasons = {r["reason"] for r in rejected.values()}
    assert "malformed_json" in reasons
    assert rejected["crawl-006"]["reason"] == "empty"
    assert rejected["crawl-005"]["reason"] == "lang_pt"
    assert rejected["crawl-007"]["reason"] in {"all_sentences_dropped", "lang_unknown", "no_sentences"}
    scielo_pt = [r for r in output_rows(out, "rejected") if r["source"] == "scielo" and r["reason"] == "lang_pt"]
    assert len(scielo_pt) >= 30  # the 40 Portuguese SciELO documents in the sample
    kept = {d["id"]: d for d in output_rows(out, "documents") if d["source"] == "crawl"}
    assert "Inflamación crónica" in kept["crawl-004"]["text"]  # mojibake repaired
    assert "cookies" not in " ".join(d["text"] for d in kept.values()).lower()


def test_cross_corpus_duplicates_and_decontamination(sample_run):
    cfg, out, manifest = sample_run
    drops = manifest["total"]["sentence_drops"]
    doc_drops = manifest["total"]["document_drops"]
    assert drops.get("decontaminated", 0) > 0
    # PharmaCoNER sentences come from the same clinical cases as MEDDOCAN
    pharma = manifest["sources"]["pharmaconer"]
    assert pharma["document_drops"].get("duplicate_lines", 0) + pharma["sentence_drops"].get(
        "cross_corpus_duplicate", 0) + doc_drops.get("exact_duplicate", 0) > 0
    dev_text = (REPO / "data/sample/pharmaconer/dev.conll").read_text(encoding="utf-8")
    dev_sentences = [" ".join(line.split("\t")[0] for line in block.splitlines())
                     for block in dev_text.strip().split("\n\n")]
    words = lambda s: re.findall(r"\w+", s.lower())  # noqa: E731
    dev_13grams = {tuple(w[i:i + 13]) for s in dev_sentences for w in [words(s)]
                   for i in range(len(w) - 12)}
    for doc in output_rows(out, "documents"):
        for sentence in doc["text"].split("\n"):
            w = words(sentence)
            assert not any(tuple(w[i:i + 13]) in dev_13grams for i in range(len(w) - 12)), sentence


def test_rerun_is_identical_and_resumes_at_shard_granularity(sample_run):
    cfg, out, first = sample_run
    before = {sub: digest(out / sub) for sub in ("documents", "rejected")}
    local = paths.corpus_local_shards(out, first["local_tag"])
    shards = plan_shards(cfg.sources, cfg.shard_mb)
    assert first["shards"] == len(shards) > 2
    victim = local / f"{shards[1].id}.parquet"
    victim.unlink()  # as if the run had died before committing this shard
    (local / f".{shards[2].id}.parquet.999.tmp").write_bytes(b"half-written garbage")
    # the rerun's global phase in a driver process of its own, as on a multi-node cluster: the same output
    cfg.global_driver = True
    second = run(cfg)
    assert (paths.corpus_work(out) / "global-result.json").is_file()
    assert second["shards_skipped_on_resume"] == len(shards) - 1
    assert victim.exists()
    after = {sub: digest(out / sub) for sub in ("documents", "rejected")}
    assert after == before
    assert second["total"] == first["total"]
    # the same documents, the same identity for the stages after it, though the manifest's timings moved
    assert second["documents_digest"] == first["documents_digest"]
    assert second["elapsed_seconds"] != first["elapsed_seconds"]


def test_a_phase_runs_again_only_after_a_node_loss(sample_run):
    """after_node_loss: an ordinary failure is raised as it is, at once; a node loss runs the phase again,
    and once its retries are spent the error says to resubmit (the cluster test loses a real node)."""
    from galeno.corpus.pipeline import NodeLost, after_node_loss

    calls = []

    def broken():
        calls.append(1)
        raise ValueError("a bug, not a lost node")

    with pytest.raises(ValueError, match="a bug"):
        after_node_loss(2, "the test phase", broken)
    assert len(calls) == 1

    calls.clear()

    def lost_twice():
        calls.append(1)
        if len(calls) <= 2:
            raise NodeLost(["node-x"])
        return "done"

    assert after_node_loss(2, "the test phase", lost_twice) == "done"
    assert len(calls) == 3

    calls.clear()

    def always_lost():
        calls.append(1)
        raise NodeLost(["node-x"])

    with pytest.raises(RuntimeError, match=r"the test phase was interrupted by the loss of node\(s\) node-x .*"
                                           r"2 time\(s\); resubmit the same job"):
        after_node_loss(1, "the test phase", always_lost)
    assert len(calls) == 2


def test_changed_step_config_does_not_reuse_stale_shards(sample_run, tmp_path):
    cfg, out, first = sample_run
    cfg2 = sample_config(out, "filters.min_words=4")
    from galeno.corpus.pipeline import local_tag
    assert local_tag(cfg2) != first["local_tag"]


def test_cli_flags_equal_the_preset():
    """``--source``/``--decontaminate``/``--output`` build the sample preset's config (the sample_run
    fixture runs that preset through the same command line)."""
    from galeno.config import parse_cli, to_dict
    from galeno.corpus.cli import FLAGS

    preset = load(CorpusConfig, SAMPLE_PRESET)
    argv = [arg for src in preset.sources for arg in ("--source", f"{src.name}={src.format}:{src.path}")]
    argv += [arg for path in preset.decontaminate.paths for arg in ("--decontaminate", path)]
    argv += ["--output", preset.output, "shard_mb=0.25", "num_partitions=2", "output_shards=2", "ray.num_cpus=2"]
    flags = parse_cli(CorpusConfig, argv, flags=FLAGS)
    for src in preset.sources:
        src.description = ""  # a --source has no description
    assert to_dict(flags) == to_dict(preset)
    assert len(flags.sources) == 4 and len(flags.decontaminate.paths) == 2


@pytest.mark.slow
@pytest.mark.extended  # 45-60 s; CI runs the job on the sample and the readers on these files
def test_shared_corpora_end_to_end(ray_local, shared_data, tmp_path):
    cfg = load(CorpusConfig, REPO / "configs" / "corpus" / "shared.yaml", [f"output={tmp_path}"])
    for src in cfg.sources:
        src.path = str(shared_data / Path(src.path).relative_to("../shared/data"))
    cfg.decontaminate.paths = [str(shared_data / Path(p).relative_to("../shared/data"))
                               for p in cfg.decontaminate.paths]
    manifest = run(cfg)
    s = manifest["sources"]
    assert s["meddocan"]["documents_in"] == 500 and s["pharmaconer"]["documents_in"] == 9411
    # ~73% of PharmaCoNER's sentences sit inside MEDDOCAN (which has priority): most must go
    pharma_gone = s["pharmaconer"]["documents_in"] - s["pharmaconer"]["documents_out"]
    assert pharma_gone / s["pharmaconer"]["documents_in"] > 0.5
    assert s["scielo"]["document_drops"].get("lang_pt", 0) > 1000  # 1,380 Portuguese documents
    seen = Counter((r["source"], r["id"]) for r in output_rows(tmp_path, "documents") + output_rows(tmp_path, "rejected"))
    assert seen == input_ids(cfg)
