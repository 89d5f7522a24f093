"""ParaRL: GRPO math on hand-made numbers, reward statistics, and `trainer rl` end to end on two
gloo ranks (a tiny CLIP, resume on an object store, the same step on one rank)."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import BIN, free_port
from trainer.rl.grpo import clipped_objective, group_advantages, k3_kl
from trainer.rl.reward import ClipConfig, RewardStats


def test_group_advantages_standardise_per_prompt_and_step():
    rewards = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [5.0, 3.0]],  # prompt 0: G=3 rollouts, S=2 steps
                            [[2.0, 2.0], [2.0, 2.0], [2.0, 2.0]]])  # prompt 1: all equal -> 0 advantage
    a = group_advantages(rewards, eps=0.0 + 1e-4)
    # step 0 of prompt 0: mean 3, unbiased std 2 -> (-1, 0, 1)
    assert torch.allclose(a[0, :, 0], torch.tensor([-1.0, 0.0, 1.0]), atol=1e-4)
    # step 1 of prompt 0: mean 1, std sqrt(3) -> (-1, -1, 2) / sqrt(3)
    assert torch.allclose(a[0, :, 1], torch.tensor([-1.0, -1.0, 2.0]) / math.sqrt(3), atol=1e-4)
    assert torch.equal(a[1], torch.zeros(3, 2))
    assert torch.allclose(group_advantages(rewards, scale_rewards=False)[0, :, 0], torch.tensor([-2.0, 0.0, 2.0]))


def test_clipped_objective_on_hand_made_numbers():
    old = torch.zeros(2, 3)
    logp = torch.log(torch.tensor([[1.5, 1.0, 0.5], [1.5, 1.0, 0.5]]))  # ratios 1.5, 1.0, 0.5
    tokens = torch.tensor([[True, True, True], [True, True, False]])
    adv = torch.tensor([1.0, -1.0])
    loss, stats = clipped_objective(logp, old, None, adv, tokens, epsilon=0.2, beta=0.0)
    # A > 0: min(r A, clip(r) A) = (1.2, 1.0, 0.5) -> mean 0.9
    # A < 0: min(-r, -clip(r)) over the first two tokens = (-1.5, -1.0) -> mean -1.25
    assert loss.item() == pytest.approx(-(0.9 - 1.25) / 2)
    # the clip binds for r=1.5 with A>0 only (r=0.5, A>0 and r=1.5, A<0 take the unclipped side)
    assert stats["clip_fraction"].item() == pytest.approx(1 / 5)
    same, stats = clipped_objective(old, old, None, adv, tokens)
    assert stats["ratio_max"].item() == 1.0 and stats["clip_fraction"].item() == 0.0
    # k3: zero when equal, positive otherwise, matches exp(d) - d - 1
    assert k3_kl(old, old).abs().max().item() == 0.0
    assert k3_kl(torch.tensor([0.0]), torch.tensor([math.log(2)])).item() == pytest.approx(2 - math.log(2) - 1)
    loss_kl, stats = clipped_objective(old, old, old + 0.5, adv, tokens, beta=0.1)
    assert stats["kl"].item() == pytest.approx(math.exp(0.5) - 0.5 - 1, rel=1e-5) and loss_kl > same


def test_reward_normalisation_and_its_statistics(tokenized_demo, magvit_dir, llada_tokenizer_dir, tmp_path):
    stats = RewardStats(mean=0.2, std=0.1, clip=2.0, samples=10, source="x")
    scores = torch.tensor([0.2, 0.3, 0.4, 0.5, -1.0])  # z = 0, 1, 2, 3 (clipped to 2), -12 (clipped to -2)
    assert torch.allclose(stats.normalise(scores), torch.tensor([0.5, 0.75, 1.0, 1.0, 0.0]))

    from jobs.tiny_models import build_tiny_clip
    from pipeline.registry import DatasetRegistry
    from trainer.rl.reward import RewardModel, reference_sample

    registry, ref = tokenized_demo
    reg = DatasetRegistry(registry)
    table = reg.read_table(reg.resolve(ref))
    clip_dir = build_tiny_clip(tmp_path / "clip")
    reward = RewardModel(ClipConfig(model=f"local-dir:{clip_dir}"), str(magvit_dir), str(llada_tokenizer_dir))
    from safetensors.torch import load_file

    saved = load_file(clip_dir / "open_clip_model.safetensors")
    assert torch.equal(reward.scorer.model.state_dict()["text_projection"], saved["text_projection"])  # really loaded

    codes, reasoning = reference_sample(table, fraction=0.01, min_rows=8, seed=0)
    assert len(reasoning) == 8 == codes.shape[0]  # 1% of the rows is fewer than the minimum
    again, _ = reference_sample(table, fraction=0.01, min_rows=8, seed=0)
    assert torch.equal(codes, again)
    scores = reward.score(codes, reasoning)
    estimated = RewardStats.from_scores(scores, clip=3.0, source=ref)
    assert estimated.samples == 8 and estimated.std > 0
    assert estimated.mean == pytest.approx(float(scores.mean())) and -1 <= estimated.mean <= 1
    normalised = estimated.normalise(scores)
    assert normalised.min() >= 0 and normalised.max() <= 1
    assert float(normalised.mean()) == pytest.approx(0.5, abs=1e-5)  # z-scores of the sample itself centre at 0
    path = tmp_path / "stats.json"
    estimated.save(path)
    assert RewardStats.load(path) == estimated


def rl_args(registry, ref, model, out, clip, magvit, tokenizer, ranks=2, **overrides):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
                "--master_port", str(free_port()), "-m", "trainer.cli"]
    return [*launcher, "rl", "--no-progress", *rl_overrides(registry, ref, model, out, clip, magvit, tokenizer,
                                                            **overrides)]


def rl_overrides(registry, ref, model, out, clip, magvit, tokenizer, **overrides):
    values = {"dataset": ref, "registry": registry, "model": model, "out_dir": out, "image_tokenizer": magvit,
              "text_tokenizer": tokenizer, "clip.model": f"local-dir:{clip}", "clip.device": "cpu",
              "steps": 2, "prompts_per_step": 2, "num_generations": 2, "sampler.steps": 8,
              "sampler.block_length": 64, "reward_stats_min_rows": 8, "optim.lr": 1e-3, "mu": 2,
              "micro_batch_size": 3, "save_every": 1, "bf16": "false", "deepspeed": "ds_zero2", **overrides}
    return [w for k, v in values.items() for w in ("--set", f"{k}={v}")]


def remote_text(uri: str) -> str:
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def run_rl(args, cache, timeout=900):
    # one thread per rank: the same kernels, so runs on 1 and 2 ranks may be compared exactly
    env = {**os.environ, "PARAFORGE_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, r.stderr[-4000:]


COMPARED = ("reward_mean", "reward_early", "reward_final", "clip_score_mean", "first_loss", "loss", "kl")


def test_pararl_on_two_ranks_resumes_exactly_and_matches_one_rank(tokenized_demo, trained_tiny_run, magvit_dir,
                                                                  llada_tokenizer_dir, s3_bucket, tmp_path,
                                                                  monkeypatch, ray_local):
    """Two gloo ranks, each a DeepSpeed learner sampling its own prompt's rollouts. The run folder is
    on an object store and the resume runs on an empty cache (another machine), so its checkpoint,
    frozen reference, reward statistics and metrics come from there. A run killed after step 2 and
    resumed repeats the uninterrupted run's step 3 exactly; one rank repeats two ranks' step 1."""
    from jobs.tiny_models import build_tiny_clip
    from trainer.rundir import RunDir

    registry, ref = tokenized_demo
    clip = build_tiny_clip(tmp_path / "clip")
    common = (registry, ref, str(trained_tiny_run))
    tools = (clip, str(magvit_dir), str(llada_tokenizer_dir))
    whole = tmp_path / "whole"
    run_rl(rl_args(*common, str(whole), *tools, steps=3), tmp_path / "cache-w")
    uninterrupted = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]

    run = f"{s3_bucket}/runs/rl"
    run_rl(rl_args(*common, run, *tools), tmp_path / "cache-a")
    records = [json.loads(line) for line in remote_text(f"{run}/metrics.jsonl").splitlines()]
    assert [x["step"] for x in records] == [1, 2]
    for x in records:
        assert x["first_ratio_max"] == 1.0 and x["first_clip_fraction"] == 0.0  # rollouts ran on the learner's weights
        assert x["ratio_max"] != 1.0  # the second inner update sees moved weights
        assert {"reward_early", "reward_middle", "reward_final", "kl", "generate_s", "score_s", "update_s"} <= set(x)
        assert 0.0 <= x["reward_mean"] <= 1.0 and x["world_size"] == 2 and x["rollouts"] == 4  # 2 prompts x G=2
    stats = json.loads(remote_text(f"{run}/reward_stats.json"))
    assert stats["samples"] == 8 and stats["source"] == ref
    assert json.loads(remote_text(f"{run}/reference/config.json"))
    assert sorted(RunDir(run).checkpoint_tags())[-1] == "step-2"

    # resume elsewhere: only step 3 runs, the prompt cursor continues where step 2 left it, and
    # step 3 is the uninterrupted run's step 3
    cache = tmp_path / "cache-b"
    run_rl(rl_args(*common, run, *tools, steps=3), cache)
    records = [json.loads(line) for line in remote_text(f"{run}/metrics.jsonl").splitlines()]
    assert [x["step"] for x in records] == [1, 2, 3]
    for a, b in zip(records, uninterrupted):
        assert {k: a[k] for k in COMPARED} == {k: b[k] for k in COMPARED}
    monkeypatch.setenv("PARAFORGE_CACHE", str(cache))
    mirror = RunDir(run).local  # where the resumed run worked
    assert (mirror / "reference" / "config.json").exists()
    client = torch.load(mirror / "checkpoints" / "step-3" / "mp_rank_00_model_states.pt", weights_only=False)
    from pipeline.registry import DatasetRegistry

    rows = DatasetRegistry(registry).resolve(ref).counts.output
    assert client["prompts"]["position"] + client["prompts"]["epoch"] * rows == 3 * 2  # 2 prompts per step
    assert len(client["rng"]) == 2  # each rank's

    # and on one rank: DeepSpeed cannot re-partition the optimizer over another world size, so the
    # checkpoint's weights, step and prompt cursor carry over and Adam restarts. With another learning
    # rate too: a changed setting resumes only with resume=force, and the run keeps both configs
    # (refused without it, as SFT's test shows: the same check, `check_resume_settings`)
    run_rl(rl_args(*common, run, *tools, ranks=1, steps=4, **{"optim.lr": 5e-4, "resume": "force"}), cache)
    assert json.loads(remote_text(f"{run}/config.before-step-4.json"))["optim"]["lr"] == 1e-3
    records = [json.loads(line) for line in remote_text(f"{run}/metrics.jsonl").splitlines()]
    assert [(x["step"], x["world_size"]) for x in records] == [(1, 2), (2, 2), (3, 2), (4, 1)]
    saved = json.loads(remote_text(f"{run}/checkpoints/step-4/trainer_state.json"))
    assert saved["world_size"] == 1 and saved["prompts"]["position"] + saved["prompts"]["epoch"] * rows == 4 * 2
    # the run's config, as SFT's checkpoints hold it: the schedule, and the sampler the version implies
    assert saved["config"]["optim"]["schedule"] == "constant" and saved["config"]["sampler"]["image_tokens"] == 16
    assert json.loads(remote_text(f"{run}/config.json"))["optim"] == saved["config"]["optim"]
    assert saved["config"]["optim"]["lr"] == 5e-4

    # the same step on one rank: the same rollouts, rewards and loss
    one = tmp_path / "one"
    run_rl(rl_args(*common, str(one), *tools, ranks=1, steps=1), tmp_path / "cache-w")
    [single] = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    assert single["world_size"] == 1 and single["rollouts"] == 4
    for key in COMPARED:
        assert single[key] == pytest.approx(uninterrupted[0][key], rel=1e-4, abs=1e-6), key

    # and under ZeRO-3, on two Ray Train workers (`--ray-workers 2`): weights gathered once for the
    # rollouts, the reference partitioned, the checkpoint's safetensors whole
    sharded = tmp_path / "zero3"
    on_ray = [str(BIN / "trainer"), "rl", "--no-progress", "--ray-workers", "2", "--ray-address", ray_local,
              *rl_overrides(*common, str(sharded), *tools, steps=1, deepspeed="ds_zero3")]
    run_rl(on_ray, tmp_path / "cache-w")
    [zero3] = [json.loads(line) for line in (sharded / "metrics.jsonl").read_text().splitlines()]
    for key in COMPARED:
        assert zero3[key] == pytest.approx(uninterrupted[0][key], rel=1e-4, abs=1e-6), key
    from safetensors.torch import load_file

    whole_weights = load_file(whole / "checkpoints" / "step-3" / "model.safetensors")
    zero3_weights = load_file(sharded / "checkpoints" / "step-1" / "model.safetensors")
    assert {k: v.shape for k, v in zero3_weights.items()} == {k: v.shape for k, v in whole_weights.items()}


def test_grpo_climbs_a_reward_it_can_attribute(trained_tiny_run):
    """The whole learner path (rollouts with recorded steps, group advantages, exact per-step
    log-probs, the clipped objective on DeepSpeed) on a reward with no CLIP noise: the share of
    output image codes in the lower half of the codebook, taken at each recorded step."""
    from trainer.engine import Engine, OptimConfig, deepspeed_config, init_distributed
    from trainer.model_io import load_model, sequence_builder
    from trainer.rl.learner import Item, grpo_update
    from trainer.rl.rollout import generate
    from trainer.sampling import OutputSlots, ParallelSampler, Prompt, SamplerConfig, filled, image_codes

    init_distributed()
    torch.manual_seed(0)
    policy = load_model(str(trained_tiny_run))
    builder = sequence_builder(str(trained_tiny_run))
    layout = builder.layout
    sampler = SamplerConfig(steps=4, image_tokens=16, block_length=64, text_temperature=1.0, image_cfg_scale=0.0,
                            image_choice_temperature=1.0, image_updates=None, image_start=0.0)
    slots, g, steps = OutputSlots(16, 256), 8, 12
    prompts = [Prompt("generate", [5, 6, 7]), Prompt("edit", [8, 9], list(range(16)))]
    items_per_step = len(prompts) * g * 3
    engine = Engine(policy, deepspeed_config("ds_zero0", OptimConfig(lr=3e-4, schedule="constant", warmup_steps=0),
                                             micro_batch_size=16, grad_accum=items_per_step // 16,
                                             total_steps=steps, bf16=False))
    rollout_sampler = ParallelSampler(engine.module, builder, sampler)  # the learner's own weights
    means = []
    for step in range(steps):
        batch = [p for p in prompts for _ in range(g)]
        with engine.gathered_for_inference():
            rollouts = generate(rollout_sampler, batch, [step * 100 + i for i in range(len(batch))],
                                [[1, 2, 3]] * len(batch))
        rewards = torch.stack([(image_codes(filled(r.after, r.prediction, layout), slots, layout) < 4096).float().mean(-1)
                               for r in rollouts])  # [rollouts, 3 recorded steps]
        means.append(float(rewards.mean()))
        advantages = group_advantages(rewards.view(len(prompts), g, 3)).view(len(batch), 3)
        items = [Item(r.prompt, r.before[j], r.after[j], float(advantages[i, j]))
                 for i, r in enumerate(rollouts) for j in range(3)]
        stats = grpo_update(engine, None, items, builder, sampler, micro_batch_size=16, mu=1, epsilon=0.2, beta=0.0)
        assert stats["first_ratio_max"] == 1.0
    print("reward per step:", [round(m, 3) for m in means])
    assert sum(means[-3:]) / 3 > sum(means[:3]) / 3 + 0.05


@pytest.mark.parametrize("bf16", [False, True])
def test_reference_sits_with_the_policy(trained_tiny_run, tmp_path, bf16):
    """ParaRL's frozen reference is placed by the engine that placed the policy: same device, same dtype
    (on a GPU learner the KL term would otherwise mix CPU and CUDA tensors)."""
    from trainer.engine import init_distributed
    from trainer.model_io import load_model, save_model
    from trainer.rl.pararl import RLConfig, build_learner

    init_distributed()
    save_model(load_model(str(trained_tiny_run)), tmp_path / "policy")
    cfg = RLConfig(dataset="unused", model="unused", beta=0.04, bf16=bf16, deepspeed="ds_zero0")
    engine, reference = build_learner(cfg, tmp_path / "policy")
    policy = {(p.device, p.dtype) for p in engine.module.parameters()}
    frozen = {(p.device, p.dtype) for p in reference.parameters()}
    assert policy == frozen and len(policy) == 1
    assert next(iter(frozen))[1] == (torch.bfloat16 if bf16 else torch.float32)
    assert not any(p.requires_grad for p in reference.parameters()) and not reference.training
    assert build_learner(dataclasses.replace(cfg, beta=0.0), tmp_path / "policy")[1] is None  # no KL, no reference


def test_a_step_must_split_evenly_over_ranks_and_micro_batches(trained_tiny_run, tmp_path):
    from trainer.rl.pararl import RLConfig, train

    with pytest.raises(ValueError, match="prompts_per_step 2 must split evenly over 1 rank"):
        train(RLConfig(dataset="unused", model=str(trained_tiny_run), out_dir=str(tmp_path), prompts_per_step=2,
                       groups_per_batch=3))
    with pytest.raises(ValueError, match="micro_batch_size 4 must divide the 6 .rollout, step. items"):
        train(RLConfig(dataset="unused", model=str(trained_tiny_run), out_dir=str(tmp_path), prompts_per_step=1,
                       num_generations=2, micro_batch_size=4))


def test_token_logprobs_read_only_the_committed_positions(trained_tiny_run):
    """The learner's log-probabilities, computed from logits at the committed positions alone, equal
    those read off the full [n, L, V] logits of the same forward."""
    from trainer.model_io import load_model, sequence_builder
    from trainer.rl.learner import Item, token_logprobs
    from trainer.rl.rollout import generate
    from trainer.sampling import OutputSlots, ParallelSampler, Prompt, SamplerConfig

    policy = load_model(str(trained_tiny_run)).eval()
    builder = sequence_builder(str(trained_tiny_run))
    layout = builder.layout
    sampler = SamplerConfig(steps=4, image_tokens=16, block_length=64, text_temperature=0.7, image_cfg_scale=0.0,
                            image_temperature=1.3, image_updates=None, image_start=0.0)
    prompts = [Prompt("generate", [5, 6, 7]), Prompt("edit", [8, 9], list(range(16)))]
    with torch.no_grad():
        rollouts = generate(ParallelSampler(policy, builder, sampler), prompts, [1, 2], [[0, 2], [1, 3]])
        items = [Item(r.prompt, r.before[j], r.after[j], 0.0) for r in rollouts for j in range(2)]
        lean = token_logprobs(policy, items, builder, sampler)
        ids, attention, positions = ParallelSampler(policy, builder, sampler).inputs([it.prompt for it in items], "cpu")
        before, after = torch.stack([it.before for it in items]), torch.stack([it.after for it in items])
        logits = policy(ids.scatter(1, positions, before), attention)
    slots = OutputSlots(16, builder.config.reasoning_len)
    full = torch.zeros_like(lean)
    rows = torch.arange(len(items))[:, None]
    text = logits[rows, positions[:, slots.text], :layout.text_vocab_size].float()
    text[..., layout.mask_id] = float("-inf")
    full[:, slots.text] = torch.log_softmax(text / 0.7, -1).gather(-1, after[:, slots.text, None]).squeeze(-1)
    lo = layout.image_token_offset
    image = logits[rows, positions[:, slots.image], lo:lo + layout.image_codebook_size].float()
    full[:, slots.image] = torch.log_softmax(image / 1.3, -1).gather(-1, (after[:, slots.image] - lo).clamp(0, 8191)[..., None]).squeeze(-1)
    committed = before != after
    assert committed[:, slots.text].any() and committed[:, slots.image].any()
    assert torch.allclose(lean, full.masked_fill(~committed, 0.0), atol=1e-4)
    assert (lean[~committed] == 0).all() and (lean[committed] < 0).all()


def test_windowed_text_score_reads_beyond_clips_77_tokens(tmp_path):
    """Truncation scores only a text's first 75 BPE tokens: what follows cannot move the reward. The
    windowed score reads every 75-token window, so text past the first window moves it."""
    from jobs.tiny_models import build_tiny_clip
    from trainer.rl.reward import ClipScorer

    clip = build_tiny_clip(tmp_path / "clip")
    truncate = ClipScorer(ClipConfig(model=f"local-dir:{clip}", device="cpu"))
    windows = ClipScorer(ClipConfig(model=f"local-dir:{clip}", device="cpu", text="windows"))
    head = " ".join(["a red circle on a blue square"] * 15)  # > 75 tokens
    assert len(windows.tokenizer.encode(head)) > 75
    a, b = head + " then a small green tree", head + " with a large yellow boat"
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)
    plain = truncate.score(images, [a, b])
    windowed = windows.score(images, [a, b])
    assert plain[0] == pytest.approx(float(truncate.score(images[:1], [head])[0]), abs=1e-6)  # the tail never reaches CLIP
    assert plain[0] == pytest.approx(float(plain[1]), abs=1e-6) or images[0].ne(images[1]).any()
    assert abs(float(windowed[0]) - float(windows.score(images[:1], [head])[0])) > 1e-4  # the tail moves it
    assert windows.windows(a).shape == (2, 77) and windows.windows("").shape == (1, 77)
    short = "a red circle"
    assert windows.score(images[:1], [short]) == pytest.approx(truncate.score(images[:1], [short]), abs=1e-6)
    with pytest.raises(ValueError, match="truncate or windows"):
        ClipConfig(text="pooled")


def _always_two(image, text):  # out of [0, 1] on purpose
    return 2.0


def test_reward_functions_are_imported_checked_and_held_to_their_range():
    """`reward=MODULE:FUNCTION`: a name that is neither a reward nor MODULE:FUNCTION is refused with
    the config, an unimportable one when the reward loads, and a score outside [0, 1] stops the step
    (normalised by the identity it would outweigh every other rollout)."""
    from trainer.rl.pararl import RLConfig
    from trainer.rl.reward import FunctionScorer

    with pytest.raises(ValueError, match="MODULE:FUNCTION"):
        RLConfig(dataset="d@1", model="m", reward="large_share")
    assert RLConfig(dataset="d@1", model="m", reward="tests.helpers:large_share").reward == "tests.helpers:large_share"
    with pytest.raises(ValueError, match="cannot import nothing from tests.helpers"):
        FunctionScorer("tests.helpers:nothing")
    images = torch.zeros(2, 3, 8, 8)
    assert FunctionScorer("tests.helpers:large_share").score(images, ["a large and a small one", "none"]).tolist() == [0.5, 0.0]
    with pytest.raises(ValueError, match=r"returned 2.0: a score must be within \[0, 1\]"):
        FunctionScorer("tests.test_rl:_always_two").score(images, ["a", "b"])


def test_rollout_plans_depend_only_on_seed_step_and_prompt():
    """A prompt's seeds and recorded steps come from (seed, step, prompt index) alone, so any rank
    draws the same ones; `reward_at=final` records the last step only (the output-level baseline)."""
    from trainer.rl.rollout import rollout_plan

    seeds, fixed = rollout_plan(0, 5, 3, 4, 16, 3, "trajectory", "fixed")
    assert len(seeds) == len(set(seeds)) == 4 and fixed == [[4, 10, 15]] * 4
    assert rollout_plan(0, 5, 3, 4, 16, 3, "trajectory", "fixed")[0] == seeds
    assert rollout_plan(0, 5, 4, 4, 16, 3, "trajectory", "fixed")[0] != seeds  # another prompt
    assert rollout_plan(0, 6, 3, 4, 16, 3, "trajectory", "fixed")[0] != seeds  # another step
    _, randomly = rollout_plan(0, 5, 3, 4, 16, 3, "trajectory", "random")
    assert all(len(r) == 3 and r[-1] == 15 and r == sorted(set(r)) for r in randomly)
    assert rollout_plan(0, 5, 3, 4, 16, 3, "final", "fixed")[1] == [[15]] * 4
