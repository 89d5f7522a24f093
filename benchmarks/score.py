"""`pipeline score` against a bare client loop sending the same judge requests, in one run.

Scoring makes about four requests per row (three for a generation: consistency does not apply).
The baseline is the official async `openai` client with a semaphore and nothing else, sending the
exact payloads `pipeline score` sends (built before its clock starts, so the baseline does less
work than the pipeline, which also reads the rows, downscales and encodes the images, parses the
answers, writes the shards and publishes). Two servers, the scripted judge of the tests:

instant: answers at once, so the client side is the bottleneck: the worst case for the pipeline's
  own overhead.
paced: answers after `--model-s` seconds, as a model does: rows/s is then set by requests in
  flight, which shows whether the pipeline keeps as many in flight as the bare loop.

The pipeline runs as one Ray task with all the requests in flight (the bare loop's shape: one
process, one event loop) and as two tasks with half each (what --concurrency 2 does: a second
process, so on the instant server it may beat the single-process bare loop, which is then bound by
its one core). Goal: pipeline rows/s >= 0.9x the bare loop's on both servers, in both shapes. Ray
starts and one score run warms it up before any timing; the paths alternate over the repeats.

    python -m benchmarks.score [--n 512] [--resolution 512] [--concurrency 64] [--repeats 3] [--model-s 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai

import pipeline.annotate
import pipeline.ingest
import pipeline.score
from annotators import AnnotatorConfig, BackendConfig
from annotators.judge import JudgeItem, Rubrics
from annotators.openai_backend import OpenAIConfig
from pipeline.annotate import AnnotateConfig
from pipeline.demo_data import make_demo_data
from pipeline.ingest import IngestConfig
from pipeline.ray_runtime import init_ray
from pipeline.registry import DatasetRegistry
from pipeline.run import run_stage
from pipeline.score import ScoreConfig, curation_judge
from schemas import SCORE_AXES
from tests.helpers import free_port, wait_http

ROOT = Path(__file__).resolve().parents[1]


async def bare_loop(base_url: str, requests: list, concurrency: int) -> None:
    """The baseline: the official async client, a semaphore, nothing else."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0)
    limit = asyncio.Semaphore(concurrency)

    async def one(request):
        async with limit:
            r = await client.chat.completions.create(model="judge", messages=request.messages, temperature=0.0,
                                                     top_p=1.0, max_tokens=512, seed=request.seed)
            assert r.choices[0].message.content

    await asyncio.gather(*(one(r) for r in requests))
    await client.close()


def judge_requests(registry: DatasetRegistry, ref: str) -> list:
    """Every request `pipeline score` sends for the version's rows, as its Judge builds them."""
    from annotators.judge import Judge

    judge = Judge(backend=None, rubrics=Rubrics.load("score-v1", SCORE_AXES), sampling=curation_judge().sampling)
    fields = ["sample_id", "task", "instruction", "reasoning", "output_image", "input_image"]
    requests = []
    for row in registry.read_table(registry.resolve(ref), fields).to_pylist():
        item = JudgeItem(**row)
        urls = judge.image_urls(item)
        requests += [judge.request(item, axis, urls) for axis in judge.rubrics.dimensions
                     if judge.applies(axis, item.task)]
    return requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight, both paths")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-s", type=float, default=0.5, help="the paced server's seconds per answer")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="paraforge-bench-score-"))
    ports = {name: free_port() for name in ("annotator", "instant", "paced")}
    procs = [subprocess.Popen([sys.executable, str(ROOT / "tests/fake_openai_server.py"), "--port", str(ports["annotator"])]),
             subprocess.Popen([sys.executable, str(ROOT / "tests/fake_judge_server.py"), "--port", str(ports["instant"])]),
             subprocess.Popen([sys.executable, str(ROOT / "tests/fake_judge_server.py"), "--port", str(ports["paced"]),
                               "--delay-s", str(args.model_s)])]
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    try:
        for name, proc in zip(url, procs):
            wait_http(f"{url[name]}/health", 30, proc)
        init_ray()
        root = str(work / "reg")
        data = make_demo_data(work / "data", n=args.n, resolution=args.resolution)
        run_stage(pipeline.ingest.plan, IngestConfig(sources=[str(data)], dataset="bench", registry=root), progress=False)
        annotator = BackendConfig(kind="openai", model="fake", openai=OpenAIConfig(base_url=f"{url['annotator']}/v1"))
        annotated = run_stage(pipeline.annotate.plan, AnnotateConfig(
            dataset="bench", registry=root, annotator=AnnotatorConfig(backend=annotator)), progress=False)
        registry = DatasetRegistry(root)
        requests = judge_requests(registry, annotated.ref)

        def score(server: str, output: str, tasks: int) -> float:
            # `tasks` Ray tasks, each with its share of the requests in flight: the bare loop's total
            pace = OpenAIConfig(base_url=f"{url[server]}/v1", concurrency=args.concurrency // tasks)
            judge = BackendConfig(kind="openai", model="judge", openai=pace)
            cfg = ScoreConfig(dataset=annotated.ref, output=output, registry=root, concurrency=tasks,
                              judge=dataclasses.replace(curation_judge(), backend=judge))
            start = time.perf_counter()
            manifest = run_stage(pipeline.score.plan, cfg, progress=False)
            seconds = time.perf_counter() - start
            assert manifest.counts.output == args.n and manifest.stats["requests"] == len(requests), manifest.stats
            assert all(a["failed"] == 0 for a in manifest.stats["axes"].values()), manifest.stats["axes"]
            return args.n / seconds

        def bare(server: str) -> float:
            start = time.perf_counter()
            asyncio.run(bare_loop(f"{url[server]}/v1", requests, args.concurrency))
            return args.n / (time.perf_counter() - start)

        score("instant", "warm-up", 2)  # Ray Data's first dataset, worker imports
        print(f"score benchmark: {args.n} annotated rows at {args.resolution} px, {len(requests)} judge requests "
              f"({len(requests) / args.n:.2f} per row), {args.concurrency} in flight, median of {args.repeats}")
        print(f"| {'server':<22} | {'path':<40} | {'rows/s':>7} | {'requests/s':>10} | {'ratio':>5} |")
        print(f"|{'-' * 24}|{'-' * 42}|{'-' * 9}|{'-' * 12}|{'-' * 7}|")
        verdicts = []
        per_row = len(requests) / args.n
        for server, label in (("instant", "instant"), ("paced", f"paced ({args.model_s} s/answer)")):
            rates: dict[str, list[float]] = {"bare": [], "1 task": [], "2 tasks": []}
            for i in range(args.repeats):
                rates["bare"].append(bare(server))
                rates["1 task"].append(score(server, f"{server}-1-{i}", 1))
                rates["2 tasks"].append(score(server, f"{server}-2-{i}", 2))
            b = statistics.median(rates["bare"])
            print(f"| {label:<22} | {'bare asyncio loop, openai client':<40} | {b:>7.1f} | {b * per_row:>10.1f} | {1.0:>5.2f} |")
            for tasks in ("1 task", "2 tasks"):
                r = statistics.median(rates[tasks])
                print(f"| {label:<22} | {'pipeline score --backend openai, ' + tasks:<40} | {r:>7.1f} | "
                      f"{r * per_row:>10.1f} | {r / b:>5.2f} |")
                verdicts.append(r / b >= 0.9)
        print(f"goal: pipeline >= 0.9x the bare loop on both servers -> {'met' if all(verdicts) else 'NOT met'}")
    finally:
        for proc in procs:
            proc.terminate()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
