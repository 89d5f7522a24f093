"""The paper's RL ablation in miniature, on a finished `make world`:

    python -m jobs.world_ablation [--world world-run] [--set key=value ...]   (keys: AblationConfig)

From the world's SFT model, `trainer rl` with the world's CLIP as the reward, at equal steps and
rollouts, for several seeds: the trajectory-level reward (ParaRL: the reward taken at `reward_steps`
points of each rollout's denoising) against the output-only reward (`reward_at=final`). Each run's
last checkpoint is judged by the verifier on the world's held-out prompts; the table gives each
arm's mean and spread (sample standard deviation over seeds) beside the SFT model it started from.
The CLIP reward is the one the policy was paid; the verifier's consistency and edit accuracy are
measured apart from it, so a reward that rises while they do not shows as such.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

from jobs.world import World, WorldConfig, format_table, run_rl
from pipeline.config import load_config
from pipeline.registry import DatasetRegistry

ARMS = ("trajectory", "final")
COLUMNS = {"clip reward, steps 1-5": "clip_first", "clip reward, last 5": "clip_last", "edit accuracy": "edit_accuracy",
           "kept cells": "kept_cells", "reasoning correct": "reasoning_correct",
           "text-image consistency": "consistency"}


@dataclasses.dataclass(kw_only=True)
class AblationConfig:
    world: str = "world-run"  # a folder `make world` finished (its results.json, models, data, SFT run)
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    arms: list[str] = dataclasses.field(default_factory=lambda: list(ARMS))
    rl_steps: int | None = None  # default: the world's own
    rl: dict = dataclasses.field(default_factory=dict)  # RLConfig overrides for every run

    def __post_init__(self) -> None:
        unknown = set(self.arms) - set(ARMS)
        if unknown:
            raise ValueError(f"arms must be among {ARMS}, not {sorted(unknown)}")
        if not self.seeds:
            raise ValueError("seeds: at least one")


def open_world(folder: str | Path) -> tuple[World, str, Path, dict]:
    """A finished world, as `make world` left it: (World, its tokenized dataset, its SFT run, the SFT
    model's verifier scores)."""
    out = Path(folder)
    results_path = out / "results.json"
    if not results_path.exists():
        raise FileNotFoundError(f"{results_path} not found: run `make world` (python -m jobs.world --out {out}) first")
    results = json.loads(results_path.read_text())
    cfg = load_config(WorldConfig, **{**results["config"], "out": str(out)})
    models = {name: out / "models" / name for name in ("tokenizer", "magvit", "clip")}
    world = World(cfg, out, str(out / "registry"), models, out / "bench" / "bench.jsonl")
    dataset = DatasetRegistry(world.registry).resolve("world", schema="tokenized/1").ref
    return world, dataset, out / "runs" / "sft", results["sft_curve"][-1]


def clip_rewards(run_dir: Path, n: int = 5) -> dict[str, float]:
    """The CLIP reward at the rollouts' last denoising step, averaged over the run's first and last `n`
    steps: the same quantity in both arms (the trajectory arm is also paid at earlier steps)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"clip_first": statistics.fmean(r["reward_final"] for r in rows[:n]),
            "clip_last": statistics.fmean(r["reward_final"] for r in rows[-n:])}


def run_ablation(cfg: AblationConfig, world: World, dataset: str, sft_dir: Path, sft_scores: dict) -> dict:
    """Every (seed, arm) run from the SFT model at `sft_dir`, each judged at its last step."""
    steps = cfg.rl_steps or world.cfg.rl_steps
    # one evaluation per run, at its last step
    world = dataclasses.replace(world, cfg=dataclasses.replace(world.cfg, rl_steps=steps, rl_eval_every=steps,
                                                               rl={**world.cfg.rl, **cfg.rl}))
    runs = []
    for seed in cfg.seeds:
        for arm in cfg.arms:
            name = f"ablation-{arm}-seed{seed}"
            started = time.perf_counter()
            run_dir, curve = run_rl(world, dataset, sft_dir, sft_scores, name=name, seed=seed, reward_at=arm)
            runs.append({"arm": arm, "seed": seed, "run": str(run_dir), **clip_rewards(run_dir),
                         "seconds": round(time.perf_counter() - started), **curve[-1]})
    return {"config": dataclasses.asdict(cfg), "steps": steps, "sft": sft_scores, "runs": runs,
            "table": ablation_table(runs, sft_scores, steps)}


def ablation_table(runs: list[dict], sft_scores: dict, steps: int) -> dict:
    """{header, rows}: one row per arm, each column `mean ± std (n)` over its seeds."""
    def spread(values: list[float]) -> str:
        values = [v for v in values if v is not None]
        if not values:
            return "-"
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.3f} ± {std:.3f} ({len(values)})"

    rows = [["SFT (start)"] + ["-" if sft_scores.get(k) is None else f"{sft_scores[k]:.3f}" for k in COLUMNS.values()]]
    for arm in dict.fromkeys(r["arm"] for r in runs):
        label = f"+ {steps} steps, " + ("trajectory reward (ParaRL)" if arm == "trajectory" else "output-only reward")
        rows.append([label] + [spread([r.get(k) for r in runs if r["arm"] == arm]) for k in COLUMNS.values()])
    return {"header": ["model", *COLUMNS], "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", default=None, help="the world's folder (default world-run)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an AblationConfig override")
    args = parser.parse_args()
    cfg = load_config(AblationConfig, None, args.set, world=args.world)
    started = time.perf_counter()
    result = run_ablation(cfg, *open_world(cfg.world))
    out = Path(cfg.world) / "ablation.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    print("\nParaRL ablation (verifier on held-out prompts; mean ± sample std over seeds)\n"
          + format_table(result["table"]["header"], result["table"]["rows"]))
    print(f"ablation finished in {time.perf_counter() - started:.0f}s; results in {out}")


if __name__ == "__main__":
    main()
