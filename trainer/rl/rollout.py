"""ParaRL's generate and score, on the rank that trains: rollouts from the learner's own weights
(no copy of them anywhere) and their CLIP rewards at every recorded step, in as few batches as
the memory allows.

Every rollout is seeded by (seed, step, prompt index in the step's global batch), so a prompt's
rollouts do not depend on which rank draws them or how many ranks there are.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from schemas import TokenLayout
from trainer.rl.reward import RewardModel
from trainer.sampling import OutputSlots, ParallelSampler, Prompt, filled, image_codes, text_ids


@dataclasses.dataclass
class Rollout:
    """One sampled completion and what the update and the reward read of it, at its recorded steps
    (the rows of before / after / prediction follow `steps`)."""
    prompt: Prompt
    steps: list[int]
    before: torch.Tensor  # [S, O] the state each recorded step started from
    after: torch.Tensor  # [S, O] the state after it: committed = before != after
    prediction: torch.Tensor  # [S, O] the step's prediction for every position (the reward's image)

    @property
    def committed(self) -> torch.Tensor:
        return self.before != self.after


def rollout_plan(seed: int, step: int, prompt_index: int, generations: int, timeline: int, reward_steps: int,
                 reward_at: str, step_choice: str) -> tuple[list[int], list[list[int]]]:
    """(a sampler seed per rollout, the recorded steps of each) for one prompt of one step."""
    rng = np.random.default_rng([seed, step, prompt_index])
    seeds = rng.integers(0, 2**31 - 1, size=generations).tolist()
    if reward_at == "final":
        return seeds, [[timeline - 1]] * generations
    s = min(reward_steps, timeline)
    if step_choice == "fixed":  # evenly spaced, ending at the last step
        return seeds, [[round((j + 1) * timeline / s) - 1 for j in range(s)]] * generations
    return seeds, [sorted(rng.choice(timeline - 1, size=s - 1, replace=False).tolist() + [timeline - 1])
                   for _ in range(generations)]


def generate(sampler: ParallelSampler, prompts: list[Prompt], seeds: list[int], record: list[list[int]]
             ) -> list[Rollout]:
    """One batched sampler run; rollout i keeps its recorded steps `record[i]`, on the CPU (they are
    small: three [S, O] integer tensors)."""
    result = sampler.sample(prompts, record_steps=sorted(set().union(*record)), seeds=seeds)
    at = {step.step: step for step in result.trajectory}
    return [Rollout(prompt, steps, *(torch.stack([getattr(at[s], name)[i] for s in steps]).cpu()
                                     for name in ("before", "after", "prediction")))
            for i, (prompt, steps) in enumerate(zip(prompts, record))]


def score(reward: RewardModel, rollouts: list[Rollout], slots: OutputSlots, layout: TokenLayout,
          batch_size: int) -> torch.Tensor:
    """[n rollouts, S] raw CLIP scores of (text, image) as they stood at each recorded step: every
    recorded state of every rollout in batches of `batch_size` (MAGVIT-v2 decode, then CLIP)."""
    states = torch.cat([filled(r.after, r.prediction, layout) for r in rollouts])
    texts = text_ids(torch.cat([r.after for r in rollouts]), slots, layout)
    return reward.score(image_codes(states, slots, layout), texts, batch_size).view(len(rollouts), -1)
