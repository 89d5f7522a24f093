"""ParaRL's Ray actors: rollout workers (a copy of the policy running the parallel sampler) and
reward workers (MAGVIT-v2 + CLIP). Plain classes: `ray.remote(...)` makes them actors, and tests
and the benchmark can also run them in-process."""

from __future__ import annotations

import dataclasses

import torch

from trainer.model import MMaDAConfig, MMaDAModel
from trainer.rl.reward import ClipConfig, RewardModel
from trainer.sampling import (
    OutputSlots,
    ParallelSampler,
    Prompt,
    SamplerConfig,
    filled,
    image_codes,
    text_ids,
)
from trainer.sequence import SequenceBuilder


@dataclasses.dataclass
class Rollout:
    """One sampled completion and its recorded steps (rows of before/after/prediction follow `steps`)."""
    prompt: Prompt
    steps: list[int]
    before: torch.Tensor  # [S, O] the state each recorded step started from
    after: torch.Tensor  # [S, O] the state after it: committed = before != after
    prediction: torch.Tensor  # [S, O] the step's prediction for every position

    @property
    def committed(self) -> torch.Tensor:
        return self.before != self.after


class RolloutWorker:
    def __init__(self, model_config: dict, sequence: dict, sampler: SamplerConfig, threads: int | None = None,
                 device: str = "cpu"):
        if threads:
            torch.set_num_threads(threads)  # a Ray worker starts with one thread
        with torch.device("meta"):
            model = MMaDAModel(MMaDAConfig.from_dict(model_config))
        self.model = model.to_empty(device=device).eval()  # the weights arrive with set_weights
        self.sampler = ParallelSampler(self.model, SequenceBuilder.from_dict(sequence), sampler)
        self.version = -1

    def set_weights(self, state: dict[str, torch.Tensor], version: int) -> int:
        self.model.load_state_dict(state, strict=True)
        self.version = version
        return version

    def rollout(self, prompts: list[Prompt], seeds: list[int], record: list[list[int]]) -> list[Rollout]:
        """One batched sampler run; rollout i keeps the recorded steps `record[i]`."""
        result = self.sampler.sample(prompts, record_steps=sorted(set().union(*record)), seeds=seeds)
        at = {step.step: step for step in result.trajectory}
        return [Rollout(prompt, steps, torch.stack([at[s].before[i] for s in steps]),
                        torch.stack([at[s].after[i] for s in steps]), torch.stack([at[s].prediction[i] for s in steps]))
                for i, (prompt, steps) in enumerate(zip(prompts, record))]


class RewardWorker:
    def __init__(self, clip: ClipConfig, image_tokenizer: str, text_tokenizer: str, slots: OutputSlots, layout,
                 threads: int | None = None, device: str = "cpu"):
        if threads:
            torch.set_num_threads(threads)
        self.reward = RewardModel(clip, image_tokenizer, text_tokenizer, device)
        self.slots, self.layout = slots, layout

    def score(self, rollouts: list[Rollout]) -> torch.Tensor:
        """[n rollouts, S] raw CLIP scores of (text, image) as they stood at each recorded step."""
        states = torch.cat([filled(r.after, r.prediction, self.layout) for r in rollouts])
        texts = text_ids(torch.cat([r.after for r in rollouts]), self.slots, self.layout)
        scores = self.reward.score(image_codes(states, self.slots, self.layout), texts)
        return scores.view(len(rollouts), -1)

    def score_reference(self, codes: torch.Tensor, reasoning_ids: list[list[int]]) -> torch.Tensor:
        return self.reward.score(codes, reasoning_ids)
