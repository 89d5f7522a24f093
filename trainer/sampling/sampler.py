"""Thinking-aware parallel decoding: the reasoning text and the output image are denoised on one
shared timeline, each step one forward over the whole sequence, so each modality sees the other's
latest state.

The output part `[soi][N image][eoi][bos][text .. L_out-1]` starts fully masked (bos, soi and eoi are
given). At each step, per the plan in `schedules.py`:
- text: candidates are Gumbel-max samples in float64 at `text_temperature` (argmax at 0); the
  `count` most confident masked positions of the current block are committed, confidence being the
  softmax probability of the candidate (LLaDA's low-confidence remasking);
- image: candidates are sampled at `image_temperature` from the code logits only; the `count` most
  confident masked positions are committed, confidence being the log-probability plus Gumbel noise
  scaled by `image_choice_temperature * (1 - (s+1)/S)` (the published -M inference);
- classifier-free guidance per modality: (1 + w) cond - w uncond, where the unconditional row is
  the one the sequence preset trains with (`SequenceBuilder`, dropout of both conditions; for
  mmada-parallel-m `[soi][0 x N][eoi]` and an eos-padded empty instruction); one batched forward.
All sampling maths (guidance, softmax, CDF, confidences) runs in float32 or float64 whatever the
model's dtype: in bfloat16 a cumulative sum over 8192 codes rounds most codes' mass away.
Committed tokens never change. Each prompt has its own random generator (seeded `seed + index`
unless given), so a prompt's output does not depend on what else is in the batch.

The defaults are the published -M inference (`interleave_generate`): 128 steps, one text block of
L, image updates on 30 steps from 25% of the timeline, choice temperature 1.0 annealed by the
timeline, image CFG 4.0 at temperature 1. Deviations from it:
- text CFG is off by default, and when on it is (1 + w) cond - w uncond; the published code writes
  cond + w (uncond - cond), which at its w = 2.5 moves the text away from the instruction;
- the instruction part is eos-padded to L as in the published training (its inference does not pad
  it, so its output positions differ from training's);
- the last image update commits every remaining code (the published one leaves one masked and then
  returns its sample there: the same result);
- the recorded text prediction outside the current block is the greedy argmax.

Trajectories (for ParaRL and the picture strip): at requested steps the state before and after the
step, and the model's prediction at every position (committed positions hold their token). Steps
not requested cost nothing.
"""

from __future__ import annotations

import dataclasses

import torch

from schemas import TokenLayout
from trainer.model import Head
from trainer.sampling.schedules import StepPlan, plan
from trainer.sequence import KEEP, UNCONDITIONAL, SequenceBuilder


@dataclasses.dataclass(kw_only=True)
class SamplerConfig:
    mode: str = "parallel"  # parallel (the paper) | sequential (text first, then image: the ablation)
    steps: int = 128  # the shared timeline; in sequential mode, the text's steps
    image_tokens: int = 1024  # output codes: (resolution / 16)^2
    block_length: int | None = None  # text semi-autoregressive block; None: one block of L
    text_temperature: float = 0.0
    image_temperature: float = 1.0
    image_choice_temperature: float = 1.0  # annealed to 0 over the timeline
    image_updates: int | None = 30  # at most this many (None: every step from image_start); sequential: `steps`
    image_start: float = 0.25  # fraction of the timeline before the first image update
    text_cfg_scale: float = 0.0
    image_cfg_scale: float = 4.0
    seed: int = 0

    def plan(self, reasoning_len: int) -> list[StepPlan]:
        """The step plan for an output text part of `reasoning_len` (bos + reasoning + padding)."""
        return plan(self.mode, self.steps, reasoning_len - 1, self.block_length, self.image_tokens,
                    self.image_updates, self.image_start)


@dataclasses.dataclass
class Prompt:
    task: str  # edit | generate
    instruction_ids: list[int]
    input_image_codes: list[int] | None = None  # raw MAGVIT codes, for edits


@dataclasses.dataclass
class TrajectoryStep:
    step: int
    before: torch.Tensor  # [B, O] output part before the step (the forward's input)
    after: torch.Tensor  # [B, O] after the step's commits
    prediction: torch.Tensor  # [B, O] the step's prediction; equals `after` where committed

    @property
    def committed(self) -> torch.Tensor:
        return self.before != self.after


@dataclasses.dataclass
class OutputSlots:
    """Where things sit in the output part `[soi][image][eoi][bos][text]`."""
    image_tokens: int
    reasoning_len: int

    @property
    def length(self) -> int:
        return self.image_tokens + 2 + self.reasoning_len

    @property
    def image(self) -> slice:
        return slice(1, 1 + self.image_tokens)

    @property
    def text(self) -> slice:  # after bos: the positions the model writes
        return slice(self.image_tokens + 3, self.length)

    def template(self, layout: TokenLayout) -> list[int]:
        n, m = self.image_tokens, layout.mask_id
        return [layout.soi_id, *[m] * n, layout.eoi_id, layout.bos_id, *[m] * (self.reasoning_len - 1)]


@dataclasses.dataclass
class SampleResult:
    output: torch.Tensor  # [B, O] the final output part
    trajectory: list[TrajectoryStep]
    slots: OutputSlots
    layout: TokenLayout
    forwards: int

    def image_codes(self, state: torch.Tensor | None = None) -> torch.Tensor:
        """[B, N] raw codes of `state` (default: the final output)."""
        return image_codes(self.output if state is None else state, self.slots, self.layout)

    def text_ids(self, state: torch.Tensor | None = None) -> list[list[int]]:
        return text_ids(self.output if state is None else state, self.slots, self.layout)


def image_codes(state: torch.Tensor, slots: OutputSlots, layout: TokenLayout) -> torch.Tensor:
    """[B, O] output parts -> [B, N] raw MAGVIT codes."""
    return layout.image_code(state[:, slots.image])


def text_ids(state: torch.Tensor, slots: OutputSlots, layout: TokenLayout) -> list[list[int]]:
    """[B, O] output parts -> per row, the text up to the first eos, masked positions left out."""
    rows = []
    for row in state[:, slots.text].tolist():
        cut = row.index(layout.eos_id) if layout.eos_id in row else len(row)
        rows.append([t for t in row[:cut] if t != layout.mask_id])
    return rows


def filled(after: torch.Tensor, prediction: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """A mid-trajectory state with its masked positions filled by the step's prediction."""
    return torch.where(after == layout.mask_id, prediction, after)


def _gumbel(shape, generators: list[torch.Generator], dtype: torch.dtype, device) -> torch.Tensor:
    """Gumbel noise, one independent stream per row."""
    u = torch.stack([torch.rand(shape, generator=g, dtype=dtype, device=device) for g in generators])
    return -torch.log(-torch.log(u.clamp_min(torch.finfo(dtype).tiny)))


def _draw(cdf: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """[B, n, V] unnormalised cumulative weights -> [B, n] samples by inverse CDF: one uniform per
    position (torch's multinomial draws an exponential per vocabulary entry, which on CPU cost more
    than the model's forward here)."""
    u = torch.stack([torch.rand(cdf.shape[1], generator=g, device=cdf.device) for g in generators])
    return torch.searchsorted(cdf, (u * cdf[..., -1])[..., None]).squeeze(-1).clamp_max(cdf.shape[-1] - 1)


def draw_codes(logits: torch.Tensor, temperature: float, generators: list[torch.Generator]
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, n, V] code logits, any dtype -> (a code per position sampled at `temperature` (argmax at
    0), its log-probability), computed in float32: a bfloat16 cumulative sum over 8192 codes stops
    growing once it is large and gives most codes no mass at all."""
    logits = logits.float()
    if temperature > 0 and temperature != 1:
        logits = logits / temperature
    weights = (logits - logits.amax(-1, keepdim=True)).exp()  # unnormalised probabilities
    cdf = weights.cumsum(-1)
    candidates = _draw(cdf, generators) if temperature > 0 else logits.argmax(-1)
    return candidates, (weights.gather(-1, candidates[..., None]).squeeze(-1) / cdf[..., -1]).log()


def _commit_top(confidence: torch.Tensor, count: int) -> torch.Tensor:
    """[B, n] confidences (-inf where not allowed) -> [B, n] bool: the `count` highest per row."""
    chosen = torch.zeros_like(confidence, dtype=torch.bool)
    if count:
        chosen.scatter_(1, confidence.topk(count, dim=1).indices, True)
    return chosen


class ParallelSampler:
    def __init__(self, model: torch.nn.Module, builder: SequenceBuilder, config: SamplerConfig):
        """`builder`: the layout and sequences the model was trained with (lengths included)."""
        self.model, self.builder, self.layout, self.config = model, builder, builder.layout, config
        self.slots = OutputSlots(config.image_tokens, builder.config.reasoning_len)
        self.schedule = config.plan(builder.config.reasoning_len)

    def inputs(self, prompts: list[Prompt], device) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Padded prefixes + a slot for the output part: (ids, attention mask or None, output positions)."""
        cfg, build = self.config, self.builder
        prefixes = [build.prefix(p.task, p.instruction_ids, p.input_image_codes, KEEP) for p in prompts]
        if cfg.text_cfg_scale or cfg.image_cfg_scale:
            prefixes += [build.prefix(p.task, p.instruction_ids, p.input_image_codes, UNCONDITIONAL) for p in prompts]
        o = self.slots.length
        width = max(map(len, prefixes)) + o
        ids = torch.full((len(prefixes), width), self.layout.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prefixes), width), dtype=torch.long)
        for i, prefix in enumerate(prefixes):
            ids[i, :len(prefix)] = torch.tensor(prefix)
            mask[i, :len(prefix) + o] = 1
        positions = torch.tensor([len(p) for p in prefixes])[:, None] + torch.arange(o)
        attention = None if bool(mask.all()) else mask.to(device)  # no padding: let SDPA skip the mask
        return ids.to(device), attention, positions.to(device)

    @torch.no_grad()
    def sample(self, prompts: list[Prompt], record_steps: list[int] | None = None,
               seeds: list[int] | None = None) -> SampleResult:
        cfg, layout, slots = self.config, self.layout, self.slots
        device = next(self.model.parameters()).device
        b, total = len(prompts), len(self.schedule)
        record = {s % total for s in record_steps or []}
        seeds = seeds if seeds is not None else [cfg.seed + i for i in range(b)]
        generators = [torch.Generator(device).manual_seed(s) for s in seeds]
        ids, attention, positions = self.inputs(prompts, device)
        state = torch.tensor([slots.template(layout)] * b, device=device)
        guided = ids.shape[0] > b
        image_lo, image_hi = layout.image_token_offset, layout.image_token_offset + layout.image_codebook_size
        trajectory = []

        text_positions = positions[:, slots.text]
        image_head = Head(positions[:, slots.image], image_lo, image_hi)
        for step, todo in enumerate(self.schedule):
            ids.scatter_(1, positions, state.repeat(2, 1) if guided else state)
            recording = step in record
            # Only the logits this step reads, each modality's over its own vocabulary: the text of
            # the current block (every text position on a recorded step, for the prediction) and
            # the image codes.
            first = 0 if recording or not todo.text else todo.text.block_start
            last = text_positions.shape[1] if recording or not todo.text else todo.text.block_end
            heads = [h for h, needed in ((Head(text_positions[:, first:last], 0, layout.text_vocab_size),
                                          todo.text or recording), (image_head, todo.image or recording)) if needed]
            logits = dict(zip((h.lo for h in heads), self.model(ids, attention, heads=heads)))
            before = state.clone() if recording else None
            prediction = state.clone() if recording else None
            if 0 in logits:
                text = self._guide(logits[0], b, cfg.text_cfg_scale)
                self._text_step(state, text, first, todo, generators, prediction)
            if image_lo in logits:
                self._image_step(state, logits[image_lo], todo, generators, prediction)
            if recording:
                trajectory.append(TrajectoryStep(step, before, state.clone(), prediction))
        if (state == layout.mask_id).any():
            raise AssertionError("the schedule left masked positions")  # the plans sum to every position
        return SampleResult(state, trajectory, slots, layout, forwards=total)

    @staticmethod
    def _guide(logits: torch.Tensor, b: int, scale: float) -> torch.Tensor:
        """In float32: (1 + w) cond - w uncond, as one fused lerp from uncond through cond."""
        logits = logits.float()  # a copy for a bf16 model (the caller's logits stay untouched); a view in fp32
        if logits.shape[0] == b:
            return logits
        cond, uncond = logits[:b], logits[b:]
        return torch.lerp(uncond, cond, 1 + scale) if scale else cond

    def _text_step(self, state, logits, first: int, todo: StepPlan, generators, prediction) -> None:
        """`logits`: of the text positions from `first` on (the block alone, or all when recording)."""
        mask_id = self.layout.mask_id
        # [MASK] is never a candidate nor a prediction. `logits` belongs to this step (a view of the
        # forward's text logits, or the CFG mix), so the column is set in place instead of copying.
        logits[..., mask_id] = float("-inf")
        text = state[:, self.slots.text]  # a view: commits write through to `state`
        masked = text == mask_id
        if prediction is not None:  # a recorded step: logits of every text position
            prediction[:, self.slots.text] = torch.where(masked, logits.argmax(-1), text)
        if not todo.text or not todo.text.count:
            return
        lo, hi = todo.text.block_start, todo.text.block_end
        block = logits[:, lo - first:hi - first].double()  # LLaDA: the Gumbel-max draw in float64
        if self.config.text_temperature > 0:
            noisy = block / self.config.text_temperature + _gumbel(block.shape[1:], generators, torch.float64, block.device)
            candidates = noisy.argmax(-1)
        else:
            candidates = block.argmax(-1)
        confidence = torch.softmax(block, -1).gather(-1, candidates[..., None]).squeeze(-1)
        confidence = torch.where(masked[:, lo:hi], confidence, float("-inf"))
        commit = _commit_top(confidence, todo.text.count)
        text[:, lo:hi] = torch.where(commit, candidates, text[:, lo:hi])
        if prediction is not None:
            view = prediction[:, self.slots.text][:, lo:hi]
            view.copy_(torch.where(masked[:, lo:hi], candidates, view))

    def _image_step(self, state, logits, todo: StepPlan, generators, prediction) -> None:
        """MaskGIT over the still-masked codes only: every row has the same number of them (one
        schedule for all), so they gather into a dense [B, n, V] and the vocabulary work shrinks
        as the image fills in."""
        cfg, layout, b = self.config, self.layout, state.shape[0]
        image = state[:, self.slots.image]  # a view: commits write through to `state`
        masked = image == layout.mask_id
        n = int(masked[0].sum())
        if n == 0:
            return
        where = masked.nonzero()[:, 1].view(b, n)
        rows = where.repeat(logits.shape[0] // b, 1)  # the unconditional rows (CFG) share the positions
        logits = self._guide(logits.gather(1, rows[..., None].expand(-1, -1, logits.shape[-1])), b,
                             cfg.image_cfg_scale)
        if not todo.image:  # a recorded step without an image update: no draws, so recording
            # never shifts the random streams
            prediction[:, self.slots.image].scatter_(1, where, layout.image_token(logits.argmax(-1)))
            return
        candidates, confidence = draw_codes(logits, cfg.image_temperature, generators)
        tokens = layout.image_token(candidates)
        if prediction is not None:
            prediction[:, self.slots.image].scatter_(1, where, tokens)
        if not todo.image.count:
            return
        choice = cfg.image_choice_temperature * (1 - todo.image.ratio)
        if choice > 0:
            confidence = confidence + choice * _gumbel(confidence.shape[1:], generators, torch.float32, logits.device)
        commit = _commit_top(confidence, todo.image.count)
        image.scatter_(1, where, torch.where(commit, tokens, image.gather(1, where)))
