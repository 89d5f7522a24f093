"""Ingest throughput against a bare loop that only opens and decodes the same images with PIL.

Both run in this process, on the same files, alternately, so machine noise hits both alike; the
result is a ratio (ingest rows/s / bare rows/s). Ray is started and warmed before timing: the
benchmark measures the stage, not Ray's start-up. Goal: >= 0.8 on >= 512 samples at 512 px.

    python -m benchmarks.ingest [--n 512] [--resolution 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from pipeline.demo_data import make_demo_data
from pipeline.ingest import IngestConfig, run_ingest
from pipeline.ray_runtime import init_ray


def bare_decode(manifest: Path) -> int:
    """The baseline: read every image of every sample and decode it; nothing else."""
    rows = 0
    for line in manifest.read_text().splitlines():
        record = json.loads(line)
        for key in ("input_image", "output_image"):
            if key in record:
                with Image.open(manifest.parent / record[key]) as image:
                    image.load()
        rows += 1
    return rows


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="paraforge-bench-"))
    manifest = make_demo_data(work / "data", n=args.n, resolution=args.resolution)
    init_ray()
    config = dict(sources=[str(manifest)], dataset="bench")
    run_ingest(IngestConfig(**config, registry=str(work / "warmup")), progress=False)  # warm workers

    bare, ingest = [], []
    for i in range(args.repeats):
        seconds, rows = timed(lambda: bare_decode(manifest))
        bare.append(rows / seconds)
        seconds, m = timed(lambda: run_ingest(IngestConfig(**config, registry=str(work / f"r{i}")), progress=False))
        assert m.counts.output == args.n and m.counts.reconciles()
        ingest.append(m.counts.input / seconds)

    bare_rate, ingest_rate = statistics.median(bare), statistics.median(ingest)
    print(f"ingest benchmark: {args.n} samples at {args.resolution} px, median of {args.repeats} runs")
    print(f"| {'path':<34} | {'rows/s':>8} | {'ratio':>5} |")
    print(f"|{'-' * 36}|{'-' * 10}|{'-' * 7}|")
    print(f"| {'bare PIL open + decode (1 core)':<34} | {bare_rate:>8.1f} | {1.0:>5.2f} |")
    print(f"| {'pipeline ingest (Ray Data)':<34} | {ingest_rate:>8.1f} | {ingest_rate / bare_rate:>5.2f} |")
    print(f"goal: ratio >= 0.8 -> {'met' if ingest_rate / bare_rate >= 0.8 else 'NOT met'}")


if __name__ == "__main__":
    main()
