"""Every YAML preset in configs/ loads into the config class of its stage, with no stale keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from galeno.config import load

REPO = Path(__file__).resolve().parents[1]


def stage_config(stage: str):
    if stage == "corpus":
        from galeno.corpus.config import CorpusConfig
        return CorpusConfig
    if stage == "tokenizer":
        from galeno.tokenizer import TokenizerConfig
        return TokenizerConfig
    if stage == "pretrain":
        from galeno.train.config import PretrainConfig
        return PretrainConfig
    if stage == "ner":
        from galeno.ner.config import NERConfig
        return NERConfig
    if stage == "pipeline":
        from galeno.pipeline import PipelineConfig
        return PipelineConfig
    raise AssertionError(f"configs/{stage}/ has no config class: add it to tests/test_presets.py")


PRESETS = sorted(p for p in (REPO / "configs").glob("*/*.yaml") if p.parent.name != "ray")


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_preset_loads(preset: Path):
    if preset.parent.name == "serve":  # a Ray Serve config file that is also our preset
        from galeno.serve.config import load_preset

        assert load_preset(preset).ner_model
        return
    cfg = load(stage_config(preset.parent.name), preset)
    assert cfg is not None
    if preset.parent.name == "pipeline":  # every stage's presets and overrides parse as its job's config
        from galeno.pipeline import stage_outputs

        assert set(stage_outputs(cfg)) == {"corpus", "tokenizer", "pretrain", "ner"}
    if preset.parent.name == "corpus":
        assert cfg.sources, "a corpus preset lists its sources"
        for src in cfg.sources:
            if not src.path.startswith("../shared"):  # shipped data must exist in the repo
                assert list(REPO.glob(src.path)) or (REPO / src.path).exists(), src.path


def test_presets_exist():
    assert any(p.name == "sample.yaml" for p in PRESETS)


def test_ray_runtime_env_ships_the_package():
    env = yaml.safe_load((REPO / "configs" / "ray" / "runtime-env.yaml").read_text())
    assert env["working_dir"] == "."
    assert (REPO / env["py_modules"][0] / "__init__.py").exists()


def test_ner_reproduce_recipe_clips_gradients_as_the_published_fine_tuning_did():
    """The defaults are the published recipe, run with the Hugging Face Trainer: its max_grad_norm is 1.0."""
    from galeno.ner.config import NERConfig

    cfg = load(NERConfig, REPO / "configs" / "ner" / "pharmaconer.yaml")
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.warmup_steps, cfg.optim.grad_clip) == (5e-5, 0.0, 0, 1.0)
    assert (cfg.trainer.global_batch, cfg.epochs, cfg.data.max_length) == (16, 10, 512)


def test_the_documented_corpus_example_keeps_dev_sets_out():
    """clean_corpus.py --help is copied by users: its example pretrains on no dev set and decontaminates
    against every dev set of the corpora it names."""
    import re

    from galeno.corpus.cli import USAGE

    sources = re.findall(r"--source \w+=\w+:'?([^'\s]+)", USAGE)
    cleaned = re.findall(r"--decontaminate '?([^'\s]+)", USAGE)
    assert sources and not [s for s in sources if "dev" in s or "*" in s.split("/data/")[-1]]
    for source in sources:
        corpus = source.split("/data/")[1].split("/")[0]
        assert any(f"/data/{corpus}/dev" in c for c in cleaned), (corpus, cleaned)

