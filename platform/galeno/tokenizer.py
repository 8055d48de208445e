"""The tokenizer stage: a byte-level BPE vocabulary learned from the cleaned corpus.

It follows the recipe of the BSC Spanish biomedical RoBERTa models (bsc-bio-ehr-es, Carrino
et al. 2022): RoBERTa's byte-level BPE (Liu et al. 2019) with a 52,000-token vocabulary,
special tokens ``<s> <pad> </s> <unk> <mask>`` at ids 0-4, no prefix space, ``<s> ... </s>``
added around every sequence. The output is a Hugging Face tokenizer folder that
``AutoTokenizer.from_pretrained`` loads as a fast RoBERTa tokenizer.

A vocabulary is judged before pretraining pays for it: documents chosen by a stable hash are
held out of training, and the report gives fertility (tokens per whitespace word), characters
per token and the ``<unk>`` rate on them and on any dev set named in ``eval_paths``. Byte-level
BPE can spell any string, so ``<unk>`` should never appear; it is measured all the same, since
a broken pipeline (a wrong pre-tokenizer, a lost byte alphabet) shows up there first.

The corpus is streamed from its Parquet files one batch of rows at a time (output contract:
docs/corpus.md), so memory stays flat whatever its size; ``tokenizers`` and ``transformers``
are imported only when a tokenizer is trained, because every Ray worker imports ``galeno``.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

from galeno import handover, paths
from galeno.hashing import file_hash, is_heldout
from galeno.config import Flag, config_hash, parse_cli, set_field, to_dict
from galeno.corpus.readers import FORMATS, expand_source, read_file, source_root
from galeno.tracking import TrackingConfig

log = logging.getLogger(__name__)

#: RoBERTa's special tokens; their position here is their id.
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
#: Every byte has a token of its own, so a vocabulary cannot be smaller than this.
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)
#: The name of the held-out corpus documents in the report's ``eval`` section.
HELDOUT = "heldout"

_CORPUS_COLUMNS = ["id", "source", "text"]


def parse_eval_path(spec: str) -> tuple[str, str]:
    """``FORMAT:PATH_OR_GLOB`` (an ``eval_paths`` entry) as ``(format, path)``."""
    fmt, sep, path = spec.partition(":")
    if not (sep and path) or fmt not in FORMATS:
        raise ValueError(f"eval path {spec!r}: expected FORMAT:PATH with FORMAT one of {', '.join(FORMATS)}")
    return fmt, path


@dataclass
class TokenizerConfig:
    corpus: str = ""
    """Output folder of the corpus job (``--corpus DIR``; jobs/pipeline.py passes it): the documents
    its outputs.json names are the training text."""
    output: str = field(default_factory=lambda: paths.default_output("tokenizer"))
    """Folder for the Hugging Face tokenizer files (tokenizer.json, tokenizer_config.json),
    tokenizer_report.json and outputs.json (what pretraining reads)."""
    vocab_size: int = 52000
    """Target vocabulary, special tokens and the 256 byte tokens included (52,000 in the
    published recipe). A small corpus stops short of it: merging ends when no pair of tokens
    occurs min_frequency times."""
    min_frequency: int = 2
    """A pair of tokens is merged only if it occurs at least this many times in the training text."""
    max_length: int = 512
    """model_max_length saved with the tokenizer (RoBERTa's 512 positions)."""
    eval_fraction: float = 0.01
    """Share of corpus documents held out of training to measure fertility on unseen text,
    chosen by a hash of source and id (the same documents on every run)."""
    eval_paths: list[str] = field(default_factory=list)
    """Dev texts to measure the tokenizer on as well, FORMAT:PATH_OR_GLOB read with the
    corpus readers (e.g. conll:data/sample/pharmaconer/dev.conll)."""
    batch_rows: int = 1024
    """Documents read from Parquet, and encoded for the report, at a time."""
    progress: bool = True
    """Show progress bars."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """MLflow run of the job: config, fertility metrics, the corpus as input, the tokenizer files."""

    def __post_init__(self) -> None:
        if not self.output:
            raise ValueError("output must be set")
        if self.vocab_size < MIN_VOCAB:
            raise ValueError(f"vocab_size must be at least {MIN_VOCAB} (256 bytes + "
                             f"{len(SPECIAL_TOKENS)} special tokens), got {self.vocab_size}")
        if self.min_frequency < 1 or self.max_length < 2 or self.batch_rows < 1:
            raise ValueError("min_frequency and batch_rows must be >= 1, max_length >= 2")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        for spec in self.eval_paths:
            parse_eval_path(spec)


# --------------------------------------------------------------------------- reading


def _open_corpus(corpus: str) -> tuple[Any, int]:
    """The corpus documents as a pyarrow dataset (nothing read yet) and its row count."""
    import pyarrow.dataset as pads

    folder = handover.read(corpus, handover.CorpusOutputs).documents
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        raise ValueError(f"empty corpus: no Parquet files in {folder} "
                         "(run jobs/clean_corpus.py first; see docs/corpus.md)")
    dataset = pads.dataset([str(f) for f in files], format="parquet")
    missing = set(_CORPUS_COLUMNS) - set(dataset.schema.names)
    if missing:
        raise ValueError(f"{folder} is not corpus job output: it lacks column(s) {sorted(missing)} "
                         f"(has {dataset.schema.names})")
    rows = dataset.count_rows()  # from the Parquet footers
    if rows == 0:
        raise ValueError(f"empty corpus: the Parquet files in {folder} hold no documents")
    return dataset, rows


def _corpus_texts(dataset: Any, cfg: TokenizerConfig, heldout: bool) -> Iterator[str]:
    """Texts of the training (or held-out) documents, one Parquet batch in memory at a time."""
    for batch in dataset.to_batches(columns=_CORPUS_COLUMNS, batch_size=cfg.batch_rows):
        ids, sources, texts = (batch.column(name).to_pylist() for name in _CORPUS_COLUMNS)
        for doc_id, source, text in zip(ids, sources, texts):
            if text and text.strip() and is_heldout(source, doc_id, cfg.eval_fraction) == heldout:
                yield text


def _eval_texts(spec: str) -> Iterator[str]:
    fmt, pattern = parse_eval_path(spec)
    root = source_root(pattern)
    for path in expand_source(pattern, fmt):
        for doc in read_file(path, fmt, source="eval", root=root):
            if doc.reason is None and doc.text.strip():
                yield doc.text


def _progress(items: Iterable[str], cfg: TokenizerConfig, desc: str) -> Iterable[str]:
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="doc", disable=not cfg.progress)


# --------------------------------------------------------------------------- training


def _require_backends() -> None:
    try:
        import tokenizers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as err:
        raise ImportError(f"the tokenizer stage needs tokenizers and transformers ({err}); "
                          "install them with: pip install -e '.[train]'") from err


def _train(texts: Iterator[str], cfg: TokenizerConfig, length: int) -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` wired the way RoBERTa's is."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # lstrip: "a <mask>" predicts the word with its leading space, as RoBERTa's <mask> does.
    specials = [AddedToken(t, lstrip=t == "<mask>", special=True) for t in SPECIAL_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=cfg.progress)
    # length only sizes the progress bar: it counts held-out rows too.
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
    assert ids == list(range(len(SPECIAL_TOKENS))), f"special token ids {ids}"
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", ids[2]), ("<s>", ids[0]), trim_offsets=True, add_prefix_space=False)
    return tok


def _save(tok: Any, cfg: TokenizerConfig) -> Path:
    """Save for ``AutoTokenizer``: tokenizer_config.json names the class, so no config.json is needed."""
    from transformers import RobertaTokenizerFast

    hf = RobertaTokenizerFast(
        tokenizer_object=tok, model_max_length=cfg.max_length,
        # The default clean-up rewrites " ," as ",": decode(encode(text)) must give text back.
        clean_up_tokenization_spaces=False)
    hf.save_pretrained(cfg.output)
    return Path(cfg.output) / "tokenizer.json"


# --------------------------------------------------------------------------- report


def _ratio(num: int, den: int) -> Optional[float]:
    return round(num / den, 4) if den else None


def measure(tok: Any, texts: Iterable[str], batch_rows: int = 1024) -> dict[str, Any]:
    """Fertility, characters per token and ``<unk>`` rate of ``tok`` on ``texts`` (no special tokens)."""
    unk = tok.token_to_id("<unk>")
    documents = words = chars = tokens = unknown = 0
    it = iter(texts)
    while batch := list(itertools.islice(it, batch_rows)):
        for text, enc in zip(batch, tok.encode_batch(batch, add_special_tokens=False)):
            documents += 1
            words += len(text.split())
            chars += len(text)
            tokens += len(enc.ids)
            unknown += enc.ids.count(unk)
    return {"documents": documents, "words": words, "chars": chars, "tokens": tokens,
            "fertility": _ratio(tokens, words), "unknown_rate": _ratio(unknown, tokens),
            "chars_per_token": _ratio(chars, tokens)}


def train_tokenizer(cfg: TokenizerConfig) -> dict[str, Any]:
    """Train on the corpus minus its held-out documents, save the tokenizer, write and return the report.

    Tracked as an MLflow run: the corpus manifest as input (by digest), fertility and unknown
    rate per evaluation set as metrics, the tokenizer files and report as artifacts.
    """
    from galeno.tracking import flat_metrics, job_run

    manifest = handover.read(cfg.corpus, handover.CorpusOutputs).manifest
    handover.clear(cfg.output)
    with job_run(cfg.tracking, "tokenizer", cfg.output, to_dict(cfg), run_name=f"tokenizer-{Path(cfg.output).name}",
                 tags={"galeno.config_hash": config_hash(cfg)}) as tracker:
        if manifest.is_file():
            tracker.log_input_dataset("corpus", file_hash(manifest), str(Path(cfg.corpus).resolve()),
                                      schema={"id": "string", "source": "string", "text": "string"})
        report = _train_tokenizer(cfg)
        tracker.log_metrics(flat_metrics({"vocab_size": report["vocab_size"], "train": report["train"],
                                          "eval": {_metric_name(k): v for k, v in report["eval"].items()}}))
        tracker.set_tags({"galeno.tokenizer_hash": report["tokenizer_hash"]})
        tracker.log_artifact(cfg.output, "tokenizer")
    handover.write(handover.record(handover.TokenizerOutputs, cfg.output, tokenizer=cfg.output,
                                   report=paths.tokenizer_report(cfg.output), vocab_size=report["vocab_size"]))
    return report


def _metric_name(spec: str) -> str:
    """An evaluation set as a metric-name part: conll:data/x/dev.conll -> conll_data_x_dev.conll."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in spec).strip("_")


def _train_tokenizer(cfg: TokenizerConfig) -> dict[str, Any]:
    _require_backends()
    from tokenizers import Tokenizer

    start = time.time()
    dataset, rows = _open_corpus(cfg.corpus)
    for spec in cfg.eval_paths:  # a missing dev set should fail now, not after training
        fmt, pattern = parse_eval_path(spec)
        expand_source(pattern, fmt)
    log.info("tokenizer: training on %d corpus documents in %s (minus held-out ones)", rows, cfg.corpus)

    # One training string per document, its sentences joined by "\n" as the corpus stores
    # them: the byte-level pre-tokenizer never merges across a newline, so the learned merges
    # are those of sentence-by-sentence training, and the texts are exactly what the
    # pretraining stage will encode (newlines included).
    train = {"documents": 0, "sentences": 0, "words": 0}

    def training_texts() -> Iterator[str]:
        for text in _corpus_texts(dataset, cfg, heldout=False):
            train["documents"] += 1
            train["sentences"] += text.count("\n") + 1
            train["words"] += len(text.split())
            yield text

    tok = _train(training_texts(), cfg, length=rows)
    if train["documents"] == 0:
        raise ValueError(f"empty corpus: none of the {rows} documents in {cfg.corpus} is left "
                         f"to train on (empty texts, or all held out with eval_fraction={cfg.eval_fraction})")
    tokenizer_json = _save(tok, cfg)
    tok = Tokenizer.from_file(str(tokenizer_json))  # measure exactly what was saved

    heldout = _corpus_texts(dataset, cfg, heldout=True)
    evals = {HELDOUT: measure(tok, _progress(heldout, cfg, "held-out documents"), cfg.batch_rows)}
    for spec in cfg.eval_paths:
        evals[spec] = measure(tok, _progress(_eval_texts(spec), cfg, spec), cfg.batch_rows)

    manifest = handover.read(cfg.corpus, handover.CorpusOutputs).manifest
    report = {
        "output": cfg.output,
        "vocab_size": tok.get_vocab_size(),
        "train": train,
        "heldout_documents": evals[HELDOUT]["documents"],
        "eval": evals,
        "tokenizer_hash": file_hash(tokenizer_json),
        "corpus_manifest_hash": file_hash(manifest) if manifest.is_file() else None,
        "config": to_dict(cfg),
        "config_hash": config_hash(cfg),
        "elapsed_seconds": round(time.time() - start, 2),
    }
    paths.tokenizer_report(cfg.output).write_text(
        json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    log.info("tokenizer: vocabulary %d, held-out fertility %s, saved to %s",
             report["vocab_size"], evals[HELDOUT]["fertility"], cfg.output)
    return report


# --------------------------------------------------------------------------- command line

USAGE = """Train a byte-level BPE tokenizer (RoBERTa special tokens) on a cleaned corpus.

examples:
  python jobs/train_tokenizer.py --config configs/tokenizer/sample.yaml
  python jobs/train_tokenizer.py --corpus artifacts/corpus --output artifacts/tokenizer \\
      --vocab-size 52000 eval_paths=[conll:../shared/data/pharmaconer/dev.conll]
  ray job submit --working-dir . -- python jobs/train_tokenizer.py --config configs/tokenizer/shared.yaml
"""

FLAGS = (
    Flag("--corpus", "corpus job output folder to train on (its documents/*.parquet)",
         set_field("corpus"), "DIR"),
    Flag("--output", "output folder (tokenizer.json, tokenizer_config.json, tokenizer_report.json)",
         set_field("output"), "DIR"),
    Flag("--vocab-size", "target vocabulary size (default 52000)", set_field("vocab_size"), "N"),
)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from galeno.runtime import setup_logging

    setup_logging()
    cfg = parse_cli(TokenizerConfig, argv, prog="train_tokenizer.py", description=USAGE, flags=FLAGS)
    report = train_tokenizer(cfg)
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return report
