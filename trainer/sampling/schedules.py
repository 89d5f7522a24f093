"""Reveal schedules: how many masked positions each modality commits at each step (pure functions).

Text (LLaDA): the text is cut into semi-autoregressive blocks of `block_length`; the steps are shared
out equally between blocks (remainder to the earliest blocks) and, inside a block, the tokens equally
between its steps (remainder to the earliest steps): a linear reveal. Unlike LLaDA we do not require
the lengths to divide evenly, and unlike the public -A sampler the block length is honoured.

Image (MaskGIT): over K image updates, the number still masked after update k is
floor(N * cos(pi/2 * (k+1)/K)), at least 1 until the last update, which commits the rest.

`plan` lays both on one timeline: `parallel` (the paper) runs the text schedule over all steps and
the image updates on the last K of them (or all); `sequential` (the ablation) decodes the text first,
then the image.
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
    update: int  # k of K: the choice temperature anneals with (1 - k/K)
    updates: int
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


def image_schedule(n_tokens: int, updates: int) -> list[int]:
    """Positions committed at each of `updates` image updates (sums to n_tokens)."""
    if updates <= 0:
        raise ValueError(f"image updates must be positive, not {updates}")
    masked, counts = n_tokens, []
    for k in range(updates):
        after = 0 if k == updates - 1 else max(1, math.floor(n_tokens * math.cos(math.pi / 2 * (k + 1) / updates)))
        after = min(after, masked)
        counts.append(masked - after)
        masked = after
    return counts


def image_update_steps(steps: int, updates: int | None, start: float) -> list[int]:
    """Which of `steps` timeline steps update the image: `updates` of them, evenly spaced from
    `start` (a fraction of the timeline) to the last step, which always is one."""
    first = math.floor(start * steps)
    if not 0 <= first < steps:
        raise ValueError(f"image_start {start} leaves no step for the image (steps={steps})")
    available = steps - first
    updates = available if updates is None else updates
    if not 1 <= updates <= available:
        raise ValueError(f"{updates} image updates do not fit the {available} steps from image_start {start}")
    if updates == 1:
        return [steps - 1]
    return [first + round(i * (available - 1) / (updates - 1)) for i in range(updates)]


def plan(mode: str, steps: int, n_text: int, block_length: int, n_image: int,
         image_updates: int | None = None, image_start: float = 0.0) -> list[StepPlan]:
    text = text_schedule(n_text, block_length, steps)
    if mode == "parallel":
        at = image_update_steps(steps, image_updates, image_start)
        counts = dict(zip(at, image_schedule(n_image, len(at))))
        index = {s: k for k, s in enumerate(at)}
        return [StepPlan(text[s], ImageStep(index[s], len(at), counts[s]) if s in counts else None)
                for s in range(steps)]
    if mode == "sequential":
        k_total = image_updates or steps
        counts = image_schedule(n_image, k_total)
        return ([StepPlan(t, None) for t in text]
                + [StepPlan(None, ImageStep(k, k_total, c)) for k, c in enumerate(counts)])
    raise ValueError(f"unknown sampling mode {mode!r} (parallel | sequential)")
