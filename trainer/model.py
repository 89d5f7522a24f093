"""MMaDA / LLaDA: a bidirectional transformer over one vocabulary of text ids and image codes.

LLaMA-style blocks (RMSNorm, rotary position embedding, SwiGLU), no causal mask: every position
sees every other, which is what masked diffusion needs. Module and parameter names follow the
published MMaDA-8B / MMaDA-Parallel-M checkpoints (`model.transformer.blocks.N.q_proj.weight`, ...)
so they load with strict=True; the config is read from the checkpoint's own `config.json`, with
LLaDA's field names. Unlike the public code, padding is really masked: padded keys get -inf.
This file holds no distributed code and opens no files (trainer/model_io.py loads and saves).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclasses.dataclass(kw_only=True)
class MMaDAConfig:
    d_model: int = 4096
    n_heads: int = 32
    n_kv_heads: int | None = None  # None: = n_heads
    n_layers: int = 32
    mlp_hidden_size: int = 12288
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-5
    embedding_size: int = 134656  # rows of the embedding and of the output head
    vocab_size: int = 126464  # text ids; image codes follow (see schemas.TokenLayout)
    max_sequence_length: int = 4096
    weight_tying: bool = False
    gradient_checkpointing: bool = False

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MMaDAConfig":
        """LLaDA/MMaDA config.json -> config; fields we do not use are ignored, unsupported
        settings are refused rather than silently changed."""
        for key, supported in (("block_type", "llama"), ("layer_norm_type", "rms"), ("activation_type", "silu")):
            if d.get(key, supported) != supported:
                raise ValueError(f"config {key}={d[key]!r} is not supported (only {supported!r})")
        if d.get("alibi") or d.get("include_bias") or d.get("include_qkv_bias"):
            raise ValueError("alibi and bias terms are not supported")
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in fields and v is not None}
        if d.get("mlp_hidden_size") is None and d.get("mlp_ratio") and d.get("d_model"):
            values["mlp_hidden_size"] = d["mlp_ratio"] * d["d_model"]
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("gradient_checkpointing")
        return {**d, "model_type": "mmada", "block_type": "llama", "layer_norm_type": "rms",
                "activation_type": "silu", "rope": True, "alibi": False, "include_bias": False}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()  # normalise in fp32 even under bf16, as LLaDA does
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rotary(seq_len: int, head_dim: int, theta: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat([freqs, freqs], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE in fp32 (LLaDA's rope_full_precision)."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)


class Block(nn.Module):
    def __init__(self, cfg: MMaDAConfig):
        super().__init__()
        kv_heads = cfg.n_kv_heads or cfg.n_heads
        self.n_heads, self.kv_heads, self.head_dim = cfg.n_heads, kv_heads, cfg.head_dim
        self.attn_norm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, kv_heads * cfg.head_dim, bias=False)
        self.attn_out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.ff_norm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.ff_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden_size, bias=False)  # gate
        self.up_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden_size, bias=False)
        self.ff_out = nn.Linear(cfg.mlp_hidden_size, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                key_mask: torch.Tensor | None) -> torch.Tensor:
        b, n, _ = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, is_causal=False,
                                              enable_gqa=self.kv_heads != self.n_heads)
        x = x + self.attn_out(attn.transpose(1, 2).reshape(b, n, -1))
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


class _Backbone(nn.Module):
    def __init__(self, cfg: MMaDAConfig):
        super().__init__()
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(cfg.embedding_size, cfg.d_model),
            "blocks": nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers)),
            "ln_f": RMSNorm(cfg.d_model, cfg.rms_norm_eps),
        })
        if not cfg.weight_tying:
            self.transformer["ff_out"] = nn.Linear(cfg.d_model, cfg.embedding_size, bias=False)


@dataclasses.dataclass
class Head:
    """Logits at `positions` ([B, n] indices into the sequence) over vocabulary ids [lo, hi)."""
    positions: torch.Tensor
    lo: int
    hi: int


class MMaDAModel(nn.Module):
    def __init__(self, config: MMaDAConfig):
        super().__init__()
        self.config = config
        self.model = _Backbone(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                heads: list[Head] | None = None, at: torch.Tensor | None = None) -> torch.Tensor | list[torch.Tensor]:
        """[B, L] ids (and a [B, L] mask, 1 = real, 0 = padding) -> logits [B, L, embedding_size];
        with `heads`, only the logits each head asks for, as a list of [B, n, hi - lo]; with `at`
        ([B, L] bool), the logits at those positions only, as [M, embedding_size] (SFT's loss reads
        the masked positions alone: a quarter of the sequence on average).

        Samplers and ParaRL read the output positions alone, each modality over its own vocabulary
        slice: at 8B (134,656 embeddings), 2.8K tokens and batch 8, full logits are ~6 GB in bf16
        per forward; text positions over the text vocabulary plus image positions over the 8,192
        codes are a fraction of it, and so is their backward."""
        t = self.model.transformer
        x = t["wte"](input_ids)
        cos, sin = rotary(input_ids.shape[1], self.config.head_dim, self.config.rope_theta, input_ids.device)
        key_mask = None
        if attention_mask is not None:  # a boolean key mask: padded keys are never attended to
            key_mask = attention_mask.bool()[:, None, None, :]
        for block in t["blocks"]:
            if self.config.gradient_checkpointing and self.training:
                x = checkpoint(block, x, cos, sin, key_mask, use_reentrant=False)
            else:
                x = block(x, cos, sin, key_mask)
        x = t["ln_f"](x)
        head = t["ff_out"].weight if "ff_out" in t else t["wte"].weight
        if at is not None:
            return F.linear(x[at], head)
        if heads is None:
            return F.linear(x, head)
        return [F.linear(x.gather(1, h.positions[..., None].expand(-1, -1, x.shape[-1])), head[h.lo:h.hi])
                for h in heads]
