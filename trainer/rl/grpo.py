"""GRPO for ParaRL, as pure tensor functions: group advantages, the k3 KL estimator, the clipped
objective over the tokens decoded at each recorded denoising step.

Shapes: P prompts x G rollouts (`num_generations`) x S recorded steps. A rollout's "sequence" at
step t is the set of tokens the sampler committed at t; its log-probabilities come from one forward
on the recorded state before t, so the ratio is exact (no ELBO approximation). Names follow TRL
(`num_generations`, `beta`, `epsilon`, `scale_rewards`). Deviation from TRL: advantages are
standardised per recorded step (the paper's A_{i,t}), not once per rollout.
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, scale_rewards: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """[P, G, S] rewards -> advantages standardised over the G rollouts of each prompt, per step:
    (r - mean_G) / (std_G + eps), std unbiased as in TRL; `scale_rewards=False` only centres."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale_rewards:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True) + eps)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || ref) estimate exp(r - l) - (r - l) - 1 (Schulman's k3): >= 0, unbiased."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


def clipped_objective(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
                      advantages: torch.Tensor, tokens: torch.Tensor, epsilon: float = 0.2,
                      beta: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """[n, L] per-token log-probs (new, old, reference) at the positions `tokens` ([n, L] bool)
    decoded at one recorded step of one rollout; [n] advantages. Each (rollout, step) item is the
    mean over its tokens of min(ratio A, clip(ratio, 1 - eps, 1 + eps) A) - beta KL; the loss is the
    negated mean over items."""
    ratio = torch.exp(logp - old_logp)
    a = advantages[:, None]
    surrogate = torch.minimum(ratio * a, ratio.clamp(1 - epsilon, 1 + epsilon) * a)
    per_token = surrogate
    kl = torch.zeros_like(logp)
    if ref_logp is not None and beta:
        kl = k3_kl(logp, ref_logp)
        per_token = surrogate - beta * kl
    weights = tokens.float()
    count = weights.sum(-1).clamp(min=1)
    loss = -((per_token * weights).sum(-1) / count).mean()
    n = weights.sum().clamp(min=1)
    clipped = ((ratio < 1 - epsilon) & (a < 0)) | ((ratio > 1 + epsilon) & (a > 0))  # where the clip binds
    stats = {"ratio_mean": (ratio * weights).sum() / n, "ratio_max": ratio.masked_fill(~tokens, 0).max(),
             "clip_fraction": (clipped & tokens).sum() / n, "kl": (kl * weights).sum() / n}
    return loss, {k: v.detach() for k, v in stats.items()}
