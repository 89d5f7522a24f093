"""Sequence layout and the masked-diffusion loss, against hand-computed values."""

import math

import pytest
import torch

from schemas import MMADA_M, SequenceConfig
from trainer.loss import apply_noise, diffusion_loss
from trainer.sequence import KEEP, UNCONDITIONAL, Dropout, SequenceBuilder

EDIT = {"task": "edit", "instruction_ids": [11, 12], "reasoning_ids": [21, 22, 23],
        "input_image_codes": [0, 1, 2, 3], "output_image_codes": [4, 5, 6, 7]}
GEN = {**EDIT, "task": "generate", "input_image_codes": None}
L = MMADA_M
BLANK = [8191, 8191, 8191, 8191]  # the black image's codes, as tokenize records them
PUBLISHED = SequenceBuilder(L, SequenceConfig(instruction_len=6, reasoning_len=6), BLANK)
PARAFORGE = SequenceBuilder(L, SequenceConfig(preset="paraforge", instruction_len=6, reasoning_len=5))


def img(codes):
    return [L.image_token(c) for c in codes]


def test_published_edit_layout():
    """The -M training sequence: [interleave][soi][in][eoi][bos instr eos..L] [soi][out][eoi][bos reasoning eos..L]."""
    ids, image, text = PUBLISHED.row(EDIT)
    expected = ([126095, 126084, *img([0, 1, 2, 3]), 126085, 126080, 11, 12, 126081, 126081, 126081]
                + [126084, *img([4, 5, 6, 7]), 126085, 126080, 21, 22, 23, 126081, 126081])
    assert ids == expected
    assert img([0]) == [126349]  # code + len(tokenizer), not + 126464
    assert [i for i, f in enumerate(image) if f] == list(range(14, 18))  # the output image codes
    assert [i for i, f in enumerate(text) if f] == list(range(20, 25))  # output text after bos, eos padding included
    assert not any(image[:13]) and not any(text[:13])  # the input part is never a target


def test_published_generation_is_an_edit_of_a_black_image():
    ids, image, text = PUBLISHED.row(GEN)
    assert ids[:7] == [L.interleave_id, L.soi_id, *img(BLANK), L.eoi_id]
    assert len(ids) == len(PUBLISHED.row(EDIT)[0]) and sum(image) == 4 and sum(text) == 5
    with pytest.raises(ValueError, match="blank image codes"):
        SequenceBuilder(L, SequenceConfig(instruction_len=6, reasoning_len=6)).row(GEN)


def test_published_cfg_dropout_is_independent_and_zeroes_the_image():
    no_text, _, _ = PUBLISHED.row(EDIT, Dropout(instruction=True))
    assert no_text[:7] == [L.interleave_id, L.soi_id, *img([0, 1, 2, 3]), L.eoi_id]
    assert no_text[7:13] == [L.bos_id, L.eos_id, L.eos_id, L.eos_id, L.eos_id, L.eos_id]
    no_image, _, _ = PUBLISHED.row(EDIT, Dropout(image=True))
    assert no_image[:13] == [L.interleave_id, L.soi_id, 0, 0, 0, 0, L.eoi_id, L.bos_id, 11, 12, L.eos_id, L.eos_id,
                             L.eos_id]  # raw id 0 at every input-image position
    uncond, _, _ = PUBLISHED.row(GEN, UNCONDITIONAL)  # also the sampler's unconditional row
    assert uncond[:13] == [L.interleave_id, L.soi_id, 0, 0, 0, 0, L.eoi_id, L.bos_id] + [L.eos_id] * 5
    drops = PUBLISHED.draw_dropout(4000, 0.1, torch.Generator().manual_seed(0))
    share = {k: sum(getattr(d, k) for d in drops) / 4000 for k in ("instruction", "image")}
    both = sum(d.instruction and d.image for d in drops) / 4000
    assert share["instruction"] == pytest.approx(0.1, abs=0.02) and share["image"] == pytest.approx(0.1, abs=0.02)
    assert both == pytest.approx(0.01, abs=0.006)  # independent: ~p^2 drop both
    assert all(d.instruction == d.image for d in PARAFORGE.draw_dropout(200, 0.5, torch.Generator().manual_seed(0)))


def test_paraforge_generate_layout_and_condition_dropout():
    ids, image, text = PARAFORGE.row(GEN)
    assert ids[:7] == [L.t2i_id, L.bos_id, 11, 12, L.eos_id, L.eos_id, L.eos_id]
    assert ids[7] == L.soi_id and sum(image) == 4 and sum(text) == 4
    dropped, _, _ = PARAFORGE.row(EDIT, UNCONDITIONAL)
    assert dropped[:7] == [L.interleave_id, L.bos_id, L.eos_id, L.eos_id, L.eos_id, L.eos_id, L.eos_id]
    assert L.image_token(0) not in dropped  # the input image is gone too


def test_collate_pads_mixed_layouts():
    batch = PARAFORGE.collate([EDIT, GEN])
    assert batch.input_ids.shape == (2, 24)
    assert batch.attention_mask[0].all() and batch.attention_mask[1].sum() == 18  # 24 - the 6-token input image
    assert (batch.input_ids[1, 18:] == L.pad_id).all() and not batch.image_target[1, 18:].any()
    published = PUBLISHED.collate([EDIT, GEN], [KEEP, KEEP])
    assert published.attention_mask.all()  # one length for every row: no batch padding


def test_text_that_breaks_the_length_contract_is_refused():
    with pytest.raises(ValueError, match="does not fit a part of 6"):
        PUBLISHED.row({**EDIT, "reasoning_ids": list(range(5))})


def test_noise_only_touches_targets_at_rate_t():
    batch = SequenceBuilder(L, SequenceConfig(preset="paraforge", instruction_len=6, reasoning_len=200)).collate([EDIT] * 64)
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
    out = diffusion_loss(logits[masked], labels, masked, image_target, text_target, t)
    ce_image = math.log(1 + math.exp(-2.0))  # -log softmax([2, 0])[0]
    ce_text = math.log(1 + math.exp(-1.0))  # -log softmax([0, 1])[1]
    # image weight 1, text weight 1/t = 2; normalised by the 3 output target tokens
    assert out["loss"].item() == pytest.approx((ce_image + 2 * ce_text) / 3, rel=1e-6)
    assert out["image_loss"].item() == pytest.approx(ce_image, rel=1e-6)
    assert out["text_loss"].item() == pytest.approx(ce_text, rel=1e-6)
    assert out["image_acc"].item() == 1.0 and out["text_acc"].item() == 1.0
    flat = diffusion_loss(logits[masked], labels, masked, image_target, text_target, t, w_text="one")
    assert flat["loss"].item() == pytest.approx((ce_image + ce_text) / 3, rel=1e-6)
    mixed = diffusion_loss(logits[masked], labels, masked, image_target, text_target, t, text_coef=0.5, image_coef=10.0)
    assert mixed["loss"].item() == pytest.approx((10 * ce_image + 0.5 * 2 * ce_text) / 3, rel=1e-6)
    assert mixed["image_loss"].item() == pytest.approx(ce_image, rel=1e-6)  # the per-modality CE is unscaled
