"""The NER task's batching and evaluation sums, on real sample sentences and hand-made windows."""

from __future__ import annotations

import types

import pytest

torch = pytest.importorskip("torch")

from galeno.inference.align import IGNORE, label_map  # noqa: E402
from galeno.ner.metrics import entity_scores  # noqa: E402
from galeno.ner.task import (NERTask, balanced_batches, decode, encode_rows, eval_batches,  # noqa: E402
                             train_batches, write_rows)


@pytest.fixture(scope="module")
def rows(sample_sentences, roberta_tokenizer):
    """Windows of 120 sample sentences at a length that splits the longer ones."""
    sentences = sample_sentences[:120]
    labels = label_map(s.tags for s in sentences)
    encoded = encode_rows(roberta_tokenizer, sentences, {t: i for i, t in enumerate(labels)}, max_length=24, stride=4)
    assert len(encoded) > len(sentences)  # some sentences need several windows
    return sentences, labels, encoded


def test_eval_batches_keep_a_sentences_windows_together_and_cover_every_sentence(rows, tmp_path):
    sentences, _, encoded = rows
    path = write_rows(encoded, tmp_path / "dev.parquet")
    seen = []
    for rank in range(2):
        for batch in eval_batches(path, 4, rank=rank, world_size=2):
            assert {n % 2 for n in batch["sentence"]} == {rank}
            for n in set(batch["sentence"]):  # whole sentences only
                assert batch["sentence"].count(n) == sum(r["sentence"] == n for r in encoded)
            seen += set(batch["sentence"])
    assert sorted(seen) == list(range(len(sentences)))


def test_train_batches_give_every_rank_the_same_count_and_group_by_length_cuts_padding(rows, tmp_path):
    _, _, encoded = rows
    path = write_rows(encoded, tmp_path / "train.parquet")
    counts = [sum(1 for _ in train_batches(path, 8, rank=r, world_size=2, seed=0, epoch=0, group_by_length=False))
              for r in range(2)]
    assert counts[0] == counts[1] == len(encoded) // 2 // 8

    def padding(group: bool) -> int:
        return sum(max(b["length"]) * len(b["length"]) - sum(b["length"])
                   for b in train_batches(path, 8, rank=0, world_size=1, seed=0, epoch=0, group_by_length=group))

    assert padding(True) < padding(False) / 2
    firsts = [next(train_batches(path, 8, rank=0, world_size=1, seed=0, epoch=e, group_by_length=True))["sentence"]
              for e in range(2)]
    assert firsts[0] != firsts[1]  # a new order every epoch


def test_balanced_batches_cut_sorted_windows_into_n_batches_of_about_equal_tokens():
    lengths = [2, 2, 2, 2, 2, 2, 4, 4, 8, 8]  # 36 tokens: 12 to a batch
    assert balanced_batches(list(range(10)), lengths, 3) == [[0, 1, 2, 3, 4, 5], [6, 7], [8, 9]]  # 12, 8, 16
    assert balanced_batches(list(range(6)), [1] * 6, 3) == [[0, 1], [2, 3], [4, 5]]
    # one window longer than a batch's share still leaves every batch a window
    assert balanced_batches([7, 8, 9, 5], [1, 1, 1, 10], 3) == [[7, 8], [9], [5]]
    with pytest.raises(ValueError, match="cannot cut 2 windows into 3 batches"):
        balanced_batches([0, 1], [1, 1], 3)


def test_equal_tokens_keeps_the_windows_and_batch_count_and_evens_out_the_tokens_per_batch(rows, tmp_path):
    _, _, encoded = rows
    path = write_rows(encoded, tmp_path / "train.parquet")

    def epoch(**kw) -> list[dict]:
        return list(train_batches(path, 8, rank=0, world_size=1, seed=0, epoch=0, group_by_length=True, **kw))

    fixed, equal = epoch(), epoch(equal_tokens=True)
    assert len(equal) == len(fixed)  # the same steps per epoch, so the schedule is unchanged
    key = lambda b: list(zip(b["sentence"], b["word_start"]))  # noqa: E731
    assert sorted(w for b in equal for w in key(b)) == sorted(w for b in fixed for w in key(b))
    sizes = [len(b["length"]) for b in equal]
    assert min(sizes) < 8 < max(sizes)  # many short windows to a batch, few long ones

    def spread(batches: list[dict]) -> float:  # coefficient of variation of the tokens per batch
        tokens = [sum(b["length"]) for b in batches]
        mean = sum(tokens) / len(tokens)
        return (sum((t - mean) ** 2 for t in tokens) / len(tokens)) ** 0.5 / mean

    assert spread(equal) < 0.6 * spread(fixed), (spread(equal), spread(fixed))
    padding = lambda bs: sum(max(b["length"]) * len(b["length"]) - sum(b["length"]) for b in bs)  # noqa: E731
    assert padding(equal) <= 1.5 * padding(fixed) + 8 * len(fixed)
    counts = [sum(1 for _ in train_batches(path, 8, rank=r, world_size=2, seed=0, epoch=0, group_by_length=True,
                                           equal_tokens=True)) for r in range(2)]
    assert counts[0] == counts[1] == len(encoded) // 2 // 8


def test_weight_by_tokens_scales_each_batch_loss_by_its_labelled_tokens(rows, tmp_path, roberta_tokenizer):
    """Grouped batches of short windows weigh less: loss_scale is a batch's labelled tokens over the
    epoch's mean batch, so the scales average 1, and the task multiplies the batch loss by it."""
    _, labels, encoded = rows
    path = write_rows(encoded, tmp_path / "train.parquet")
    batches = list(train_batches(path, 8, rank=0, world_size=1, seed=0, epoch=0, group_by_length=True,
                                 weight_by_tokens=True))
    labelled = [sum(1 for row in b["labels"] for tag in row if tag != IGNORE) for b in batches]
    scales = [b["loss_scale"] for b in batches]
    assert sum(scales) / len(scales) == pytest.approx(1.0)
    assert scales == pytest.approx([n * len(batches) / sum(labelled) for n in labelled])
    assert max(scales) > 1.5 * min(scales)  # grouped by length, batches differ in labelled tokens
    assert "loss_scale" not in next(train_batches(path, 8, rank=0, world_size=1, seed=0, epoch=0,
                                                  group_by_length=True))

    task = NERTask.__new__(NERTask)  # collate and step_loss need only the tokenizer
    task.tokenizer = roberta_tokenizer
    outputs = types.SimpleNamespace(loss=torch.tensor(2.0))
    task.collate(batches[0])
    assert float(task.step_loss(outputs)[0]) == pytest.approx(2.0 * scales[0])
    task.collate({k: v for k, v in batches[0].items() if k != "loss_scale"})  # an evaluation batch: unscaled
    assert float(task.step_loss(outputs)[0]) == pytest.approx(2.0)


def test_decode_stitches_a_sentence_split_over_two_windows():
    labels = ["O", "B-X", "I-X"]
    raw = {"word_ids": [[-1, 0, 1, 2, -1], [-1, 1, 2, 3, -1]], "sentence": [7, 7], "word_start": [0, 1],
           "n_words": [3, 3], "word_labels": [[1, 2, 0], [2, 0, 1]]}
    # word 1: I-X from the first window (one word from its cut edge), O from the second (at its cut edge);
    # word 2: O from the first window (at its cut edge), I-X from the second (one word inside)
    preds = [[0, 1, 2, 0, 0], [0, 0, 2, 1, 0]]
    gold, pred = decode(raw, preds, labels)
    assert gold == [["B-X", "I-X", "O", "B-X"]]
    assert pred == [["B-X", "I-X", "I-X", "B-X"]]


def test_eval_sums_add_up_to_the_entity_scores(rows, roberta_dir, tmp_path):
    """Counts summed over batches (as the loop all-reduces them) give the same F1 as scoring all at once."""
    from transformers import RobertaConfig, RobertaForMaskedLM

    sentences, labels, encoded = rows
    model_dir = tmp_path / "model"
    RobertaForMaskedLM(RobertaConfig(vocab_size=600, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=40)).save_pretrained(model_dir)
    for f in roberta_dir.iterdir():
        (model_dir / f.name).write_bytes(f.read_bytes())
    task = NERTask(str(model_dir), labels, init="random", seed=0)
    path = write_rows(encoded, tmp_path / "dev.parquet")
    generator = torch.Generator().manual_seed(0)
    sums: dict[str, float] = {}
    gold_all, pred_all = [], []
    for raw in eval_batches(path, 6, rank=0, world_size=1):
        batch = task.collate(raw)
        logits = torch.randn(*batch["input_ids"].shape, len(labels), generator=generator)
        outputs = types.SimpleNamespace(logits=logits, loss=torch.tensor(0.5))
        for k, v in task.eval_sums(outputs, raw).items():
            sums[k] = sums.get(k, 0.0) + v
        gold, pred = decode(raw, logits.argmax(-1).tolist(), labels)
        gold_all += gold
        pred_all += pred
    assert set(sums) == set(task.eval_keys)
    summary = task.eval_summary(sums)
    for mode, suffix in (("default", ""), ("strict", "_strict")):
        expected = entity_scores(gold_all, pred_all, mode)
        assert summary[f"dev_f1{suffix}"] == pytest.approx(expected["f1"])
        assert sums[f"{mode}.ALL.gold"] == expected["support"] > 0
    assert [g for g in gold_all] == [s.tags for s in sentences]
    assert summary["dev_loss"] == pytest.approx(0.5)
    assert all(label == IGNORE or 0 <= label < len(labels) for r in encoded for label in r["labels"])


def test_o_weight_weighs_the_o_label_apart_and_f2_can_pick_the_best(rows, roberta_tokenizer):
    """With o_weight the loss is torch's class-weighted cross-entropy (O weighs less, the mean stays a
    weighted mean); without it the model's own loss is used. F2 weighs recall twice."""
    from galeno.ner.metrics import f_beta

    _, labels, encoded = rows
    task = NERTask.__new__(NERTask)  # the constructor loads a model folder's tokenizer; set what is used
    task.tokenizer, task.labels, task._loss_scale = roberta_tokenizer, labels, 1.0
    task._weights = torch.tensor([0.3 if t == "O" else 1.0 for t in labels])
    mixed = [r for r in encoded if any(t not in (IGNORE, labels.index("O")) for t in r["labels"])][:4]
    raw = {k: [r[k] for r in mixed] for k in ("input_ids", "labels")}
    batch = task.collate(raw)
    logits = torch.randn(*batch["input_ids"].shape, len(labels), generator=torch.Generator().manual_seed(0))
    loss = float(task.step_loss(types.SimpleNamespace(logits=logits, loss=torch.tensor(9.0)))[0])
    flat, gold = logits.reshape(-1, len(labels)), batch["labels"].reshape(-1)
    keep = gold != IGNORE
    per_token = torch.nn.functional.cross_entropy(flat[keep], gold[keep], reduction="none")
    weights = task._weights[gold[keep]]
    assert loss == pytest.approx(float((per_token * weights).sum() / weights.sum()), rel=1e-5)
    assert loss != pytest.approx(float(per_token.mean()), rel=1e-3)  # O really weighs less
    task._weights = None
    task.collate(raw)
    assert float(task.step_loss(types.SimpleNamespace(logits=logits, loss=torch.tensor(9.0)))[0]) == 9.0
    assert f_beta(0.5, 1.0, 2.0) == pytest.approx(5 * 0.5 / (4 * 0.5 + 1))
    assert f_beta(0.8, 0.9, 1.0) == pytest.approx(2 * 0.72 / 1.7) and f_beta(0.0, 0.0, 2.0) == 0.0


def test_the_task_takes_o_weight_and_the_selection_metric(roberta_dir):
    task = NERTask(str(roberta_dir), ["O", "B-X", "I-X"], o_weight=0.25, select="dev_f2")
    assert task.target == ("dev_f2", True) and task._weights.tolist() == [0.25, 1.0, 1.0]
    plain = NERTask(str(roberta_dir), ["O", "B-X", "I-X"])
    assert plain.target == ("dev_f1", True) and plain._weights is None


def test_ner_config_refuses_bad_recall_knobs():
    from galeno.ner.config import NERConfig, NERDataConfig

    with pytest.raises(ValueError, match="select"):
        NERConfig(select="dev_accuracy")
    with pytest.raises(ValueError, match="o_weight"):
        NERConfig(o_weight=0.0)
    with pytest.raises(ValueError, match="empty_fraction"):
        NERDataConfig(empty_fraction=0.0)
