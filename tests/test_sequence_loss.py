"""Sequence layout and the masked-diffusion loss, against hand-computed values."""

import math

import pytest
import torch

from schemas import MMADA_M
from trainer.loss import apply_noise, diffusion_loss
from trainer.sequence import SequenceConfig, build_row, collate

CFG = SequenceConfig(instruction_len=6, reasoning_len=5)
EDIT = {"task": "edit", "instruction_ids": [11, 12], "reasoning_ids": [21, 22, 23],
        "input_image_codes": [0, 1, 2, 3], "output_image_codes": [4, 5, 6, 7]}
GEN = {**EDIT, "task": "generate", "input_image_codes": None}
L = MMADA_M


def test_edit_layout():
    ids, image, text = build_row(EDIT, L, CFG)
    img = lambda cs: [L.image_token(c) for c in cs]  # noqa: E731
    expected = ([L.edit_task_id, L.soi_id, *img([0, 1, 2, 3]), L.eoi_id, L.bos_id, 11, 12, L.eos_id, L.eos_id, L.eos_id]
                + [L.soi_id, *img([4, 5, 6, 7]), L.eoi_id, L.bos_id, 21, 22, 23, L.eos_id])
    assert ids == expected
    assert [i for i, f in enumerate(image) if f] == list(range(14, 18))  # the output image codes
    assert [i for i, f in enumerate(text) if f] == list(range(20, 24))  # output text after bos
    assert not any(image[:13]) and not any(text[:13])  # the input part is never a target


def test_generate_layout_and_condition_dropout():
    ids, image, text = build_row(GEN, L, CFG)
    assert ids[:7] == [L.generate_task_id, L.bos_id, 11, 12, L.eos_id, L.eos_id, L.eos_id]
    assert ids[7] == L.soi_id and sum(image) == 4 and sum(text) == 4
    dropped, _, _ = build_row(EDIT, L, CFG, drop_condition=True)
    assert dropped[:7] == [L.edit_task_id, L.bos_id, L.eos_id, L.eos_id, L.eos_id, L.eos_id, L.eos_id]
    assert L.image_token(0) not in dropped  # the input image is gone too


def test_collate_pads_mixed_layouts():
    batch = collate([EDIT, GEN], L, CFG)
    assert batch.input_ids.shape == (2, 24)
    assert batch.attention_mask[0].all() and batch.attention_mask[1].sum() == 18  # 24 - the 6-token input image
    assert (batch.input_ids[1, 18:] == L.pad_id).all() and not batch.image_target[1, 18:].any()


def test_noise_only_touches_targets_at_rate_t():
    batch = collate([EDIT] * 64, L, SequenceConfig(instruction_len=6, reasoning_len=200))
    targets = batch.image_target | batch.text_target
    g = torch.Generator().manual_seed(0)
    noised, masked, t = apply_noise(batch.input_ids, targets, L.mask_id, g)
    assert not (masked & ~targets).any()
    assert torch.equal(noised[~targets], batch.input_ids[~targets])
    assert (noised[masked] == L.mask_id).all()
    rate = masked.sum(1) / targets.sum(1)
    assert torch.allclose(rate, t, atol=0.15)  # ~200 targets per row: rate follows t
    assert (t > 0).all() and (t <= 1).all()


def test_loss_against_hand_computed_values():
    # 1 sample, 4 positions: [input, image target, text target, text target]; vocabulary of 2
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 1.0], [3.0, 0.0]]])
    labels = torch.tensor([[0, 0, 1, 1]])
    masked = torch.tensor([[False, True, True, False]])
    image_target = torch.tensor([[False, True, False, False]])
    text_target = torch.tensor([[False, False, True, True]])
    t = torch.tensor([0.5])
    out = diffusion_loss(logits, labels, masked, image_target, text_target, t)
    ce_image = math.log(1 + math.exp(-2.0))  # -log softmax([2, 0])[0]
    ce_text = math.log(1 + math.exp(-1.0))  # -log softmax([0, 1])[1]
    # image weight 1, text weight 1/t = 2; normalised by the 3 output target tokens
    assert out["loss"].item() == pytest.approx((ce_image + 2 * ce_text) / 3, rel=1e-6)
    assert out["image_loss"].item() == pytest.approx(ce_image, rel=1e-6)
    assert out["text_loss"].item() == pytest.approx(ce_text, rel=1e-6)
    assert out["image_acc"].item() == 1.0 and out["text_acc"].item() == 1.0
    flat = diffusion_loss(logits, labels, masked, image_target, text_target, t, w_text="one")
    assert flat["loss"].item() == pytest.approx((ce_image + ce_text) / 3, rel=1e-6)
