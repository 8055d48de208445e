"""CANTEMIST on the real files: the brat reader, the shared task's span metric, and the preset through the
whole NER job (train on train, select on dev1, report dev1 and dev2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from galeno import paths
from galeno.config import ConfigError, load
from galeno.ner.config import NERConfig

REPO = Path(__file__).resolve().parents[2]
PRESET = REPO / "configs" / "ner" / "cantemist.yaml"


@pytest.fixture(scope="module")
def cantemist(shared_data) -> Path:
    folder = shared_data / "cantemist"
    if not all((folder / split).is_dir() for split in ("train", "dev1", "dev2")):
        pytest.skip(f"needs CANTEMIST train/dev1/dev2 (brat) under {folder}")
    return folder


def test_the_reader_keeps_every_annotation_for_the_span_metric(cantemist):
    from galeno.ner.data import read_ner
    from galeno.ner.evaluate import score

    expected = {"train": (501, 6396), "dev1": (250, 3341), "dev2": (250, 2660)}  # documents, .ann lines
    for split, (n_docs, n_lines) in expected.items():
        docs, stats = read_ner(str(cantemist / split), "brat")
        assert len(docs) == n_docs and stats["annotations"] == n_lines
        kept = sum(len(d.entities) for d in docs)
        annotated = sum(len(d.annotated) for d in docs)
        assert {e.label for d in docs for e in d.annotated} == {"MORFOLOGIA_NEOPLASIA"}
        # BIO holds no nested mention: the tags keep fewer entities than the shared task scores
        assert kept == stats["entities"] < annotated <= n_lines
    docs, _ = read_ner(str(cantemist / "dev1"), "brat")
    perfect = score(docs, [s.tags for d in docs for s in d.sentences], "brat")
    assert perfect["default"]["f1"] == 1.0 and perfect["span"]["precision"] == 1.0
    kept, annotated = sum(len(d.entities) for d in docs), sum(len(d.annotated) for d in docs)
    assert perfect["span"]["support"] == annotated
    assert perfect["span"]["recall"] == pytest.approx(kept / annotated)  # the nested ones are missed, and counted


def test_extra_dev_sets_are_named_by_name_or_folder_and_need_distinct_names():
    from galeno.ner.config import extra_dev_names

    assert extra_dev_names(["dev2=x/dev-set2/cantemist-ner", "x/dev-set2/cantemist-ner", "y/test.conll"]) == [
        "dev2", "cantemist_ner", "test"]
    with pytest.raises(ConfigError, match="distinct names"):
        load(NERConfig, None, ["data.extra_dev=[a/dev2,b/dev2]"])
    with pytest.raises(ConfigError, match="distinct names"):
        load(NERConfig, None, ["data.extra_dev=[x/dev.conll]"])


@pytest.fixture(scope="module")
def tiny_random(cantemist, tmp_path_factory) -> Path:
    """A randomly initialised 2 x 64 RoBERTa with a BPE tokenizer trained on CANTEMIST train."""
    from tests.builders import untrained_roberta

    texts = [p.read_text(encoding="utf-8") for p in sorted((cantemist / "train").glob("*.txt"))[:200]]
    return untrained_roberta(tmp_path_factory.mktemp("tiny-cantemist"), texts)


@pytest.mark.slow
def test_the_preset_selects_on_dev1_and_reports_dev2_through_the_job(cantemist, tiny_random, tmp_path):
    from galeno.ner.data import read_ner
    from galeno.ner.finetune import run

    out = tmp_path / "ner"
    results = run(load(NERConfig, PRESET, [
        f"model={tiny_random}", f"output={out}", f"data.train={cantemist}/train", f"data.dev={cantemist}/dev1",
        f"data.extra_dev=[dev2={cantemist}/dev2]", "data.train_sentences=400", "data.max_length=64", "epochs=2", "optim.lr=1e-3", "trainer.launcher=local", "trainer.cpus_per_worker=2",
        "trainer.global_batch=32", "trainer.micro_batch=32"]))
    seed = results["seeds"][0]
    for key in ("dev_f1", "dev_span_f1", "dev2_f1", "dev2_f1_strict", "dev2_span_f1", "dev2_precision"):
        assert 0 <= seed[key] <= 1, key
    for key in ("dev_span_f1_mean", "dev2_f1_mean", "dev2_f1_std", "dev2_span_f1_mean", "dev_f1_strict_mean"):
        assert key in results, key
    dev2 = json.loads((out / "seed-42" / "dev2_metrics.json").read_text())
    docs, _ = read_ner(f"{cantemist}/dev2", "brat")
    assert dev2["span"]["support"] == sum(len(d.annotated) for d in docs)
    assert dev2["default"]["support"] == sum(len(d.entities) for d in docs)
    manifest = json.loads(paths.ner_data_manifest(out).read_text())
    assert manifest["extra_dev"]["dev2"]["sentences"] == sum(len(d.sentences) for d in docs)
    # selection used dev1 only: the best step is the one with the best dev (dev1) F1 of the metrics log
    rows = [json.loads(x) for x in (out / "seed-42" / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r for r in rows if "dev_f1" in r]
    assert seed["best_step"] == max(evaluated, key=lambda r: r["dev_f1"])["step"]
