"""Reveal schedules: how many masked positions each modality commits at each step (pure functions).

Text (LLaDA): the text is cut into semi-autoregressive blocks of `block_length`; the steps are shared
out equally between blocks (remainder to the earliest blocks) and, inside a block, the tokens equally
between its steps (remainder to the earliest steps): a linear reveal. Unlike LLaDA we do not require
the lengths to divide evenly, and unlike the public -A sampler the block length is honoured.

Image (MaskGIT, as the published -M inference runs it): an image update at timeline step s of S
leaves floor(N * cos(pi/2 * (s+1)/S)) codes masked, so the cosine runs over the shared timeline,
not over the updates; each update but the last commits at least one code and leaves at least one
masked, and the last commits the rest.

`plan` lays both on one timeline: `parallel` (the paper) runs the text schedule over all steps and
the image updates on K steps evenly spaced from `image_start` (a fraction of the timeline) to the
last; `sequential` (the ablation) decodes the text first, then the image over its own K steps.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class TextStep:
    block_start: int  # [block_start, block_end) in text positions: where this step may commit
    block_end: int
    count: int


@dataclasses.dataclass(frozen=True)
class ImageStep:
    ratio: float  # the share of the timeline done after this step: (s+1)/S; choice noise anneals with 1 - ratio
    count: int


@dataclasses.dataclass(frozen=True)
class StepPlan:
    text: TextStep | None
    image: ImageStep | None


def _split(total: int, parts: int) -> list[int]:
    """`total` into `parts` near-equal integers, the remainder to the first ones."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def text_schedule(n_tokens: int, block_length: int, steps: int) -> list[TextStep]:
    if block_length <= 0 or steps <= 0:
        raise ValueError(f"block_length ({block_length}) and steps ({steps}) must be positive")
    n_blocks = math.ceil(n_tokens / block_length)
    if steps < n_blocks:
        raise ValueError(f"{steps} steps cannot decode {n_blocks} text blocks of {block_length} "
                         f"({n_tokens} tokens): give steps >= {n_blocks} or a longer block_length")
    schedule = []
    for block, block_steps in enumerate(_split(steps, n_blocks)):
        start, end = block * block_length, min((block + 1) * block_length, n_tokens)
        schedule += [TextStep(start, end, count) for count in _split(end - start, block_steps)]
    return schedule


def image_schedule(n_tokens: int, ratios: list[float]) -> list[int]:
    """Positions committed at each image update, given the timeline share done after it (sums to n_tokens)."""
    if not ratios:
        raise ValueError("the image needs at least one update")
    masked, counts = n_tokens, []
    for k, ratio in enumerate(ratios):
        cosine = math.floor(n_tokens * math.cos(math.pi / 2 * ratio))
        after = 0 if k == len(ratios) - 1 else max(1, min(masked - 1, cosine))
        counts.append(masked - after)
        masked = after
    return counts


def image_update_steps(steps: int, updates: int | None, start: float) -> list[int]:
    """Which of `steps` timeline steps update the image: `updates` of them (None: all; at most the
    steps there are), evenly spaced from `start` (a fraction of the timeline) to the last step."""
    first = math.floor(start * steps)
    if not 0 <= first < steps:
        raise ValueError(f"image_start {start} leaves no step for the image (steps={steps})")
    available = steps - first
    if updates is not None and updates < 1:
        raise ValueError(f"image updates must be positive, not {updates}")
    updates = available if updates is None else min(updates, available)
    if updates == 1:
        return [steps - 1]
    return [first + round(i * (available - 1) / (updates - 1)) for i in range(updates)]


def plan(mode: str, steps: int, n_text: int, block_length: int | None, n_image: int,
         image_updates: int | None = None, image_start: float = 0.0) -> list[StepPlan]:
    """`block_length` None: the whole text is one block (the published -M inference)."""
    text = text_schedule(n_text, block_length or n_text, steps)
    if mode == "parallel":
        at = image_update_steps(steps, image_updates, image_start)
        ratios = [(s + 1) / steps for s in at]
        image = {s: ImageStep(r, c) for s, r, c in zip(at, ratios, image_schedule(n_image, ratios))}
        return [StepPlan(text[s], image.get(s)) for s in range(steps)]
    if mode == "sequential":
        k_total = image_updates or steps
        ratios = [(k + 1) / k_total for k in range(k_total)]
        return ([StepPlan(t, None) for t in text]
                + [StepPlan(None, ImageStep(r, c)) for r, c in zip(ratios, image_schedule(n_image, ratios))])
    raise ValueError(f"unknown sampling mode {mode!r} (parallel | sequential)")
