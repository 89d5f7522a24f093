"""The shapes world (annotators/world): the scene model, the exact verifier (pixels and text to
scenes, edit and trace scoring) and the scene annotator backend; and the world's scoring of a
benchmark (jobs.world.score_samples)."""

import dataclasses
import hashlib
import io
import json
import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from annotators.annotator import ReasoningAnnotator, Request, Sample, SamplingConfig
from annotators.backend import BackendConfig, build_backend
from annotators.prompts import load_prompts
from annotators.validators import ValidatorConfig, build_rules, validate
from annotators.world import (
    Scene,
    SceneBackend,
    SceneConfig,
    Shape,
    consistency,
    parse_scene,
    random_edit,
    random_scene,
    read_scene,
    verify,
)
from annotators.world.scene_backend import write_trace
from jobs.world_ablation import AblationConfig, ablation_table
from pipeline.demo_data import make_demo_data


def scenes(seed: int, n: int) -> list[Scene]:
    """Random scenes of 1-4 shapes and their edits (up to 5 shapes)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        scene = random_scene(rng, rng.randint(1, 4))
        out.append(random_edit(rng, scene)[2] if rng.random() < 0.5 else scene)
    return out


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize("resolution, n", [(48, 2000), (64, 300), (96, 300), (128, 200), (512, 30), (100, 100)])
def test_read_scene_is_exact_on_rendered_scenes(resolution, n):
    wrong = [s for s in scenes(resolution, n) if not read_scene(s.render(resolution)).same(s)]
    assert not wrong, wrong[:3]


@pytest.mark.parametrize("spoil", [
    lambda im: im.filter(ImageFilter.GaussianBlur(1.0)),
    lambda im: im.resize((24, 24), Image.BILINEAR).resize((48, 48), Image.BILINEAR),  # a soft reconstruction
    lambda im: jpeg(im, 50),
    lambda im: Image.fromarray(np.clip(np.asarray(im) + np.random.default_rng(0).normal(0, 15, (48, 48, 3)), 0,
                                       255).astype(np.uint8)),
    lambda im: Image.fromarray(_stray(np.array(im))),
], ids=["blur", "down-up", "jpeg", "noise", "stray-pixels"])
def test_read_scene_tolerates_soft_and_noisy_images(spoil):
    wrong = [s for s in scenes(7, 200) if not read_scene(spoil(s.render(48))).same(s)]
    assert not wrong, wrong[:3]


def _stray(pixels: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(1)
    pixels[rng.integers(0, 48, 6), rng.integers(0, 48, 6)] = rng.integers(0, 256, (6, 3))
    return pixels


def test_read_scene_takes_arrays_and_tells_white_from_light_backgrounds():
    for background in ("light grey", "beige", "pale blue"):
        scene = Scene(background, (Shape("square", "white", (1, 1), False), Shape("circle", "white", (0, 2), True)))
        assert read_scene(np.asarray(scene.render(48))).same(scene)
        assert read_scene(scene.render(48).resize((48, 60))).same(scene)  # not square: stretched back


def test_parse_scene_reads_descriptions_and_decoded_text():
    for scene in scenes(3, 300):
        assert parse_scene(scene.describe()) == scene  # in the text's order
        decoded = scene.describe().lower().replace(",", " ,").replace(".", " .")  # a word-level decode
        assert parse_scene(decoded) == scene
    assert parse_scene("Nothing to see here.") is None and parse_scene(None) is None
    assert parse_scene("a small red circle in the centre") == Scene("", (Shape("circle", "red", (1, 1), False),))


def test_parse_scene_reads_only_after_the_last_result_marker():
    text = ("Move the red circle from the top left to the centre; keep a small blue square in the right. "
            "result : I will draw a large red circle in the centre and a small blue square in the right , "
            "on a pale blue background .")
    assert parse_scene(text) == Scene("pale blue", (Shape("circle", "red", (1, 1), True),
                                                    Shape("square", "blue", (1, 2), False)))


def test_scene_from_dict_reads_demo_data_meta(tmp_path):
    manifest = make_demo_data(tmp_path, n=12, seed=5, resolution=48)
    for row in map(json.loads, manifest.read_text().splitlines()):
        scene = Scene.from_dict(json.loads(json.dumps(row["meta"]["scene"])))
        result = Scene.from_dict(row["meta"]["edited"]) if row["task"] == "edit" else scene
        assert all(isinstance(s.cell, tuple) for s in scene.shapes)
        assert read_scene(Image.open(tmp_path / row["output_image"])).same(result)
        if row["task"] == "edit":
            assert read_scene(Image.open(tmp_path / row["input_image"])).same(scene)


def test_verify_grades_edits_and_traces():
    source = Scene("beige", (Shape("circle", "red", (0, 0), True), Shape("square", "blue", (1, 2), False)))
    reference = Scene("beige", (Shape("circle", "red", (1, 1), True), Shape("square", "blue", (1, 2), False)))
    trace = write_trace(source, reference, seed=0)

    good = verify(reference, reference, source, trace)
    assert (good.edit_correct, good.cells_correct, good.edited_cells_correct) == (True, 1.0, 1.0)
    assert good.reasoning_correct and good.consistent and good.consistency == 1.0

    copied = verify(source, reference, source, trace)  # the input, unedited: the two changed cells are wrong
    assert not copied.edit_correct and copied.edited_cells_correct == 0.0 and copied.cells_correct == 0.8
    assert good.kept_cells_correct == copied.kept_cells_correct == 1.0  # the 8 items the edit keeps
    blank = verify(Scene("beige", ()), reference, source, None)  # every cell empty: the square's cell is wrong
    assert blank.kept_cells_correct == 7 / 8 and blank.edited_cells_correct == 0.5
    assert copied.reasoning_correct and not copied.consistent and copied.consistency == 0.8

    wrong = verify(reference, reference, source, "Result: a large red circle in the bottom, on a beige background.")
    assert wrong.edit_correct and not wrong.reasoning_correct and not wrong.consistent
    assert wrong.consistency == 0.7  # the circle's two cells and the missing square's cell disagree

    silent = verify(reference, reference, source, "I will do as asked.")
    assert not silent.reasoning_correct and silent.consistency == 0.0 and not silent.consistent
    assert verify(reference, reference, reference, None).edited_cells_correct is None  # nothing to change

    generated = verify(source, reference, None, reference.describe())
    assert generated.edited_cells_correct == generated.cells_correct == 0.8
    assert generated.kept_cells_correct is None  # a generation keeps nothing


def test_consistency_reward_grades_partial_agreement():
    scene = Scene("pale blue", (Shape("triangle", "green", (2, 0), False), Shape("circle", "black", (0, 1), True)))
    image = np.asarray(scene.render(48))
    assert consistency(image, scene.describe()) == 1.0
    assert consistency(image, "A small green triangle in the bottom left, on a pale blue background.") == 0.9
    assert consistency(image, "A small green triangle in the bottom left.") == 0.8  # no background named
    assert consistency(image, "nothing at all") == 0.0


def _edits(n: int, seed: int = 0) -> list[tuple[Scene | None, Scene]]:
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        scene = random_scene(rng, rng.randint(1, 4))
        pairs.append((None, scene) if i % 4 == 0 else (scene, random_edit(rng, scene)[2]))
    return pairs


def test_scene_traces_pass_the_default_validators_and_parse_back():
    rules = build_rules(ValidatorConfig())
    texts = set()
    for i, (source, target) in enumerate(_edits(400)):
        trace = write_trace(source, target, seed=i)
        assert validate(rules, trace, "stop")[0] is None, trace
        assert 40 <= len(trace.split()) <= 80, trace
        assert trace == write_trace(source, target, seed=i)
        assert parse_scene(trace).same(target), trace
        assert verify(target, target, source, trace).reasoning_correct
        assert not parse_scene(write_trace(source, target, seed=i, error_rate=1.0)).same(target)
        texts.add(trace.split(".")[0].split(" to ")[0])
    assert len(texts) >= 6  # varied wording


def test_scene_backend_annotates_through_the_annotator():
    samples, targets = [], {}
    for i, (source, target) in enumerate(_edits(12, seed=1)):
        sid = hashlib.sha256(str(i).encode()).hexdigest()
        task = "generate" if source is None else "edit"
        samples.append(Sample(sid, task, "an instruction", None if source is None else png(source.render(48)),
                              png(target.render(48))))
        targets[sid] = target
    backend = build_backend(BackendConfig(kind="scene", scene=SceneConfig(error_rate=0.0)))
    results = ReasoningAnnotator(backend).annotate(samples)
    assert all(r.accepted and r.attempts == 1 for r in results)
    assert all(parse_scene(r.reasoning).same(targets[r.sample_id]) for r in results)
    assert [r.reasoning for r in ReasoningAnnotator(backend).annotate(samples)] == [r.reasoning for r in results]

    wrong = ReasoningAnnotator(SceneBackend(SceneConfig(error_rate=1.0))).annotate(samples)
    assert all(r.accepted and not parse_scene(r.reasoning).same(targets[r.sample_id]) for r in wrong)


def test_scene_backend_refuses_bad_requests_per_request():
    prompt = load_prompts()["edit"]
    scene = scenes(0, 1)[0]
    good = Request(prompt.messages("x", [png(scene.render(48))] * 2), seed=1, key="good")
    three = Request(prompt.messages("x", [png(scene.render(48))] * 3), seed=1, key="three")
    broken = dataclasses.replace(good, key="broken", messages=prompt.messages("x", [b"not an image"]))
    done = {}
    SceneBackend().run([good, three, broken], SamplingConfig(), lambda r, c: done.setdefault(r.key, c) and None)
    assert done["good"].error is None and done["good"].finish_reason == "stop"
    assert done["three"].error.startswith("engine_error") and done["broken"].error.startswith("undecodable_image")
    with pytest.raises(ValueError):
        SceneConfig(error_rate=1.5)
    with pytest.raises(ValueError):
        BackendConfig(kind="nonsense")


def test_world_scores_the_reference_right_and_the_copy_wrong_on_every_kind_of_edit(tmp_path):
    """`jobs.world.score_samples`, the numbers `make world` prints: the reference images with their
    own traces score 1 on every kind of edit; the input given back as the output scores 0 on each."""
    import shutil

    from jobs.world import score_samples

    bench = make_demo_data(tmp_path, n=60, seed=3, resolution=48, generate_fraction=0.0)
    rows = [json.loads(line) for line in bench.read_text().splitlines()]
    for name, image in (("reference", "output_image"), ("copy", "input_image")):
        for row in rows:
            folder = tmp_path / name / row["id"]
            folder.mkdir(parents=True)
            shutil.copy(tmp_path / row[image], folder / "output.png")
            source, target = Scene.from_dict(row["meta"]["scene"]), Scene.from_dict(row["meta"]["edited"])
            (folder / "reasoning.txt").write_text(write_trace(source, target, seed=0, min_words=10))
    reference, copy = score_samples(bench, tmp_path / "reference"), score_samples(bench, tmp_path / "copy")
    assert reference["edits"] == copy["edits"] == len(rows)
    assert set(reference["edit_accuracy_by_kind"]) == {"recolour", "move", "add", "remove", "resize"}
    assert reference["edit_accuracy_by_kind"] == dict.fromkeys(reference["edit_accuracy_by_kind"], 1.0)
    assert reference["edit_accuracy"] == reference["reasoning_correct"] == reference["consistency"] == 1.0
    assert copy["edit_accuracy_by_kind"] == dict.fromkeys(copy["edit_accuracy_by_kind"], 0.0)
    assert copy["edited_cells"] == 0.0 and copy["kept_cells"] == reference["kept_cells"] == 1.0
    baseline = score_samples(bench)  # the copy baseline, scored without images: the same verdicts
    assert {k: v for k, v in copy.items() if k not in ("reasoning_correct", "consistency")} == \
        {k: v for k, v in baseline.items() if k not in ("reasoning_correct", "consistency")}


def test_the_ablation_table_gives_each_arm_its_mean_and_spread_over_seeds():
    runs = [{"arm": arm, "seed": seed, "clip_first": 0.3, "clip_last": last, "edit_accuracy": 0.5,
             "kept_cells": 0.9, "reasoning_correct": None, "consistency": last}
            for arm, values in (("trajectory", (0.2, 0.4)), ("final", (0.1, 0.1))) for seed, last in enumerate(values)]
    table = ablation_table("rl", runs, steps=20, start={"edit_accuracy": 0.45, "consistency": 0.25})
    rows = {row[0]: dict(zip(table["header"], row)) for row in table["rows"]}
    assert rows["SFT (start)"]["text-image consistency"] == "0.250"
    assert rows["SFT (start)"]["clip reward, last 5"] == "-"
    trajectory = rows["+ 20 steps, trajectory reward (ParaRL)"]
    assert trajectory["clip reward, last 5"] == "0.300 ± 0.141 (2)"
    assert trajectory["reasoning correct"] == "-"
    assert rows["+ 20 steps, output-only reward"]["text-image consistency"] == "0.100 ± 0.000 (2)"
    # the SFT study: no starting model, and nothing to judge of the reasoning the image-only arm lacks
    runs = [{"arm": "reasoning", "seed": 0, "edit_accuracy": 0.3, "consistency": 0.5, "reasoning_correct": 0.1},
            {"arm": "none", "seed": 0, "edit_accuracy": 0.2, "consistency": None, "reasoning_correct": None}]
    table = ablation_table("sft", runs, steps=1500)
    rows = {row[0]: dict(zip(table["header"], row)) for row in table["rows"]}
    assert list(rows) == ["SFT 1500 steps, with reasoning", "SFT 1500 steps, without reasoning (image only)"]
    assert rows["SFT 1500 steps, without reasoning (image only)"]["text-image consistency"] == "-"
    assert rows["SFT 1500 steps, with reasoning"]["edit accuracy"] == "0.300 ± 0.000 (1)"
    with pytest.raises(ValueError, match="arms"):
        AblationConfig(arms=["trajectory", "middle"])
    with pytest.raises(ValueError, match="arms"):
        AblationConfig(study="sft", arms=["trajectory"])
    with pytest.raises(ValueError, match="study"):
        AblationConfig(study="dpo")
    assert AblationConfig(study="sft").arms == ["reasoning", "none"]
