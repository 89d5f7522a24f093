"""ParaRL steps/s on 1 and 2 data-parallel ranks (torchrun, gloo, CPU, one thread per rank) in one
run, the generate / score / update split of a step, and the peak memory of one rollout batch with
logits at the output positions only (the sampler now) against full logits (as before).

Weak scaling: each rank draws the same number of prompt groups per step (2 prompts x 4 rollouts),
so two ranks do twice the work of one in a step; goal: 2-rank rollouts/s >= 0.85 x twice 1-rank.
Both runs use a synthetic tokenized version, random MAGVIT-v2, a tiny CLIP and a random policy.

    python -m benchmarks.rl [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from jobs.tiny_models import build_random_magvitv2, build_tiny_clip, build_tiny_llada_tokenizer
from pipeline.registry import DatasetRegistry
from pipeline.tokenize import load_text_tokenizer
from schemas import Counts, SequenceConfig, TokenLayout, tokenized_schema
from trainer.model import MMaDAConfig, MMaDAModel
from trainer.model_io import save_model
from trainer.rl.rollout import generate
from trainer.sampling import ParallelSampler, Prompt, SamplerConfig
from trainer.sequence import SequenceBuilder

MODEL = {"d_model": 256, "n_heads": 4, "n_layers": 4, "mlp_hidden_size": 768}
CODES, INSTRUCTION, REASONING = 16, 128, 128


def synthetic_version(root: str, n: int = 64, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    rows = [{"sample_id": f"{i:064x}", "task": "edit", "instruction_ids": rng.integers(0, 400, 20).tolist(),
             "reasoning_ids": rng.integers(0, 400, 60).tolist(), "input_image_codes": rng.integers(0, 8192, CODES).tolist(),
             "output_image_codes": rng.integers(0, 8192, CODES).tolist(), "grid_h": 4, "grid_w": 4,
             "instruction_len": 20, "reasoning_len": 60} for i in range(n)]
    with DatasetRegistry(root).writer("bench", "tokenize", tokenized_schema(CODES)) as writer:
        writer.write(pa.Table.from_pylist(rows, schema=tokenized_schema(CODES)))
        return writer.publish(Counts(n, n, 0, 0), {"command": "benchmark"}).ref


def run_ranks(ranks: int, settings: dict, out: Path) -> list[dict]:
    """`trainer rl` on `ranks` gloo processes of one thread each; its metrics lines."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
                "-m", "trainer.cli", "rl", "--no-progress"]
    values = {**settings, "out_dir": out, "prompts_per_step": 2 * ranks}
    subprocess.run([*launcher, *(w for k, v in values.items() for w in ("--set", f"{k}={v}"))], check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


class _FullLogits(torch.nn.Module):
    """The policy as the sampler used it before: full [B, L, V] logits, sliced afterwards."""

    def __init__(self, model: MMaDAModel):
        super().__init__()
        self.model = model

    def forward(self, ids, attention, heads):
        logits = self.model(ids, attention)
        rows = torch.arange(ids.shape[0])[:, None]
        return [logits[rows, h.positions, h.lo:h.hi] for h in heads]


def rollout_peak_bytes(model: torch.nn.Module, builder: SequenceBuilder) -> int:
    """The peak of live tensor bytes during one batch of 8 rollouts: torch's profiler records every
    CPU allocation and free, summed in time order (exact for tensors, unlike a process's RSS)."""
    sampler = ParallelSampler(model, builder, SamplerConfig(steps=4, image_tokens=CODES, block_length=32,
                                                            text_temperature=1.0, image_cfg_scale=0.0))
    prompts = [Prompt("edit", list(range(5, 25)), [(i * 31 + j) % 8192 for j in range(CODES)]) for i in range(8)]
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.no_grad(), torch.profiler.profile(activities=activities, profile_memory=True) as profile:
        generate(sampler, prompts, list(range(8)), [[1, 2, 3]] * 8)
    live = peak = 0
    for _, change in sorted((e.time_range.start, e.self_cpu_memory_usage) for e in profile.events()
                            if e.self_cpu_memory_usage):
        live += change
        peak = max(peak, live)
    return peak


def policy_and_builder(work: Path) -> tuple[MMaDAModel, SequenceBuilder]:
    tokenizer = work / "tok"
    if not tokenizer.exists():
        build_tiny_llada_tokenizer(tokenizer)
    text = load_text_tokenizer(str(tokenizer))
    layout = TokenLayout.from_tokenizer(text, len(text) + 8192)
    builder = SequenceBuilder(layout, SequenceConfig(instruction_len=INSTRUCTION, reasoning_len=REASONING))
    torch.manual_seed(0)
    return MMaDAModel(MMaDAConfig(**MODEL, embedding_size=layout.vocab_size, vocab_size=layout.text_vocab_size)), builder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="paraforge-bench-rl-"))
    model, builder = policy_and_builder(work)
    tokenizer = work / "tok"
    save_model(model, work / "policy")
    builder.save(work / "policy")  # how the policy reads sequences, as an export carries it
    ref = synthetic_version(str(work / "reg"))
    settings = {"dataset": ref, "registry": work / "reg", "model": work / "policy",
                "image_tokenizer": build_random_magvitv2(work / "magvit"), "text_tokenizer": tokenizer,
                "clip.model": f"local-dir:{build_tiny_clip(work / 'clip')}", "steps": args.steps,
                "num_generations": 4, "reward_stats_min_rows": 8, "micro_batch_size": 8, "optim.lr": 1e-4,
                "save_every": 10**6, "bf16": "false", "deepspeed": "ds_zero2", "sampler.steps": 16,
                "sampler.block_length": 32}
    runs = {}
    for ranks in (1, 2):
        records = run_ranks(ranks, settings, work / f"run-{ranks}")[1:]  # step 1 warms up
        split = {k: statistics.median(r[k] for r in records) for k in ("generate_s", "score_s", "update_s")}
        runs[ranks] = (records[0]["rollouts"], split)

    lean, full = rollout_peak_bytes(model, builder), rollout_peak_bytes(_FullLogits(model), builder)
    width = len(builder.prefix("edit", list(range(5, 25)), list(range(CODES)))) + CODES + 2 + REASONING
    logits = 8 * width * builder.layout.vocab_size * 4

    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"rl benchmark: {n_params:.1f}M-parameter policy, 64 px edits (16 steps, 3 recorded), per rank 2 prompts x "
          f"4 rollouts, fp32, gloo, 1 thread per rank; median of steps 2-{args.steps}")
    print(f"| {'ranks':<5} | {'rollouts/step':>13} | {'step s':>7} | {'rollouts/s':>10} | {'x linear':>8} | "
          f"{'generate':>8} | {'score':>6} | {'update':>6} |")
    print(f"|{'-' * 7}|{'-' * 15}|{'-' * 9}|{'-' * 12}|{'-' * 10}|{'-' * 10}|{'-' * 8}|{'-' * 8}|")
    base = None
    for ranks, (rollouts, split) in runs.items():
        step = sum(split.values())
        rate = rollouts / step
        base = base or rate
        print(f"| {ranks:<5} | {rollouts:>13} | {step:>7.2f} | {rate:>10.2f} | {rate / (base * ranks):>8.2f} | "
              f"{split['generate_s'] / step:>8.0%} | {split['score_s'] / step:>6.0%} | {split['update_s'] / step:>6.0%} |")
    rollouts, split = runs[2]
    scaling = rollouts / sum(split.values()) / (2 * base)
    print(f"scaling: {scaling:.2f} x linear; goal >= 0.85 -> {'met' if scaling >= 0.85 else 'NOT met'}")
    print(f"peak live tensor memory of one rollout batch (8 rollouts, 4 steps, torch profiler): full logits "
          f"{full / 2**20:.1f} MiB -> output positions and vocabulary slices {lean / 2**20:.1f} MiB "
          f"({lean / full:.2f} x); one forward's full logits are [8, {width}, {builder.layout.vocab_size}] fp32 = "
          f"{logits / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
