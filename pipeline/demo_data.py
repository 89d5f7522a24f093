"""`pipeline demo-data`: a procedurally generated editing/generation set in the canonical JSONL layout.

Scenes of coloured shapes on a 3x3 grid. Edits are exact (recolour, move, add, remove, resize), so
the instruction fully determines the output image; generation prompts describe the whole scene.
It is the embedded default data of `make demo` and the fixture of the tests.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 70), "blue": (40, 80, 220), "yellow": (240, 200, 30),
           "purple": (140, 60, 180), "orange": (245, 130, 30), "black": (20, 20, 20), "white": (250, 250, 250)}
BACKGROUNDS = {"light grey": (215, 215, 215), "beige": (235, 225, 200), "pale blue": (205, 225, 245)}
SHAPES = ("circle", "square", "triangle")
CELLS = {(r, c): name for (r, c), name in zip(
    [(r, c) for r in range(3) for c in range(3)],
    ["top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right"])}
EDITS = ("recolour", "move", "add", "remove", "resize")


@dataclasses.dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    cell: tuple[int, int]
    large: bool

    def phrase(self) -> str:
        return f"a {'large' if self.large else 'small'} {self.colour} {self.kind} in the {CELLS[self.cell]}"


@dataclasses.dataclass(frozen=True)
class Scene:
    background: str
    shapes: tuple[Shape, ...]

    def describe(self) -> str:
        parts = [s.phrase() for s in self.shapes]
        listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return f"{listed[0].upper()}{listed[1:]}, on a {self.background} background."

    def render(self, resolution: int) -> Image.Image:
        image = Image.new("RGB", (resolution, resolution), BACKGROUNDS[self.background])
        draw = ImageDraw.Draw(image)
        cell = resolution / 3
        for s in self.shapes:
            cx, cy = (s.cell[1] + 0.5) * cell, (s.cell[0] + 0.5) * cell
            r = cell * (0.42 if s.large else 0.22)
            box = [cx - r, cy - r, cx + r, cy + r]
            if s.kind == "circle":
                draw.ellipse(box, fill=COLOURS[s.colour])
            elif s.kind == "square":
                draw.rectangle(box, fill=COLOURS[s.colour])
            else:
                draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=COLOURS[s.colour])
        return image


def _name(s: Shape) -> str:
    return f"the {s.colour} {s.kind}"


def random_scene(rng: random.Random, n_shapes: int) -> Scene:
    cells = rng.sample(sorted(CELLS), n_shapes)
    shapes = []
    for cell in cells:  # colour+kind unique within a scene, so every edit names one shape
        while True:
            s = Shape(rng.choice(SHAPES), rng.choice(list(COLOURS)), cell, rng.random() < 0.5)
            if all((s.kind, s.colour) != (o.kind, o.colour) for o in shapes):
                break
        shapes.append(s)
    return Scene(rng.choice(list(BACKGROUNDS)), tuple(shapes))


def random_edit(rng: random.Random, scene: Scene) -> tuple[str, str, Scene]:
    """-> (edit kind, instruction, edited scene)."""
    kind = rng.choice(EDITS)
    shapes = list(scene.shapes)
    i = rng.randrange(len(shapes))
    target = shapes[i]
    free = sorted(set(CELLS) - {s.cell for s in shapes})
    if kind == "recolour":
        used = {(s.kind, s.colour) for s in shapes}
        colour = rng.choice([c for c in COLOURS if (target.kind, c) not in used])
        shapes[i] = dataclasses.replace(target, colour=colour)
        text = f"Change the colour of {_name(target)} to {colour}."
    elif kind == "move" and free:
        cell = rng.choice(free)
        shapes[i] = dataclasses.replace(target, cell=cell)
        text = f"Move {_name(target)} to the {CELLS[cell]}."
    elif kind == "add" and free:
        used = {(s.kind, s.colour) for s in shapes}
        while True:
            new = Shape(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(free), rng.random() < 0.5)
            if (new.kind, new.colour) not in used:
                break
        shapes.append(new)
        text = f"Add {new.phrase()}."
    elif kind == "remove" and len(shapes) > 1:
        shapes.pop(i)
        text = f"Remove {_name(target)}."
    else:
        kind = "resize"
        shapes[i] = dataclasses.replace(target, large=not target.large)
        text = f"Make {_name(target)} {'smaller' if target.large else 'larger'}."
    return kind, text, Scene(scene.background, tuple(shapes))


def make_demo_data(out: str | Path, n: int = 64, seed: int = 0, resolution: int = 512,
                   generate_fraction: float = 0.25) -> Path:
    """Write `n` samples under `out` (images/ + data.jsonl); returns the manifest's path."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    seen: set[str] = set()
    manifest = out / "data.jsonl"
    with manifest.open("w") as f:
        i = 0
        while i < n:
            scene = random_scene(rng, rng.randint(1, 4))
            sid = f"demo-{i:05d}"
            if rng.random() < generate_fraction:
                record = {"id": sid, "task": "generate", "instruction": f"Draw this scene: {scene.describe()}",
                          "category": "generate", "meta": {"scene": dataclasses.asdict(scene)}}
                result, source = scene, None
            else:
                kind, text, result = random_edit(rng, scene)
                record = {"id": sid, "task": "edit", "instruction": text, "category": kind,
                          "meta": {"scene": dataclasses.asdict(scene), "edited": dataclasses.asdict(result)}}
                source = scene
            key = json.dumps([record["instruction"], record["meta"]], sort_keys=True)
            if key in seen:  # keep demo samples distinct: duplicates are for the tests to make
                continue
            seen.add(key)
            if source is not None:
                record["input_image"] = f"images/{sid}_input.png"
                source.render(resolution).save(out / record["input_image"], compress_level=1)
            record["output_image"] = f"images/{sid}_output.png"
            result.render(resolution).save(out / record["output_image"], compress_level=1)
            f.write(json.dumps(record, sort_keys=True) + "\n")
            i += 1
    return manifest
