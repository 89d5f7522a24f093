"""The parallel sampler: schedules, invariants of the decoding loop, batching, CFG, modes, the CLI."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from schemas import TokenLayout
from trainer.model import MMaDAConfig, MMaDAModel
from trainer.sampling import (
    ParallelSampler,
    Prompt,
    SamplerConfig,
    image_schedule,
    image_update_steps,
    text_schedule,
)

LAYOUT = TokenLayout.compact(1024)
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = MMaDAConfig(d_model=64, n_heads=4, n_layers=2, mlp_hidden_size=128,
                         embedding_size=LAYOUT.vocab_size, vocab_size=LAYOUT.text_vocab_size)
    return MMaDAModel(config).eval()


def small(**overrides) -> SamplerConfig:
    values = dict(steps=12, image_tokens=16, reasoning_len=21, instruction_len=12, block_length=8,
                  text_temperature=0.8, image_cfg_scale=2.0)
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
    counts = image_schedule(n, k)
    masked = n
    for i, c in enumerate(counts):
        masked -= c
        expected = 0 if i == k - 1 else max(1, math.floor(n * math.cos(math.pi / 2 * (i + 1) / k)))
        assert masked == expected
    assert sum(counts) == n
    assert image_update_steps(100, None, 0.25) == list(range(25, 100))
    at = image_update_steps(100, 30, 0.25)
    assert len(at) == len(set(at)) == 30 and at[0] == 25 and at[-1] == 99
    with pytest.raises(ValueError):
        image_update_steps(10, 11, 0.0)


def run_all_steps(model, cfg, prompts=PROMPTS):
    sampler = ParallelSampler(model, LAYOUT, cfg)
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
    sampler = ParallelSampler(model, LAYOUT, small())
    a = sampler.sample(PROMPTS)
    b = sampler.sample(PROMPTS, record_steps=[0, 5, -1])
    assert torch.equal(a.output, b.output) and [s.step for s in b.trajectory] == [0, 5, 11]
    c = ParallelSampler(model, LAYOUT, small(seed=1)).sample(PROMPTS)
    assert not torch.equal(a.output, c.output)
    greedy = ParallelSampler(model, LAYOUT, small(text_temperature=0.0, image_temperature=0.0,
                                                  image_choice_temperature=0.0))
    assert torch.equal(greedy.sample(PROMPTS).output, greedy.sample(PROMPTS, seeds=[7, 8, 9]).output)


def test_a_prompt_gives_the_same_output_alone_or_in_a_padded_batch(model):
    sampler = ParallelSampler(model, LAYOUT, small())
    batched = sampler.sample(PROMPTS)
    for i, prompt in enumerate(PROMPTS):  # generate rows are shorter: padded, with a key mask
        alone = sampler.sample([prompt], seeds=[i])
        assert torch.equal(alone.output[0], batched.output[i])


class Recorder(torch.nn.Module):
    """Wraps the real model to see what the sampler feeds it."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, ids, mask):
        self.calls.append((ids.clone(), None if mask is None else mask.clone()))
        return self.model(ids, mask)


def test_cfg_batches_unconditional_rows_without_instruction_and_input_image(model):
    recorder = Recorder(model)
    guided = ParallelSampler(recorder, LAYOUT, small()).sample(PROMPTS[:1])
    ids, mask = recorder.calls[0]
    assert ids.shape[0] == 2 and len(recorder.calls) == 12
    cond, uncond = ids[0][mask[0].bool()], ids[1][mask[1].bool()]
    assert LAYOUT.is_image_token(cond).sum() == 16  # the input image; the output slots are all masked yet
    assert 5 in cond.tolist() and 5 not in uncond.tolist()  # the instruction is dropped
    assert (uncond == LAYOUT.soi_id).sum() == 1  # only the output image's soi is left
    recorder.calls.clear()
    plain = ParallelSampler(recorder, LAYOUT, small(image_cfg_scale=0.0)).sample(PROMPTS[:1])
    assert recorder.calls[0][0].shape[0] == 1  # no guidance: no unconditional rows
    assert not torch.equal(guided.output, plain.output)


def test_trainer_sample_cli_writes_reasoning_image_and_trajectory(trained_tiny_run, magvit_dir, llada_tokenizer_dir,
                                                                 demo_dir, tmp_path):
    out = tmp_path / "sample"
    image = sorted((demo_dir / "images").glob("*"))[0]
    r = subprocess.run([str(BIN / "trainer"), "sample", "--model", str(trained_tiny_run),
                        "--image-tokenizer", str(magvit_dir), "--text-tokenizer", str(llada_tokenizer_dir),
                        "--input", str(image), "--instruction", "make the circle blue", "--resolution", "64",
                        "--out", str(out), "--trajectory", "sampler.steps=16", "sampler.block_length=64",
                        "trajectory_frames=4"], capture_output=True, text=True, timeout=600)
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
