"""The shapes world's small models: the word-level tokenizer, the small MAGVIT-v2, its training."""

import json
import random
import re

import pytest
import torch

from annotators.world.scene import BACKGROUNDS, COLOURS, SHAPES, Scene, Shape, random_edit, random_scene
from jobs.world_models import (
    RESOLUTION,
    UNK,
    WORLD_MAGVIT,
    build_world_tokenizer,
    cell_codes,
    clip_batch,
    one_attribute_variant,
    reconstruction_loss,
    render_batch,
    train_magvit,
    world_scenes,
)
from pipeline.hub import load_text_tokenizer
from pipeline.image_tokenizer import MagvitV2, MagvitV2Config
from pipeline.image_tokenizer.magvit import config_from_json
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
    layout = TokenLayout.from_tokenizer(world_tokenizer, embedding_size=len(world_tokenizer) + 512, image_codebook_size=512)
    assert layout.mask_id == vocab["<|mdm_mask|>"] == world_tokenizer.mask_token_id
    assert (layout.bos_id, layout.eos_id) == (world_tokenizer.bos_token_id, world_tokenizer.eos_token_id)
    assert layout.interleave_id == vocab["<|interleave|>"] and layout.image_token_offset == len(world_tokenizer)
    assert world_tokenizer("<|soi|> red <|eoi|>")["input_ids"] == [layout.soi_id, vocab["red"], layout.eoi_id]


def test_small_magvit_round_trips_through_the_published_layout(tmp_path):
    torch.manual_seed(0)
    magvit = MagvitV2(WORLD_MAGVIT).eval()
    folder = magvit.save_pretrained(tmp_path / "magvit")
    spec = json.loads((folder / "config.json").read_text())
    assert spec["_class_name"] == "MAGVITv2" and spec["base_channels"] == WORLD_MAGVIT.base_channels
    loaded = MagvitV2.from_pretrained(str(folder))
    assert loaded.config == WORLD_MAGVIT
    assert all(torch.equal(a, b) for a, b in zip(magvit.state_dict().values(), loaded.state_dict().values()))

    scenes = world_scenes(random.Random(0), 2)
    codes = loaded.encode(render_batch(scenes))
    assert codes.shape == (2, 9) and codes.max() < WORLD_MAGVIT.codebook_size == 512  # one code per 16 px cell at 48 px
    assert torch.equal(codes, magvit.encode(render_batch(scenes)))
    assert loaded.decode(codes, (3, 3)).shape == (2, 3, RESOLUTION, RESOLUTION)

    # The published config.json (no architecture fields) still names the full-size default.
    assert config_from_json({"_class_name": "MAGVITv2", "_diffusers_version": "0.30.1"}) == MagvitV2Config()


def test_cell_codes_name_each_cell_content():
    scene = Scene("beige", (Shape("circle", "red", (0, 0), True), Shape("square", "white", (2, 2), False)))
    bits = cell_codes([scene])[0]  # [9, 3, 3]
    value = ((bits > 0).long() * 2 ** torch.arange(8, -1, -1).view(-1, 1, 1)).sum(0)
    assert value[0, 0] == 1 << 7 | 1 << 3 | 0 << 1 | 1  # beige, red (colour 1), circle, large
    assert value[2, 2] == 1 << 7 | 8 << 3 | 1 << 1  # beige, white (colour 8), square, small
    assert value[1, 1] == 1 << 7  # beige, empty
    assert len({tuple(cell_codes([s])[0, :, 0, 0].tolist()) for s in _one_cell_scenes()}) == 3 * (1 + 8 * 3 * 2)


def _one_cell_scenes():
    yield from (Scene(bg, ()) for bg in BACKGROUNDS)
    yield from (Scene(bg, (Shape(k, c, (0, 0), large),)) for bg in BACKGROUNDS for k in SHAPES for c in COLOURS
                for large in (False, True))


def test_a_short_train_magvit_lowers_the_reconstruction_loss(tmp_path):
    torch.set_num_threads(1)
    pixels = render_batch(world_scenes(random.Random("test"), 32))
    torch.manual_seed(0)
    with torch.no_grad():
        before = reconstruction_loss(MagvitV2(WORLD_MAGVIT), pixels).item()  # train_magvit's initial weights
    folder = train_magvit(tmp_path / "magvit", steps=40, seed=0, eval_scenes=20, log_every=40)
    with torch.no_grad():
        after = reconstruction_loss(MagvitV2.from_pretrained(str(folder)), pixels).item()
    assert after < 0.6 * before, (before, after)


def test_one_attribute_variants_differ_from_their_scene_in_one_attribute():
    rng = random.Random(0)
    for _ in range(500):
        scene = random_scene(rng, rng.randint(1, 4))
        variant = one_attribute_variant(rng, scene)
        changed = [(a, b) for a, b in zip(scene.shapes, variant.shapes) if a != b]
        assert variant.background == scene.background and len(changed) == 1
        (a, b), = changed
        assert sum(getattr(a, f) != getattr(b, f) for f in ("kind", "colour", "cell", "large")) == 1
        assert len({(s.kind, s.colour) for s in variant.shapes}) == len(variant.shapes)  # still nameable
    assert len(clip_batch(rng, 4)) == 16
