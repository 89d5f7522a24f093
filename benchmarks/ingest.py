"""Ingest of a Parquet source with inline image bytes at 2K and 20K rows: driver memory and rows/s.

Goals, ratios within one run: the driver's peak RSS grows by at most 10% of the image bytes added
between the two sizes (the driver plans and counts; rows stay on the workers), and rows/s at 20K is
at least 0.9x that at 2K (no cost that grows with the dataset). Each size runs in a fresh child
process so its peak RSS is its own; the child starts the embedded Ray (separate processes, so the
child's RSS is the driver's alone) and warms it with a small ingest before measuring.

    python -m benchmarks.ingest [--rows 2000 20000] [--unit-rows 1024] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

ROW_GROUP = 256  # rows per Parquet row group, as typical exporters write; units are runs of these
TILES = 256  # distinct JPEG encodes; rows reuse them with a per-row tag (below)
SIDE = 256  # px; ~27 KB per noisy JPEG at quality 85
ROOT = Path(__file__).resolve().parents[1]
SCHEMA = pa.schema([("task", pa.string()), ("instruction", pa.string()),
                    ("input_image", pa.binary()), ("output_image", pa.binary())])


def jpeg_tiles(seed: int = 0) -> list[bytes]:
    """Smooth colour fields plus pixel noise: photo-like JPEG sizes, not flat-colour ones."""
    rng = np.random.default_rng(seed)
    tiles = []
    for _ in range(TILES):
        base = Image.fromarray(rng.integers(0, 256, (SIDE // 8, SIDE // 8, 3), np.uint8)).resize((SIDE, SIDE))
        pixels = np.clip(np.asarray(base, np.int16) + rng.integers(-24, 25, (SIDE, SIDE, 3)), 0, 255)
        out = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(out, "JPEG", quality=85)
        tiles.append(out.getvalue())
    return tiles


def tagged(jpeg: bytes, tag: bytes) -> bytes:
    """The JPEG with a comment segment (FF FE) after SOI: decodes to the same pixels, but its bytes
    (hence its sample_id) are unique per row, at no encoding cost, so dedup keeps every row."""
    return jpeg[:2] + b"\xff\xfe" + (len(tag) + 2).to_bytes(2, "big") + tag + jpeg[2:]


def make_source(path: Path, rows: int, tiles: list[bytes]) -> int:
    """An edit-pair Parquet file of `rows` rows; returns the bytes of its two image columns."""
    image_bytes = 0
    with pq.ParquetWriter(path, SCHEMA) as writer:
        for start in range(0, rows, ROW_GROUP):
            ids = range(start, min(rows, start + ROW_GROUP))
            table = pa.table({
                "task": ["edit"] * len(ids),
                "instruction": [f"make the colours of picture {i} warmer" for i in ids],
                "input_image": [tagged(tiles[i % TILES], b"in %d" % i) for i in ids],
                "output_image": [tagged(tiles[(i * 7 + 1) % TILES], b"out %d" % i) for i in ids],
            }, schema=SCHEMA)
            image_bytes += sum(pc.sum(pc.binary_length(table[c])).as_py() for c in ("input_image", "output_image"))
            writer.write_table(table, row_group_size=ROW_GROUP)
    return image_bytes


def proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure(source: str, warm: str, registry: str, unit_rows: int, batch_size: int) -> None:
    """Child process: one timed ingest; prints a JSON line with rows, seconds and driver RSS."""
    import pipeline.ingest
    from pipeline.ingest import IngestConfig
    from pipeline.ray_runtime import init_ray
    from pipeline.run import run_stage

    config = dict(unit_rows=unit_rows, batch_size=batch_size)
    init_ray()
    run_stage(pipeline.ingest.plan, IngestConfig(sources=[warm], dataset="warm", registry=f"{registry}/warm", **config),
              progress=False)
    # Reset the high-water mark (Linux >= 4.0) so the peak is this ingest's, not Ray's start-up.
    Path("/proc/self/clear_refs").write_text("5")
    start_rss = proc_status_kib("VmRSS")
    started = time.perf_counter()
    m = run_stage(pipeline.ingest.plan, IngestConfig(sources=[source], dataset="bench", registry=f"{registry}/bench",
                                                     **config), progress=False)
    seconds = time.perf_counter() - started
    print(json.dumps({"rows": m.counts.input, "ok": m.counts.reconciles() and m.counts.output == m.counts.input,
                      "seconds": seconds, "units": m.stats["units"], "start_kib": start_rss,
                      "peak_kib": proc_status_kib("VmHWM")}))


def run_child(*args: object) -> dict:
    code = "import sys; from benchmarks.ingest import measure; measure(*sys.argv[1:4], *map(int, sys.argv[4:]))"
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"measuring {args[0]} failed:\n{done.stderr[-4000:]}")
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs=2, default=[2_000, 20_000])
    parser.add_argument("--unit-rows", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="paraforge-bench-ingest-"))
    try:
        tiles = jpeg_tiles()
        make_source(work / "warm.parquet", ROW_GROUP, jpeg_tiles(seed=1))
        runs = []
        for rows in args.rows:  # the smaller source is the larger one's first rows (same generator)
            image_bytes = make_source(work / f"{rows}.parquet", rows, tiles)
            result = run_child(work / f"{rows}.parquet", work / "warm.parquet", work / f"registry-{rows}",
                               args.unit_rows, args.batch_size)
            runs.append({**result, "image_bytes": image_bytes, "growth_kib": result["peak_kib"] - result["start_kib"]})
    finally:
        shutil.rmtree(work, ignore_errors=True)

    mib = lambda kib: f"{kib / 1024:.0f}"  # noqa: E731
    print(f"ingest benchmark: Parquet, inline JPEG edit pairs ({SIDE} px), row groups of {ROW_GROUP}, "
          f"unit_rows {args.unit_rows}, batch_size {args.batch_size}")
    print("| rows   | units | image MiB | seconds | rows/s | RSS start MiB | RSS peak MiB | growth MiB | counts |")
    print("|--------|-------|-----------|---------|--------|---------------|--------------|------------|--------|")
    for r in runs:
        print(f"| {r['rows']:>6} | {r['units']:>5} | {r['image_bytes'] / 2**20:>9.0f} | {r['seconds']:>7.1f} | "
              f"{r['rows'] / r['seconds']:>6.0f} | {mib(r['start_kib']):>13} | {mib(r['peak_kib']):>12} | "
              f"{mib(r['growth_kib']):>10} | {'ok' if r['ok'] else 'BAD':>6} |")
    small, large = runs
    memory = (large["growth_kib"] - small["growth_kib"]) * 1024 / (large["image_bytes"] - small["image_bytes"])
    speed = (large["rows"] / large["seconds"]) / (small["rows"] / small["seconds"])
    print(f"driver peak-RSS growth / added image bytes = {memory:.3f}  (goal <= 0.10) -> "
          f"{'PASS' if memory <= 0.10 else 'FAIL'}")
    print(f"rows/s {large['rows']} / rows/s {small['rows']} = {speed:.2f}  (goal >= 0.9) -> "
          f"{'PASS' if speed >= 0.9 else 'FAIL'}")
    if not all(r["ok"] for r in runs):
        print("counts do NOT reconcile (output != rows): see the counts column")


if __name__ == "__main__":
    main()
