"""`trainer sample`: one prompt through the parallel sampler -> reasoning.txt, output.png, and on
request a picture strip of the trajectory (the image as it stood at several steps, masked codes
filled with the model's prediction at that step, above the text committed so far)."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

from pipeline.hub import load_text_tokenizer
from pipeline.image_tokenizer import DEFAULT_ID, MagvitV2, encode_blank_image
from trainer.model_io import check_layout, load_model, resolve, sequence_builder
from trainer.sampling import ParallelSampler, Prompt, SamplerConfig, SampleResult, filled


@dataclasses.dataclass(kw_only=True)
class SampleConfig:
    model: str  # an exported / published model folder, or an sft / rl run folder
    instruction: str
    out: str
    input: str | None = None  # the image to edit; absent: generation
    task: str | None = None  # edit | generate; default: edit when an input image is given
    image_tokenizer: str = DEFAULT_ID
    text_tokenizer: str | None = None  # default: the model folder (MMaDA repos ship their tokenizer)
    resolution: int = 512
    trajectory: bool = False  # also write trajectory.png and trajectory.json
    trajectory_frames: int = 8
    device: str = "cpu"
    dtype: str = "float32"
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)

    def __post_init__(self) -> None:
        self.task = self.task or ("edit" if self.input else "generate")
        if self.task not in ("edit", "generate"):
            raise ValueError(f"task must be edit or generate, not {self.task!r}")
        if (self.task == "edit") != bool(self.input):
            raise ValueError("an edit needs --input IMAGE; a generation takes none")
        if self.resolution % 16:
            raise ValueError(f"resolution {self.resolution} is not a multiple of 16 (MAGVIT-v2 downsamples x16)")


@dataclasses.dataclass
class SamplingStack:
    """What sampling from a model folder needs, loaded once (`trainer sample`, `trainer eval`)."""
    sampler: ParallelSampler
    text: Any  # the text tokenizer
    magvit: MagvitV2
    grid: int  # image tokens per side

    def prompt(self, task: str, instruction: str, input_codes: list[int] | None = None) -> Prompt:
        return Prompt(task, self.text(instruction, add_special_tokens=False)["input_ids"], input_codes)

    def encode(self, images: list) -> list[list[int]]:
        """PIL images -> their codes at the sampler's resolution, in one MAGVIT forward."""
        if not images:
            return []
        pixels = MagvitV2.preprocess(images, self.grid * self.magvit.config.downsample)
        return self.magvit.encode(pixels.to(next(self.magvit.parameters()).device)).tolist()

    def images(self, result: SampleResult) -> list:
        return MagvitV2.postprocess(self.magvit.decode(result.image_codes(), (self.grid, self.grid)))


def load_sampling(model: str, sampler: SamplerConfig, *, image_tokenizer: str, text_tokenizer: str | None,
                  resolution: int, device: str, dtype: str, tag: str | None = None) -> SamplingStack:
    """`tag`: a run's checkpoint (default: its newest)."""
    folder = resolve(model, tag)  # a run or export given by URI: its local copy; a hub id: its snapshot
    builder = sequence_builder(folder, text_tokenizer)  # the layout and sequences the model was trained with
    policy = load_model(folder, dtype=getattr(torch, dtype), device=device, tag=tag)
    check_layout(policy, builder.layout, folder)
    magvit = MagvitV2.from_pretrained(image_tokenizer, device=device)
    grid = resolution // magvit.config.downsample
    if builder.published and len(builder.blank_image_codes or []) != grid * grid:  # none saved, or another resolution
        builder.blank_image_codes = encode_blank_image(magvit, resolution)
    sampler = dataclasses.replace(sampler, image_tokens=grid * grid)
    return SamplingStack(ParallelSampler(policy, builder, sampler), load_text_tokenizer(text_tokenizer or str(folder)),
                         magvit, grid)


def run_sample(cfg: SampleConfig) -> dict[str, Path]:
    stack = load_sampling(cfg.model, cfg.sampler, image_tokenizer=cfg.image_tokenizer, text_tokenizer=cfg.text_tokenizer,
                          resolution=cfg.resolution, device=cfg.device, dtype=cfg.dtype)
    text, magvit, grid, sampler = stack.text, stack.magvit, stack.grid, stack.sampler
    prompt = stack.prompt(cfg.task, cfg.instruction, stack.encode([Image.open(cfg.input)])[0] if cfg.input else None)
    total = len(sampler.schedule)
    frames = sorted({round(i * (total - 1) / max(cfg.trajectory_frames - 1, 1)) for i in range(cfg.trajectory_frames)})
    result = sampler.sample([prompt], record_steps=frames if cfg.trajectory else None)

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    written = {"reasoning": out / "reasoning.txt", "image": out / "output.png"}
    written["reasoning"].write_text(text.decode(result.text_ids()[0]) + "\n")
    stack.images(result)[0].save(written["image"])
    if cfg.trajectory:
        written.update(write_trajectory(result, magvit, text, grid, out))
    (out / "sample.json").write_text(json.dumps({**dataclasses.asdict(cfg), "forwards": result.forwards}, indent=2))
    return written


def render_text(ids: list[int], layout, tokenizer) -> str:
    """The text as it stands mid-decoding: committed tokens, `_` for each masked one, up to the
    first committed eos."""
    parts, run = [], []
    for token in ids:
        if token == layout.eos_id:
            break
        if token == layout.mask_id:
            parts += [tokenizer.decode(run), "_"] if run else ["_"]
            run = []
        else:
            run.append(token)
    parts.append(tokenizer.decode(run))
    return "".join(parts)


def write_trajectory(result: SampleResult, magvit: MagvitV2, text, grid: int, out: Path) -> dict[str, Path]:
    tile, lines, line_height = 192, 14, 13
    strip = Image.new("RGB", (tile * len(result.trajectory), tile + 24 + lines * line_height), "white")
    draw, font = ImageDraw.Draw(strip), ImageFont.load_default(size=11)
    frames = []
    for column, step in enumerate(result.trajectory):
        codes = result.image_codes(filled(step.after, step.prediction, result.layout))
        image = MagvitV2.postprocess(magvit.decode(codes, (grid, grid)))[0].resize((tile, tile))
        strip.paste(image, (column * tile, 0))
        words = render_text(step.after[0, result.slots.text].tolist(), result.layout, text)
        masked = int((step.after == result.layout.mask_id).sum())
        draw.text((column * tile + 4, tile + 4), f"step {step.step + 1}: {masked} masked", fill="black", font=font)
        for i, line in enumerate(textwrap.wrap(words, 30)[:lines]):
            draw.text((column * tile + 4, tile + 24 + i * line_height), line, fill="black", font=font)
        frames.append({"step": step.step, "masked": masked, "text": words})
    paths = {"trajectory": out / "trajectory.png", "trajectory_json": out / "trajectory.json"}
    strip.save(paths["trajectory"])
    paths["trajectory_json"].write_text(json.dumps(frames, indent=2))
    return paths
