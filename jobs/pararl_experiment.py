"""Experiment: does ParaRL raise the reward? Demo data (64 px) -> tiny annotator -> tokenize -> SFT of
a tiny MMaDA -> `trainer rl` with a tiny random CLIP for a few dozen steps, then the mean reward per
window of steps, per recorded step (early / middle / final).

    python -m jobs.pararl_experiment --out pararl-exp [--steps 40] [--reward-at trajectory|final]

Everything has random weights except what SFT and RL learn, so the reward is an arbitrary but fixed
function of (text, image): the question is only whether the optimisation climbs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import pipeline.annotate
import pipeline.ingest
import pipeline.tokenize
from annotators import AnnotatorConfig, BackendConfig, SamplingConfig
from jobs.demo import TINY_MODEL_VALIDATORS
from jobs.tiny_models import (
    build_random_magvitv2,
    build_tiny_clip,
    build_tiny_llada_tokenizer,
    build_tiny_qwen25vl,
)
from pipeline.annotate import AnnotateConfig
from pipeline.demo_data import make_demo_data
from pipeline.ingest import IngestConfig
from pipeline.run import run_stage
from pipeline.tokenize import TokenizeConfig
from schemas import SequenceConfig
from trainer.engine import OptimConfig
from trainer.rl.pararl import RLConfig, rl_optim, rollout_sampler
from trainer.rl.pararl import train as train_rl
from trainer.rl.reward import ClipConfig
from trainer.sft import SFTConfig
from trainer.sft import train as train_sft


def prepare(out: Path) -> tuple[str, str, Path, Path, Path]:
    """-> (registry, tokenized ref, sft run, magvit folder, text tokenizer folder); reused when present."""
    registry = str(out / "registry")
    magvit, tokenizer = out / "models" / "magvitv2-random", out / "models" / "tiny-llada-tokenizer"
    ref_file, sft_run = out / "tokenized.ref", out / "runs" / "sft"
    if ref_file.exists() and (sft_run / "checkpoints").is_dir():
        return registry, ref_file.read_text(), sft_run, magvit, tokenizer
    manifest = make_demo_data(out / "data", n=48, resolution=64)
    raw = run_stage(pipeline.ingest.plan, IngestConfig(sources=[str(manifest)], dataset="exp", registry=registry),
                    progress=False)
    qwen = build_tiny_qwen25vl(out / "models" / "tiny-qwen2.5-vl")
    annotated = run_stage(pipeline.annotate.plan, AnnotateConfig(
        dataset=raw.ref, registry=registry,
        annotator=AnnotatorConfig(backend=BackendConfig(kind="transformers", model=str(qwen), device="cpu"),
                                  sampling=SamplingConfig(max_tokens=24), validators=TINY_MODEL_VALIDATORS)),
        progress=False)
    if not (magvit / "pytorch_model.safetensors").exists():
        build_random_magvitv2(magvit)
    build_tiny_llada_tokenizer(tokenizer)
    tokenized = run_stage(pipeline.tokenize.plan, TokenizeConfig(
        dataset=annotated.ref, registry=registry, image_tokenizer=str(magvit), text_tokenizer=str(tokenizer),
        resolution=64), progress=False)
    train_sft(SFTConfig(dataset=tokenized.ref, registry=registry, init="tiny", out_dir=str(sft_run),
                        steps=60, save_every=60, micro_batch_size=4, bf16=False, deepspeed="ds_zero0",
                        optim=OptimConfig(lr=2e-3, warmup_steps=2),
                        sequence=SequenceConfig(instruction_len=64, reasoning_len=64)), progress=False)
    ref_file.write_text(tokenized.ref)
    return registry, tokenized.ref, sft_run, magvit, tokenizer


def table(run: Path, window: int) -> str:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    keys = ["reward_mean", "reward_early", "reward_middle", "reward_final", "kl", "clip_fraction"]
    keys = [k for k in keys if k in records[0]]
    lines = [f"| {'steps':<9} | " + " | ".join(f"{k:>13}" for k in keys) + " |",
             f"|{'-' * 11}|" + "|".join("-" * 15 for _ in keys) + "|"]
    for start in range(0, len(records), window):
        chunk = records[start:start + window]
        means = [sum(r[k] for r in chunk) / len(chunk) for k in keys]
        steps = f"{chunk[0]['step']}-{chunk[-1]['step']}"
        lines.append(f"| {steps:<9} | " + " | ".join(f"{m:>13.4f}" for m in means) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="pararl-exp")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--reward-at", default="trajectory", choices=["trajectory", "final"])
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--sampler-steps", type=int, default=4, help="few steps: each recorded step commits more tokens")
    args = parser.parse_args()
    out = Path(args.out)
    registry, ref, sft_run, magvit, tokenizer = prepare(out)
    clip = out / "models" / "tiny-clip"
    if not (clip / "open_clip_config.json").exists():
        build_tiny_clip(clip)
    run = out / "runs" / f"rl-{args.reward_at}"
    shutil.rmtree(run, ignore_errors=True)  # a fresh run each time
    cfg = RLConfig(dataset=ref, registry=registry, model=str(sft_run), image_tokenizer=str(magvit),
                   text_tokenizer=str(tokenizer), clip=ClipConfig(model=f"local-dir:{clip}", device="cpu"),
                   out_dir=str(run), steps=args.steps, prompts_per_step=2, max_prompts=2, num_generations=8,
                   reward_at=args.reward_at,
                   reward_stats_min_rows=16, beta=0.01, mu=1, micro_batch_size=8, bf16=False, deepspeed="ds_zero0",
                   optim=dataclasses.replace(rl_optim(), lr=args.lr), save_every=args.steps, resume="none",
                   sampler=dataclasses.replace(rollout_sampler(), steps=args.sampler_steps, block_length=16,
                                               image_choice_temperature=1.0))
    train_rl(cfg, progress=True)
    print(f"ParaRL experiment: tiny policy (SFT 60 steps), tiny random CLIP, {args.steps} steps x the same 2 prompts "
          f"x 8 rollouts, {args.sampler_steps} sampler steps, reward at {args.reward_at}, lr {args.lr}")
    print(table(run, max(1, args.steps // 8)))


if __name__ == "__main__":
    main()
