"""The tokenizer stage on a tiny corpus in the corpus job's output layout (real PharmaCoNER text)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from galeno import paths  # noqa: E402
from galeno.config import ConfigError, load  # noqa: E402
from galeno.corpus.readers import read_file  # noqa: E402
from tests.builders import tracked_run, write_corpus as _write_corpus  # noqa: E402
from galeno.tokenizer import SPECIAL_TOKENS, TokenizerConfig, is_heldout, main, train_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TRAIN_CONLL = REPO / "data" / "sample" / "pharmaconer" / "train.conll"
DEV_CONLL = REPO / "data" / "sample" / "pharmaconer" / "dev.conll"
EVAL_FRACTION = 0.2
# Rare letter strings repeated far more often than any real pair that is merged: BPE learns
# each as one token exactly when its document is in the training text.
PLANTED_TRAIN, PLANTED_HELDOUT = "kwyxqz", "zqxywk"
TEXTS = [
    "Niño de 7 años con otitis media: amoxicilina 80-90 mg/kg/día en 3 dosis, ¿alergia? No.",
    "Se pautó tratamiento con ácido acetilsalicílico 100 mg/24 h y enoxaparina 1,5 mg/kg.\n"
    "La paciente, de 45 años, presentó hipocaliemia (K+ 2,9 mEq/l) y pH 7,32.",
    "Ñandú, pingüino, CAFÉ; años 1998–2003 «entre comillas» 10³ µg ½ comprimido.",
]


def _planted(word: str, heldout: bool) -> dict:
    doc_id = next(f"planted:{n}" for n in range(1000)
                  if is_heldout("planted", f"planted:{n}", EVAL_FRACTION) == heldout)
    return {"id": doc_id, "source": "planted", "text": " ".join([word] * 300)}


@pytest.fixture(scope="module")
def corpus_docs() -> list[dict]:
    sentences = [d.text for d in read_file(str(TRAIN_CONLL), "conll", "pharmaconer") if d.reason is None]
    assert len(sentences) >= 300
    docs = [{"id": f"pharmaconer:train.conll:{i}", "source": "pharmaconer",
             "text": "\n".join(sentences[i:i + 4])} for i in range(0, len(sentences), 4)]
    return docs + [_planted(PLANTED_TRAIN, heldout=False), _planted(PLANTED_HELDOUT, heldout=True)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, corpus_docs) -> Path:
    return _write_corpus(tmp_path_factory.mktemp("corpus"), corpus_docs)


def _config(corpus: Path, output: Path, **kw) -> TokenizerConfig:
    return TokenizerConfig(corpus=str(corpus), output=str(output), vocab_size=600,
                           max_length=128, eval_fraction=EVAL_FRACTION, batch_rows=16,
                           progress=False, **kw)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> tuple[TokenizerConfig, dict]:
    cfg = _config(corpus, tmp_path_factory.mktemp("tokenizer"), eval_paths=[f"conll:{DEV_CONLL}"])
    return cfg, train_tokenizer(cfg)


@pytest.fixture(scope="module")
def hf(trained):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(trained[0].output)


def test_autotokenizer_loads_a_fast_roberta_tokenizer(trained, hf):
    assert not (Path(trained[0].output) / "config.json").exists()
    assert hf.is_fast and "Roberta" in type(hf).__name__
    assert hf.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [0, 1, 2, 3, 4]
    ids = (hf.bos_token_id, hf.pad_token_id, hf.eos_token_id, hf.unk_token_id, hf.mask_token_id)
    assert ids == (0, 1, 2, 3, 4)
    assert hf.model_max_length == 128
    assert 300 < len(hf) <= 600


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_adds_s_and_keeps_spanish_text(hf, text):
    ids = hf(text)["input_ids"]
    assert ids[0] == hf.bos_token_id and ids[-1] == hf.eos_token_id
    assert hf.unk_token_id not in ids
    assert hf.decode(ids, skip_special_tokens=True) == text
    assert hf.decode(ids) == f"<s>{text}</s>"


def test_mask_is_one_token_that_takes_its_leading_space(hf):
    ids = hf("Dosis de <mask> al día")["input_ids"]
    assert ids.count(hf.mask_token_id) == 1
    before = hf("Dosis de", add_special_tokens=False)["input_ids"]
    assert ids[:len(before) + 2] == [hf.bos_token_id, *before, hf.mask_token_id]


def test_heldout_documents_are_not_trained_on(trained, hf, corpus_docs):
    _, report = trained
    expected = sum(is_heldout(d["source"], d["id"], EVAL_FRACTION) for d in corpus_docs)
    assert 0 < expected < len(corpus_docs)
    assert report["heldout_documents"] == report["eval"]["heldout"]["documents"] == expected
    assert report["train"]["documents"] == len(corpus_docs) - expected
    assert report["train"]["sentences"] == sum(
        d["text"].count("\n") + 1 for d in corpus_docs if not is_heldout(d["source"], d["id"], EVAL_FRACTION))
    assert hf.tokenize(f" {PLANTED_TRAIN}") == [f"Ġ{PLANTED_TRAIN}"]
    assert len(hf.tokenize(f" {PLANTED_HELDOUT}")) > 2


def test_report_measures_heldout_and_dev_sets(trained):
    cfg, report = trained
    assert set(report["eval"]) == {"heldout", f"conll:{DEV_CONLL}"}
    for name, stats in report["eval"].items():
        assert stats["documents"] > 0 and stats["tokens"] > stats["words"] > 0, name
        assert stats["fertility"] == round(stats["tokens"] / stats["words"], 4) > 1.0, name
        assert stats["unknown_rate"] == 0.0, name
        assert stats["chars_per_token"] > 1.0, name
    assert report["eval"][f"conll:{DEV_CONLL}"]["documents"] == 200  # one per sample dev sentence
    tokenizer_json = Path(cfg.output) / "tokenizer.json"
    assert report["tokenizer_hash"] == hashlib.sha256(tokenizer_json.read_bytes()).hexdigest()[:12]
    manifest = paths.corpus_manifest(cfg.corpus).read_bytes()
    assert report["corpus_manifest_hash"] == hashlib.sha256(manifest).hexdigest()[:12]
    assert json.loads(paths.tokenizer_report(cfg.output).read_text()) == report


def test_the_run_is_tracked_with_the_corpus_as_input(trained):
    cfg, report = trained
    mc, mlrun = tracked_run(cfg.output)
    assert mlrun.data.tags["galeno.job"] == "tokenizer" and mlrun.data.tags["galeno.tokenizer_hash"] == report["tokenizer_hash"]
    assert mlrun.data.metrics["eval.heldout.fertility"] == report["eval"]["heldout"]["fertility"]
    assert mlrun.data.metrics["vocab_size"] == report["vocab_size"]
    (corpus,) = mlrun.inputs.dataset_inputs
    assert corpus.dataset.name == "corpus" and corpus.dataset.digest == report["corpus_manifest_hash"]
    assert "tokenizer/tokenizer.json" in {a.path for a in mc.list_artifacts(mlrun.info.run_id, "tokenizer")}


def test_empty_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="missing is not a finished corpus output.*run jobs/clean_corpus.py"):
        train_tokenizer(_config(tmp_path / "missing", tmp_path / "out"))
    with pytest.raises(ValueError, match="empty corpus: the Parquet files .* hold no documents"):
        train_tokenizer(_config(_write_corpus(tmp_path / "empty", []), tmp_path / "out"))
    blank = _write_corpus(tmp_path / "blank", [{"id": "a", "source": "s", "text": "  "}])
    with pytest.raises(ValueError, match="none of the 1 documents"):
        train_tokenizer(_config(blank, tmp_path / "out"))
    assert not paths.tokenizer_report(tmp_path / "out").exists()
    assert not paths.stage_record(tmp_path / "out").exists()  # no hand-over record for a failed run


def test_config_rejects_bad_values():
    for bad in ({"vocab_size": 100}, {"eval_fraction": 1.0}, {"eval_paths": ["docx:dev.docx"]},
                {"min_frequency": 0}):
        with pytest.raises(ConfigError):
            load(TokenizerConfig, overrides=[f"{k}={json.dumps(v)}" for k, v in bad.items()])


def test_cli_writes_the_same_tokenizer_and_prints_the_report(trained, tmp_path, capsys):
    cfg, report = trained
    out = tmp_path / "cli"
    got = main(["--corpus", cfg.corpus, "--output", str(out), "--vocab-size", "600",
                "max_length=128", f"eval_fraction={EVAL_FRACTION}", "batch_rows=7", "progress=false"])
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer_report.json"):
        assert (out / name).is_file(), name
    assert json.loads(capsys.readouterr().out) == got
    assert got["config"]["vocab_size"] == 600 and got["config"]["output"] == str(out)
    assert got["tokenizer_hash"] == report["tokenizer_hash"]  # same data and settings, same merges


def test_cli_help_lists_the_fields(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "--vocab-size" in text and "eval_fraction: float = 0.01" in text and "held out" in text
