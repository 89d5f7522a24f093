"""The shapes world's scene model: coloured shapes on a 3x3 grid, how a scene is drawn and described,
and how random scenes and exact edits are made.

A scene is a background and at most one shape per cell; colour + kind is unique within a scene, so an
edit can name its shape ("the red circle"). `pipeline.demo_data` writes datasets of these scenes; the
verifier (`annotators.world.verifier`) reads them back from pixels and from text.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 70), "blue": (40, 80, 220), "yellow": (240, 200, 30),
           "purple": (140, 60, 180), "orange": (245, 130, 30), "black": (20, 20, 20), "white": (250, 250, 250)}
BACKGROUNDS = {"light grey": (215, 215, 215), "beige": (235, 225, 200), "pale blue": (205, 225, 245)}
SHAPES = ("circle", "square", "triangle")
CELLS = {(r, c): name for (r, c), name in zip(
    [(r, c) for r in range(3) for c in range(3)],
    ["top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right"])}
EDITS = ("recolour", "move", "add", "remove", "resize")
LARGE, SMALL = 0.42, 0.22  # a shape's half-extent, as a fraction of the cell's side


@dataclasses.dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    cell: tuple[int, int]
    large: bool

    def phrase(self) -> str:
        return f"a {'large' if self.large else 'small'} {self.colour} {self.kind} in the {CELLS[self.cell]}"

    def name(self) -> str:
        """How an instruction names the shape: colour + kind is unique within a scene."""
        return f"the {self.colour} {self.kind}"


def draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, resolution: int, fill: Any) -> None:
    cell = resolution / 3
    cx, cy = (shape.cell[1] + 0.5) * cell, (shape.cell[0] + 0.5) * cell
    r = cell * (LARGE if shape.large else SMALL)
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape.kind == "circle":
        draw.ellipse(box, fill=fill)
    elif shape.kind == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)


@dataclasses.dataclass(frozen=True)
class Scene:
    background: str
    shapes: tuple[Shape, ...]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Scene":
        """The inverse of `dataclasses.asdict`, also after a JSON round trip (cells come back as lists)."""
        return cls(d["background"], tuple(Shape(s["kind"], s["colour"], tuple(s["cell"]), bool(s["large"]))
                                          for s in d["shapes"]))

    def describe(self) -> str:
        parts = [s.phrase() for s in self.shapes]
        listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return f"{listed[0].upper()}{listed[1:]}, on a {self.background} background."

    def render(self, resolution: int) -> Image.Image:
        image = Image.new("RGB", (resolution, resolution), BACKGROUNDS[self.background])
        draw = ImageDraw.Draw(image)
        for s in self.shapes:
            draw_shape(draw, s, resolution, COLOURS[s.colour])
        return image

    def items(self) -> tuple[Any, ...]:
        """The background, then per cell (reading order) the sorted (kind, colour, large) of its shapes:
        two scenes are the same picture when their items are equal, whatever the shapes' order."""
        return (self.background,) + tuple(
            tuple(sorted((s.kind, s.colour, s.large) for s in self.shapes if s.cell == cell)) for cell in CELLS)

    def same(self, other: "Scene") -> bool:
        return self.items() == other.items()


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
        text = f"Change the colour of {target.name()} to {colour}."
    elif kind == "move" and free:
        cell = rng.choice(free)
        shapes[i] = dataclasses.replace(target, cell=cell)
        text = f"Move {target.name()} to the {CELLS[cell]}."
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
        text = f"Remove {target.name()}."
    else:
        kind = "resize"
        shapes[i] = dataclasses.replace(target, large=not target.large)
        text = f"Make {target.name()} {'smaller' if target.large else 'larger'}."
    return kind, text, Scene(scene.background, tuple(shapes))
