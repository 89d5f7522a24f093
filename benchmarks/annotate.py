"""`pipeline annotate` (openai backend) against a bare asyncio loop of the `openai` client sending the
same payloads to the same instant local OpenAI-compatible server, in one run.

The ratio (annotate requests/s / bare requests/s) says whether the pipeline around the client costs
anything; the absolute rate says whether a client on 2 cores can keep a GPU fleet busy. Goal: ratio
>= 0.9 and >= 200 requests/s with 512 px images. Ray starts and warms up before timing.

    python -m benchmarks.annotate [--n 512] [--resolution 512] [--concurrency 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import openai

from annotators.annotator import Sample, attempt_seed
from annotators.openai_backend import OpenAIConfig
from annotators.prompts import load_prompts
from pipeline.annotate import AnnotateConfig, run_annotate
from pipeline.demo_data import make_demo_data
from pipeline.ingest import IngestConfig, run_ingest
from pipeline.ray_runtime import init_ray
from pipeline.registry import DatasetRegistry
from tests.servers import free_port, wait_http


async def bare_loop(base_url: str, payloads: list[list[dict]], seeds: list[int], concurrency: int) -> None:
    """The baseline: the official async client, a semaphore, nothing else."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0)
    limit = asyncio.Semaphore(concurrency)

    async def one(messages, seed):
        async with limit:
            r = await client.chat.completions.create(model="fake", messages=messages, temperature=0.7,
                                                     top_p=0.9, max_tokens=512, seed=seed)
            assert r.choices[0].message.content

    await asyncio.gather(*(one(m, s) for m, s in zip(payloads, seeds)))
    await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight, both paths")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="paraforge-bench-annotate-"))
    port = free_port()
    server = subprocess.Popen([sys.executable, str(ROOT / "tests/fake_openai_server.py"), "--port", str(port)])
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 30, server)
        init_ray()
        manifest = make_demo_data(work / "data", n=args.n, resolution=args.resolution)
        raw = run_ingest(IngestConfig(sources=[str(manifest)], dataset="bench", registry=str(work / "reg")),
                         progress=False)
        rows = DatasetRegistry(str(work / "reg")).read_table(raw).to_pylist()
        prompts = load_prompts()
        samples = [Sample(r["sample_id"], r["task"], r["instruction"], r["input_image"], r["output_image"]) for r in rows]
        payloads = [prompts[s.task].messages(s.instruction, [i for i in (s.input_image, s.output_image) if i])
                    for s in samples]
        seeds = [attempt_seed(0, s.sample_id, 0) for s in samples]

        def annotate(i: int) -> float:
            cfg = AnnotateConfig(dataset=f"bench@{raw.version}", output=f"out{i}", registry=str(work / "reg"),
                                 backend="openai", model="fake", batch_size=128, concurrency=2,
                                 # two tasks, each with half the requests in flight: the same total as the bare loop
                                 openai=OpenAIConfig(base_url=base_url, concurrency=args.concurrency // 2))
            start = time.perf_counter()
            m = run_annotate(cfg, progress=False)
            assert m.counts.output == args.n, m.stats
            return args.n / (time.perf_counter() - start)

        def bare() -> float:
            start = time.perf_counter()
            asyncio.run(bare_loop(base_url, payloads, seeds, args.concurrency))
            return args.n / (time.perf_counter() - start)

        annotate(-1)  # warm-up: actor start, first imports
        bare_rates, annotate_rates = [], []
        for i in range(args.repeats):
            bare_rates.append(bare())
            annotate_rates.append(annotate(i))
    finally:
        server.terminate()
    b, a = statistics.median(bare_rates), statistics.median(annotate_rates)
    print(f"annotate benchmark: {args.n} samples at {args.resolution} px, {args.concurrency} in flight, "
          f"median of {args.repeats}")
    print(f"| {'path':<40} | {'requests/s':>10} | {'ratio':>5} |")
    print(f"|{'-' * 42}|{'-' * 12}|{'-' * 7}|")
    print(f"| {'bare asyncio loop, openai client':<40} | {b:>10.1f} | {1.0:>5.2f} |")
    print(f"| {'pipeline annotate --backend openai':<40} | {a:>10.1f} | {a / b:>5.2f} |")
    print(f"goal: ratio >= 0.9 and >= 200 requests/s -> {'met' if a / b >= 0.9 and a >= 200 else 'NOT met'}")


if __name__ == "__main__":
    main()
