"""The shapes world's small models: the word-level tokenizer, the small MAGVIT-v2, its training."""

import random
import re

import pytest

from jobs.world_models import UNK, build_world_tokenizer
from pipeline.demo_data import random_edit, random_scene
from pipeline.hub import load_text_tokenizer
from schemas import TokenLayout
from schemas.token_layout import TOKEN_NAMES


def _words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text)


@pytest.fixture(scope="module")
def world_tokenizer(tmp_path_factory):
    return load_text_tokenizer(str(build_world_tokenizer(tmp_path_factory.mktemp("world") / "tokenizer")))


def test_world_tokenizer_covers_every_instruction_and_description(world_tokenizer):
    rng = random.Random(0)
    unk = world_tokenizer.convert_tokens_to_ids(UNK)
    for _ in range(2000):
        scene = random_scene(rng, rng.randint(1, 4))
        _, instruction, edited = random_edit(rng, scene)
        for text in (instruction, scene.describe(), edited.describe(), f"Draw this scene: {scene.describe()}"):
            ids = world_tokenizer(text)["input_ids"]
            assert unk not in ids, text
            assert _words(world_tokenizer.decode(ids)) == _words(text)


def test_world_tokenizer_reads_traces_and_special_tokens(world_tokenizer):
    trace = ("The instruction asks to move the red circle from the top left to the centre. The blue square stays "
             "where it is. The edited picture should hold a small red circle in the centre and a large blue square "
             "in the bottom, on a beige background. I will draw the scene; everything else keeps its place.")
    ids = world_tokenizer(trace)["input_ids"]
    assert world_tokenizer.convert_tokens_to_ids(UNK) not in ids
    assert world_tokenizer.decode(ids).replace(" ;", ";") == trace
    assert world_tokenizer(trace)["input_ids"][0] != world_tokenizer.bos_token_id  # no implicit bos, as LLaDA's
    assert world_tokenizer("zebra")["input_ids"] == [world_tokenizer.convert_tokens_to_ids(UNK)]

    vocab = world_tokenizer.get_vocab()
    assert all(token in vocab for token in TOKEN_NAMES.values())
    layout = TokenLayout.from_tokenizer(world_tokenizer, embedding_size=len(world_tokenizer) + 8192)
    assert layout.mask_id == vocab["<|mdm_mask|>"] == world_tokenizer.mask_token_id
    assert (layout.bos_id, layout.eos_id) == (world_tokenizer.bos_token_id, world_tokenizer.eos_token_id)
    assert layout.interleave_id == vocab["<|interleave|>"] and layout.image_token_offset == len(world_tokenizer)
    assert world_tokenizer("<|soi|> red <|eoi|>")["input_ids"] == [layout.soi_id, vocab["red"], layout.eoi_id]
