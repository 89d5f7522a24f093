"""`MagvitV2`: load, encode, decode, preprocess. The public API of the image tokenizer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.hub import hub_folder, sha256_file
from pipeline.image_tokenizer.model import Decoder, Encoder, LookupFreeQuantizer, MagvitV2Config

DEFAULT_ID = "showlab/magvitv2"
WEIGHT_FILES = ("pytorch_model.safetensors", "model.safetensors", "pytorch_model.bin")
HUB_FILES = ["*.json", "*.safetensors", "*.bin"]


def checkpoint_file(path_or_hub_id: str) -> Path:
    """The weights file of a checkpoint given as a local folder or a hub id."""
    folder = hub_folder(path_or_hub_id, HUB_FILES)
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ValueError(f"{folder}: no weights file (expected one of {WEIGHT_FILES})")


def config_from_json(spec: dict) -> MagvitV2Config:
    """The architecture named by a config.json: its MagvitV2Config fields, the full-size default for
    those absent (all of them in the published config.json)."""
    fields = {f.name for f in dataclasses.fields(MagvitV2Config)}
    return MagvitV2Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items() if k in fields})


class MagvitV2(nn.Module):
    def __init__(self, config: MagvitV2Config | None = None):
        super().__init__()
        self.config = config or MagvitV2Config()
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)
        self.quantize = LookupFreeQuantizer(self.config.latent_channels)

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str = DEFAULT_ID, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> "MagvitV2":
        path = checkpoint_file(path_or_hub_id)
        folder = path.parent
        spec = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
        if spec.get("_class_name", "MAGVITv2").lower() != "magvitv2":
            raise ValueError(f"{folder}/config.json is for {spec['_class_name']!r}, not MAGVITv2")
        # The published config.json carries no architecture fields (the full-size default); a small
        # model saved by `save_pretrained` carries them. Built on the meta device: every tensor comes
        # from the checkpoint, so skip the random init.
        with torch.device("meta"):
            model = cls(config_from_json(spec))
        state = torch.load(path, map_location="cpu", weights_only=True) if path.suffix == ".bin" else load_file(path)
        model.load_state_dict(state, strict=True, assign=True)
        return model.to(device=device, dtype=dtype).eval()

    @classmethod
    def for_version(cls, tokenized: dict, override: str | None = None) -> "MagvitV2":
        """The MAGVIT-v2 a tokenized version's codes were made with (its tokenize lineage), or
        `override`, checked against the recorded sha256 of the weights: another model draws other
        pictures from the same codes, silently."""
        name = override or tokenized.get("image_tokenizer")
        if not name:
            raise ValueError("the version records no image tokenizer: give --image-tokenizer")
        recorded, found = tokenized.get("image_tokenizer_sha256"), sha256_file(checkpoint_file(name))
        if recorded and found != recorded:
            raise ValueError(f"the image tokenizer {name} is not the one the version was tokenized with (weights "
                             f"sha256 {found[:12]}, recorded {recorded[:12]} for {tokenized.get('image_tokenizer')})")
        return cls.from_pretrained(name)

    def save_pretrained(self, path: str | Path) -> Path:
        """The published layout: a diffusers-style config.json and pytorch_model.safetensors. The
        full-size config writes the published config.json; another adds its architecture fields."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        spec = {"_class_name": "MAGVITv2", "_diffusers_version": "0.30.1"}
        if self.config != MagvitV2Config():
            spec.update(dataclasses.asdict(self.config))
        (path / "config.json").write_text(json.dumps(spec))
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        save_file(state, path / "pytorch_model.safetensors")
        return path

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> [B, (H/16)*(W/16)] codes in [0, 8192)."""
        return self.quantize.codes(self.encoder(pixels))

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """[B, h*w] codes -> [B, 3, 16h, 16w] in [0, 1]."""
        dtype = next(self.decoder.parameters()).dtype
        x = self.decoder(self.quantize.latents(codes.long(), grid).to(dtype))
        return ((x.float() + 1) / 2).clamp(0, 1)

    @staticmethod
    def preprocess(images, resolution: int = 512) -> torch.Tensor:
        """PIL images -> [B, 3, R, R] in [-1, 1]: squash resize (no crop), bicubic, as published."""
        return MagvitV2.normalize(torch.from_numpy(np.stack([MagvitV2.resize(im, resolution) for im in images])))

    @staticmethod
    def resize(image, resolution: int = 512) -> np.ndarray:
        """One PIL image -> [R, R, 3] uint8 (the CPU half of `preprocess`, done on CPU workers)."""
        return np.asarray(image.convert("RGB").resize((resolution, resolution), Image.BICUBIC), dtype=np.uint8)

    @staticmethod
    def normalize(pixels: torch.Tensor) -> torch.Tensor:
        """[B, R, R, 3] uint8 -> [B, 3, R, R] in [-1, 1] (on whatever device `pixels` are)."""
        return pixels.permute(0, 3, 1, 2).float() / 127.5 - 1.0

    @staticmethod
    def postprocess(pixels: torch.Tensor) -> list:
        """`decode`'s [B, 3, H, W] in [0, 1] -> B PIL images (8-bit RGB)."""
        arrays = (pixels.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
        return [Image.fromarray(a) for a in arrays]


def encode_blank_image(magvit: MagvitV2, resolution: int) -> list[int]:
    """The codes of a black image at `resolution` (what the published -M training feeds as the
    input image of a generation)."""
    pixels = MagvitV2.preprocess([Image.new("RGB", (resolution, resolution))], resolution)
    param = next(magvit.parameters())
    return magvit.encode(pixels.to(param.device, param.dtype))[0].tolist()
