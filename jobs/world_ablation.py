"""The paper's ablations in miniature, on a finished `make world`:

    python -m jobs.world_ablation [--world world-run] [--set key=value ...]   (keys: AblationConfig)

Two studies, each at equal steps for several seeds, every run judged by the verifier on the world's
held-out prompts; the table gives each arm's mean and spread (sample standard deviation over seeds).
- `study=rl`: from the world's SFT model, `trainer rl` with the world's CLIP as the reward: the
  trajectory-level reward (ParaRL: the reward taken at `reward_steps` points of each rollout's
  denoising) against the output-only reward (`reward_at=final`). The CLIP reward is the one the policy
  was paid; the verifier's consistency and edit accuracy are measured apart from it, so a reward that
  rises while they do not shows as such.
- `study=sft`: `trainer sft` from scratch with the world's recipe, with reasoning against without
  (`reasoning=false`: the reasoning part holds bos + eos padding, so both arms train and sample the
  same sequence at the same cost and differ only in what the text part says).

Each run's scores are written to `<world>/ablation/<study>/<arm>-seed<N>.json` as it finishes; a run
already there is not trained again, so an interrupted study resumes and two processes can share one
(e.g. `--set arms=[none]` beside `--set arms=[reasoning]`, one core each). The table is made from
every run of the study at the same steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

from jobs.world import World, format_table, open_world, run_rl, run_sft
from pipeline.config import load_config

STUDIES = {"rl": ("trajectory", "final"), "sft": ("reasoning", "none")}
ARM_NAMES = {"trajectory": "trajectory reward (ParaRL)", "final": "output-only reward",
             "reasoning": "with reasoning", "none": "without reasoning (image only)"}
COLUMNS = {
    "rl": {"clip reward, steps 1-5": "clip_first", "clip reward, last 5": "clip_last", "edit accuracy": "edit_accuracy",
           "kept cells": "kept_cells", "reasoning correct": "reasoning_correct", "text-image consistency": "consistency"},
    "sft": {"edit accuracy": "edit_accuracy", "edited cells": "edited_cells", "kept cells": "kept_cells",
            "reasoning correct": "reasoning_correct", "text-image consistency": "consistency"},
}
NO_REASONING = ("reasoning_correct", "consistency")  # nothing to judge in a model trained without reasoning


@dataclasses.dataclass(kw_only=True)
class AblationConfig:
    world: str = "world-run"  # a folder `make world` finished (its results.json, models, data, SFT run)
    study: str = "rl"  # rl | sft (see the module's doc)
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    arms: list[str] | None = None  # default: both of the study's
    steps: int | None = None  # default: the world's own rl_steps / sft_steps
    overrides: dict = dataclasses.field(default_factory=dict)  # RLConfig / SFTConfig fields for every run

    def __post_init__(self) -> None:
        if self.study not in STUDIES:
            raise ValueError(f"study must be one of {sorted(STUDIES)}, not {self.study!r}")
        self.arms = list(STUDIES[self.study]) if self.arms is None else list(self.arms)
        unknown = set(self.arms) - set(STUDIES[self.study])
        if unknown:
            raise ValueError(f"the {self.study} study's arms are {STUDIES[self.study]}, not {sorted(unknown)}")
        if not self.seeds:
            raise ValueError("seeds: at least one")


def clip_rewards(run_dir: Path, n: int = 5) -> dict[str, float]:
    """The CLIP reward at the rollouts' last denoising step, averaged over the run's first and last `n`
    steps: the same quantity in both arms (the trajectory arm is also paid at earlier steps)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"clip_first": statistics.fmean(r["reward_final"] for r in rows[:n]),
            "clip_last": statistics.fmean(r["reward_final"] for r in rows[-n:])}


def run_ablation(cfg: AblationConfig, world: World, dataset: str, sft_dir: Path, sft_scores: dict) -> dict:
    """Every (seed, arm) run not yet in `<world>/ablation/<study>/`, each judged at its last step; then
    the table over every run there at these steps."""
    steps = cfg.steps or (world.cfg.rl_steps if cfg.study == "rl" else world.cfg.sft_steps)
    # one evaluation per run, at its last step
    world = dataclasses.replace(world, cfg=dataclasses.replace(world.cfg, rl_steps=steps, rl_eval_every=steps,
                                                               sft_steps=steps, sft_eval_every=steps))
    folder = world.out / "ablation" / cfg.study
    folder.mkdir(parents=True, exist_ok=True)
    for seed in cfg.seeds:
        for arm in cfg.arms:
            path = folder / f"{arm}-seed{seed}.json"
            if path.exists() and _same_settings(json.loads(path.read_text()), steps, cfg.overrides):
                continue
            started = time.perf_counter()
            run = _train(cfg, world, dataset, sft_dir, sft_scores, arm, seed)
            path.write_text(json.dumps({"arm": arm, "seed": seed, "steps": steps, "overrides": cfg.overrides,
                                        "seconds": round(time.perf_counter() - started), **run}, default=str))
    runs = [r for r in (json.loads(p.read_text()) for p in sorted(folder.glob("*.json")))
            if _same_settings(r, steps, cfg.overrides)]
    runs.sort(key=lambda r: (STUDIES[cfg.study].index(r["arm"]), r["seed"]))
    start = sft_scores if cfg.study == "rl" else None
    return {"config": dataclasses.asdict(cfg), "study": cfg.study, "steps": steps, "sft": sft_scores, "runs": runs,
            "table": ablation_table(cfg.study, runs, steps, start)}


def _same_settings(run: dict, steps: int, overrides: dict) -> bool:
    """A finished run counts for this study only at its steps and overrides (a run of other settings
    is trained again, and left out of the table)."""
    return run["steps"] == steps and run.get("overrides", {}) == overrides


def _train(cfg: AblationConfig, world: World, dataset: str, sft_dir: Path, sft_scores: dict, arm: str,
           seed: int) -> dict:
    """One arm's run for one seed: its run folder and the verifier's scores at its last step."""
    name = f"ablation-{cfg.study}-{arm}-seed{seed}"
    if cfg.study == "rl":
        run_dir, curve = run_rl(world, dataset, sft_dir, sft_scores, name=name, seed=seed, reward_at=arm, **cfg.overrides)
        return {"run": str(run_dir), **clip_rewards(run_dir), **curve[-1]}
    run_dir, curve = run_sft(world, dataset, name=name, untrained_first=False, seed=seed,
                             reasoning=arm == "reasoning", **cfg.overrides)
    scores = curve[-1]
    if arm == "none":
        scores = {**scores, **dict.fromkeys(NO_REASONING)}
    return {"run": str(run_dir), **scores}


def ablation_table(study: str, runs: list[dict], steps: int, start: dict | None = None) -> dict:
    """{header, rows}: the model the runs started from (if given), then one row per arm, each column
    `mean ± std (n)` over its seeds."""
    columns = COLUMNS[study]

    def spread(values: list[float]) -> str:
        values = [v for v in values if v is not None]
        if not values:
            return "-"
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.3f} ± {std:.3f} ({len(values)})"

    rows = []
    if start is not None:
        rows.append(["SFT (start)"] + ["-" if start.get(k) is None else f"{start[k]:.3f}" for k in columns.values()])
    for arm in dict.fromkeys(r["arm"] for r in runs):
        label = (f"+ {steps} steps, " if study == "rl" else f"SFT {steps} steps, ") + ARM_NAMES[arm]
        rows.append([label] + [spread([r.get(k) for r in runs if r["arm"] == arm]) for k in columns.values()])
    return {"header": ["model", *columns], "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", default=None, help="the world's folder (default world-run)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an AblationConfig override")
    args = parser.parse_args()
    cfg = load_config(AblationConfig, None, args.set, world=args.world)
    started = time.perf_counter()
    result = run_ablation(cfg, *open_world(cfg.world))
    out = Path(cfg.world) / f"ablation-{cfg.study}.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    title = "ParaRL ablation" if cfg.study == "rl" else "SFT ablation"
    print(f"\n{title} (verifier on held-out prompts; mean ± sample std over seeds)\n"
          + format_table(result["table"]["header"], result["table"]["rows"]))
    print(f"ablation finished in {time.perf_counter() - started:.0f}s; results in {out}")


if __name__ == "__main__":
    main()
