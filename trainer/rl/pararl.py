"""`trainer rl`: ParaRL, trajectory-level GRPO with CLIP rewards on Ray-distributed rollouts.

One step: P prompts from the registry -> G rollouts each on the rollout actors (parallel sampler,
trajectory recorded at s steps) -> CLIP rewards at each recorded step on the reward actors ->
normalised, advantages standardised per group and step -> `mu` GRPO updates on the DeepSpeed
learner -> the new weights to every rollout actor. `reward_at=final` rewards the last step only
(the paper's output-level baseline). Checkpoints hold the learner, optimizer, RNG and prompt cursor;
the frozen reference is written once beside them and the reward statistics with the run.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import random
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from pipeline.image_tokenizer import DEFAULT_ID
from pipeline.registry import DatasetRegistry
from trainer.checkpoint import Checkpointer
from trainer.rundir import RunDir, model_folder
from trainer.data import check_compatible, local_verified_copies
from trainer.engine import Engine, OptimConfig, deepspeed_config, init_distributed
from trainer.export import load_model, sequence_builder
from trainer.metrics import MetricsLogger
from trainer.model import MMaDAModel
from trainer.rl.grpo import group_advantages
from trainer.rl.learner import Item, accumulation_steps, grpo_update
from trainer.rl.reward import ClipConfig, RewardStats, reference_sample
from trainer.rl.workers import RewardWorker, Rollout, RolloutWorker
from trainer.sampling import OutputSlots, Prompt, SamplerConfig
from trainer.sequence import recorded_blank_codes

PROMPT_COLUMNS = ["task", "instruction_ids", "input_image_codes", "output_image_codes"]


@dataclasses.dataclass(kw_only=True)
class RLOptimConfig(OptimConfig):
    lr: float = 1e-6  # GRPO for diffusion LMs: 1e-6 at 8B
    warmup_steps: int = 1  # DeepSpeed's schedule needs >= 1...
    warmup_min_ratio: float = 1.0  # ...so start at the full rate: a constant schedule
    min_lr_ratio: float = 1.0


@dataclasses.dataclass(kw_only=True)
class RolloutSamplerConfig(SamplerConfig):
    steps: int = 64
    text_temperature: float = 1.0  # rollouts explore in both modalities
    image_cfg_scale: float = 0.0  # the optimised policy is the conditional model (see learner.py)


@dataclasses.dataclass(kw_only=True)
class RLConfig:
    dataset: str  # NAME@VERSION of a tokenized version: the prompts (and the reward statistics)
    model: str  # the SFT run folder or an exported model: the initial policy and the reference
    registry: str | None = None
    image_tokenizer: str = DEFAULT_ID
    text_tokenizer: str | None = None  # default: the model folder
    clip: ClipConfig = dataclasses.field(default_factory=ClipConfig)
    out_dir: str = "runs/rl"
    steps: int = 200
    prompts_per_step: int = 4
    max_prompts: int | None = None  # use only the first N prompts of the version (small-scale experiments)
    num_generations: int = 8  # G: rollouts per prompt
    reward_steps: int = 3  # s: recorded steps per rollout (the paper's best trade-off)
    reward_at: str = "trajectory"  # trajectory (ParaRL) | final (output-level RL)
    step_choice: str = "fixed"  # fixed: evenly spaced, ending at the last step | random: per rollout, last included
    reward_clip: float = 3.0  # c
    reward_stats_fraction: float = 0.01
    reward_stats_min_rows: int = 64
    scale_rewards: bool = True
    epsilon: float = 0.2
    beta: float = 0.01
    mu: int = 1  # inner updates per batch of rollouts
    micro_batch_size: int = 4  # (rollout, step) items per learner forward
    deepspeed: str = "ds_zero0"  # ZeRO 0-2: the actors need the full weights after each update
    bf16: bool = False
    optim: RLOptimConfig = dataclasses.field(default_factory=RLOptimConfig)
    sampler: RolloutSamplerConfig = dataclasses.field(default_factory=RolloutSamplerConfig)
    rollout_workers: int = 2
    rollout_cpus: int = 1  # per actor (torch threads)
    rollout_gpus: float = 0  # per actor: 1 on a GPU cluster
    reward_workers: int = 1
    # Rewards are scored after each step's rollouts, so by default reward actors reserve no CPU
    # and use the rollout actors' cores (2 cores fit 2 rollout actors + 1 reward actor)
    reward_cpus: int = 0
    reward_gpus: float = 0
    ray_address: str | None = None
    seed: int = 0
    save_every: int = 50
    keep_last: int = 2
    resume: str = "auto"

    def __post_init__(self) -> None:
        if self.reward_at not in ("trajectory", "final"):
            raise ValueError(f"reward_at must be trajectory or final, not {self.reward_at!r}")
        if self.step_choice not in ("fixed", "random"):
            raise ValueError(f"step_choice must be fixed or random, not {self.step_choice!r}")
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2: advantages are relative to the group")
        if "zero3" in self.deepspeed:
            raise ValueError("ZeRO-3 partitions the weights the rollout actors need whole; use ZeRO 0-2")


class PromptSource:
    """Prompts from a tokenized version in a seeded order per epoch; the cursor is checkpointed."""

    def __init__(self, ref: str, registry: str | None, seed: int, limit: int | None = None):
        reg = DatasetRegistry(registry)
        self.manifest = reg.resolve(ref, schema="tokenized/1")
        import pyarrow.ipc as ipc

        self.table = pa.concat_tables([ipc.open_file(pa.memory_map(p)).read_all().select(PROMPT_COLUMNS)
                                       for p in local_verified_copies(reg, self.manifest)])
        if limit is not None:
            self.table = self.table.slice(0, limit)
        self.seed, self.epoch, self.position = seed, 0, 0

    def next(self, n: int) -> list[Prompt]:
        out = []
        while len(out) < n:
            if self.position == self.table.num_rows:
                self.epoch, self.position = self.epoch + 1, 0
            order = self._order(self.epoch)
            row = self.table.slice(int(order[self.position]), 1).to_pylist()[0]
            out.append(Prompt(row["task"], row["instruction_ids"], row["input_image_codes"]))
            self.position += 1
        return out

    @functools.lru_cache(maxsize=2)
    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.table.num_rows)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "dataset": self.manifest.ref}

    def load_state_dict(self, state: dict) -> None:
        if state["dataset"] != self.manifest.ref:
            raise ValueError(f"checkpoint was made on {state['dataset']}, not {self.manifest.ref}")
        self.epoch, self.position = state["epoch"], state["position"]


def record_steps(cfg: RLConfig, timeline: int, n: int, rng: np.random.Generator) -> list[list[int]]:
    """The recorded steps of each of n rollouts."""
    if cfg.reward_at == "final":
        return [[timeline - 1]] * n
    s = min(cfg.reward_steps, timeline)
    if cfg.step_choice == "fixed":
        return [[round((j + 1) * timeline / s) - 1 for j in range(s)]] * n
    return [sorted(rng.choice(timeline - 1, size=s - 1, replace=False).tolist() + [timeline - 1]) for _ in range(n)]


def split(items: list, parts: int) -> list[slice]:
    size = -(-len(items) // parts)
    return [slice(i, min(i + size, len(items))) for i in range(0, len(items), size)]


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def train(cfg: RLConfig, progress: bool = True) -> Path:
    import ray

    from pipeline.ray_runtime import init_ray

    rank, world = init_distributed()
    run = RunDir(cfg.out_dir)  # a local folder, or a URI with a local mirror
    run_dir = run.local
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = Checkpointer(run, cfg.keep_last, rank)
    checkpoints.prepare()
    model = model_folder(cfg.model)  # a run or export given by URI: its local copy
    builder = sequence_builder(model, cfg.text_tokenizer)  # as the policy was trained
    prompts = PromptSource(cfg.dataset, cfg.registry, cfg.seed, cfg.max_prompts)
    if builder.published and builder.blank_image_codes is None:  # a published checkpoint: the version's black image
        builder.blank_image_codes = recorded_blank_codes(prompts.manifest)
    check_compatible(prompts.manifest, builder, DatasetRegistry(cfg.registry))
    grid = int(len(prompts.table["output_image_codes"][0]) ** 0.5)
    sampler_cfg = dataclasses.replace(cfg.sampler, image_tokens=grid * grid)
    cfg = dataclasses.replace(cfg, sampler=sampler_cfg)
    timeline = len(sampler_cfg.plan(builder.config.reasoning_len))
    slots = OutputSlots(sampler_cfg.image_tokens, builder.config.reasoning_len)

    reference_dir = run_dir / "reference"
    if not (reference_dir / "config.json").exists():  # frozen for the whole run, resumes included
        run.download("reference")
    if not (reference_dir / "config.json").exists():
        load_model(model).save_pretrained(reference_dir)
        run.upload("reference")
    engine, reference = build_learner(cfg, reference_dir)
    policy, layout = engine.module, builder.layout
    state = checkpoints.resume(engine, cfg.resume)
    step = 0
    if state:
        step = state["step"]
        prompts.load_state_dict(state["prompts"])
        _set_rng_state(state["rng"])
    else:
        torch.manual_seed(cfg.seed)

    init_ray(cfg.ray_address)
    text_tokenizer = cfg.text_tokenizer or model
    check_resources(cfg)
    rollout_actor = ray.remote(RolloutWorker).options(num_cpus=cfg.rollout_cpus, num_gpus=cfg.rollout_gpus)
    reward_actor = ray.remote(RewardWorker).options(num_cpus=cfg.reward_cpus, num_gpus=cfg.reward_gpus)
    device = "cuda" if cfg.rollout_gpus else "cpu"
    rollouts = [rollout_actor.remote(policy.config.to_dict(), builder.to_dict(), sampler_cfg, cfg.rollout_cpus, device)
                for _ in range(cfg.rollout_workers)]
    reward_threads = cfg.reward_cpus or max(1, cfg.rollout_cpus * cfg.rollout_workers // cfg.reward_workers)
    rewarders = [reward_actor.remote(cfg.clip, cfg.image_tokenizer, text_tokenizer, slots, layout, reward_threads,
                                     "cuda" if cfg.reward_gpus else "cpu") for _ in range(cfg.reward_workers)]
    sync_weights(engine, rollouts, step)

    stats_path = run_dir / "reward_stats.json"
    if not stats_path.exists():
        stats_rows = DatasetRegistry(cfg.registry).read_table(prompts.manifest, ["output_image_codes", "reasoning_ids"])
        codes, reasoning = reference_sample(stats_rows, cfg.reward_stats_fraction, cfg.reward_stats_min_rows, cfg.seed)
        scores = ray.get(rewarders[0].score_reference.remote(codes, reasoning))
        RewardStats.from_scores(scores, cfg.reward_clip, prompts.manifest.ref).save(stats_path)
    reward_stats = RewardStats.load(stats_path)

    metrics = MetricsLogger(run_dir, rank, n_params=sum(p.numel() for p in policy.parameters()), peak_flops=None,
                            world_size=world)
    if rank == 0:
        (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
        builder.save(run_dir)
        run.push_files()
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc="pararl")
    while step < cfg.steps:
        started = time.perf_counter()
        batch = [p for p in prompts.next(cfg.prompts_per_step) for _ in range(cfg.num_generations)]
        rng = np.random.default_rng([cfg.seed, step])
        seeds = rng.integers(0, 2**31 - 1, size=len(batch)).tolist()
        record = record_steps(cfg, timeline, len(batch), rng)
        refs = [rollouts[w].rollout.remote(batch[part], seeds[part], record[part])
                for w, part in enumerate(split(batch, len(rollouts)))]
        done = ray.get(refs)
        rolled = time.perf_counter()
        scores = ray.get([rewarders[i % len(rewarders)].score.remote(ref) for i, ref in enumerate(refs)])
        scored = time.perf_counter()

        results: list[Rollout] = [r for part in done for r in part]
        raw = torch.cat(scores).view(cfg.prompts_per_step, cfg.num_generations, -1)
        rewards = reward_stats.normalise(raw)
        advantages = group_advantages(rewards, cfg.scale_rewards).view(len(results), -1)
        items = [Item(r.prompt, r.before[j], r.after[j], float(advantages[i, j]))
                 for i, r in enumerate(results) for j in range(len(r.steps))]
        update = grpo_update(engine, reference, items, builder, sampler_cfg, micro_batch_size=cfg.micro_batch_size,
                             mu=cfg.mu, epsilon=cfg.epsilon, beta=cfg.beta)
        step += 1
        sync_weights(engine, rollouts, step)
        learned = time.perf_counter()

        record_ = {f"reward_{name}": float(rewards[:, :, j].mean()) for j, name in enumerate(step_names(rewards.shape[2]))}
        record_.update(reward_mean=float(rewards.mean()), clip_score_mean=float(raw.mean()),
                       advantage_mean=float(advantages.mean()), advantage_std=float(advantages.std()),
                       rollout_s=rolled - started, reward_s=scored - rolled, learner_s=learned - scored,
                       lr=engine.lr, **update)
        metrics.write(step, record_, "rl")
        bar.set_postfix(reward=f"{record_['reward_mean']:.3f}", kl=f"{update['kl']:.4f}")
        bar.update(1)
        if step % cfg.save_every == 0 or step == cfg.steps:
            checkpoints.save(engine, step, {"step": step, "prompts": prompts.state_dict(), "rng": _rng_state()},
                             policy.config.to_dict())
    bar.close()
    metrics.close()
    if rank == 0:
        run.push_files()
    for actor in rollouts + rewarders:
        ray.kill(actor)
    return run_dir


def build_learner(cfg: RLConfig, model_dir: Path) -> tuple[Engine, MMaDAModel | None]:
    """The DeepSpeed policy and, with beta > 0, the frozen reference where DeepSpeed put the policy,
    in its dtype (their log-probabilities meet in the KL term)."""
    items_per_step = cfg.prompts_per_step * cfg.num_generations * (1 if cfg.reward_at == "final" else cfg.reward_steps)
    engine = Engine(MMaDAModel.from_pretrained(str(model_dir)),
                    deepspeed_config(cfg.deepspeed, cfg.optim, micro_batch_size=cfg.micro_batch_size,
                                     grad_accum=accumulation_steps(items_per_step, cfg.micro_batch_size),
                                     total_steps=cfg.steps * cfg.mu, bf16=cfg.bf16))
    reference = engine.place_frozen(MMaDAModel.from_pretrained(str(model_dir))) if cfg.beta else None
    return engine, reference


def step_names(s: int) -> list[str]:
    """Labels of the recorded steps in logs: early / middle / final for three."""
    if s == 1:
        return ["final"]
    if s == 3:
        return ["early", "middle", "final"]
    return [f"step{j + 1}_of_{s}" for j in range(s)]


def check_resources(cfg: RLConfig) -> None:
    """Fail fast where Ray would wait forever for actors the cluster cannot place."""
    import ray

    have = ray.cluster_resources()
    for name, need in (("CPU", cfg.rollout_cpus * cfg.rollout_workers + cfg.reward_cpus * cfg.reward_workers),
                       ("GPU", cfg.rollout_gpus * cfg.rollout_workers + cfg.reward_gpus * cfg.reward_workers)):
        if need > have.get(name, 0):
            raise ValueError(f"the rollout and reward actors need {need:g} {name} but the Ray cluster has "
                             f"{have.get(name, 0):g}: lower rollout_workers / rollout_cpus / reward_cpus")


def sync_weights(engine: Engine, actors: list, version: int) -> None:
    """The learner's weights to every rollout actor: one object-store copy, shared by all."""
    import ray

    state = ray.put({k: v.detach().to("cpu", torch.float32) for k, v in engine.module.state_dict().items()})
    ray.get([actor.set_weights.remote(state, version) for actor in actors])
