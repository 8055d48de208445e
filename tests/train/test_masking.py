"""Dynamic masking (80/10/10, specials untouched, seeded) and the masked-positions-only LM head."""

from __future__ import annotations

import torch

from galeno.train.config import ModelConfig
from galeno.train.mlm import IGNORE, MaskedLM, build_roberta, mask_tokens


def _mask(seed: int, shape=(64, 512)):
    ids = torch.randint(5, 1000, shape, generator=torch.Generator().manual_seed(99))
    ids[:, 0], ids[:, -1] = 0, 2
    special = ids.lt(5)
    inputs, labels = mask_tokens(ids, special, mask_id=4, vocab_size=1000, probability=0.15,
                                 generator=torch.Generator().manual_seed(seed))
    return ids, special, inputs, labels


def test_eighty_ten_ten_on_fifteen_percent():
    ids, special, inputs, labels = _mask(0)
    selected = labels.ne(IGNORE)
    assert not selected[special].any()
    assert torch.equal(labels[selected], ids[selected])
    assert abs(selected.float().mean().item() - 0.15) < 0.01
    masked = inputs[selected].eq(4).float().mean().item()
    kept = inputs[selected].eq(ids[selected]).float().mean().item()
    assert abs(masked - 0.8) < 0.02
    assert abs(kept - 0.1) < 0.02 + 0.001  # random replacements hitting the same id are rare
    assert torch.equal(inputs[~selected], ids[~selected])


def test_masking_is_dynamic_but_reproducible():
    _, _, a, la = _mask(1)
    _, _, b, lb = _mask(1)
    _, _, c, _ = _mask(2)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(a, c)


def test_masked_only_head_equals_full_logits_loss():
    hf = build_roberta(ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                   max_position_embeddings=34, dropout=0.0), vocab_size=100,
                       pad_id=1, bos_id=0, eos_id=2, seed=0)
    hf.eval()
    ids = torch.randint(5, 100, (3, 32))
    attention = torch.ones_like(ids, dtype=torch.bool)
    labels = torch.full_like(ids, IGNORE)
    labels[:, 3:9] = ids[:, 3:9]
    with torch.no_grad():
        loss_sum, n, _ = MaskedLM(hf)(ids, attention, labels)
        reference = hf(input_ids=ids, attention_mask=attention, labels=labels).loss
    assert n.item() == 18
    assert torch.allclose(loss_sum / n, reference, atol=1e-5)
    assert hf.config.vocab_size == 128  # padded to a multiple of 64
