"""A real NER fine-tune on Ray Train of a tiny RoBERTa on a PharmaCoNER slice, then the
evaluation job, the registered model and its structured predictions.

The tiny model (2 layers, 64 wide, a 2,000-token BPE vocabulary trained on the slice) starts from
random weights, the "untrained model" the fine-tuned one has to beat; it breaks out of predicting
only O after about 300 steps at a constant learning rate of 1e-3. The module's fine-tune runs the
shared loop's plain PyTorch engine; the same fine-tune on its DeepSpeed engine (ZeRO-1), as
pretraining runs, is the extended test_the_loop_fine_tunes_on_deepspeed. One Ray Train worker with
both cores: two workers on this 2-core machine take twice as long (DDP over gloo); several ranks
evaluating different numbers of batches are tested in tests/train/test_loop.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("mlflow")

from galeno.config import load  # noqa: E402
from galeno.ner.config import NERConfig  # noqa: E402
from tests.builders import tracked_run  # noqa: E402

pytestmark = pytest.mark.slow

SLICE = 2000  # training sentences


@pytest.fixture(scope="module")
def untrained(shared_data, tmp_path_factory) -> Path:
    """A randomly initialised tiny RoBERTa MLM with a BPE tokenizer trained on the training slice."""
    from galeno.ner.data import read_conll
    from tests.builders import untrained_roberta

    docs, _ = read_conll(shared_data / "pharmaconer" / "train.conll")
    return untrained_roberta(tmp_path_factory.mktemp("tiny-roberta"), [s.text for d in docs for s in d.sentences][:SLICE])


ONE_WORKER_CONSTANT_LR = ("optim.lr=1e-3", "optim.schedule=constant", "trainer.global_batch=32",
                          "trainer.micro_batch=32", "trainer.num_workers=1", "trainer.cpus_per_worker=2")


def pharmaconer_config(untrained: Path, shared_data: Path, out: Path, *overrides: str) -> NERConfig:
    """The PharmaCoNER preset for the tiny model on this machine's 2-CPU Ray, 64-token windows, then ``overrides``."""
    return load(NERConfig, Path(__file__).resolve().parents[2] / "configs" / "ner" / "pharmaconer.yaml", [
        f"model={untrained}", f"output={out}", f"data.train={shared_data}/pharmaconer/train.conll",
        f"data.dev={shared_data}/pharmaconer/dev.conll", "data.max_length=64", "ray.num_cpus=2",
        "ray.progress_bars=false", *overrides])


@pytest.fixture(scope="module")
def finetuned(ray_local, shared_data, untrained, tmp_path_factory):
    from galeno.ner.finetune import run

    out = tmp_path_factory.mktemp("ner-run")
    cfg = pharmaconer_config(untrained, shared_data, out, f"data.train_sentences={SLICE}", "data.group_by_length=true",
                             "epochs=4", "optim.grad_clip=0", "warmup_fraction=0.05", *ONE_WORKER_CONSTANT_LR,
                             "trainer.deepspeed=false")
    return out, run(cfg)


def test_fine_tuned_model_beats_the_untrained_one(finetuned, untrained, shared_data):
    from galeno.ner.data import read_conll
    from galeno.ner.evaluate import evaluate, summary
    from galeno.ner.task import NERTask

    out, results = finetuned
    (seed,) = results["seeds"]
    # the same architecture and label map, with its head untrained: what fine-tuning starts from
    task = NERTask(str(untrained), json.loads((out / "data" / "manifest.json").read_text())["labels"], seed=0)
    base = out / "untrained"
    task.export(task.build_model(), str(base))
    docs, _ = read_conll(shared_data / "pharmaconer" / "dev.conll")
    before = summary(evaluate(str(base), docs, "conll", max_length=64)[0])
    assert seed["dev_f1"] > before["dev_f1"] + 0.05
    assert list((out / "seed-42" / "ray").glob("*/checkpoint-*"))  # Ray Train's checkpoints of the run
    assert results["train_sentences"] == SLICE and results["dev_sentences"] == 1046


def test_the_loop_and_the_evaluation_job_agree(finetuned, shared_data, capsys):
    """The loop's all-reduced dev F1 at the best step equals a separate scoring of the saved best model."""
    from galeno.ner.cli import evaluate_main

    out, results = finetuned
    (seed,) = results["seeds"]
    rows = [json.loads(line) for line in (out / "seed-42" / "metrics.jsonl").read_text().splitlines()]
    at_best = next(r for r in rows if r["step"] == seed["best_step"])
    # the same windows and weights; only batch composition (padding) differs, which may flip a near-tie
    assert at_best["dev_f1"] == pytest.approx(seed["dev_f1"], abs=0.005)
    assert max(r.get("dev_f1", 0) for r in rows) == at_best["dev_f1"]
    capsys.readouterr()
    printed = evaluate_main(["--model", seed["model"], "--data", str(shared_data / "pharmaconer" / "dev.conll"),
                             "--max-length", "64"])
    assert printed["default"]["f1"] == pytest.approx(seed["dev_f1"])  # the same scoring code as the job
    assert json.loads(capsys.readouterr().out)["strict"]["f1"] == pytest.approx(seed["dev_f1_strict"])
    assert set(printed["default"]["per_type"]) <= {"NORMALIZABLES", "NOTNORMALIZABLES", "PROTEINAS"}
    # the model as a Serve replica with quantize: int8 runs it scores within a few points
    int8 = evaluate_main(["--model", seed["model"], "--data", str(shared_data / "pharmaconer" / "dev.conll"),
                          "--max-length", "64", "--quantize", "int8"])
    assert int8["quantize"] == "int8" and int8["default"]["f1"] == pytest.approx(seed["dev_f1"], abs=0.05)
    bf16 = evaluate_main(["--model", seed["model"], "--data", str(shared_data / "pharmaconer" / "dev.conll"),
                          "--max-length", "64", "--device", "cpu", "--dtype", "bfloat16"])
    assert bf16["dtype"] == "bfloat16" and bf16["default"]["f1"] == pytest.approx(seed["dev_f1"], abs=0.05)
    onnx = evaluate_main(["--model", seed["model"], "--data", str(shared_data / "pharmaconer" / "dev.conll"),
                          "--max-length", "64", "--runtime", "onnxruntime", "--quantize", "int8"])
    assert onnx["runtime"] == "onnxruntime" and onnx["default"]["f1"] == pytest.approx(seed["dev_f1"], abs=0.05)


def test_runs_are_tracked_and_the_model_registered(finetuned):
    import mlflow.pyfunc

    from galeno.inference.source import resolve_model

    out, results = finetuned
    assert results["registered_model"].startswith("models:/galeno-ner-pharmaconer/")
    mc, mlrun = tracked_run(out / "seed-42")
    assert mlrun.data.tags["galeno.job"] == "finetune_ner" and mlrun.info.status == "FINISHED"
    history = mc.get_metric_history(mlrun.info.run_id, "dev_f1")  # one evaluation per epoch, + the registration
    assert len({m.step for m in history}) == 4 and min(m.step for m in history) > 0
    assert mlrun.data.metrics["final_dev_f1"] == pytest.approx(results["seeds"][0]["dev_f1"])
    name, version = results["registered_model"].removeprefix("models:/").split("/")
    mv = mc.get_model_version(name, version)
    assert float(mv.tags["metric.dev_f1"]) == pytest.approx(results["seeds"][0]["dev_f1"])
    assert mv.tags["train_data_hash"] and mv.tags["galeno.kind"] == "ner"
    model_dir = Path(resolve_model(results["registered_model"]))
    assert json.loads((model_dir / "config.json").read_text())["id2label"]["0"] == "O"
    text = "Se inició tratamiento con amoxicilina y omeprazol por vía oral."
    (entities,) = mlflow.pyfunc.load_model(results["registered_model"]).predict([text])
    for e in entities:  # structured output with exact offsets, whatever the tiny model finds
        assert text[e["start"]:e["end"]].strip() == e["word"].strip() and 0 <= e["score"] <= 1


def test_predictions_write_back_as_brat(finetuned, shared_data, tmp_path):
    """brat data: character-span scores, and predicted .ann files that read back as the same entities."""
    from galeno.ner.cli import evaluate_main
    from galeno.ner.data import read_brat

    out, results = finetuned
    docs = sorted((shared_data / "meddocan" / "dev" / "brat").glob("*.txt"))[:3]
    data = tmp_path / "in"
    data.mkdir()
    for txt in docs:
        for suffix in (".txt", ".ann"):
            (data / (txt.stem + suffix)).write_bytes(txt.with_suffix(suffix).read_bytes())
    result = evaluate_main(["--model", results["best_model"], "--data", str(data), "--max-length", "64",
                            "--write-brat", str(tmp_path / "pred")])
    assert result["span"]["support"] == result["data"]["entities"] > 0
    written, _ = read_brat(tmp_path / "pred")
    assert len(written) == 3
    assert sum(len(d.entities) for d in written) == result["span"]["predicted"]


@pytest.mark.extended
def test_the_loop_fine_tunes_on_deepspeed(ray_local, shared_data, untrained, tmp_path):
    """NER on the shared loop's DeepSpeed engine (ZeRO-1) under Ray Train, as pretraining runs."""
    from galeno.ner.finetune import run

    results = run(pharmaconer_config(untrained, shared_data, tmp_path, "data.train_sentences=256", "epochs=1",
                                     *ONE_WORKER_CONSTANT_LR, "trainer.deepspeed=true", "trainer.zero_stage=1"))
    (seed,) = results["seeds"]
    assert seed["dev_f1"] is not None and (Path(seed["model"]) / "model.safetensors").is_file()
    # the optimizer shard of ZeRO-1 is in the Ray Train checkpoint
    assert list((tmp_path / "seed-42" / "ray").glob("*/checkpoint-*/state/zero_pp_rank_0_*optim_states.pt"))


@pytest.mark.extended
def test_a_sweep_runs_trials_on_ray_tune_and_names_the_best(ray_local, shared_data, untrained, tmp_path):
    """Two Ray Tune trials (each a Ray Train run) on a small slice; ASHA may stop one after its first evaluation.

    Each trial's Ray Train run needs 1.5 of the 2 CPUs, so the second can only start if the first
    trial's placement group was released (Tune ending a trial leaves it behind: ray-project/ray#54305;
    the sweep removes it). About 70 s; extended (``make test-extended``), not CI, for CI's 20-minute budget.
    """
    import time

    import ray

    from galeno.ner.finetune import run

    summary = run(pharmaconer_config(
        untrained, shared_data, tmp_path, "data.train_sentences=96", "epochs=2", "trainer.micro_batch=16",
        "trainer.cpus_per_worker=1.5", "sweep.enabled=true", "sweep.num_samples=2", "sweep.batch_sizes=[16,32]",
        "sweep.lr_min=1e-4", "sweep.lr_max=1e-3", "sweep.grace_evals=1"))
    assert len(summary["trials"]) == 2
    assert all(t["best_dev_f1"] is not None and t["error"] is None for t in summary["trials"])
    best = summary["best"]
    assert 1e-4 <= best["config"]["lr"] <= 1e-3 and best["config"]["global_batch"] in (16, 32)
    assert best["best_dev_f1"] == max(t["best_dev_f1"] for t in summary["trials"])
    assert json.loads((tmp_path / "sweep.json").read_text())["best_overrides"][0].startswith("optim.lr=")
    # nothing left holding CPUs: every trial's placement group is gone
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < 1.99 and time.monotonic() < deadline:
        time.sleep(1)
    assert ray.available_resources().get("CPU", 0) >= 1.99, ray.available_resources()
