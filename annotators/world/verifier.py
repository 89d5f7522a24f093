"""The shapes world's exact verifier: the scene an image shows, the scene a text describes, and how
well an edit, its reasoning and their agreement score against the reference.

- `read_scene(image)`: pixels -> Scene, at any resolution, also for blurry or JPEG'd reconstructions:
  every pixel goes to its nearest palette colour; the background is the most common background
  colour; a cell holds the shape of its most common shape colour (unless it covers too little of the
  cell), whose kind and size are those of the best matching template (IoU of the colour's mask with
  the six (kind, size) masks drawn at the same resolution and cell).
- `parse_scene(text)`: "a large red circle in the top left ... on a beige background" -> Scene. When
  the text holds the marker "Result:" (any case and spacing), only what follows the last one is read,
  so a trace's account of the instruction and of what stays does not count. The background is ""
  when the text names none; None when it names no shape.
- `verify(...)` -> Verdict, and `consistency(image, text)`, the text-image consistency reward. A
  scene is compared as 10 items: the background and the 9 cells (each cell's shapes, order ignored).
"""

from __future__ import annotations

import dataclasses
import functools
import re

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from annotators.world.scene import BACKGROUNDS, CELLS, COLOURS, SHAPES, Scene, Shape, draw_shape

_PALETTE = list(BACKGROUNDS) + list(COLOURS)
_RGB = np.array([BACKGROUNDS.get(n) or COLOURS[n] for n in _PALETTE], dtype=np.int32)
_N_BG = len(BACKGROUNDS)
BLURS = (0.0, 0.04, 0.07, 0.1)  # template blurs (Gaussian sigma, in cells)
CANDIDATES = 2  # a cell's shape colour: the best fit of its most frequent shape colours
RESULT_MARKER = re.compile(r"\bresult\s*:", re.I)


def _pixels(image) -> np.ndarray:
    """PIL image or HxWx3 uint8 array -> a square HxWx3 array (a non-square image is stretched)."""
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
        if image.width != image.height:
            side = max(image.size)
            image = image.resize((side, side), Image.NEAREST)
        return np.asarray(image)
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] < 3:
        raise ValueError(f"expected an HxWx3 image, got shape {array.shape}")
    if array.shape[0] != array.shape[1]:
        return _pixels(Image.fromarray(array[..., :3].astype(np.uint8)))
    return array[..., :3]


@functools.lru_cache(maxsize=1)
def _lookup() -> np.ndarray:
    """The nearest palette colour of every 6-bit-per-channel colour (by its bin's centre)."""
    centres = np.stack(np.meshgrid(*[np.arange(64) * 4 + 1.5] * 3, indexing="ij"), axis=-1).reshape(-1, 1, 3)
    return ((centres - _RGB[None]) ** 2).sum(-1).argmin(-1).astype(np.uint8)


def _classify(pixels: np.ndarray) -> np.ndarray:
    """HxW index into _PALETTE of each pixel's nearest colour."""
    q = pixels.astype(np.int32) >> 2
    return _lookup()[(q[..., 0] << 12) | (q[..., 1] << 6) | q[..., 2]]


def _bounds(resolution: int, i: int) -> tuple[int, int]:
    return round(i * resolution / 3), round((i + 1) * resolution / 3)


@functools.lru_cache(maxsize=8)
def _templates(resolution: int) -> dict[tuple[int, int], tuple[list[tuple[str, bool]], np.ndarray, np.ndarray]]:
    """cell -> ((kind, large) of each template, [K, cell pixels] masks, their squared norms): the six
    shapes drawn in the cell, sharp and blurred (a decoder's reconstruction is soft at the edges)."""
    drawn = {}
    for kind in SHAPES:
        for large in (False, True):
            image = Image.new("L", (resolution, resolution), 0)
            draw = ImageDraw.Draw(image)
            for cell in CELLS:
                draw_shape(draw, Shape(kind, "", cell, large), resolution, 255)
            for blur in BLURS:
                soft = image.filter(ImageFilter.GaussianBlur(blur * resolution / 3)) if blur else image
                drawn[(kind, large, blur)] = np.asarray(soft, dtype=np.float32) / 255
    keys = list(drawn)
    cells = {}
    for (r, c) in CELLS:
        (y0, y1), (x0, x1) = _bounds(resolution, r), _bounds(resolution, c)
        masks = np.stack([drawn[k][y0:y1, x0:x1].ravel() for k in keys])
        cells[(r, c)] = ([k[:2] for k in keys], masks, (masks ** 2).sum(1))
    return cells


def read_scene(image) -> Scene:
    """The scene an image (PIL or HxWx3 uint8, any size) shows, its shapes in reading order. A cell
    holds a shape when drawing its best template in its colour fits the pixels better than the bare
    background does (a shape painted at less than half strength reads as absent)."""
    pixels = _pixels(image)
    resolution = pixels.shape[0]
    labels = _classify(pixels)
    counts = np.bincount(labels.ravel(), minlength=len(_PALETTE))
    background = _PALETTE[int(counts[:_N_BG].argmax())]
    base = np.array(BACKGROUNDS[background], dtype=np.float32)
    shapes = []
    for (r, c), (keys, masks, norms) in _templates(resolution).items():
        (y0, y1), (x0, x1) = _bounds(resolution, r), _bounds(resolution, c)
        colours = np.bincount(labels[y0:y1, x0:x1].ravel(), minlength=len(_PALETTE))[_N_BG:]
        cell = pixels[y0:y1, x0:x1].reshape(-1, 3).astype(np.float32) - base
        best, found = None, None
        for i in np.argsort(-colours)[:CANDIDATES]:
            if colours[i] == 0:
                break
            name = _PALETTE[_N_BG + i]
            towards = np.array(COLOURS[name], dtype=np.float32) - base
            # squared RGB error of each template drawn in this colour, less that of an empty cell
            errors = norms * (towards @ towards) - 2 * (masks @ (cell @ towards))
            k = int(errors.argmin())
            if errors[k] < 0 and (best is None or errors[k] < best):  # better than an empty cell (error 0)
                kind, large = keys[k]
                best, found = errors[k], Shape(kind, name, (r, c), large)
        if found is not None:
            shapes.append(found)
    return Scene(background, tuple(shapes))


def _alternation(names) -> str:
    """Longest first, so "top left" wins over "top"; the spaces of two-word names may be any spacing."""
    return "|".join(re.escape(n).replace(r"\ ", r"\s+") for n in sorted(names, key=len, reverse=True))


_CELL_BY_NAME = {name: cell for cell, name in CELLS.items()}
_SHAPE_PHRASE = re.compile(rf"\b(large|small)\s+({_alternation(COLOURS)})\s+({_alternation(SHAPES)})s?\s+"
                           rf"in\s+the\s+({_alternation(_CELL_BY_NAME)})\b", re.I)
_BACKGROUND_PHRASE = re.compile(rf"\b({_alternation(BACKGROUNDS)})\s+background\b", re.I)


def _norm(words: str) -> str:
    return " ".join(words.lower().split())


def parse_scene(text: str | None) -> Scene | None:
    if not text:
        return None
    markers = list(RESULT_MARKER.finditer(text))
    if markers:
        text = text[markers[-1].end():]
    shapes = tuple(Shape(_norm(m[3]), _norm(m[2]), _CELL_BY_NAME[_norm(m[4])], _norm(m[1]) == "large")
                   for m in _SHAPE_PHRASE.finditer(text))
    if not shapes:
        return None
    backgrounds = _BACKGROUND_PHRASE.findall(text)
    return Scene(_norm(backgrounds[-1]) if backgrounds else "", shapes)


def agreement(a: Scene, b: Scene) -> float:
    """The fraction of the 10 items (background, 9 cells) on which two scenes agree."""
    return sum(x == y for x, y in zip(a.items(), b.items())) / (1 + len(CELLS))


@dataclasses.dataclass(frozen=True)
class Verdict:
    edit_correct: bool  # the output is the reference scene exactly, background included
    cells_correct: float  # fraction of the 10 items (background + 9 cells) equal to the reference's
    edited_cells_correct: float | None  # the same over the items the edit changes (all 10 for a generation)
    kept_cells_correct: float | None  # the same over the items the edit keeps (None for a generation)
    reasoning_correct: bool  # the reasoning's scene is the reference (False when it describes none)
    consistency: float  # agreement of the reasoning's scene and the output's (0 when it describes none)
    consistent: bool  # the reasoning's scene is the output's exactly


def verify(output: Scene, reference: Scene, source: Scene | None = None, reasoning: str | None = None) -> Verdict:
    got, want = output.items(), reference.items()
    changed = range(len(want)) if source is None else [i for i, x in enumerate(source.items()) if x != want[i]]
    kept = [i for i in range(len(want)) if i not in changed]
    said = parse_scene(reasoning)
    return Verdict(
        edit_correct=got == want,
        cells_correct=agreement(output, reference),
        edited_cells_correct=sum(got[i] == want[i] for i in changed) / len(changed) if changed else None,
        kept_cells_correct=sum(got[i] == want[i] for i in kept) / len(kept) if kept else None,
        reasoning_correct=said is not None and said.same(reference),
        consistency=agreement(said, output) if said is not None else 0.0,
        consistent=said is not None and said.same(output))


def consistency(image, text: str | None) -> float:
    """The text-image consistency reward: agreement (0..1) of the scene `text` describes and the
    scene `image` shows; 0 when the text describes no shape."""
    said = parse_scene(text)
    return agreement(said, read_scene(image)) if said is not None else 0.0
