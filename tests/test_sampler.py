"""The parallel sampler: schedules, invariants of the decoding loop, batching, CFG, modes, the CLI."""

import math
import os
import subprocess

import pytest
import torch

from schemas import SequenceConfig, TokenLayout
from tests.helpers import BIN
from trainer.model import MMaDAConfig, MMaDAModel
from trainer.sampling import (
    ParallelSampler,
    Prompt,
    SamplerConfig,
    draw_codes,
    image_schedule,
    image_update_steps,
    plan,
    text_schedule,
)
from trainer.sequence import SequenceBuilder

LAYOUT = TokenLayout.compact(1024)
# The paraforge preset: generation rows are shorter than edits, so batches are padded.
BUILDER = SequenceBuilder(LAYOUT, SequenceConfig(preset="paraforge", instruction_len=12, reasoning_len=21))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = MMaDAConfig(d_model=64, n_heads=4, n_layers=2, mlp_hidden_size=128,
                         embedding_size=LAYOUT.vocab_size, vocab_size=LAYOUT.text_vocab_size)
    return MMaDAModel(config).eval()


def small(**overrides) -> SamplerConfig:
    values = dict(steps=12, image_tokens=16, block_length=8, text_temperature=0.8, image_cfg_scale=2.0,
                  image_updates=None, image_start=0.0)
    return SamplerConfig(**{**values, **overrides})


PROMPTS = [Prompt("edit", [5, 6, 7], list(range(16))), Prompt("generate", [9, 10, 11, 12]),
           Prompt("edit", [40], list(range(100, 116)))]


def test_text_schedule_is_linear_per_block_remainder_first():
    s = text_schedule(n_tokens=20, block_length=8, steps=7)  # blocks 8, 8, 4; steps 3, 2, 2
    assert [(t.block_start, t.block_end) for t in s] == [(0, 8)] * 3 + [(8, 16)] * 2 + [(16, 20)] * 2
    assert [t.count for t in s] == [3, 3, 2, 4, 4, 2, 2]
    assert sum(t.count for t in s) == 20
    with pytest.raises(ValueError, match="steps >= 3"):
        text_schedule(20, 8, 2)


def test_image_schedule_is_maskgit_cosine():
    n, k = 64, 10
    counts = image_schedule(n, [(i + 1) / k for i in range(k)])
    masked = n
    for i, c in enumerate(counts):
        masked -= c
        expected = 0 if i == k - 1 else max(1, math.floor(n * math.cos(math.pi / 2 * (i + 1) / k)))
        assert masked == expected
    assert sum(counts) == n
    assert image_update_steps(100, None, 0.25) == list(range(25, 100))
    at = image_update_steps(100, 30, 0.25)
    assert len(at) == len(set(at)) == 30 and at[0] == 25 and at[-1] == 99
    assert image_update_steps(10, 11, 0.0) == list(range(10))  # at most the steps there are
    with pytest.raises(ValueError):
        image_update_steps(10, 0, 0.0)


def test_defaults_are_the_published_inference_schedule():
    """128 steps, image updates at round(linspace(32, 127, 30)), the cosine over the shared timeline
    (masked after step s: floor(N cos(pi/2 (s+1)/128))), one text block, choice noise 1 - (s+1)/S."""
    cfg = SamplerConfig()
    assert (cfg.steps, cfg.block_length, cfg.image_choice_temperature, cfg.image_cfg_scale) == (128, None, 1.0, 4.0)
    steps = plan(cfg.mode, cfg.steps, 255, cfg.block_length, 1024, cfg.image_updates, cfg.image_start)
    at = [s for s, p in enumerate(steps) if p.image]
    assert at == [round(32 + i * 95 / 29) for i in range(30)]
    masked = 1024
    for s in at[:-1]:
        masked -= steps[s].image.count
        assert masked == math.floor(1024 * math.cos(math.pi / 2 * (s + 1) / 128))
        assert steps[s].image.ratio == (s + 1) / 128
    assert {(p.text.block_start, p.text.block_end) for p in steps} == {(0, 255)}  # one block of L - 1


def run_all_steps(model, cfg, prompts=PROMPTS):
    sampler = ParallelSampler(model, BUILDER, cfg)
    return sampler, sampler.sample(prompts, record_steps=list(range(len(sampler.schedule))))


@pytest.mark.parametrize("overrides", [{}, {"image_updates": 5, "image_start": 0.25}, {"block_length": 5},
                                       {"mode": "sequential", "image_updates": 6}])
def test_commits_follow_the_schedule_exactly_and_never_change(model, overrides):
    cfg = small(**overrides)
    sampler, result = run_all_steps(model, cfg)
    slots = result.slots
    assert len(result.trajectory) == len(sampler.schedule) == result.forwards
    for step, todo in zip(result.trajectory, sampler.schedule):
        committed = step.committed
        text_counts = committed[:, slots.text].sum(1).tolist()
        image_counts = committed[:, slots.image].sum(1).tolist()
        assert text_counts == [todo.text.count if todo.text else 0] * len(PROMPTS)
        assert image_counts == [todo.image.count if todo.image else 0] * len(PROMPTS)
        # only masked positions are ever written, and once written they stay
        was_set = step.before != LAYOUT.mask_id
        assert torch.equal(step.after[was_set], step.before[was_set])
        assert torch.equal(result.output[was_set | committed], step.after[was_set | committed])
        if todo.text:  # text commits stay inside the current block
            where = committed[:, slots.text].nonzero()[:, 1]
            assert ((where >= todo.text.block_start) & (where < todo.text.block_end)).all()
        # the prediction agrees with the state wherever the state is decided
        decided = step.after != LAYOUT.mask_id
        assert torch.equal(step.prediction[decided], step.after[decided])
        assert not (step.prediction[:, slots.image] == LAYOUT.mask_id).any()
    assert not (result.output == LAYOUT.mask_id).any()
    assert LAYOUT.is_image_token(result.output[:, slots.image]).all()
    assert (result.output[:, slots.text] < LAYOUT.text_vocab_size).all()


def test_block_length_is_honoured(model):
    cfg = small(block_length=4, steps=20)
    _, result = run_all_steps(model, cfg)
    text = result.slots.text
    for step in result.trajectory:  # a block starts only when every earlier block is complete
        first_commit = step.committed[0, text].nonzero()[:, 0].min().item()
        earlier = step.before[0, text][: first_commit // 4 * 4]
        assert not (earlier == LAYOUT.mask_id).any()


def test_sequential_mode_decodes_all_text_before_any_image(model):
    cfg = small(mode="sequential", image_updates=6)
    _, result = run_all_steps(model, cfg)
    slots = result.slots
    image_steps = [s.step for s in result.trajectory if s.committed[:, slots.image].any()]
    text_steps = [s.step for s in result.trajectory if s.committed[:, slots.text].any()]
    assert max(text_steps) < min(image_steps) and len(result.trajectory) == 12 + 6
    first_image = result.trajectory[min(image_steps)]
    assert not (first_image.before[:, slots.text] == LAYOUT.mask_id).any()
    # parallel: the image moves while the text is still being written
    _, parallel = run_all_steps(model, small())
    assert parallel.trajectory[0].committed[:, slots.image].any()


def test_same_seed_same_output_and_recording_changes_nothing(model):
    sampler = ParallelSampler(model, BUILDER, small())
    a = sampler.sample(PROMPTS)
    b = sampler.sample(PROMPTS, record_steps=[0, 5, -1])
    assert torch.equal(a.output, b.output) and [s.step for s in b.trajectory] == [0, 5, 11]
    c = ParallelSampler(model, BUILDER, small(seed=1)).sample(PROMPTS)
    assert not torch.equal(a.output, c.output)
    greedy = ParallelSampler(model, BUILDER, small(text_temperature=0.0, image_temperature=0.0,
                                                  image_choice_temperature=0.0))
    assert torch.equal(greedy.sample(PROMPTS).output, greedy.sample(PROMPTS, seeds=[7, 8, 9]).output)


def test_a_prompt_gives_the_same_output_alone_or_in_a_padded_batch(model):
    sampler = ParallelSampler(model, BUILDER, small())
    batched = sampler.sample(PROMPTS)
    for i, prompt in enumerate(PROMPTS):  # generate rows are shorter: padded, with a key mask
        alone = sampler.sample([prompt], seeds=[i])
        assert torch.equal(alone.output[0], batched.output[i])


class Recorder(torch.nn.Module):
    """Wraps the real model to see what the sampler feeds it."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, ids, mask, heads=None):
        self.calls.append((ids.clone(), None if mask is None else mask.clone()))
        return self.model(ids, mask, heads=heads)


def test_cfg_batches_unconditional_rows_without_instruction_and_input_image(model):
    recorder = Recorder(model)
    guided = ParallelSampler(recorder, BUILDER, small()).sample(PROMPTS[:1])
    ids, mask = recorder.calls[0]
    assert ids.shape[0] == 2 and len(recorder.calls) == 12
    cond, uncond = ids[0][mask[0].bool()], ids[1][mask[1].bool()]
    assert LAYOUT.is_image_token(cond).sum() == 16  # the input image; the output slots are all masked yet
    assert 5 in cond.tolist() and 5 not in uncond.tolist()  # the instruction is dropped
    assert (uncond == LAYOUT.soi_id).sum() == 1  # only the output image's soi is left
    recorder.calls.clear()
    plain = ParallelSampler(recorder, BUILDER, small(image_cfg_scale=0.0)).sample(PROMPTS[:1])
    assert recorder.calls[0][0].shape[0] == 1  # no guidance: no unconditional rows
    assert not torch.equal(guided.output, plain.output)


def test_cfg_unconditional_rows_follow_the_published_preset(model):
    """mmada-parallel-m: the unconditional row keeps [soi][0 x N][eoi] and an eos-padded empty instruction."""
    published = SequenceBuilder(LAYOUT, SequenceConfig(instruction_len=12, reasoning_len=12), list(range(16)))
    recorder = Recorder(model)
    ParallelSampler(recorder, published, small(steps=4, block_length=None)).sample([PROMPTS[1]])  # a generation
    ids, mask = recorder.calls[0]
    assert mask is None  # one length for every row: no padding, no mask
    cond, uncond = ids[0].tolist(), ids[1].tolist()
    assert cond[:18] == [LAYOUT.interleave_id, LAYOUT.soi_id, *LAYOUT.image_token(torch.arange(16)).tolist(), LAYOUT.eoi_id][:18]
    assert uncond[:30] == [LAYOUT.interleave_id, LAYOUT.soi_id, *[0] * 16, LAYOUT.eoi_id, LAYOUT.bos_id] + [LAYOUT.eos_id] * 10


def test_bf16_and_fp32_sampling_draw_from_the_same_distribution():
    """The image draw from bfloat16 logits (a bf16 model) and from the same logits in float32 give
    the same code histogram, up to sampling noise. The bound: two independent histograms of n draws
    from p differ per code by ~N(0, 2 p (1-p) / n), so E[TV] = 0.5 sum sqrt(4 p / (pi n)); we allow
    1.5x that. The bf16 maths of before (cumulative sum in bf16) is shown to break the same bound."""
    torch.manual_seed(0)
    row = torch.randn(8192) * 2.0
    p = torch.softmax(row.bfloat16().float(), -1)  # what a bf16 model's logits mean
    positions, batches = 4096, 24
    n = positions * batches

    def histogram(logits_dtype, seed, draw=draw_codes):
        counts = torch.zeros(8192)
        g = [torch.Generator().manual_seed(seed)]
        for _ in range(batches):
            codes, _ = draw(row.to(logits_dtype).expand(1, positions, 8192), 1.0, g)
            counts += torch.bincount(codes.flatten(), minlength=8192).float()
        return counts / n

    def old_bf16_draw(logits, temperature, g):  # the sampler's maths before: in the logits' dtype
        weights = (logits - logits.amax(-1, keepdim=True)).exp()
        cdf = weights.cumsum(-1)
        u = torch.rand(cdf.shape[1], generator=g[0])[None].to(cdf.dtype)
        return torch.searchsorted(cdf, (u * cdf[..., -1])[..., None]).squeeze(-1).clamp_max(8191), None

    bound = 1.5 * 0.5 * float(torch.sqrt(4 * p / (math.pi * n)).sum())
    tv = 0.5 * float((histogram(torch.bfloat16, 1) - histogram(torch.float32, 2)).abs().sum())
    floor = 0.5 * float((histogram(torch.float32, 3) - histogram(torch.float32, 4)).abs().sum())
    old = 0.5 * float((histogram(torch.bfloat16, 1, old_bf16_draw) - histogram(torch.float32, 2)).abs().sum())
    zero = int((histogram(torch.bfloat16, 5, old_bf16_draw) == 0).sum())
    print(f"\nimage draw, 8192 codes, {n} draws each: TV(bf16, fp32) {tv:.4f}, TV(fp32, fp32) {floor:.4f}, "
          f"bound {bound:.4f}; bf16 maths of before: TV {old:.4f}, {zero} codes never drawn")
    assert tv < bound and floor < bound
    assert old > 2 * bound


def test_trainer_sample_cli_writes_reasoning_image_and_trajectory(trained_tiny_run, magvit_dir, llada_tokenizer_dir,
                                                                 demo_dir, s3_bucket, tmp_path):
    """From a run folder on an object store (fetched to the cache: its newest checkpoint and files)."""
    import pyarrow.fs as pafs

    fs, bucket = pafs.FileSystem.from_uri(s3_bucket)
    pafs.copy_files(str(trained_tiny_run), f"{bucket}/runs/learn", destination_filesystem=fs)
    out = tmp_path / "sample"
    image = sorted((demo_dir / "images").glob("*"))[0]
    r = subprocess.run([str(BIN / "trainer"), "sample", "--model", f"{s3_bucket}/runs/learn",
                        "--image-tokenizer", str(magvit_dir), "--text-tokenizer", str(llada_tokenizer_dir),
                        "--input", str(image), "--instruction", "make the circle blue", "--resolution", "64",
                        "--out", str(out), "--trajectory", "sampler.steps=16", "sampler.block_length=64",
                        "trajectory_frames=4"], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PARAFORGE_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr[-3000:]
    from PIL import Image

    assert Image.open(out / "output.png").size == (64, 64)
    assert Image.open(out / "trajectory.png").size[0] == 4 * 192
    assert (out / "reasoning.txt").read_text().strip()
    import json

    frames = json.loads((out / "trajectory.json").read_text())
    assert [f["step"] for f in frames] == [0, 5, 10, 15]
    assert frames[0]["masked"] > frames[1]["masked"] > frames[-1]["masked"] == 0
    bad = subprocess.run([str(BIN / "trainer"), "sample", "--model", str(trained_tiny_run), "--task", "edit",
                          "--instruction", "x", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "needs --input" in bad.stderr


def test_heads_give_the_full_logits_slices_at_the_output_positions(model):
    """`heads`: the logits the sampler and the learner read (each modality's positions over its own
    vocabulary), equal to slicing the full [B, L, V] logits, which are never made."""
    from trainer.model import Head

    ids = torch.randint(0, LAYOUT.text_vocab_size, (2, 40))
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    positions = torch.tensor([[3, 5, 7], [10, 2, 29]])
    full = model(ids, mask)
    text, image = model(ids, mask, heads=[Head(positions, 0, LAYOUT.text_vocab_size),
                                          Head(positions[:, :2], LAYOUT.image_token_offset, LAYOUT.vocab_size)])
    rows = torch.arange(2)[:, None]
    assert torch.allclose(text, full[rows, positions, :LAYOUT.text_vocab_size], atol=1e-5)
    assert torch.allclose(image, full[rows, positions[:, :2], LAYOUT.image_token_offset:], atol=1e-5)
    assert image.shape == (2, 2, LAYOUT.vocab_size - LAYOUT.image_token_offset)
