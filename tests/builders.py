"""Builders for tests: a corpus folder in the corpus job's output layout, tiny models built here (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

from galeno import handover, paths
from galeno.hashing import folder_digest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CONLL = REPO / "data" / "sample" / "pharmaconer" / "train.conll"


def write_corpus(out: Path, docs: list[dict]) -> Path:
    """``docs`` as the corpus job writes them: documents/part-NNNNN.parquet, manifest.json, report.md
    and the hand-over record (outputs.json)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = paths.corpus_documents(out)
    folder.mkdir(parents=True)
    rows = [{"id": d["id"], "source": d["source"], "text": d["text"],
             "n_sentences": d["text"].count("\n") + 1, "n_words": len(d["text"].split()),
             "n_chars": len(d["text"]), "lang": "es", "meta": "{}"} for d in docs]
    schema = pa.schema([("id", pa.string()), ("source", pa.string()), ("text", pa.string()),
                        ("n_sentences", pa.int64()), ("n_words", pa.int64()),
                        ("n_chars", pa.int64()), ("lang", pa.string()), ("meta", pa.string())])
    half = len(rows) // 2
    for n, part in enumerate((rows[:half], rows[half:])):
        pq.write_table(pa.Table.from_pylist(part, schema=schema), folder / f"part-{n:05d}.parquet")
    paths.corpus_manifest(out).write_text(json.dumps({"total": {"documents_out": len(rows)}}))
    paths.corpus_report(out).write_text("| corpus | words |\n")
    handover.write(handover.record(handover.CorpusOutputs, out, documents=folder, manifest=paths.corpus_manifest(out),
                                   report=paths.corpus_report(out), documents_out=len(rows),
                                   words_out=sum(r["n_words"] for r in rows), documents_digest=folder_digest(folder)))
    return out


def tracked_run(output):
    """The MLflow run a job recorded for its output folder (jobs track into the test session's store)."""
    from galeno import paths
    from galeno.tracking import client

    record = json.loads(paths.mlflow_run_file(output).read_text())
    mc = client()
    return mc, mc.get_run(record["run_id"])


def tiny_models(root: Path) -> dict[str, Path]:
    """A 2-layer RoBERTa masked LM (hidden size 32) and two biased NER taggers, with a BPE trained on the sample."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (RobertaConfig, RobertaForMaskedLM, RobertaForTokenClassification,
                              RobertaTokenizerFast)

    from galeno.ner.data import read_conll

    docs, _ = read_conll(SAMPLE_CONLL)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([s.text for d in docs for s in d.sentences], vocab_size=600, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    root.mkdir(parents=True, exist_ok=True)
    bpe.save(str(root / "bpe.json"))
    tokenizer = RobertaTokenizerFast(tokenizer_file=str(root / "bpe.json"), model_max_length=64)
    config = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=66, pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    out = {"mlm": root / "mlm", "ner": root / "ner", "ner2": root / "ner2"}
    RobertaForMaskedLM(RobertaConfig(**config)).save_pretrained(out["mlm"])
    # untrained, but biased: the first NER model tags every word B-X (each word an entity), the
    # second I-Y (each sentence one entity): structure to check, deterministically
    for key, kind, bias in (("ner", "X", [0.0, 50.0, 0.0]), ("ner2", "Y", [0.0, 0.0, 50.0])):
        labels = {0: "O", 1: f"B-{kind}", 2: f"I-{kind}"}
        model = RobertaForTokenClassification(RobertaConfig(**config, num_labels=3, id2label=labels,
                                                            label2id={v: k for k, v in labels.items()}))
        with torch.no_grad():
            model.classifier.bias.copy_(torch.tensor(bias))
        model.save_pretrained(out[key])
    for path in out.values():
        tokenizer.save_pretrained(path)
    return out


def untrained_roberta(out: Path, texts: list[str]) -> Path:
    """A randomly initialised 2 x 64 RoBERTa MLM with a 2,000-token BPE trained on ``texts``: the "untrained
    model" an NER fine-tune has to beat."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=2000, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save(str(out / "bpe.json"))
    RobertaTokenizerFast(tokenizer_file=str(out / "bpe.json"), model_max_length=64).save_pretrained(out)
    (out / "bpe.json").unlink()
    config = RobertaConfig(vocab_size=2000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=128, max_position_embeddings=66, pad_token_id=1, bos_token_id=0,
                           eos_token_id=2)
    RobertaForMaskedLM(config).save_pretrained(out)
    return out


def random_tagger(like: Path, out: Path) -> Path:
    """An untrained tagger with five labels whose answers vary with the context, its logits spread wide so that
    the rounding of another batch's padding cannot flip an argmax."""
    import torch
    from transformers import AutoTokenizer, RobertaConfig, RobertaForTokenClassification

    labels = {0: "O", 1: "B-X", 2: "I-X", 3: "B-Y", 4: "I-Y"}
    config = RobertaConfig.from_pretrained(like)
    config.num_labels, config.id2label, config.label2id = 5, labels, {v: k for k, v in labels.items()}
    torch.manual_seed(3)
    model = RobertaForTokenClassification(config)
    with torch.no_grad():
        model.classifier.weight.mul_(40.0)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(like).save_pretrained(out)
    return out
