"""`make demo`: the whole flow on the embedded default (a local Ray, the bundled demo data).

Runs every stage, in order, and prints where each output is. Its models are built here with random
weights in the published formats (a tiny Qwen2.5-VL, a full-size MAGVIT-v2, a tiny MMaDA and CLIP),
so the flow shows that every stage runs, not that anything learns: its outputs are noise. When a
finished `make world` is given (`--world`, the Makefile's world-run), `trainer sample` and `trainer
eval` run on the world's trained models instead (SFT + ParaRL, its MAGVIT-v2, tokenizer and CLIP,
the verifier as the judge) over the world's held-out edits, so the sample, the strip and the eval
page show learned edits."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pipeline.annotate
import pipeline.filter
import pipeline.ingest
import pipeline.score
import pipeline.tokenize
from annotators import AnnotatorConfig, BackendConfig, SamplingConfig, ValidatorConfig
from annotators.judge import JudgeConfig
from jobs.screenshot import screenshot
from jobs.tiny_models import (
    build_random_magvitv2,
    build_tiny_clip,
    build_tiny_llada_tokenizer,
    build_tiny_qwen25vl,
)
from jobs.world import eval_config, open_world
from pipeline.annotate import AnnotateConfig, report
from pipeline.config import load_config
from pipeline.demo_data import make_demo_data
from pipeline.filter import FilterConfig
from pipeline.filter import report as filter_report
from pipeline.ingest import IngestConfig, accounting_table
from pipeline.preview import preview
from pipeline.registry import DatasetRegistry
from pipeline.report import ReportConfig, write_report
from pipeline.run import run_stage
from pipeline.score import ScoreConfig
from pipeline.score import report as score_report
from pipeline.tokenize import TokenizeConfig
from pipeline.tokenize import report as tokenize_report
from schemas import SequenceConfig
from trainer.engine import OptimConfig
from trainer.eval import EvalConfig, format_summary, run_eval
from trainer.rl.reward import ClipConfig
from trainer.sample import SampleConfig, run_sample
from trainer.sampling import SamplerConfig
from trainer.sft import SFTConfig, train

# Full-size MAGVIT-v2 costs ~0.5 s per image at 128 px on 2 CPU cores (~10 s at 512 px): the demo
# tokenizes at 128 px (8 x 8 codes) to stay within minutes; real runs use 512 px on GPUs.
DEMO_TOKENIZE_RESOLUTION = 128
# The demo's VLM has random weights and writes gibberish: judge only that a trace is non-empty and
# complete, so the flow can be followed end to end. Real runs keep the default validators.
TINY_MODEL_VALIDATORS = ValidatorConfig(min_words=1, language=None,
                                        disabled=["too_long", "leakage", "refusal", "repetition"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo-run", help="folder for the demo data and registry")
    parser.add_argument("--n", type=int, default=64, help="demo samples")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--world", default=None, help="a finished `make world` folder: sample and eval its trained models")
    args = parser.parse_args()
    out = Path(args.out)
    registry = str(out / "registry")
    started = time.perf_counter()
    # Training runs resume from their folder and refuse another dataset version: a rerun of the
    # demo (after the data or the code changed) trains afresh; the registry is kept and reused.
    shutil.rmtree(out / "runs", ignore_errors=True)

    manifest_path = make_demo_data(out / "data", n=args.n, resolution=args.resolution)
    print(f"[demo-data] {args.n} samples -> {manifest_path}")

    raw = run_stage(pipeline.ingest.plan, IngestConfig(sources=[str(manifest_path)], dataset="demo", registry=registry))
    print(f"[ingest] {accounting_table(raw)}")
    print(f"[ingest] {raw.ref} in {DatasetRegistry(registry).root}")

    model = build_tiny_qwen25vl(out / "models" / "tiny-qwen2.5-vl")
    tiny_qwen = BackendConfig(kind="transformers", model=str(model), device="cpu")
    annotated = run_stage(pipeline.annotate.plan, AnnotateConfig(
        dataset=raw.ref, registry=registry,
        annotator=AnnotatorConfig(backend=tiny_qwen, sampling=SamplingConfig(max_tokens=24),
                                  validators=TINY_MODEL_VALIDATORS)))
    print(f"[annotate] tiny random Qwen2.5-VL at {model} (validators relaxed for its gibberish)")
    print("[annotate] " + report(annotated).replace("\n", "\n[annotate] "))
    print(f"[annotate] {annotated.ref} (parent {annotated.parent})")

    # The same tiny random VLM as the judge: its answers hardly ever hold a "Score: N", so nearly every
    # judgement fails (counted, never a 0), and the filter's thresholds are relaxed to let such rows
    # through; a real run judges with Qwen2.5-VL-72B and cuts with --max-failed 0.
    scored = run_stage(pipeline.score.plan, ScoreConfig(dataset=annotated.ref, registry=registry, judge=JudgeConfig(
        backend=tiny_qwen, rubrics="score-v1", sampling=SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=16))))
    print(f"[score] four axes, rubrics score-v1, judged by the tiny random Qwen2.5-VL at {model}")
    print("[score] " + score_report(scored).replace("\n", "\n[score] "))
    kept = run_stage(pipeline.filter.plan, FilterConfig(dataset=scored.ref, registry=registry, max_failed=4,
                                                        min={"reasoning_following": 10, "quality": 10}))
    print("[filter] " + filter_report(kept).replace("\n", "\n[filter] "))
    print(f"[filter] {kept.ref} (parent {kept.parent})")

    magvit = out / "models" / "magvitv2-random"
    if not (magvit / "pytorch_model.safetensors").exists():
        build_random_magvitv2(magvit)
    text_tokenizer = build_tiny_llada_tokenizer(out / "models" / "tiny-llada-tokenizer")
    tokenized = run_stage(pipeline.tokenize.plan, TokenizeConfig(
        dataset=kept.ref, registry=registry, image_tokenizer=str(magvit), text_tokenizer=str(text_tokenizer),
        resolution=DEMO_TOKENIZE_RESOLUTION, batch_size=4, cpus_per_actor=2))
    print(f"[tokenize] full-size MAGVIT-v2 with random weights (published layout) at {magvit}, "
          f"{DEMO_TOKENIZE_RESOLUTION} px")
    print("[tokenize] " + tokenize_report(tokenized).replace("\n", "\n[tokenize] "))
    previews = preview(tokenized.ref, out / "preview", n=4, registry=registry)
    print(f"[tokenize] {tokenized.ref}; decoded previews in {previews[0].parent}")

    run_dir = train(SFTConfig(
        dataset=tokenized.ref, registry=registry, init="tiny", out_dir=str(out / "runs" / "sft"),
        steps=20, save_every=10, micro_batch_size=2, bf16=False, deepspeed="ds_zero0",
        optim=OptimConfig(lr=1e-3, warmup_steps=2), sequence=SequenceConfig(instruction_len=256, reasoning_len=256)))
    first, *_, last = (json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    print(f"[sft] tiny MMaDA, 20 steps on DeepSpeed (CPU): loss {first['loss']:.2f} -> {last['loss']:.2f}, "
          f"text acc {last['text_acc']:.2f}, {last['tokens_per_s']:.0f} tokens/s")
    print(f"[sft] checkpoints in {run_dir / 'checkpoints'}; export with: trainer export {run_dir} --out DIR")

    clip = build_tiny_clip(out / "models" / "tiny-clip")
    # ParaRL on two ranks, launched as on a GPU node (torchrun); here two gloo processes on the CPU
    rl_dir = out / "runs" / "pararl"
    settings = {"dataset": tokenized.ref, "registry": registry, "model": run_dir, "image_tokenizer": magvit,
                "text_tokenizer": text_tokenizer, "clip.model": f"local-dir:{clip}", "clip.device": "cpu",
                "out_dir": rl_dir, "steps": 3, "prompts_per_step": 2, "num_generations": 2,
                "reward_stats_min_rows": 8, "micro_batch_size": 3, "optim.lr": 1e-4, "save_every": 3,
                "bf16": "false", "sampler.steps": 16, "sampler.block_length": 64}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    "-m", "trainer.cli", "rl", "--no-progress", *(w for k, v in settings.items() for w in ("--set", f"{k}={v}"))],
                   check=True, capture_output=True)
    rl_records = [json.loads(line) for line in (rl_dir / "metrics.jsonl").read_text().splitlines()]
    print(f"[rl] ParaRL on 2 ranks (torchrun, gloo): 3 steps x 2 prompts x 2 rollouts, tiny random CLIP at {clip}")
    for r in rl_records:
        print(f"[rl] step {r['step']}: reward early/middle/final {r['reward_early']:.3f}/{r['reward_middle']:.3f}/"
              f"{r['reward_final']:.3f}, kl {r['kl']:.4f}, generate {r['generate_s']:.1f}s score {r['score_s']:.1f}s "
              f"update {r['update_s']:.1f}s, {r['rollouts']} rollouts on {r['world_size']} ranks")
    print(f"[rl] checkpoints in {rl_dir / 'checkpoints'}; reward statistics in {rl_dir / 'reward_stats.json'}")

    world = Path(args.world) if args.world else None
    if world is not None and (world / "results.json").exists():
        eval_page = sample_and_eval_world(world, out)
    else:
        print("[sample] no finished world" + (f" at {world}" if world else "") + ": the random-weight models below "
              "draw noise; `make world` (~35 min on 2 cores) trains the models that draw learned edits here")
        eval_page = sample_and_eval_random(out, manifest_path, rl_dir, magvit, text_tokenizer, tiny_qwen, clip)

    page = write_report(ReportConfig(dataset=tokenized.ref, registry=registry, out=str(out / "report.html"), cards=16))
    print(f"[report] {tokenized.ref}: ancestry, quarantine, distributions, cards, diff -> {page}")
    for html_page, anchor in ((page, ""), (page, "scores"), (eval_page, "")):
        shot = screenshot(html_page, anchor)
        print(f"[report] screenshot {shot}" if shot else "[report] no screenshot: chromium is not installed")

    print(f"demo finished in {time.perf_counter() - started:.0f}s; registry: {registry}")
    print(f"latest version: {tokenized.ref}")


def sample_and_eval_random(out: Path, manifest_path: Path, rl_dir: Path, magvit: Path, text_tokenizer: Path,
                           tiny_qwen: BackendConfig, clip: Path) -> Path:
    """`trainer sample` and `trainer eval` of the demo's own ParaRL policy (random weights before 20
    + 3 steps): the commands run end to end; the pictures are noise. Returns the eval page."""
    edit = next(json.loads(line) for line in manifest_path.read_text().splitlines() if '"input_image"' in line)
    sampled = run_sample(SampleConfig(
        model=str(rl_dir), instruction=edit["instruction"], input=str(manifest_path.parent / edit["input_image"]),
        out=str(out / "sample"), image_tokenizer=str(magvit), text_tokenizer=str(text_tokenizer),
        resolution=DEMO_TOKENIZE_RESOLUTION, trajectory=True,
        sampler=SamplerConfig(steps=32, block_length=64, text_temperature=0.7)))
    print(f"[sample] parallel sampler, 32 steps, from the ParaRL policy {rl_dir}: \"{edit['instruction']}\"")
    print(f"[sample] reasoning {sampled['reasoning']}; image {sampled['image']}; trajectory strip {sampled['trajectory']}")

    # A small benchmark beside the demo data (its image paths are relative to it): 2 edits, 2 generations.
    rows = [json.loads(line) for line in manifest_path.read_text().splitlines()]
    bench = [r for r in rows if r["task"] == "edit"][:2] + [r for r in rows if r["task"] == "generate"][:2]
    bench_path = manifest_path.parent / "bench.jsonl"
    bench_path.write_text("".join(json.dumps(r) + "\n" for r in bench))
    summary = run_eval(EvalConfig(
        model=str(rl_dir), benchmark=str(bench_path), out=str(out / "eval"), image_tokenizer=str(magvit),
        text_tokenizer=str(text_tokenizer), resolution=DEMO_TOKENIZE_RESOLUTION, batch_size=4,
        sampler=SamplerConfig(steps=16, block_length=64),
        judge=JudgeConfig(backend=tiny_qwen, sampling=SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=16)),
        clip=ClipConfig(model=f"local-dir:{clip}", device="cpu")))
    print("[eval] ParaBench-style, judge: the tiny random Qwen2.5-VL (its answers hold no score, so every "
          "judgement is recorded as failed); CLIP is judge-free")
    print("[eval] " + format_summary(summary).replace("\n", "\n[eval] "))
    print(f"[eval] results in {out / 'eval' / 'results.json'}; page {out / 'eval' / 'eval.html'}")
    return out / "eval" / "eval.html"


def sample_and_eval_world(folder: Path, out: Path, n: int = 16) -> Path:
    """`trainer sample` (with its denoising strip) and `trainer eval` of a finished world's ParaRL
    model on its first `n` held-out edits, the verifier as the judge. Returns the eval page."""
    world = open_world(folder)[0]
    model = world.out / "runs" / "pararl"
    sampler = load_config(SamplerConfig, **world.cfg.sampler)
    edit = json.loads(world.bench.read_text().splitlines()[0])
    started = time.perf_counter()
    sampled = run_sample(SampleConfig(
        model=str(model), instruction=edit["instruction"], input=str(world.bench.parent / edit["input_image"]),
        out=str(out / "sample"), image_tokenizer=str(world.models["magvit"]),
        text_tokenizer=str(world.models["tokenizer"]), resolution=world.cfg.resolution, trajectory=True, sampler=sampler))
    print(f"[sample] the world's SFT + ParaRL model {model}, {sampler.steps} steps: \"{edit['instruction']}\"")
    print(f"[sample] reasoning {sampled['reasoning']}; image {sampled['image']}; trajectory strip {sampled['trajectory']}")
    summary = run_eval(eval_config(world, model, out / "eval", limit=n))
    print(f"[eval] the world's model on its first {n} held-out edits, judged by the exact verifier "
          f"({time.perf_counter() - started:.0f}s with the sample); the world's own table: {folder / 'results.json'}")
    print("[eval] " + format_summary(summary).replace("\n", "\n[eval] "))
    print(f"[eval] results in {out / 'eval' / 'results.json'}; page {out / 'eval' / 'eval.html'}")
    return out / "eval" / "eval.html"

if __name__ == "__main__":
    main()
