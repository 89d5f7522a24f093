"""The parallel masked-diffusion objective (pure tensor functions).

Per sample, t ~ U(eps, 1]; each output target token is replaced by [MASK] with probability p(t):
`linear` p = t (LLaDA's choice, the default) or `mmada_cosine` p = cos(pi/2 * cos(pi/2 * t)) (the
public -M code's schedule, kept as an option). The loss is the weighted cross-entropy over masked positions,
sum_i w(t, i) * CE_i, divided by the number of output target tokens in the batch, so that with
w_text = 1/t it is LLaDA's unbiased ELBO estimate. The paper's finding is the default:
w_text = 1/t, w_image = 1. Two coefficients scale the modalities' terms (`text_coef`, `image_coef`,
1 and 1 by default), as the public code mixes its two losses. Deviation from the public -M code:
there the text CE is divided by raw t and by L per sample, the image CE is unweighted; here both
modalities share one normaliser.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def mask_probability(t: torch.Tensor, schedule: str = "linear") -> torch.Tensor:
    if schedule == "linear":
        return t
    if schedule == "mmada_cosine":
        return torch.cos(math.pi / 2 * torch.cos(math.pi / 2 * t))
    raise ValueError(f"unknown mask schedule {schedule!r}")


def apply_noise(input_ids: torch.Tensor, targets: torch.Tensor, mask_id: int, generator: torch.Generator,
                eps: float = 1e-3, schedule: str = "linear") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (noised ids, masked positions [B, L] bool, t [B]). Only `targets` positions can be masked."""
    b = input_ids.shape[0]
    t = eps + (1 - eps) * torch.rand(b, generator=generator, device=input_ids.device)
    p = mask_probability(t, schedule)[:, None]
    masked = (torch.rand(input_ids.shape, generator=generator, device=input_ids.device) < p) & targets
    return torch.where(masked, torch.full_like(input_ids, mask_id), input_ids), masked, t


def weight(kind: str, t: torch.Tensor) -> torch.Tensor:
    if kind == "inverse_t":
        return 1.0 / t
    if kind == "one":
        return torch.ones_like(t)
    raise ValueError(f"unknown loss weight {kind!r} (inverse_t | one)")


def diffusion_loss(logits: torch.Tensor, labels: torch.Tensor, masked: torch.Tensor, image_target: torch.Tensor,
                   text_target: torch.Tensor, t: torch.Tensor, w_text: str = "inverse_t",
                   w_image: str = "one", text_coef: float = 1.0, image_coef: float = 1.0) -> dict[str, torch.Tensor]:
    """Weighted CE over masked output tokens; also per-modality loss and masked-token accuracy.
    `logits` [M, V] are the model's at the masked positions only, in `x[masked]` order (the model's
    `at=masked`): no other position enters the loss, and at 8B full logits would be [B, ~2.8K, 134,656]."""
    labels, text, image = labels[masked], text_target[masked], image_target[masked]
    t = t[:, None].expand_as(masked)[masked]
    ce = F.cross_entropy(logits.float(), labels, reduction="none")  # [M]
    w = torch.where(text, text_coef * weight(w_text, t), image_coef * weight(w_image, t))
    normaliser = (image_target | text_target).sum().clamp(min=1)
    out = {"loss": (ce * w).sum() / normaliser}
    hit = logits.argmax(-1) == labels
    for name, m in (("text", text), ("image", image)):
        n = m.sum().clamp(min=1)
        out[f"{name}_loss"] = ((ce * m).sum() / n).detach()
        out[f"{name}_acc"] = ((hit & m).sum() / n).detach()
    return out
