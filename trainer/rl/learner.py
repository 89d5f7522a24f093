"""The ParaRL learner step: exact per-token log-probabilities on recorded states, and the GRPO
update with `mu` inner iterations on DeepSpeed.

Each item is one (rollout, recorded step): the state before the step is the forward's input, the
tokens committed at the step are the actions. Log-probabilities use the sampler's temperatures
(1 where it decodes greedily) over each modality's own vocabulary slice, and the conditional model:
the rollouts' classifier-free guidance, if any, is not part of the policy being optimised (ParaRL's
default config samples without it). The old policy's log-probabilities are the first inner
iteration's own, detached, so its ratio is exactly 1; the reference's come from a frozen copy.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from trainer.model import Head
from trainer.rl.grpo import clipped_objective
from trainer.sampling import OutputSlots, ParallelSampler, Prompt, SamplerConfig
from trainer.sequence import SequenceBuilder


@dataclasses.dataclass
class Item:
    prompt: Prompt
    before: torch.Tensor  # [O]
    after: torch.Tensor  # [O]
    advantage: float


def token_logprobs(model, items: list[Item], builder: SequenceBuilder, sampler: SamplerConfig) -> torch.Tensor:
    """[n, O] log pi(after | before) at the positions committed at the step, 0 elsewhere.

    Only the committed positions get logits, each over its modality's vocabulary: a recorded step
    commits a block's few text tokens and a share of the image codes, so the logits (and their
    backward) are a small fraction of the [n, L, V] a plain forward makes (at 8B, V = 134,656)."""
    cond = dataclasses.replace(sampler, text_cfg_scale=0.0, image_cfg_scale=0.0)
    layout, slots = builder.layout, OutputSlots(sampler.image_tokens, builder.config.reasoning_len)
    device = next(model.parameters()).device
    ids, attention, positions = ParallelSampler(model, builder, cond).inputs([it.prompt for it in items], device)
    before = torch.stack([it.before for it in items]).to(device)
    after = torch.stack([it.after for it in items]).to(device)
    ids = ids.scatter(1, positions, before)
    committed = before != after
    lo = layout.image_token_offset
    text_at, text_ok = _committed_slots(committed[:, slots.text])
    image_at, image_ok = _committed_slots(committed[:, slots.image])
    text, image = model(ids, attention, heads=[
        Head(positions[:, slots.text].gather(1, text_at), 0, layout.text_vocab_size),
        Head(positions[:, slots.image].gather(1, image_at), lo, lo + layout.image_codebook_size)])

    text = text.float().masked_fill(torch.arange(text.shape[-1], device=device) == layout.mask_id, float("-inf"))
    text = text / (sampler.text_temperature or 1.0)
    target = after[:, slots.text].gather(1, text_at).clamp(0, layout.text_vocab_size - 1)
    text_logp = torch.log_softmax(text, -1).gather(-1, target[..., None]).squeeze(-1)

    image = image.float() / (sampler.image_temperature or 1.0)
    target = (after[:, slots.image].gather(1, image_at) - lo).clamp(0, layout.image_codebook_size - 1)
    image_logp = torch.log_softmax(image, -1).gather(-1, target[..., None]).squeeze(-1)

    out = torch.zeros(after.shape, dtype=torch.float32, device=device)
    # padding slots add 0 (a padded index may repeat a real one: adding keeps the real value)
    out[:, slots.text] = out[:, slots.text].scatter_add(1, text_at, text_logp.masked_fill(~text_ok, 0.0))
    out[:, slots.image] = out[:, slots.image].scatter_add(1, image_at, image_logp.masked_fill(~image_ok, 0.0))
    return out


def _committed_slots(committed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, m] bool -> ([n, k] slot indices, committed ones first, padded to the row with the most;
    [n, k] bool: which are real), k >= 1."""
    k = max(int(committed.sum(1).max()), 1)
    order = torch.sort(committed.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :k]
    return order, committed.gather(1, order)


def micro_batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def grpo_update(engine, reference, items: list[Item], builder: SequenceBuilder, sampler: SamplerConfig, *,
                micro_batch_size: int, mu: int, epsilon: float, beta: float) -> dict[str, float]:
    """`mu` optimizer steps over all items (gradient accumulation over micro-batches)."""
    chunks = micro_batches(len(items), micro_batch_size)
    old, ref = [None] * len(chunks), [None] * len(chunks)
    totals: dict[str, list[float]] = {}
    for inner in range(mu):
        for c, chunk in enumerate(chunks):
            batch = items[chunk]
            committed = torch.stack([it.before != it.after for it in batch]).to(engine.device)
            advantages = torch.tensor([it.advantage for it in batch], device=engine.device)
            logp = token_logprobs(_Forward(engine), batch, builder, sampler)
            if inner == 0:
                old[c] = logp.detach()
                if beta:
                    with torch.no_grad():
                        ref[c] = token_logprobs(reference, batch, builder, sampler)
            loss, stats = clipped_objective(logp, old[c], ref[c], advantages, committed, epsilon, beta)
            engine.backward(loss)
            engine.step()
            for key, value in {"loss": loss.detach(), **stats}.items():
                totals.setdefault(key, []).append(float(value))  # over every inner update
                if inner == 0:  # the first one alone: its ratio is 1 by construction
                    totals.setdefault("first_" + key, []).append(float(value))
    summary = {k: sum(v) / len(v) for k, v in totals.items() if not k.endswith("ratio_max")}
    summary.update({k: max(v) for k, v in totals.items() if k.endswith("ratio_max")})
    return summary


class _Forward:
    """The DeepSpeed engine seen as a model: `token_logprobs` needs `parameters()` and a call."""

    def __init__(self, engine):
        self.engine = engine

    def parameters(self):
        return self.engine.module.parameters()

    def __call__(self, ids, attention, heads=None):
        return self.engine.forward(ids, attention, heads=heads)


def accumulation_steps(items: int, micro_batch_size: int) -> int:
    return math.ceil(items / micro_batch_size)
