"""MAGVIT-v2 image tokenizer with Show-o's architecture (the `showlab/magvitv2` checkpoint).

A taming-style convolutional encoder (x16 downsampling) to 13 latent channels, a lookup-free
quantizer (each channel's sign is one bit: 2^13 = 8192 codes, most significant bit first) and a
mirrored decoder. Module and parameter names follow the published checkpoint exactly, so its
weights load with strict=True. Numerics follow it too: GroupNorm(32, eps=1e-6), swish, stride-2
downsampling convs after a (0, 1, 0, 1) zero pad, nearest-neighbour upsampling, and attention only
in the middle blocks.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True, kw_only=True)
class MagvitV2Config:
    base_channels: int = 128
    encoder_channel_mult: tuple[int, ...] = (1, 2, 2, 4, 4)
    encoder_res_blocks: tuple[int, ...] = (4, 3, 4, 3, 4)
    decoder_channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    decoder_res_blocks: tuple[int, ...] = (4, 4, 3, 4, 3)
    latent_channels: int = 13  # = codebook bits
    in_channels: int = 3
    num_groups: int = 32

    @property
    def codebook_size(self) -> int:
        return 2**self.latent_channels

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.encoder_channel_mult) - 1)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.norm1 = _norm(c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = _norm(c_out, groups)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions, with 1x1-conv projections."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (proj(y).reshape(b, 1, c, h * w).transpose(-1, -2) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(c), as published
        return x + self.proj_out(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad: torch convs pad both sides


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Middle(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Level(nn.Module):
    """One resolution: residual blocks, then an optional resampling. (The published checkpoint
    keeps an empty `attn` list per level; it holds no parameters, so it is left out.)"""

    def __init__(self, c_in: int, c_out: int, n_blocks: int, groups: int, resample: type[nn.Module] | None):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(c_in if i == 0 else c_out, c_out, groups) for i in range(n_blocks))
        if resample is Downsample:
            self.downsample = Downsample(c_out)
        elif resample is Upsample:
            self.upsample = Upsample(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        for name in ("downsample", "upsample"):
            if hasattr(self, name):
                x = getattr(self, name)(x)
        return x


class Encoder(nn.Module):
    def __init__(self, cfg: MagvitV2Config):
        super().__init__()
        ch, g, mult = cfg.base_channels, cfg.num_groups, cfg.encoder_channel_mult
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        widths = [ch] + [ch * m for m in mult]
        last = len(mult) - 1
        self.down = nn.ModuleList(
            _Level(widths[i], widths[i + 1], cfg.encoder_res_blocks[i], g, Downsample if i < last else None)
            for i in range(len(mult)))
        self.mid = _Middle(widths[-1], g)
        self.norm_out = _norm(widths[-1], g)
        self.conv_out = nn.Conv2d(widths[-1], cfg.latent_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.conv_out(F.silu(self.norm_out(self.mid(h))))
        return self.quant_conv(h)


class Decoder(nn.Module):
    def __init__(self, cfg: MagvitV2Config):
        super().__init__()
        ch, g, mult = cfg.base_channels, cfg.num_groups, cfg.decoder_channel_mult
        top = ch * mult[-1]
        self.post_quant_conv = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1)
        self.conv_in = nn.Conv2d(cfg.latent_channels, top, 3, padding=1)
        self.mid = _Middle(top, g)
        # up[i] runs at resolution level i; data flows from the top level down to level 0, and each
        # level's input width is the output width of the level above it.
        inputs = [ch * m for m in mult[1:]] + [top]
        self.up = nn.ModuleList(
            _Level(inputs[i], ch * mult[i], cfg.decoder_res_blocks[i], g, Upsample if i > 0 else None)
            for i in range(len(mult)))
        self.norm_out = _norm(ch * mult[0], g)
        self.conv_out = nn.Conv2d(ch * mult[0], cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(self.post_quant_conv(z)))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class LookupFreeQuantizer(nn.Module):
    """sign(z) per channel -> one bit; code = sum(bit_k * 2^(K-1-k)). No learned codebook: the two
    buffers are the published checkpoint's, kept so it loads strictly."""

    def __init__(self, bits: int):
        super().__init__()
        powers = 2 ** torch.arange(bits - 1, -1, -1)
        codes = torch.arange(2**bits)
        self.register_buffer("embedding", ((codes[:, None] // powers) % 2).float() * 2 - 1)  # code -> +-1
        self.register_buffer("power_vals", powers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Training: [B, K, h, w] latents -> their +-1 quantization, with a straight-through gradient
        (the sign's gradient taken as the identity), so an autoencoder trains through the codes."""
        q = torch.where(z > 0, 1.0, -1.0).to(z.dtype)
        return z + (q - z).detach()

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """[B, K, h, w] latents -> [B, h*w] codes."""
        bits = (z > 0).long()
        return (bits * self.power_vals.view(1, -1, 1, 1)).sum(1).flatten(1)

    def latents(self, codes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """[B, h*w] codes -> [B, K, h, w] of +-1."""
        b = codes.shape[0]
        return self.embedding[codes].view(b, grid[0], grid[1], -1).permute(0, 3, 1, 2)
