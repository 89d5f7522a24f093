"""`trainer sft` on real DeepSpeed (CPU, gloo) with a tiny model on the tokenized demo data."""

import json
import sys
from pathlib import Path

import pytest
import torch

from pipeline.registry import DatasetRegistry
from tests.helpers import BIN, free_port, kill_when, metrics, run_trainer, sft_args, sft_settings
from trainer.data import ShardLoader


def test_loader_is_deterministic_sharded_and_resumable(tokenized_demo):
    registry, ref = tokenized_demo
    a = ShardLoader(ref, registry, batch_size=3, rank=0, world_size=2, seed=7)
    b = ShardLoader(ref, registry, batch_size=3, rank=1, world_size=2, seed=7)
    first = [r["reasoning_ids"] for r in a.next_rows()]
    assert not set(map(tuple, first)) & set(map(tuple, (r["reasoning_ids"] for r in b.next_rows())))
    a.next_rows()
    state = a.state_dict()
    expected = [a.next_rows() for _ in range(5)]  # crosses into the next epoch
    c = ShardLoader(ref, registry, batch_size=3, rank=0, world_size=2, seed=7)
    c.load_state_dict(state)
    assert [c.next_rows() for _ in range(5)] == expected
    assert c.state_dict()["epoch"] == 1
    with pytest.raises(ValueError, match="world size"):
        ShardLoader(ref, registry, batch_size=3, rank=0, world_size=1, seed=7).load_state_dict(state)


def test_kill_and_resume_repeats_the_loss_sequence_bitwise(tokenized_demo, tmp_path):
    registry, ref = tokenized_demo
    clean = tmp_path / "clean"
    run_trainer(sft_args(registry, ref, clean, steps=30, save_every=10))
    resumed = tmp_path / "resumed"
    marker = resumed / "checkpoints" / "step-10" / "done"
    kill_when([str(BIN / "trainer"), *sft_args(registry, ref, resumed, steps=30, save_every=10)], marker.exists, 600)
    assert not (resumed / "checkpoints" / "step-30").exists()
    run_trainer(sft_args(registry, ref, resumed, steps=30, save_every=10))
    a, b = metrics(clean), metrics(resumed)
    assert sorted(a) == sorted(b) == list(range(1, 31))
    assert [a[s]["loss"] for s in a] == [b[s]["loss"] for s in a]  # bitwise, step by step
    assert [p.name for p in sorted((resumed / "checkpoints").glob("step-*"))] == ["step-10", "step-20", "step-30"]
    # resuming with other settings would mix two runs in one: refused, unless forced (both kept)
    changed = [*sft_args(registry, ref, resumed, steps=31, save_every=10), "--set", "optim.lr=0.5"]
    r = run_trainer(changed, check=False)
    assert r.returncode == 2 and "optim: " in r.stderr and "resume=force" in r.stderr, r.stderr[-2000:]
    run_trainer([*changed, "--set", "resume=force"])
    assert json.loads((resumed / "config.json").read_text())["optim"]["lr"] == 0.5
    assert json.loads((resumed / "config.before-step-31.json").read_text())["optim"]["lr"] != 0.5


def test_a_tiny_model_learns_the_demo_task_and_exports(trained_tiny_run, tmp_path):
    run = trained_tiny_run
    records = metrics(run)
    late = [records[s] for s in range(71, 81)]
    text_acc = sum(r["text_acc"] for r in late) / 10
    image_loss = sum(r["image_loss"] for r in late) / 10
    print(f"after 80 steps: text masked-token accuracy {text_acc:.3f}, image CE {image_loss:.2f}")
    assert text_acc > 0.1, text_acc  # chance is ~1/1000
    # Codes of a random-weight MAGVIT are hard to predict: in a short run image accuracy stays near
    # zero, but the image cross-entropy must fall well below the uniform guess, log(~9000) = 9.1.
    assert image_loss < 8.0, image_loss
    assert records[80]["loss"] < records[1]["loss"] / 2
    saved = json.loads((run / "config.json").read_text())
    assert saved["optim"]["schedule"] == "cosine"  # the learning-rate schedule is in the run's record

    from trainer.model_io import load_model, sequence_builder

    own = run_trainer(["export", str(run), "--out", str(run)], check=False)  # would overwrite the run's config
    assert own.returncode == 2 and "the run's own folder" in own.stderr, own.stderr[-2000:]
    out = tmp_path / "exported"
    run_trainer(["export", str(run), "--out", str(out)])
    model = load_model(str(out))
    trained = sequence_builder(str(run))  # the layout the run was trained with travels with the export
    assert sequence_builder(str(out)).to_dict() == trained.to_dict()
    assert trained.config.preset == "mmada-parallel-m" and len(trained.blank_image_codes) == 16
    assert model.config.n_layers == 2 and model.config.embedding_size == trained.layout.vocab_size
    assert trained.layout.vocab_size == trained.layout.image_token_offset + 8192
    assert torch.isfinite(model(torch.zeros(1, 8, dtype=torch.long))).all()
    assert json.loads((out / "paraforge_export.json").read_text())["training"]["sequence"]["reasoning_len"] == 256


def test_a_version_the_sequences_cannot_hold_is_refused_before_the_first_step(tokenized_demo, llada_tokenizer_dir):
    """One length contract: rows tokenize accepted but the sequence cannot hold fail at start, with a
    message naming the fix, not mid-run; so does a version tokenized for another vocabulary."""
    import dataclasses

    from pipeline.tokenize import load_text_tokenizer
    from schemas import SequenceConfig, TokenLayout
    from trainer.sequence import SequenceBuilder, recorded_blank_codes

    registry, ref = tokenized_demo
    text = load_text_tokenizer(str(llada_tokenizer_dir))
    layout = TokenLayout.from_tokenizer(text, len(text) + 8192)
    fits = ShardLoader(ref, registry, batch_size=2)
    blank = recorded_blank_codes(fits.manifest)
    longest = max(len(r["reasoning_ids"]) for r in fits.rows.table.to_pylist())
    ShardLoader(ref, registry, 2, builder=SequenceBuilder(layout, SequenceConfig(), blank))  # 256 holds the demo
    short = SequenceConfig(instruction_len=longest + 1, reasoning_len=longest + 1)
    with pytest.raises(ValueError, match=f"reasoning of {longest} tokens; sequence.reasoning_len {longest + 1} holds"):
        ShardLoader(ref, registry, 2, builder=SequenceBuilder(layout, short, blank))
    from trainer.data import check_compatible
    with pytest.raises(ValueError, match=f"reasoning of {longest} tokens"):  # a version without the recorded facts
        check_compatible(dataclasses.replace(fits.manifest, stats={}), SequenceBuilder(layout, short, blank),
                         DatasetRegistry(registry))
    other = dataclasses.replace(layout, image_token_offset=len(text) + 1, vocab_size=layout.vocab_size + 1)
    with pytest.raises(ValueError, match=f"text tokenizer of {len(text)} entries"):
        ShardLoader(ref, registry, 2, builder=SequenceBuilder(other, SequenceConfig(), blank))
    with pytest.raises(ValueError, match="no blank image codes"):
        ShardLoader(ref, registry, 2, builder=SequenceBuilder(layout, SequenceConfig(), None))
    # the ids themselves are checked, not only what the manifest says of them
    import pyarrow as pa

    from trainer.data import check_ranges

    builder = SequenceBuilder(layout, SequenceConfig(), blank)
    check_ranges(fits.rows.table, builder, ref)
    codes = fits.rows.table["output_image_codes"].combine_chunks()
    flat = codes.values.to_numpy().copy()
    flat[5] = 8192  # one code past the codebook
    bad = fits.rows.table.set_column(fits.rows.table.schema.get_field_index("output_image_codes"), "output_image_codes",
                                pa.FixedSizeListArray.from_arrays(pa.array(flat), codes.type.list_size))
    with pytest.raises(ValueError, match=r"output_image_codes holds ids in \[\d+, 8192\], outside \[0, 8192\)"):
        check_ranges(bad, builder, ref)


def test_two_process_gloo_run(tokenized_demo, tmp_path):
    registry, ref = tokenized_demo
    run = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_port", str(free_port()), "-m", "trainer.cli"]
    r = run_trainer(sft_args(registry, ref, run, legacy=True, steps=4, save_every=4), launcher=launcher)
    assert "bare key=value overrides are deprecated; write --set key=value" in r.stderr  # still runs
    files = sorted(p.name for p in (run / "checkpoints" / "step-4").iterdir())
    assert "zero_pp_rank_0_mp_rank_00_optim_states.pt" in files and "zero_pp_rank_1_mp_rank_00_optim_states.pt" in files
    assert sorted(metrics(run)) == [1, 2, 3, 4]


def test_ray_train_torchtrainer_with_two_workers(tokenized_demo, tmp_path, ray_local):
    from pipeline.config import load_config
    from trainer.ray_train import train_on_ray
    from trainer.sft import SFTConfig

    registry, ref = tokenized_demo
    run = tmp_path / "ray"
    train_on_ray(load_config(SFTConfig, None, sft_settings(registry, ref, run, steps=3, save_every=3, ray_workers=2)))
    files = {p.name for p in (run / "checkpoints" / "step-3").iterdir()}
    assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= files
    assert sorted(metrics(run)) == [1, 2, 3]
    assert json.loads((run / "config.json").read_text())["ray_workers"] == 2  # the launch is in the run's record


class _Payload:
    """A pickle that, when loaded, touches a file: what a crafted run folder would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_sft_starts_from_an_exported_model_with_its_weights(tokenized_demo, trained_tiny_run, tmp_path):
    """`model=FOLDER` (the published layout, what `trainer export` writes): the user's path from a
    real checkpoint. Its first step's loss must be the trained model's, not a random init's."""
    registry, ref = tokenized_demo
    exported, run = tmp_path / "exported", tmp_path / "continued"
    run_trainer(["export", str(trained_tiny_run), "--out", str(exported)])
    run_trainer(sft_args(registry, ref, run, init="null", model=exported, steps=2, save_every=2))
    trained, continued = metrics(trained_tiny_run), metrics(run)
    # random init starts where the trained run started; the export starts near where it ended
    assert continued[1]["loss"] < 0.6 * trained[1]["loss"], (continued[1]["loss"], trained[1]["loss"])


def test_reading_a_run_folder_never_unpickles_it(trained_tiny_run, tmp_path):
    """export / sample / eval / rl read a run's `model.safetensors` and JSON only: a run folder whose
    DeepSpeed files are booby-trapped pickles exports fine and runs nothing; one without the
    safetensors file is refused by name."""
    import shutil

    from trainer.model_io import export, load_model

    run = tmp_path / "crafted"
    shutil.copytree(trained_tiny_run, run)
    marker = tmp_path / "pwned"
    [tag] = [p for p in (run / "checkpoints").iterdir() if p.is_dir()]
    for pickle_file in tag.glob("*.pt"):
        torch.save({"module": _Payload(marker)}, pickle_file)
    export(str(run), str(tmp_path / "out"))
    assert not marker.exists() and load_model(str(tmp_path / "out")) is not None
    (tag / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="has no model.safetensors"):
        load_model(str(run))
    assert not marker.exists()


@pytest.mark.parametrize("setting, message", [
    ({"cfg_dropout": 1.5}, "cfg_dropout is a probability"),
    ({"image_coef": -1.0}, "must be >= 0"),
    ({"text_coef": 0.0, "image_coef": 0.0}, "not both 0"),
])
def test_sft_config_refuses_settings_that_cannot_train(setting, message):
    from pipeline.config import load_config
    from trainer.sft import SFTConfig

    with pytest.raises(ValueError, match=message):
        load_config(SFTConfig, dataset="d@v", **setting)
