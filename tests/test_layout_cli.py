"""`trainer layout` and `trainer sequence`: a model's token layout read from its own tokenizer and
embedding, and the exact rows the trainer builds, through the CLI users run."""

import json
import subprocess

import pytest

from tests.helpers import BIN


def trainer(*args, check=True):
    r = subprocess.run([str(BIN / "trainer"), *map(str, args)], capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def published_tiny(tmp_path_factory):
    """A tiny MMaDA in the published -M layout: LLaDA's 126349-entry tokenizer, 134656 embeddings."""
    from jobs.tiny_models import build_published_layout_mmada

    return build_published_layout_mmada(tmp_path_factory.mktemp("published-tiny"))


def test_layout_of_a_published_layout_checkpoint(published_tiny):
    layout = json.loads(trainer("layout", "--model", published_tiny).stdout)
    assert (layout["image_token_offset"], layout["vocab_size"], layout["image_codebook_size"]) == (126349, 134656, 8192)
    assert (layout["mask_id"], layout["bos_id"], layout["eos_id"], layout["soi_id"], layout["interleave_id"]) == (
        126336, 126080, 126081, 126084, 126095)


def test_sequence_shows_the_rows_sft_builds(trained_tiny_run, tokenized_demo, published_tiny):
    from pipeline.registry import DatasetRegistry
    from trainer.model_io import sequence_builder
    from trainer.sequence import UNCONDITIONAL

    registry, ref = tokenized_demo
    rows = DatasetRegistry(registry).read_table(DatasetRegistry(registry).resolve(ref)).to_pylist()
    index = next(i for i, r in enumerate(rows) if r["task"] == "generate")
    builder = sequence_builder(str(trained_tiny_run))
    for extra, drop in (([], None), (["--uncond"], UNCONDITIONAL)):
        view = json.loads(trainer("sequence", ref, "--model", trained_tiny_run, "--registry", registry,
                                  "--index", index, "--json", *extra).stdout)
        ids, image, text = builder.row(rows[index], drop) if drop else builder.row(rows[index])
        assert (view["input_ids"], view["image_target"], view["text_target"]) == (ids, image, text)
        assert view["attention_mask"] == [1] * len(ids) and view["preset"] == "mmada-parallel-m"
        block = ids[2:18]  # a generation is an edit of the black image (its codes, or raw 0 when dropped)
        expected = [0] * 16 if drop else [builder.layout.image_token(c) for c in builder.blank_image_codes]
        assert ids[0] == builder.layout.interleave_id and block == expected
    table = trainer("sequence", ref, "--model", trained_tiny_run, "--registry", registry, "--index", index).stdout
    assert "input image" in table and "reasoning [target after bos]" in table and "16 image" in table
    # the demo was tokenized with a small tokenizer: a published-layout model refuses it at start
    bad = trainer("sequence", ref, "--model", published_tiny, "--registry", registry, check=False)
    assert bad.returncode != 0 and "text tokenizer of" in bad.stderr and "126349" in bad.stderr
