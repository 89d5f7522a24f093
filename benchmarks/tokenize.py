"""Tokenize-stage images/s against the bare MAGVIT-v2 encoder forward on the same device, threads
and batch, in one run.

Full-size MAGVIT-v2 with random weights in the published layout. Three rows: the baseline is only
`encoder -> quantizer` on pre-made pixel batches; the stage is `TokenizeStage` on the same rows
(`prepare`: PNG decoding and resizing; `process`: the forward, text tokenization, the Arrow batch), model loaded
beforehand; the pipeline is `run_stage(tokenize.plan, ...)` end to end (Ray Data job, actor start, weight loading,
shard writing), whose fixed start-up cost shows at small n. Goal: stage ratio >= 0.9 at 256 px on
CPU (on a GPU also 512 px in bf16).

    python -m benchmarks.tokenize [--n 24] [--resolution 256] [--batch-size 4] [--device cpu] [--dtype float32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import torch

import pipeline.ingest
import pipeline.tokenize
from jobs.tiny_models import build_random_magvitv2, build_tiny_llada_tokenizer
from pipeline.demo_data import make_demo_data
from pipeline.image_tokenizer import MagvitV2
from pipeline.ingest import IngestConfig
from pipeline.ray_runtime import init_ray
from pipeline.registry import DatasetRegistry
from pipeline.run import run_stage
from pipeline.tokenize import TokenizeConfig, TokenizeStage
from schemas import ANNOTATED, Counts

ROOT = Path(__file__).resolve().parents[1]


def annotated_version(registry: DatasetRegistry, raw) -> str:
    """An annotated version with a fixed trace per sample: the benchmark times tokenize only."""
    table = registry.read_table(raw)
    n = table.num_rows
    extra = {"reasoning": ["Find the shape, change what the instruction asks, keep the rest."] * n,
             "annotator_model": ["none"] * n, "prompt_id": ["none"] * n, "prompt_hash": ["0" * 64] * n,
             "sampling_params": [None] * n, "attempts": pa.array([1] * n, pa.int32()),
             "finish_reason": ["stop"] * n, "verdicts": [None] * n}
    for name, values in extra.items():
        table = table.append_column(name, pa.array(values, ANNOTATED.field(name).type))
    with registry.writer(raw.dataset, "annotate", ANNOTATED, parent=raw.ref) as writer:
        writer.write(table)
        return writer.publish(Counts(n, n, 0, 0), {"command": "benchmark"}).ref


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24, help="generation samples: one image each")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both paths")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="paraforge-bench-tokenize-"))
    magvit_dir = build_random_magvitv2(work / "magvitv2")
    tokenizer_dir = build_tiny_llada_tokenizer(work / "tokenizer")
    manifest = make_demo_data(work / "data", n=args.n, resolution=512, generate_fraction=1.0)
    init_ray()
    registry = DatasetRegistry(str(work / "reg"))
    raw = run_stage(pipeline.ingest.plan, IngestConfig(sources=[str(manifest)], dataset="bench", registry=registry.root),
                    progress=False)
    source = annotated_version(registry, raw)

    # baseline: the encoder forward alone, same device, dtype, threads and batch
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    model = MagvitV2.from_pretrained(str(magvit_dir), device=args.device, dtype=dtype)
    import io

    from PIL import Image

    images = [Image.open(io.BytesIO(b)) for b in registry.read_table(raw, ["output_image"])["output_image"].to_pylist()]
    batches = [MagvitV2.preprocess(images[i:i + args.batch_size], args.resolution).to(args.device, dtype)
               for i in range(0, len(images), args.batch_size)]
    model.encode(batches[0][:1])  # warm-up
    start = time.perf_counter()
    for pixels in batches:
        model.encode(pixels)
    if args.device == "cuda":
        torch.cuda.synchronize()
    bare = len(images) / (time.perf_counter() - start)
    del model

    cfg = TokenizeConfig(dataset=source, registry=registry.root, image_tokenizer=str(magvit_dir),
                         text_tokenizer=str(tokenizer_dir), resolution=args.resolution, batch_size=args.batch_size,
                         device=args.device, dtype=args.dtype, cpus_per_actor=args.threads)

    # the stage as the workers run it, on the same rows and batch size: prepare (decode + resize, a
    # CPU worker's half) then process (encode + text, the actor's half), one process here
    tokenize_stage = TokenizeStage(cfg)
    tokenize_stage.setup()
    rows = registry.read_table(registry.resolve(source), ["sample_id", "task", "instruction", "reasoning",
                                                          "input_image", "output_image", "source", "source_ref"])
    start = time.perf_counter()
    for i in range(0, rows.num_rows, args.batch_size):
        tokenize_stage.process(tokenize_stage.prepare(rows.slice(i, args.batch_size)))
    if args.device == "cuda":
        torch.cuda.synchronize()
    stage = len(images) / (time.perf_counter() - start)
    del tokenize_stage

    start = time.perf_counter()
    m = run_stage(pipeline.tokenize.plan, cfg, progress=False)
    end_to_end = m.stats["images"] / (time.perf_counter() - start)
    assert m.counts.output == args.n

    print(f"tokenize benchmark: full-size MAGVIT-v2 (random weights), {args.n} images at {args.resolution} px, "
          f"batch {args.batch_size}, {args.device} {args.dtype}, {args.threads} threads")
    print(f"| {'path':<44} | {'images/s':>8} | {'ratio':>5} |")
    print(f"|{'-' * 46}|{'-' * 10}|{'-' * 7}|")
    print(f"| {'bare encoder forward (pre-made pixels)':<44} | {bare:>8.3f} | {1.0:>5.2f} |")
    print(f"| {'tokenize stage (decode+resize+encode+text)':<44} | {stage:>8.3f} | {stage / bare:>5.2f} |")
    print(f"| {'pipeline tokenize end to end, with start-up':<44} | {end_to_end:>8.3f} | {end_to_end / bare:>5.2f} |")
    print(f"goal: stage ratio >= 0.9 -> {'met' if stage / bare >= 0.9 else 'NOT met'}")


if __name__ == "__main__":
    main()
