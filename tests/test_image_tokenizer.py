"""MAGVIT-v2 in the published layout: strict loading, code ranges and shapes, decode shapes."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipeline.image_tokenizer import MagvitV2

COMPAT = Path(__file__).parent / "data" / "magvitv2_params.json"  # a copy of shared/compat


def test_parameter_names_and_shapes_are_the_published_ones():
    published = json.loads(COMPAT.read_text())
    state = MagvitV2().state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == published["params"]
    assert sum(v.numel() for v in state.values()) == published["num_elements"] == 95493513


def test_saved_layout_loads_back_strictly(magvit_dir, tmp_path):
    assert sorted(os.listdir(magvit_dir)) == ["config.json", "pytorch_model.safetensors"]
    assert json.loads((magvit_dir / "config.json").read_text())["_class_name"] == "MAGVITv2"
    model = MagvitV2.from_pretrained(str(magvit_dir))
    # the other accepted file names
    alt = tmp_path / "alt"
    alt.mkdir()
    shutil.copy(magvit_dir / "config.json", alt)
    os.symlink(magvit_dir / "pytorch_model.safetensors", alt / "model.safetensors")
    same = MagvitV2.from_pretrained(str(alt)).state_dict()
    assert all(torch.equal(same[k], v) for k, v in model.state_dict().items())
    binary = tmp_path / "bin"
    binary.mkdir()
    state = model.state_dict()
    torch.save(state, binary / "pytorch_model.bin")
    reloaded = MagvitV2.from_pretrained(str(binary))
    assert torch.equal(reloaded.state_dict()["decoder.conv_out.weight"], state["decoder.conv_out.weight"])
    # strict: one missing tensor is an error, not a silently random layer
    del state["encoder.quant_conv.bias"]
    torch.save(state, binary / "pytorch_model.bin")
    with pytest.raises(RuntimeError, match="quant_conv.bias"):
        MagvitV2.from_pretrained(str(binary))
    with pytest.raises(ValueError, match="no weights file"):
        MagvitV2.from_pretrained(str(tmp_path))


def test_encode_decode_shapes_and_ranges(magvit_dir):
    model = MagvitV2.from_pretrained(str(magvit_dir))
    images = [Image.new("RGB", (80, 48), (255, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 255))]
    pixels = MagvitV2.preprocess(images, resolution=64)
    assert pixels.shape == (2, 3, 64, 64) and pixels.min() >= -1 and pixels.max() <= 1
    assert torch.allclose(pixels[0, :, 10, 10], torch.tensor([1.0, -1.0, -1.0]))
    codes = model.encode(pixels)
    assert codes.shape == (2, 16) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 8192
    assert torch.equal(codes, model.encode(pixels))  # deterministic
    decoded = model.decode(codes, (4, 4))
    assert decoded.shape == (2, 3, 64, 64) and float(decoded.min()) >= 0 and float(decoded.max()) <= 1
    wide = model.encode(MagvitV2.preprocess(images[:1], 32).repeat(1, 1, 1, 2))  # non-square: 2 x 4 grid
    assert wide.shape == (1, 8) and model.decode(wide, (2, 4)).shape == (1, 3, 32, 64)


def test_lookup_free_quantizer_bit_order():
    q = MagvitV2().quantize
    z = -torch.ones(1, 13, 1, 2)
    z[0, 0, 0, 0] = 1.0  # first channel = most significant bit
    z[0, 12, 0, 1] = 1.0  # last channel = least significant bit
    assert q.codes(z).tolist() == [[4096, 1]]
    assert torch.equal(q.latents(torch.tensor([[4096, 1]]), (1, 2)), z)
    every = torch.arange(8192).view(1, -1)
    assert torch.equal(q.codes(q.latents(every, (1, 8192))), every)
