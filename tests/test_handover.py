"""Stages hand over explicitly: each finished stage's typed record (galeno.handover), the pipeline
passing the records' outputs on, presets that never name an upstream output, and only paths.py
building artifact paths."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import yaml

from galeno import handover, paths
from galeno.config import ConfigError, load

REPO = Path(__file__).resolve().parents[1]


def _pretrain_output(out: Path, registered: str | None = "models:/galeno-mlm/3") -> handover.PretrainOutputs:
    (out / "model").mkdir(parents=True)
    (out / "model" / "config.json").write_text("{}")
    paths.pretrain_summary(out).write_text("{}")
    paths.metrics_log(out).write_text("")
    rec = handover.record(handover.PretrainOutputs, out, model=out / "model", summary=paths.pretrain_summary(out),
                          metrics=paths.metrics_log(out), registered_model=registered)
    handover.write(rec)
    return rec


def test_a_record_reads_back_typed_and_absolute_and_survives_a_move(tmp_path):
    rec = _pretrain_output(tmp_path / "run")
    on_disk = json.loads(paths.stage_record(tmp_path / "run").read_text())
    assert on_disk["stage"] == "pretrain" and on_disk["model"] == "model"  # relative to the folder
    assert handover.read(tmp_path / "run", handover.PretrainOutputs) == rec
    shutil.copytree(tmp_path / "run", tmp_path / "moved")  # e.g. onto a cluster's shared disk
    moved = handover.read(tmp_path / "moved", handover.PretrainOutputs)
    assert moved.model == (tmp_path / "moved" / "model").resolve() and moved.registered_model == "models:/galeno-mlm/3"


def test_relative_paths_are_the_current_directory_s_as_for_every_job(tmp_path, monkeypatch):
    """A job given output=artifacts/x writes its record with paths relative to where it runs, once."""
    monkeypatch.chdir(tmp_path)
    Path("artifacts/tok").mkdir(parents=True)
    paths.tokenizer_report("artifacts/tok").write_text("{}")
    handover.write(handover.record(handover.TokenizerOutputs, "artifacts/tok", tokenizer="artifacts/tok",
                                   report=paths.tokenizer_report("artifacts/tok"), vocab_size=600))
    assert json.loads(paths.stage_record("artifacts/tok").read_text())["report"] == "tokenizer_report.json"
    rec = handover.read("artifacts/tok", handover.TokenizerOutputs)
    assert rec.tokenizer == tmp_path / "artifacts" / "tok" and rec.report.is_file()


def test_unfinished_foreign_and_broken_outputs_are_clear_errors(tmp_path):
    with pytest.raises(handover.HandoverError, match=r"nowhere is not a finished corpus output.*does not exist.*"
                                                     r"run jobs/clean_corpus.py"):
        handover.read(tmp_path / "nowhere", handover.CorpusOutputs)
    with pytest.raises(handover.HandoverError, match="no corpus output given.*jobs/clean_corpus.py"):
        handover.read("", handover.CorpusOutputs)
    _pretrain_output(tmp_path / "run")
    with pytest.raises(handover.HandoverError, match="holds a 'pretrain' output, not a tokenizer output"):
        handover.read(tmp_path / "run", handover.TokenizerOutputs)
    shutil.rmtree(tmp_path / "run" / "model")
    with pytest.raises(handover.HandoverError, match="model .* is gone: rerun jobs/pretrain.py"):
        handover.read(tmp_path / "run", handover.PretrainOutputs)
    with pytest.raises(handover.HandoverError, match="does not exist"):  # a record never names a missing file
        handover.write(handover.record(handover.PretrainOutputs, tmp_path / "run", model=tmp_path / "run" / "model",
                                       summary=tmp_path / "run" / "summary.json", metrics=tmp_path / "run" / "x.jsonl",
                                       registered_model=None))
    assert isinstance(handover.HandoverError("x"), ConfigError)  # jobs print it as a one-line error


def test_a_starting_stage_clears_its_old_record(tmp_path):
    _pretrain_output(tmp_path / "run")
    assert handover.exists(tmp_path / "run")
    handover.clear(tmp_path / "run")
    assert not handover.exists(tmp_path / "run")


def test_a_model_argument_may_name_a_training_stage_output(tmp_path):
    """--model / data.tokenizer take a pretraining output folder and use the model its record names."""
    from galeno.inference.source import resolve_model

    rec = _pretrain_output(tmp_path / "run")
    assert resolve_model(str(tmp_path / "run")) == str(rec.model)
    assert handover.tokenizer_folder(str(tmp_path / "run")) == str(rec.model)  # a model folder holds its tokenizer
    assert resolve_model(str(tmp_path / "plain")) == str(tmp_path / "plain")  # any other folder as it is


def test_the_pipeline_hands_each_stage_its_inputs_from_the_records(tmp_path):
    from galeno.pipeline import stage_inputs
    from tests.builders import write_corpus

    corpus = handover.read(write_corpus(tmp_path / "corpus", [{"id": "a", "source": "s", "text": "Hola."}]),
                           handover.CorpusOutputs)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")
    paths.tokenizer_report(tmp_path / "tok").write_text("{}")
    handover.write(handover.record(handover.TokenizerOutputs, tmp_path / "tok", tokenizer=tmp_path / "tok",
                                   report=paths.tokenizer_report(tmp_path / "tok"), vocab_size=600))
    tokenizer = handover.read(tmp_path / "tok", handover.TokenizerOutputs)
    pretrain = _pretrain_output(tmp_path / "run")
    (tmp_path / "ner" / "seed-1" / "best").mkdir(parents=True)
    paths.ner_results(tmp_path / "ner").write_text("{}")
    handover.write(handover.record(handover.NEROutputs, tmp_path / "ner", model=tmp_path / "ner" / "seed-1" / "best",
                                   results=paths.ner_results(tmp_path / "ner"), task="x",
                                   registered_model="models:/galeno-ner-x/7"))
    ner = handover.read(tmp_path / "ner", handover.NEROutputs)
    done = {"corpus": corpus, "tokenizer": tokenizer, "pretrain": pretrain, "ner": ner}
    assert stage_inputs("corpus", done, "champion") == []
    assert stage_inputs("tokenizer", done, "champion") == [f"corpus={corpus.output}"]
    assert stage_inputs("pretrain", done, "champion") == [f"data.corpus={corpus.output}",
                                                          f"data.tokenizer={tmp_path.resolve() / 'tok'}"]
    assert stage_inputs("ner", done, "champion") == [f"model={pretrain.model}"]
    assert stage_inputs("serve", done, "prod") == ["fill_mask_model=models:/galeno-mlm@prod",
                                                   "ner_model=models:/galeno-ner-x@prod"]
    unregistered = _pretrain_output(tmp_path / "offline", registered=None)
    with pytest.raises(RuntimeError, match="registered no model"):
        stage_inputs("serve", {**done, "pretrain": unregistered}, "champion")


def test_start_from_needs_the_skipped_stages_records(tmp_path, monkeypatch):
    from galeno.pipeline import PipelineConfig, run

    monkeypatch.chdir(REPO)
    cfg = load(PipelineConfig, None, [f"corpus.overrides=[output={tmp_path / 'c'}]", "start_from=pretrain"])
    with pytest.raises(ConfigError, match=r"start_from=pretrain needs the corpus stage's output: .*c is not a "
                                          r"finished corpus output.*start_from=corpus"):
        run(cfg)


# --------------------------------------------------------------------------- presets and paths
UPSTREAM = {"tokenizer": ["corpus"], "pretrain": ["data.corpus", "data.tokenizer"], "ner": ["model"]}


def _get(data: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def test_stage_presets_name_no_upstream_output_and_each_output_once():
    """The pipeline hands inputs over; a stage preset names only its own output, and no two presets the same."""
    outputs: dict[str, list[str]] = {}
    for preset in sorted((REPO / "configs").glob("*/*.yaml")):
        data = yaml.safe_load(preset.read_text()) or {}
        for key in UPSTREAM.get(preset.parent.name, []):
            assert _get(data, key) is None, f"{preset.relative_to(REPO)} names an upstream output ({key})"
        if preset.parent.name in ("corpus", "tokenizer", "pretrain", "ner") and "output" in data:
            outputs.setdefault(data["output"], []).append(str(preset.relative_to(REPO)))
    assert {out: files for out, files in outputs.items() if len(files) > 1} == {}


def test_only_paths_builds_artifact_paths():
    """No module but paths.py spells an artifact folder ("artifacts/...") in its code (docs aside)."""
    offenders = []
    for module in (REPO / "platform" / "galeno").rglob("*.py"):
        if module.name == "paths.py":
            continue
        tree = ast.parse(module.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                    and node.value.startswith("artifacts/")):
                offenders.append(f"{module.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    assert offenders == []
