"""`trainer rl`: ParaRL, trajectory-level GRPO with CLIP rewards, on N data-parallel ranks.

Launched like `trainer sft` (torchrun, the deepspeed launcher, or Ray Train with `--ray-workers N`).
Every rank is a DeepSpeed learner that also samples its share of the step's prompt groups with its
own current weights, so no weights travel (under ZeRO-3 they are gathered once per rollout phase),
and scores them with its own MAGVIT-v2 + CLIP. One step (`pararl_step`) reads

    generate -> score -> advantage -> update

A prompt's G rollouts live on one rank, so advantages need no traffic between ranks; DeepSpeed
averages the gradients. Rollouts are seeded by (seed, step, prompt index), so a step gives the same
rewards and loss on any number of ranks. `reward_at=final` rewards the last step only (the paper's
output-level baseline). `train` reads like `trainer sft`'s: `build_rank` (the learner, the frozen
reference written once beside the run, the resume, the reward model and its statistics), then a loop
of steps that logs and saves. Checkpoints hold the learner, the global prompt cursor, each rank's RNG
and the run's config.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from pipeline.config import require_positive
from pipeline.image_tokenizer import DEFAULT_ID
from pipeline.registry import DatasetRegistry
from schemas import VersionManifest
from trainer.checkpoint import Checkpointer, check_resume_settings, keep_previous_settings
from trainer.data import RowSource, check_compatible
from trainer.engine import Engine, OptimConfig, deepspeed_config, init_distributed
from trainer.metrics import MetricsLogger
from trainer.model_io import check_layout, load_checkpoint_weights, load_model, resolve, save_model, sequence_builder
from trainer.rl.grpo import group_advantages
from trainer.rl.learner import Item, accumulation_steps, grpo_update
from trainer.rl.reward import ClipConfig, RewardModel, RewardStats, check_reward, reference_sample
from trainer.rl.rollout import Rollout, generate, rollout_plan, score
from trainer.rundir import RunDir
from trainer.sampling import ParallelSampler, Prompt, SamplerConfig
from trainer.sequence import recorded_blank_codes

PROMPT_COLUMNS = ["task", "instruction_ids", "input_image_codes", "output_image_codes"]


def rl_optim() -> OptimConfig:
    """ParaRL's optimizer defaults: GRPO for diffusion LMs runs at 1e-6 (8B), constant, no warmup."""
    return OptimConfig(lr=1e-6, schedule="constant", warmup_steps=0)


def rollout_sampler() -> SamplerConfig:
    """ParaRL's rollout defaults: 64 steps; rollouts explore in both modalities; the optimised policy is
    the conditional model, so no image guidance (see learner.py). image_tokens: the version's."""
    return SamplerConfig(steps=64, text_temperature=1.0, image_cfg_scale=0.0)


@dataclasses.dataclass(kw_only=True)
class RLConfig:
    dataset: str  # NAME@VERSION of a tokenized version: the prompts (and the reward statistics)
    model: str  # the SFT run folder or an exported model: the initial policy and the reference
    registry: str | None = None
    image_tokenizer: str = DEFAULT_ID
    text_tokenizer: str | None = None  # default: the model folder
    # clip (the paper) | verifier (the shapes world's exact text-image consistency) | MODULE:FUNCTION
    # (a function of (image as an [H, W, 3] uint8 array, text) -> a score in [0, 1], used as it is)
    reward: str = "clip"
    clip: ClipConfig = dataclasses.field(default_factory=ClipConfig)  # runs on each rank's device
    out_dir: str = "runs/rl"
    steps: int = 200
    prompts_per_step: int = 4  # over all ranks: a multiple of the world size
    groups_per_batch: int = 1  # prompt groups (G rollouts each) per sampler batch; a step's results do
    # not depend on the number of ranks for a given value, as long as it divides each rank's share
    max_prompts: int | None = None  # use only the first N prompts of the version (small-scale experiments)
    num_generations: int = 8  # G: rollouts per prompt
    reward_steps: int = 3  # s: recorded steps per rollout (the paper's best trade-off)
    reward_at: str = "trajectory"  # trajectory (ParaRL) | final (output-level RL)
    step_choice: str = "fixed"  # fixed: evenly spaced, ending at the last step | random: per rollout, last included
    reward_clip: float = 3.0  # c
    reward_stats_fraction: float = 0.01
    reward_stats_min_rows: int = 64
    reward_batch_size: int = 32  # recorded states per MAGVIT-v2 decode + CLIP batch
    scale_rewards: bool = True
    epsilon: float = 0.2
    beta: float = 0.01  # 0: no KL term, and no reference model at all
    mu: int = 1  # inner updates per batch of rollouts
    micro_batch_size: int = 4  # (rollout, step) items per learner forward
    deepspeed: str = "ds_zero2"  # ZeRO-3 gathers the full weights once per rollout phase
    bf16: bool = True
    gradient_checkpointing: bool = False
    optim: OptimConfig = dataclasses.field(default_factory=rl_optim)
    sampler: SamplerConfig = dataclasses.field(default_factory=rollout_sampler)
    seed: int = 0
    save_every: int = 50
    keep_last: int = 2
    resume: str = "auto"
    ray_workers: int = 0  # > 0: this many ranks as Ray Train workers (--ray-workers), else torchrun's or one
    ray_gpu: bool = False  # one GPU per Ray worker (--ray-gpu)
    ray_address: str | None = None  # the Ray cluster for ray_workers (else $RAY_ADDRESS, else local)

    def __post_init__(self) -> None:
        require_positive(self, "steps", "prompts_per_step", "groups_per_batch", "reward_steps", "reward_batch_size",
                         "mu", "micro_batch_size", "save_every", "keep_last")
        if self.reward_at not in ("trajectory", "final"):
            raise ValueError(f"reward_at must be trajectory or final, not {self.reward_at!r}")
        check_reward(self.reward)
        if self.step_choice not in ("fixed", "random"):
            raise ValueError(f"step_choice must be fixed or random, not {self.step_choice!r}")
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2: advantages are relative to the group")


@dataclasses.dataclass
class Rank:
    """What one rank holds for the run: its learner, the frozen reference, its sampler and its
    reward model with the run's reward statistics, and the prompts (one global order; each step this
    rank takes its share)."""
    engine: Engine
    reference: torch.nn.Module | None
    sampler: ParallelSampler  # holds the sequence builder, output slots and step plan
    reward: RewardModel
    reward_stats: RewardStats
    prompts: RowSource
    rank: int
    world: int

    def next_prompts(self, n: int) -> list[Prompt]:
        return [Prompt(row["task"], row["instruction_ids"], row["input_image_codes"])
                for row in self.prompts.next(n).to_pylist()]


def pararl_step(cfg: RLConfig, me: Rank, prompts: list[Prompt], step: int) -> dict[str, float]:
    """One ParaRL step over the global batch `prompts`, of which this rank takes its share:
    generate -> score -> advantage -> update. Returns the step's metrics, reduced over ranks."""
    share = len(prompts) // me.world
    first = me.rank * share
    g = cfg.num_generations
    builder, timeline = me.sampler.builder, len(me.sampler.schedule)
    started = time.perf_counter()

    rollouts: list[Rollout] = []
    with me.engine.gathered_for_inference():  # ZeRO-3: the full weights once for the whole phase
        for lo in range(first, first + share, cfg.groups_per_batch):
            batch, seeds, record = [], [], []
            for index in range(lo, min(lo + cfg.groups_per_batch, first + share)):
                s, r = rollout_plan(cfg.seed, step, index, g, timeline, cfg.reward_steps, cfg.reward_at,
                                    cfg.step_choice)
                batch += [prompts[index]] * g
                seeds += s
                record += r
            rollouts += generate(me.sampler, batch, seeds, record)
    generated = time.perf_counter()

    raw = score(me.reward, rollouts, me.sampler.slots, builder.layout, cfg.reward_batch_size)  # [share * G, S]
    scored = time.perf_counter()

    rewards = me.reward_stats.normalise(raw).view(share, g, -1)
    advantages = group_advantages(rewards, cfg.scale_rewards).view(share * g, -1)
    items = [Item(r.prompt, r.before[j], r.after[j], float(advantages[i, j]))
             for i, r in enumerate(rollouts) for j in range(len(r.steps))]
    update = grpo_update(me.engine, me.reference, items, builder, me.sampler.config,
                         micro_batch_size=cfg.micro_batch_size, mu=cfg.mu, epsilon=cfg.epsilon, beta=cfg.beta)
    updated = time.perf_counter()

    rewards, raw, advantages = (_gather_rows(x) for x in (rewards.reshape(share * g, -1), raw, advantages))
    record = {f"reward_{name}": float(rewards[:, j].mean()) for j, name in enumerate(step_names(rewards.shape[1]))}
    record.update(reward_mean=float(rewards.mean()), clip_score_mean=float(raw.mean()),
                  advantage_mean=float(advantages.mean()), advantage_std=float(advantages.std()),
                  rollouts=len(rewards), world_size=me.world, **_reduce(update))
    record.update(_reduce({"generate_s": generated - started, "score_s": scored - generated,
                           "update_s": updated - scored}, op="max"))  # the slowest rank sets the pace
    return record


# what may change when a run resumes: its length, its pace and where it runs
RESUMABLE = {"steps", "resume", "save_every", "keep_last", "ray_workers", "ray_gpu", "ray_address", "registry", "out_dir"}


def train(cfg: RLConfig, progress: bool = True) -> Path:
    """Trains, and returns the local run folder (for a URI `out_dir`, its mirror)."""
    rank, world = init_distributed()
    items_per_rank(cfg, world)  # a step that does not split evenly is refused before anything loads
    run = RunDir(cfg.out_dir)  # a local folder, or a URI with a local mirror
    run.local.mkdir(parents=True, exist_ok=True)
    checkpoints = Checkpointer(run, cfg.keep_last, rank)
    checkpoints.prepare()
    me, step = build_rank(cfg, run, checkpoints, rank, world)
    # checked on every rank (each raises alike), before anything of the run is rewritten
    previous = check_resume_settings(run.local, run_config(cfg, me), RESUMABLE, cfg.resume == "force") if step else None
    metrics = MetricsLogger(run.local, rank, n_params=sum(p.numel() for p in me.engine.module.parameters()),
                            peak_flops=None, world_size=world)
    if rank == 0:
        keep_previous_settings(run.local, previous, step)
        (run.local / "config.json").write_text(json.dumps(run_config(cfg, me), indent=2))
        me.sampler.builder.save(run.local)
        run.push_files()
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress or rank != 0, desc="pararl")
    while step < cfg.steps:
        record = pararl_step(cfg, me, me.next_prompts(cfg.prompts_per_step), step)
        step += 1
        metrics.write(step, {**record, "lr": me.engine.lr}, "rl")
        bar.set_postfix(reward=f"{record['reward_mean']:.3f}", kl=f"{record['kl']:.4f}")
        bar.update(1)
        if step % cfg.save_every == 0 or step == cfg.steps:
            rngs: list = [None] * world
            dist.all_gather_object(rngs, _rng_state())
            checkpoints.save(me.engine, step, {"step": step, "prompts": me.prompts.state_dict(), "rng": rngs,
                                               "config": run_config(cfg, me)}, me.engine.module.config.to_dict())
    bar.close()
    metrics.close()
    if rank == 0:
        run.push_files()
    return run.local


def build_rank(cfg: RLConfig, run: RunDir, checkpoints: Checkpointer, rank: int, world: int) -> tuple[Rank, int]:
    """This rank's part of the run, and the step it starts from: the policy's sequences, the prompts,
    the frozen reference, the learner (resumed from the newest checkpoint, on any number of ranks),
    the reward model and the reward statistics, and the RNG state."""
    model = _node_leader_first(lambda: resolve(cfg.model))  # a run or export given by URI, or a hub id: its local copy
    builder = sequence_builder(model, cfg.text_tokenizer)  # as the policy was trained
    prompts = RowSource(cfg.dataset, cfg.registry, PROMPT_COLUMNS, cfg.seed, limit=cfg.max_prompts)
    if builder.published and builder.blank_image_codes is None:  # a published checkpoint: the version's black image
        builder.blank_image_codes = recorded_blank_codes(prompts.manifest)
    check_compatible(prompts.manifest, builder, prompts.registry)
    grid = int(len(prompts.table["output_image_codes"][0]) ** 0.5)
    sampler = dataclasses.replace(cfg.sampler, image_tokens=grid * grid)  # the version's output images
    reference_dir = frozen_reference(model, run, rank)

    resume = "auto" if cfg.resume == "force" else cfg.resume  # force: resume even where settings changed
    resume_tag = checkpoints.resume_tag(resume)
    saved = checkpoints.saved_state(resume_tag) if resume_tag else {}
    regrouped = bool(saved) and saved["world_size"] != world
    if regrouped and rank == 0:
        # DeepSpeed cannot re-partition ZeRO optimizer state over another number of ranks (its
        # universal-checkpoint converter needs Megatron's layout metadata): the weights, the step and
        # the prompt cursor carry over from the checkpoint; Adam's moments and the schedule restart.
        print(f"resuming {resume_tag}, saved on {saved['world_size']} rank(s), on {world}: weights, step and "
              "prompt cursor carried over; optimizer moments restart")
    engine, reference = build_learner(cfg, reference_dir, checkpoints.directory / resume_tag if regrouped else None)
    check_layout(engine.module, builder.layout, cfg.model)
    reward = RewardModel(cfg.clip, cfg.image_tokenizer, cfg.text_tokenizer or model, engine.device, cfg.reward)
    me = Rank(engine, reference, ParallelSampler(engine.module, builder, sampler), reward,
              reward_statistics(cfg, prompts.manifest, reward, run.local, rank), prompts, rank, world)

    state = saved if regrouped else checkpoints.resume(engine, resume)
    if not state:
        torch.manual_seed(cfg.seed)
        return me, 0
    prompts.load_state_dict(state["prompts"])
    if len(state.get("rng", [])) == world:  # another world size starts fresh streams: nothing draws from them
        _set_rng_state(state["rng"][rank])
    return me, state["step"]


def frozen_reference(model: Path, run: RunDir, rank: int) -> Path:
    """The reference's local folder: the initial policy, written once into the run by rank 0 (frozen
    for the whole run, resumes included) and fetched once per node."""
    reference_dir = run.local / "reference"
    if rank == 0 and not (reference_dir / "config.json").exists():
        save_model(load_model(model), reference_dir)
        run.upload("reference")
    dist.barrier()
    _node_leader_first(lambda: (reference_dir / "config.json").exists() or run.download("reference"))
    return reference_dir


def run_config(cfg: RLConfig, me: Rank) -> dict:
    """The config saved with the run and its checkpoints, with the sampler this run uses (image_tokens
    from the version)."""
    return {**dataclasses.asdict(cfg), "sampler": dataclasses.asdict(me.sampler.config)}


def items_per_rank(cfg: RLConfig, world: int) -> int:
    """The (rollout, step) items each rank updates on per step; a ValueError unless a step splits
    evenly over the ranks, the sampler batches and the micro-batches."""
    if cfg.prompts_per_step % world or (cfg.prompts_per_step // world) % cfg.groups_per_batch:
        raise ValueError(f"prompts_per_step {cfg.prompts_per_step} must split evenly over {world} rank(s) "
                         f"in batches of groups_per_batch {cfg.groups_per_batch}")
    items = cfg.prompts_per_step // world * cfg.num_generations * (1 if cfg.reward_at == "final" else cfg.reward_steps)
    if items % cfg.micro_batch_size:
        # The loss is a mean per micro-batch, and DeepSpeed averages micro-batches and ranks: only
        # equal micro-batches make that the mean over every (rollout, step) item of the step,
        # whatever the number of ranks.
        raise ValueError(f"micro_batch_size {cfg.micro_batch_size} must divide the {items} (rollout, step) items "
                         f"each rank updates on per step")
    return items


def reward_statistics(cfg: RLConfig, manifest: VersionManifest, reward: RewardModel, run_dir: Path, rank: int) -> RewardStats:
    """The normalisation statistics, estimated once per run by rank 0 on the reference pairs of ~1%
    of the version and sent to every rank."""
    path = run_dir / "reward_stats.json"
    found: list = [None]
    if rank == 0:
        if not path.exists() and reward.kind != "clip":  # a reward function's scores are used as they are
            RewardStats.identity(cfg.reward_clip, manifest.ref).save(path)
        if not path.exists():
            rows = DatasetRegistry(cfg.registry).read_table(manifest, ["output_image_codes", "reasoning_ids"])
            codes, reasoning = reference_sample(rows, cfg.reward_stats_fraction, cfg.reward_stats_min_rows, cfg.seed)
            RewardStats.from_scores(reward.score(codes, reasoning, cfg.reward_batch_size), cfg.reward_clip,
                                    manifest.ref).save(path)
        found = [dataclasses.asdict(RewardStats.load(path))]
    dist.broadcast_object_list(found, src=0)
    return RewardStats(**found[0])


def build_learner(cfg: RLConfig, model_dir: Path, start: Path | None = None) -> tuple[Engine, torch.nn.Module | None]:
    """The DeepSpeed policy and, with beta > 0, the frozen reference beside it (same device and
    dtype, partitioned like the policy under ZeRO-3); their log-probabilities meet in the KL term.
    Both load in the training dtype: a bf16 8B model is 16 GB of host memory per rank, not 32.
    `start`: a checkpoint folder whose weights (its safetensors) start the policy instead."""
    dtype = torch.bfloat16 if cfg.bf16 else torch.float32
    items = items_per_rank(cfg, dist.get_world_size())
    policy = load_model(model_dir, dtype=dtype).train()
    if start is not None:
        load_checkpoint_weights(policy, start)
    policy.config.gradient_checkpointing = cfg.gradient_checkpointing
    engine = Engine(policy, deepspeed_config(cfg.deepspeed, cfg.optim, micro_batch_size=cfg.micro_batch_size,
                                             grad_accum=accumulation_steps(items, cfg.micro_batch_size),
                                             total_steps=cfg.steps * cfg.mu, bf16=cfg.bf16))
    reference = engine.place_frozen(load_model(model_dir, dtype=dtype)) if cfg.beta else None
    return engine, reference


def step_names(s: int) -> list[str]:
    """Labels of the recorded steps in logs: early / middle / final for three."""
    if s == 1:
        return ["final"]
    if s == 3:
        return ["early", "middle", "final"]
    return [f"step{j + 1}_of_{s}" for j in range(s)]


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _node_leader_first(fn):
    """fn() on each node's leader (LOCAL_RANK 0) first, then on the other ranks: a download into a
    node's shared cache is made once, never by eight ranks racing."""
    leader = int(os.environ.get("LOCAL_RANK", "0")) == 0
    result = fn() if leader else None
    dist.barrier()
    return result if leader else fn()


def _collective_device() -> str:
    """Where tensors for a collective must be: NCCL reduces CUDA tensors, gloo CPU ones."""
    return "cuda" if dist.get_backend() == "nccl" else "cpu"


def _gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of x (equal shapes), in rank order, on every rank."""
    if dist.get_world_size() == 1:
        return x
    device = _collective_device()
    parts = [torch.empty_like(x, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.to(device).contiguous())
    return torch.cat(parts).cpu()


def _reduce(values: dict[str, float], op: str = "mean") -> dict[str, float]:
    """Per-rank scalars -> their mean over ranks (every rank has as many items), or max; `*_max` keys
    always take the max."""
    if dist.get_world_size() == 1:
        return dict(values)
    keys = sorted(values)
    device = _collective_device()
    means = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    maxes = means.clone()
    dist.all_reduce(means)
    dist.all_reduce(maxes, op=dist.ReduceOp.MAX)
    world = dist.get_world_size()
    return {k: float(maxes[i] if op == "max" or k.endswith("_max") else means[i] / world) for i, k in enumerate(keys)}
