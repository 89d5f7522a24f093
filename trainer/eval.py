"""`trainer eval`: a ParaBench-style evaluation of a model on a benchmark file.

Every prompt goes through the parallel sampler (batched; prompt i is seeded `sampler.seed + i`, so
outputs do not depend on the batch size), then a VLM judge scores the six ParaBench dimensions
(annotators/judge.py) and CLIP scores the reasoning against the image as a judge-free output
alignment (cosine similarity x 100). Means are taken over successful judgements only; failed ones
are counted per dimension and reason. A row's overall is the mean of its dimension means, like
ParaBench's, and is left empty when a dimension that applies has no successful judgement at all.

The benchmark file is JSONL, one prompt per line, in the ingest manifest's fields:
  instruction   required, non-empty
  task          edit | generate; default: edit when input_image is given
  input_image   edits only: a path, relative to the benchmark file (or absolute)
  category      the row of the table it counts in; default: the task
  id            letters, digits, `.`, `_`, `-` (it names the sample's folder), unique; default: a
                hash of (task, instruction, input_image)
  output_image  optional reference image: shown on the page, never given to the model or the judge
  meta          optional, ignored
Any other field, a missing file or a broken row is an error naming file:line. CLIP reads the first
77 tokens of the reasoning (its context length), like the ParaRL reward.

Outputs under `out`: samples/<id>/{output.png, reasoning.txt, input.png (edits: the input as the
model saw it)}, results.json (config, judge, per-sample records, summary), eval.html.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from annotators.judge import DIMENSIONS, JudgeConfig, JudgeItem, Rubrics, build_judge
from annotators.openai_backend import check_server
from pipeline.image_tokenizer import DEFAULT_ID
from trainer.eval_page import summary_rows, write_page
from trainer.rl.reward import ClipConfig, ClipScorer
from trainer.sample import load_sampling
from trainer.sampling import SamplerConfig

FIELDS = ("id", "task", "instruction", "input_image", "output_image", "category", "meta")
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # ids name folders under samples/


@dataclasses.dataclass(kw_only=True)
class EvalConfig:
    model: str  # an exported / published model folder, or an sft / rl run folder
    tag: str | None = None  # a run's checkpoint (step-N); default: its newest
    benchmark: str  # a benchmark JSONL (format: the module docstring)
    out: str
    image_tokenizer: str = DEFAULT_ID
    text_tokenizer: str | None = None  # default: the model folder
    resolution: int = 512
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 8  # prompts per sampler call
    limit: int | None = None  # only the first N prompts (quick looks)
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    judge: JudgeConfig = dataclasses.field(default_factory=JudgeConfig)
    clip: ClipConfig = dataclasses.field(default_factory=ClipConfig)

    def __post_init__(self) -> None:
        if self.resolution % 16:
            raise ValueError(f"resolution {self.resolution} is not a multiple of 16 (MAGVIT-v2 downsamples x16)")
        if self.batch_size < 1 or (self.limit is not None and self.limit < 1):
            raise ValueError("batch_size and limit must be >= 1")


@dataclasses.dataclass(frozen=True)
class BenchmarkItem:
    id: str
    task: str
    instruction: str
    category: str
    input_image: Path | None
    reference_image: Path | None  # the benchmark's own output_image, if any: shown, never judged


def _readable(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except (UnidentifiedImageError, OSError, SyntaxError):
        return False


def _item(obj: dict, where: str, base: Path) -> BenchmarkItem:
    def fail(message: str) -> ValueError:
        return ValueError(f"{where}: {message}")

    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise fail(f"unknown field(s) {unknown}; known: {list(FIELDS)}")
    instruction = obj.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise fail("instruction must be a non-empty string")
    task = obj.get("task") or ("edit" if obj.get("input_image") else "generate")
    if task not in ("edit", "generate"):
        raise fail(f"task must be edit or generate, not {task!r}")
    images = {}
    for side in ("input_image", "output_image"):
        value = obj.get(side)
        if value is not None and not isinstance(value, str):
            raise fail(f"{side} must be a path (relative to the benchmark file), not {type(value).__name__}")
        images[side] = base / value if value else None
        if images[side] is not None and not images[side].is_file():
            raise fail(f"{side} {value!r} not found")
        if images[side] is not None and not _readable(images[side]):
            raise fail(f"{side} {value!r} is not a readable image")
    if (task == "edit") != (images["input_image"] is not None):
        raise fail("an edit needs an input_image; a generation takes none")
    category = obj.get("category") or task
    if not isinstance(category, str):
        raise fail("category must be a string")
    sample_id = obj.get("id")
    if sample_id is None:  # content-derived, so it stays put when lines are added or reordered
        key = json.dumps([task, instruction, obj.get("input_image")])
        sample_id = hashlib.sha256(key.encode()).hexdigest()[:16]
    if not isinstance(sample_id, str) or not SAFE_ID.match(sample_id):
        raise fail(f"id {sample_id!r} must match {SAFE_ID.pattern} (it names a folder)")
    return BenchmarkItem(sample_id, task, instruction, category, images["input_image"], images["output_image"])


def load_benchmark(path: str | Path) -> list[BenchmarkItem]:
    """Every row is checked; the first bad one raises ValueError naming file:line, because a
    benchmark with rows silently missing gives numbers that compare with nothing."""
    path = Path(path)
    items, seen = [], {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: a line must hold a JSON object")
        item = _item(obj, where, path.parent)
        if item.id in seen:
            raise ValueError(f"{where}: id {item.id!r} already used on line {seen[item.id]}")
        seen[item.id] = lineno
        items.append(item)
    if not items:
        raise ValueError(f"{path}: no prompts")
    return items


def generate(cfg: EvalConfig, items: list[BenchmarkItem], out: Path) -> list[str]:
    """Sample every prompt; writes samples/<id>/ and returns the reasoning texts."""
    stack = load_sampling(cfg.model, cfg.sampler, image_tokenizer=cfg.image_tokenizer, text_tokenizer=cfg.text_tokenizer,
                          resolution=cfg.resolution, device=cfg.device, dtype=cfg.dtype, tag=cfg.tag)
    reasonings = []
    for start in range(0, len(items), cfg.batch_size):
        batch = items[start:start + cfg.batch_size]
        for item in batch:
            (out / "samples" / item.id).mkdir(parents=True, exist_ok=True)
        # the input as the model sees it is saved, and is what the judge is shown
        seen = {item.id: Image.open(item.input_image).convert("RGB").resize((cfg.resolution,) * 2, Image.BICUBIC)
                for item in batch if item.input_image is not None}
        for sample_id, image in seen.items():
            image.save(out / "samples" / sample_id / "input.png")
        codes = dict(zip(seen, stack.encode(list(seen.values()))))
        prompts = [stack.prompt(item.task, item.instruction, codes.get(item.id)) for item in batch]
        result = stack.sampler.sample(prompts, seeds=[cfg.sampler.seed + start + i for i in range(len(batch))])
        for item, image, ids in zip(batch, stack.images(result), result.text_ids(), strict=True):
            reasoning = stack.text.decode(ids).strip()
            image.save(out / "samples" / item.id / "output.png")
            (out / "samples" / item.id / "reasoning.txt").write_text(reasoning + "\n")
            reasonings.append(reasoning)
    del stack
    _release(cfg.device)
    return reasonings


def _release(device: str) -> None:
    """Hand memory back before the next model loads (the judge may be an in-process vLLM)."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def clip_scores(cfg: ClipConfig, images: list[Path], texts: list[str], batch_size: int) -> list[float]:
    """CLIP cosine(image, reasoning) x 100 (CLIPScore's scale without its clamp and weight 2.5)."""
    scorer, scores = ClipScorer(cfg), []
    for i in range(0, len(images), batch_size):
        pixels = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1)
                              for p in images[i:i + batch_size]]).float() / 255
        scores += (scorer.score(pixels, texts[i:i + batch_size]) * 100).tolist()
    del scorer
    _release(cfg.device)
    return scores


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize_rows(records: list[dict]) -> dict:
    """Records of one row (a category, or all) -> per dimension mean / n / failed (by reason), the
    overall and the CLIP mean. A dimension no record has (consistency for generations) is n/a."""
    dims, means = {}, []
    for dim in DIMENSIONS:
        judged = [r["judgements"][dim] for r in records if dim in r["judgements"]]
        scores = [j["score"] for j in judged if j["score"] is not None]
        reasons = dict(collections.Counter(j["error"] for j in judged if j["score"] is None))
        dims[dim] = {"mean": _mean(scores), "n": len(scores), "failed": len(judged) - len(scores),
                     "failed_reasons": reasons, "applies": bool(judged)}
        if judged:
            means.append(dims[dim]["mean"])
    overall = None if not means or None in means else sum(means) / len(means)
    return {"samples": len(records), "dimensions": dims, "overall": overall,
            "failed": sum(d["failed"] for d in dims.values()),
            "clip_output_alignment": _mean([r["clip_output_alignment"] for r in records])}


def summarize(records: list[dict]) -> dict:
    categories = sorted({r["category"] for r in records})
    return {"categories": {c: summarize_rows([r for r in records if r["category"] == c]) for c in categories},
            "all": summarize_rows(records)}


def format_summary(summary: dict) -> str:
    header, rows = summary_rows(summary)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    failures = [f"{dim} {d['failed']} ({', '.join(f'{k} {v}' for k, v in sorted(d['failed_reasons'].items()))})"
                for dim, d in summary["all"]["dimensions"].items() if d["failed"]]
    if failures:
        lines.append("failed judgements (not in the means): " + "; ".join(failures))
    return "\n".join(lines)


def run_eval(cfg: EvalConfig) -> dict:
    items = load_benchmark(cfg.benchmark)[:cfg.limit]
    # a bad rubric file should fail now, not after all the sampling (the verifier has none)
    rubrics = Rubrics.load(cfg.judge.rubrics) if cfg.judge.backend.kind != "verifier" else None
    if cfg.judge.backend.kind == "openai":  # and so should a rejected key or a judge model the server lacks
        check_server(cfg.judge.backend.model, cfg.judge.backend.openai)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    reasonings = generate(cfg, items, out)
    outputs = [out / "samples" / item.id / "output.png" for item in items]
    clip = clip_scores(cfg.clip, outputs, reasonings, cfg.batch_size)
    judge = build_judge(cfg.judge, rubrics)
    judgements = judge.judge([
        JudgeItem(item.id, item.task, item.instruction, reasoning, path.read_bytes(),
                  (path.parent / "input.png").read_bytes() if item.input_image else None,
                  item.reference_image.read_bytes() if item.reference_image else None)
        for item, reasoning, path in zip(items, reasonings, outputs, strict=True)])
    records = [{"id": item.id, "task": item.task, "category": item.category, "instruction": item.instruction,
                "input_image": str(item.input_image) if item.input_image else None,
                "reference_image": str(item.reference_image) if item.reference_image else None,
                "reasoning": reasoning, "clip_output_alignment": score,
                "judgements": {d: dataclasses.asdict(j) for d, j in judged.items()}}
               for item, reasoning, score, judged in zip(items, reasonings, clip, judgements, strict=True)]
    summary = summarize(records)
    results = {"config": dataclasses.asdict(cfg),
               # the verifier reads the image itself: no model to name
               "judge": {"backend": cfg.judge.backend.kind,
                         "model": None if cfg.judge.backend.kind == "verifier" else cfg.judge.backend.model,
                         "rubrics": judge.rubrics.id, "rubrics_sha256": judge.rubrics.sha256},
               "samples": records, "summary": summary}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    write_page(results, out)
    return summary
