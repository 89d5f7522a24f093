"""ParaRL rollout throughput with 1 vs 2 Ray rollout actors (one CPU each), in one run, and the time
split of a short `trainer rl` run (rollout / reward / learner).

Throughput: the same 16 rollouts (64 px edits, 16 sampler steps, 3 recorded steps) on one actor as
two batches of 8, then on two actors as one batch of 8 each. Goal: 2 actors >= 0.85 x twice one.
The split runs 4 ParaRL steps on a synthetic tokenized version with random MAGVIT-v2, a tiny CLIP
and a random policy.

    python -m benchmarks.rl [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
import torch

from jobs.tiny_models import (
    build_random_magvitv2,
    build_tiny_clip,
    build_tiny_llada_tokenizer,
)
from pipeline.ray_runtime import init_ray
from pipeline.registry import DatasetRegistry
from pipeline.tokenize import load_text_tokenizer
from schemas import Counts, SequenceConfig, TokenLayout, tokenized_schema
from trainer.model import MMaDAConfig, MMaDAModel
from trainer.rl.pararl import RLConfig, RLOptimConfig, RolloutSamplerConfig, train
from trainer.rl.reward import ClipConfig
from trainer.rl.workers import RolloutWorker
from trainer.sampling import Prompt
from trainer.sequence import SequenceBuilder

MODEL = {"d_model": 256, "n_heads": 4, "n_layers": 4, "mlp_hidden_size": 768}
CODES, INSTRUCTION, REASONING = 16, 128, 128


def synthetic_version(root: str, n: int = 64, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    rows = [{"sample_id": f"{i:064x}", "task": "edit", "instruction_ids": rng.integers(0, 700, 20).tolist(),
             "reasoning_ids": rng.integers(0, 700, 60).tolist(), "input_image_codes": rng.integers(0, 8192, CODES).tolist(),
             "output_image_codes": rng.integers(0, 8192, CODES).tolist(), "grid_h": 4, "grid_w": 4,
             "instruction_len": 20, "reasoning_len": 60} for i in range(n)]
    with DatasetRegistry(root).writer("bench", "tokenize", tokenized_schema(CODES)) as writer:
        writer.write(pa.Table.from_pylist(rows, schema=tokenized_schema(CODES)))
        return writer.publish(Counts(n, n, 0, 0), {"command": "benchmark"}).ref


def rollout_throughput(model: MMaDAModel, builder: SequenceBuilder, repeats: int) -> tuple[float, float]:
    sampler = RolloutSamplerConfig(steps=16, image_tokens=CODES, block_length=32)
    actor = ray.remote(RolloutWorker).options(num_cpus=1)
    actors = [actor.remote(model.config.to_dict(), builder.to_dict(), sampler, 1) for _ in range(2)]
    state = ray.put({k: v.detach() for k, v in model.state_dict().items()})
    ray.get([a.set_weights.remote(state, 0) for a in actors])
    prompts = [Prompt("edit", list(range(5, 25)), [(i * 31 + j) % 8192 for j in range(CODES)]) for i in range(8)]
    seeds, record = list(range(8)), [[4, 9, 15]] * 8

    def one_actor() -> None:  # 16 rollouts, two batches back to back
        ray.get(actors[0].rollout.remote(prompts, seeds, record))
        ray.get(actors[0].rollout.remote(prompts, seeds, record))

    def two_actors() -> None:  # the same 16 rollouts, one batch on each actor at once
        ray.get([a.rollout.remote(prompts, seeds, record) for a in actors])

    results = []
    for fn in (one_actor, two_actors):
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        results.append(16 / statistics.median(times))
    for a in actors:
        ray.kill(a)
    return results[0], results[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="paraforge-bench-rl-"))
    tokenizer = build_tiny_llada_tokenizer(work / "tok")
    text = load_text_tokenizer(str(tokenizer))
    layout = TokenLayout.from_tokenizer(text, len(text) + 8192)
    builder = SequenceBuilder(layout, SequenceConfig(instruction_len=INSTRUCTION, reasoning_len=REASONING))
    torch.manual_seed(0)
    model = MMaDAModel(MMaDAConfig(**MODEL, embedding_size=layout.vocab_size, vocab_size=layout.text_vocab_size))
    init_ray()
    one, two = rollout_throughput(model, builder, args.repeats)

    model.save_pretrained(work / "policy")
    builder.save(work / "policy")  # how the policy reads sequences, as an export carries it
    ref = synthetic_version(str(work / "reg"))
    cfg = RLConfig(dataset=ref, registry=str(work / "reg"), model=str(work / "policy"),
                   image_tokenizer=str(build_random_magvitv2(work / "magvit")), text_tokenizer=str(tokenizer),
                   clip=ClipConfig(model=f"local-dir:{build_tiny_clip(work / 'clip')}"), out_dir=str(work / "run"),
                   steps=args.steps, prompts_per_step=2, num_generations=4, reward_stats_min_rows=8,
                   micro_batch_size=8, rollout_workers=2, optim=RLOptimConfig(lr=1e-4), save_every=10**6,
                   sampler=RolloutSamplerConfig(steps=16, block_length=32))
    train(cfg, progress=False)
    records = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()][1:]
    split = {k: statistics.median(r[k] for r in records) for k in ("rollout_s", "reward_s", "learner_s")}
    total = sum(split.values())

    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"rl benchmark: {n_params:.1f}M-parameter policy, 16 rollouts of 64 px edits (16 steps, 3 recorded), "
          f"1 CPU and 1 thread per actor, median of {args.repeats}")
    print(f"| {'rollout actors':<16} | {'rollouts/s':>10} | {'x one actor':>11} |")
    print(f"|{'-' * 18}|{'-' * 12}|{'-' * 13}|")
    print(f"| {'1':<16} | {one:>10.2f} | {1.0:>11.2f} |")
    print(f"| {'2':<16} | {two:>10.2f} | {two / one:>11.2f} |")
    scaling = two / (2 * one)
    print(f"scaling: {scaling:.2f} x linear; goal >= 0.85 -> {'met' if scaling >= 0.85 else 'NOT met'}")
    print(f"time split of a ParaRL step (median of steps 2-{args.steps}; 2 prompts x 4 rollouts, 2 rollout actors):")
    print(f"| {'phase':<28} | {'seconds':>8} | {'share':>6} |")
    print(f"|{'-' * 30}|{'-' * 10}|{'-' * 8}|")
    for name, key in (("rollouts (sampler on actors)", "rollout_s"), ("rewards (MAGVIT + CLIP)", "reward_s"),
                      ("learner (GRPO, DeepSpeed)", "learner_s")):
        print(f"| {name:<28} | {split[key]:>8.2f} | {split[key] / total:>6.1%} |")


if __name__ == "__main__":
    main()
