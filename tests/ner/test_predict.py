"""Batch prediction (jobs/predict_ner.py) through the whole job on a real local Ray: every input document is
a row, offsets point into the text as read, and the entities are the inference layer's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.builders import random_tagger, tiny_models

pytest.importorskip("ray.data")
pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]
MEDDOCAN_DEV = REPO / "data" / "sample" / "meddocan" / "dev" / "brat"


def test_predict_ner_tags_every_document_as_the_predictor_does(ray_local, tmp_path):
    import pyarrow.parquet as pq

    from galeno.corpus.readers import read_file, source_root
    from galeno.inference.loading import load_ner, local_source
    from galeno.inference.token_classification import predict_texts
    from galeno.ner.cli import predict_main

    tagger = random_tagger(tiny_models(tmp_path / "models")["ner"], tmp_path / "tagger")
    crawl = tmp_path / "crawl.jsonl"
    crawl.write_text("\n".join([
        json.dumps({"id": "w1", "text": "Paciente con dolor torácico 🙂 y fiebre.\r\nSe pauta paracetamol."}),
        '{"id": "broken", "text": "unterminated',
        json.dumps({"id": "w3", "text": "Cafe\u0301 con leche; n\u0303 descompuesta (NFD), sin normalizar."}),
        json.dumps({"id": "w4", "text": "   "}),
    ]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    manifest = predict_main(["--model", str(tagger), "--source", f"med=brat:{MEDDOCAN_DEV}",
                             "--source", f"web=jsonl:{crawl}", "--output", str(out), "actors=1,2",
                             "batch_size=2", "num_cpus=0.5", "max_length=64", "stride=4", "shard_mb=0.001"])

    rows = pq.read_table(out / "predictions").to_pylist()
    read = [d for f in sorted(MEDDOCAN_DEV.glob("*.txt")) for d in read_file(str(f), "brat", "med")]
    read += list(read_file(str(crawl), "jsonl", "web", root=source_root(str(crawl))))
    assert sorted(r["id"] for r in rows) == sorted(d.id for d in read)  # every document is a row
    by_id = {r["id"]: r for r in rows}
    for doc in read:
        assert by_id[doc.id]["text"] == doc.text and by_id[doc.id]["reason"] == doc.reason  # text as read
    assert {r["reason"] for r in rows} == {None, "malformed_json", "empty"}

    tagged = [r for r in rows if r["reason"] is None]
    expected = predict_texts(load_ner(local_source(str(tagger)), 64), [r["text"] for r in tagged], stride=4)
    for row, entities in zip(tagged, expected):
        key = ("label", "start", "end", "text")
        assert [tuple(e[k] for k in key) for e in row["entities"]] == [tuple(e[k] for k in key) for e in entities]
        assert [e["score"] for e in row["entities"]] == pytest.approx([e["score"] for e in entities], abs=1e-5)
        for e in row["entities"]:
            assert row["text"][e["start"]:e["end"]] == e["text"]
    assert sum(len(r["entities"]) for r in tagged) > 20

    assert manifest["documents"] == {"med": 6, "web": 4} and manifest["documents_total"] == len(rows)
    assert manifest["by_reason"]["web"] == {"tagged": 2, "malformed_json": 1, "empty": 1}
    assert sum(manifest["entities"].values()) == sum(len(r["entities"]) for r in rows)
    assert manifest["documents_per_second"] > 0 and manifest["actors"] == [1, 2]
    assert json.loads((out / "manifest.json").read_text()) == manifest

    # a rerun replaces the predictions, never mixes two runs; a pool that holds every CPU of the 2-CPU Ray
    # still gets its documents read and written (those tasks ask for no CPU), where it used to hang
    again = predict_main(["--model", str(tagger), "--source", f"web=jsonl:{crawl}", "--output", str(out),
                          "actors=2", "num_cpus=1", "max_length=64", "stride=4"])
    assert again["documents"] == {"web": 4} and pq.read_table(out / "predictions").num_rows == 4
    with pytest.raises(SystemExit, match="needs 3 CPUs for its smallest pool; the cluster has 2"):
        predict_main(["--model", str(tagger), "--source", f"web=jsonl:{crawl}", "--output", str(out), "actors=3"])


def test_predict_ner_refuses_a_bad_config_clearly(tmp_path):
    from galeno.ner.cli import predict_main

    with pytest.raises(SystemExit):
        predict_main(["--source", f"x=brat:{MEDDOCAN_DEV}", "--output", str(tmp_path)])  # no model
    with pytest.raises(SystemExit):
        predict_main(["--model", str(tmp_path), "--source", "x=nosuchformat:/data", "--output", str(tmp_path)])
    with pytest.raises(SystemExit):
        predict_main(["--model", str(tmp_path), "--source", f"x=brat:{MEDDOCAN_DEV}", "actors=3,1"])
