"""Tokenize throughput on one GPU: full-size MAGVIT-v2 (random weights), 512 px, bf16, in one run.

Prints, in order: the set-up (device, dtype, resolution, parameters); the bare encoder forward
(`MagvitV2.encode` on pre-made pixel batches on the device) at a few batch sizes; the CPU half
(`TokenizeStage.prepare`: JPEG decode + resize, one core) and how many such cores one GPU needs;
and `run_stage(tokenize.plan, ...)` end to end on a local Ray over an annotated version of edit rows with ~1 MP
JPEGs, with the goal line (>= 140 images/s per H100-class GPU, judged on the end-to-end figure).

    python -m benchmarks.gpu_tokenize            # a GPU box (benchmarks/gpu_tokenize.sh sets it up)
    python -m benchmarks.gpu_tokenize --smoke    # the same code paths on the CPU: 64 px, 4 rows
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built locally; never reach the hub

import argparse
import io
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image, ImageDraw

import pipeline.tokenize
from jobs.tiny_models import build_random_magvitv2, build_tiny_llada_tokenizer
from pipeline.image_tokenizer import MagvitV2
from pipeline.registry import DatasetRegistry
from pipeline.run import run_stage
from pipeline.tokenize import TokenizeConfig, TokenizeStage
from schemas import ANNOTATED, Counts

SIZES = [(1024, 1024), (1216, 832), (832, 1216), (1152, 864)]  # ~1 MP, as edit data comes
REASONING = ("To edit the image I first find the object named in the instruction, then decide its new state. "
             "The scene shows a large orange square in the centre and a black triangle on the left.")


def photo_jpeg(seed: int, size: tuple[int, int]) -> bytes:
    """A photo-like JPEG (smooth colour field, sensor noise, shapes; ~180 KB at 1 MP, quality 90):
    flat or pure-noise images would make decoding unrealistically fast or slow."""
    rng = np.random.default_rng(seed)
    w, h = size
    field = Image.fromarray(rng.integers(0, 256, (h // 48 + 2, w // 48 + 2, 3), np.uint8)).resize((w, h), Image.BICUBIC)
    image = Image.fromarray(np.clip(np.asarray(field, np.int16) + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(20, 200))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def edit_rows(n: int, pool: list[bytes], start: int = 0) -> pa.Table:
    """n annotated edit rows whose images come from a pool of distinct JPEGs (decode cost is what
    matters, not uniqueness; making 2n fresh 1 MP JPEGs would take longer than the benchmark)."""
    idx = range(start, start + n)
    size = lambda k: SIZES[k % len(SIZES)]  # noqa: E731  (pool[k] was made at this size)
    ins, outs = [i % len(pool) for i in idx], [(7 * i + 3) % len(pool) for i in idx]
    cols = {"sample_id": [f"bench-{i:07d}" for i in idx], "task": ["edit"] * n,
            "instruction": [f"Change the colour of circle {i} to blue and keep everything else unchanged." for i in idx],
            "input_image": [pool[k] for k in ins], "output_image": [pool[k] for k in outs],
            "input_width": [size(k)[0] for k in ins], "input_height": [size(k)[1] for k in ins],
            "output_width": [size(k)[0] for k in outs], "output_height": [size(k)[1] for k in outs],
            "source": ["benchmark"] * n, "source_ref": [f"row {i}" for i in idx], "category": [None] * n,
            "meta": [None] * n, "reasoning": [REASONING] * n, "annotator_model": ["none"] * n,
            "prompt_id": ["none"] * n, "prompt_hash": ["0" * 64] * n, "sampling_params": [None] * n,
            "attempts": [1] * n, "finish_reason": ["stop"] * n, "verdicts": [None] * n}
    return pa.table(cols, schema=ANNOTATED)


def annotated_version(registry: DatasetRegistry, n: int, pool: list[bytes]) -> str:
    with registry.writer("bench", "annotate", ANNOTATED) as writer:
        for start in range(0, n, 256):  # a slice at a time: 4096 rows of JPEGs are ~1.5 GB
            writer.write(edit_rows(min(256, n - start), pool, start))
        return writer.publish(Counts(n, n, 0, 0), {"command": "benchmark"}).ref


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def encoder_rate(model: MagvitV2, batch: int, args, channels_last: bool = False) -> float:
    """images/s of `encode` on a pre-made [B, 3, R, R] batch already on the device."""
    dtype = next(model.parameters()).dtype
    pixels = torch.rand(batch, 3, args.resolution, args.resolution, device=args.device, dtype=dtype) * 2 - 1
    if channels_last:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    for _ in range(args.warmup):  # cuDNN algorithm choice, allocator growth
        model.encode(pixels)
    sync(args.device)
    start = time.perf_counter()
    for _ in range(args.iters):
        model.encode(pixels)
    sync(args.device)
    return batch * args.iters / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, 64 px, 4 rows: checks the code paths, not speed")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 on a GPU, float32 on the CPU (as the stage)")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--encoder-batches", default="16,32,64")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--prepare-rows", type=int, default=32, help="rows (2 images each) for the CPU half")
    # 4096 rows = 8192 images: the end-to-end figure includes Ray and actor start-up and the wait for
    # the first prepared unit (256 rows on one core), so fewer rows measure mostly start-up.
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=32, help="rows per stage batch (up to 2x images)")
    parser.add_argument("--unit-rows", type=int, default=256, help="rows per unit (the stage's default)")
    parser.add_argument("--goal", type=float, default=140.0)
    args = parser.parse_args()
    if args.smoke:
        args.device, args.resolution, args.encoder_batches = "cpu", 64, "2,4"
        args.warmup, args.iters, args.prepare_rows, args.rows, args.batch_size, args.unit_rows = 1, 1, 4, 4, 2, 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"torch {torch.__version__} sees no CUDA device (use --smoke on a CPU machine)")
    dtype_name = args.dtype if args.dtype != "auto" else "bfloat16" if args.device.startswith("cuda") else "float32"
    dtype = getattr(torch, dtype_name)

    work = Path(tempfile.mkdtemp(prefix="paraforge-gpu-tokenize-"))
    t0 = time.perf_counter()
    magvit_dir = build_random_magvitv2(work / "magvitv2")  # full size, published layout, random weights
    tokenizer_dir = build_tiny_llada_tokenizer(work / "tokenizer")
    pool = [photo_jpeg(i, SIZES[i % len(SIZES)]) for i in range(8 if args.smoke else 32)]
    registry = DatasetRegistry(str(work / "registry"))
    source = annotated_version(registry, args.rows, pool)
    model = MagvitV2.from_pretrained(str(magvit_dir), device=args.device, dtype=dtype)
    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    print(f"== set-up ({time.perf_counter() - t0:.0f} s; work dir {work})")
    print(f"device {device_name} | torch {torch.__version__} (CUDA {torch.version.cuda}) | dtype {dtype_name} | "
          f"{args.resolution} px | MAGVIT-v2 {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters "
          f"(encoder {sum(p.numel() for p in model.encoder.parameters()) / 1e6:.1f} M), random weights")
    print(f"data: {args.rows} edit rows = {2 * args.rows} JPEGs (~1 MP, mean "
          f"{sum(map(len, pool)) / len(pool) / 1e3:.0f} KB), from a pool of {len(pool)}")

    print("== 1. bare encoder forward: MagvitV2.encode on pre-made pixels on the device")
    rates = {}
    for b in map(int, args.encoder_batches.split(",")):
        rates[b] = encoder_rate(model, b, args)
        print(f"  batch {b:>3}: {rates[b]:8.1f} images/s")
    # What-if (not what the stage does): NHWC memory layout with cuDNN autotuning, at the largest batch.
    torch.backends.cudnn.benchmark = True
    model.to(memory_format=torch.channels_last)
    b = max(rates)
    print(f"  batch {b:>3}: {encoder_rate(model, b, args, channels_last=True):8.1f} images/s  "
          "(what-if: channels_last + cudnn.benchmark; the stage uses neither)")
    torch.backends.cudnn.benchmark = False
    del model
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()  # leave the GPU to the Ray actor below

    print("== 2. CPU half: TokenizeStage.prepare (JPEG decode + resize), one core")
    config = TokenizeConfig(dataset=source, registry=registry.root, image_tokenizer=str(magvit_dir),
                            text_tokenizer=str(tokenizer_dir), resolution=args.resolution, batch_size=args.batch_size,
                            device=args.device, dtype=args.dtype, unit_rows=args.unit_rows)
    rows, stage = edit_rows(args.prepare_rows, pool), TokenizeStage(config)
    stage.prepare(rows.slice(0, 1))  # warm-up: PIL's codecs
    start = time.perf_counter()
    stage.prepare(rows)
    per_core = 2 * rows.num_rows / (time.perf_counter() - start)
    best = max(rates.values())
    print(f"  {per_core:.1f} images/s per core -> CPU workers one GPU needs: {math.ceil(args.goal / per_core)} "
          f"for the goal ({args.goal:g}/s), {math.ceil(best / per_core)} to keep up with the bare encoder ({best:.0f}/s)")

    print(f"== 3. end to end: run_stage(tokenize.plan) on a local Ray ({args.rows} rows, batch {args.batch_size} rows, "
          f"unit {args.unit_rows} rows, device {args.device}, dtype {args.dtype})")
    start = time.perf_counter()
    manifest = run_stage(pipeline.tokenize.plan, config, progress=False)
    wall = time.perf_counter() - start
    import ray

    s = manifest.stats
    units = [json.loads(p.read_text()) for p in Path(registry.root).glob("*/_work/*/units/*.json")]
    busy = sum(u["seconds"] for u in units)
    print(f"  Ray: {ray.cluster_resources().get('CPU', 0):g} CPUs, {ray.cluster_resources().get('GPU', 0):g} GPUs | "
          f"{manifest.counts.line()} | quarantined: {s['quarantine_reasons'] or 'none'}")
    print(f"  manifest: {s['images']} images in {s['seconds']} s -> {s['images_per_s']} images/s "
          f"(whole call with driver set-up: {wall:.1f} s)")
    print(f"  actor busy (process + write, over {len(units)} units): {s['images'] / busy:.1f} images/s; "
          f"the other {s['seconds'] - busy:.1f} s are start-up and waiting for prepared units")
    assert manifest.counts.output == args.rows, manifest.counts.line()
    verdict = "PASS" if (s["images_per_s"] or 0) >= args.goal else "FAIL"
    print(f"goal >= {args.goal:g} images/s per H100-class GPU: {verdict} (end to end {s['images_per_s']} images/s "
          f"on {device_name}{'; smoke run, not a measurement' if args.smoke else ''})")


if __name__ == "__main__":
    main()
