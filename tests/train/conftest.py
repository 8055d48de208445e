"""A tiny corpus (real PharmaCoNER sample text, in the corpus job's output layout) and its tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]


def sample_documents() -> list[dict]:
    """The sample's PharmaCoNER sentences grouped five to a document, and MEDDOCAN clinical cases."""
    from galeno.corpus.readers import expand_source, read_file

    docs = []
    sentences = [s for doc in read_file(str(REPO / "data/sample/pharmaconer/train.conll"), "conll", "pharmaconer")
                 for s in (doc.text or "").split("\n") if s.strip()]
    for i in range(0, len(sentences), 5):
        docs.append({"id": f"p{i // 5}", "source": "pharmaconer", "text": "\n".join(sentences[i:i + 5])})
    for path in expand_source(str(REPO / "data/sample/meddocan/train/brat"), "brat"):
        for doc in read_file(path, "brat", "meddocan"):
            lines = [ln.strip() for ln in (doc.text or "").splitlines() if ln.strip()]
            if lines:
                docs.append({"id": doc.id, "source": "meddocan", "text": "\n".join(lines)})
    return docs


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    from tests.builders import write_corpus

    return write_corpus(tmp_path_factory.mktemp("corpus"), sample_documents())


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_corpus, tmp_path_factory) -> Path:
    from galeno.tokenizer import TokenizerConfig, train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(TokenizerConfig(corpus=str(tiny_corpus), output=str(out), vocab_size=600,
                                    eval_fraction=0.0, max_length=64, progress=False))
    return out


def tiny_overrides(corpus: Path | None, tokenizer: Path | None, output: Path, **extra) -> list[str]:
    """A 2-layer, 32-wide RoBERTa on 64-token sequences: seconds per step on 2 CPU cores (``None``
    inputs: left for jobs/pipeline.py to hand over)."""
    base = {
        "name": "tiny-test", "output": str(output),
        **({"data.corpus": str(corpus)} if corpus else {}), **({"data.tokenizer": str(tokenizer)} if tokenizer else {}),
        "data.seq_len": 64, "data.val_fraction": 0.1, "model.hidden_size": 32, "model.num_layers": 2,
        "model.num_heads": 2, "model.intermediate_size": 64, "model.max_position_embeddings": 66,
        "model.dropout": 0.0, "optim.lr": 5e-3, "optim.warmup_steps": 3, "optim.schedule": "linear",
        "trainer.global_batch": 16, "trainer.micro_batch": 8, "trainer.eval_every": 10,
        "trainer.eval_batches": 0, "trainer.checkpoint_every": 5, "trainer.log_every": 5,
        "trainer.cpus_per_worker": 0.5, "ray.num_cpus": 2, "ray.progress_bars": False,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]
