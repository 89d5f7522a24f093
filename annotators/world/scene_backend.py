"""The `scene` backend: an annotator for the shapes world that sees exactly. It reads the scenes in
each request's images (`verifier.read_scene`; an edit's input then target, a generation's target)
and writes the trace a careful VLM would: what the instruction asks (the diff of the two scenes),
what stays, and what the result holds, after the marker "Result:" that `parse_scene` reads from.
The wording varies with the request's seed (reruns are identical) and reads as a plan, so the default
validators pass it. With `error_rate`, a trace (chosen by its seed) names a wrong cell for one shape
of the result, as real traces are sometimes wrong. No model, no server: it runs on the CPU.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import random

from PIL import Image

from annotators.annotator import Completion, OnDone, Request, SamplingConfig, run_in_rounds
from annotators.world.scene import CELLS, Scene
from annotators.world.verifier import read_scene

ASKS = ("The instruction asks me to {change}.", "The task is to {change}.", "This edit needs me to {change}.",
        "Here I must {change}.")
STAYS = ("Everything else stays: {kept}.", "I will keep {kept} unchanged.", "Nothing else should change: {kept}.")
ASKS_DRAW = ("The instruction asks me to draw {count} on a {background} background.",
             "I need to draw {count} on a {background} background.",
             "The task is to draw a scene of {count} on a {background} background.")
FILLERS = ("Each shape stays in one cell of the three by three grid.",
           "Every other cell of the grid should stay empty.",
           "A large shape takes most of its cell, a small one much less.",
           "I will check each cell of the grid, row by row, before I draw.")
RESULTS = ("Result: the edited picture should hold {shapes}, on a {background} background.",
           "Result: I will draw {shapes}, on a {background} background.",
           "Result: the picture will then show {shapes}, on a {background} background.",
           "Result: the final picture must hold {shapes}, on a {background} background.")


@dataclasses.dataclass(kw_only=True)
class SceneConfig:
    error_rate: float = 0.0  # probability (by the request's seed) that the result names a wrong cell for one shape
    min_words: int = 40  # filler sentences up to this length: the default validators' min_words

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"error_rate must be within [0, 1], not {self.error_rate}")


def _listed(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def changes(source: Scene, target: Scene) -> list[str]:
    """What turns `source` into `target`, as imperative clauses ("move the red circle from the top
    left to the centre"). Shapes are matched by colour + kind (unique within a scene)."""
    before = {(s.kind, s.colour): s for s in source.shapes}
    after = {(s.kind, s.colour): s for s in target.shapes}
    clauses = []
    for key in [k for k in after if k in before]:
        s, t = before[key], after[key]
        if s.cell != t.cell:
            clauses.append(f"move {s.name()} from the {CELLS[s.cell]} to the {CELLS[t.cell]}")
        if s.large != t.large:
            clauses.append(f"make {s.name()} {'larger' if t.large else 'smaller'}")
    gone = [s for k, s in before.items() if k not in after]
    new = [t for k, t in after.items() if k not in before]
    for s in list(gone):  # the same kind in the same cell, in another colour: a recolour
        t = next((t for t in new if (t.kind, t.cell) == (s.kind, s.cell)), None)
        if t is not None:
            gone.remove(s)
            new.remove(t)
            clauses.append(f"change the colour of {s.name()} in the {CELLS[s.cell]} to {t.colour}")
            if s.large != t.large:
                clauses.append(f"make it {'larger' if t.large else 'smaller'}")
    clauses += [f"remove {s.name()} from the {CELLS[s.cell]}" for s in gone]
    clauses += [f"add {t.phrase()}" for t in new]
    if source.background != target.background:
        clauses.append(f"change the background to {target.background}")
    return clauses or ["keep the scene as it is"]


def _mistake(rng: random.Random, scene: Scene) -> Scene:
    """`scene` with one shape moved to a free cell: a trace that names a wrong cell."""
    shapes = list(scene.shapes)
    i = rng.randrange(len(shapes))
    free = sorted(set(CELLS) - {s.cell for s in shapes})
    if not free:
        return scene
    shapes[i] = dataclasses.replace(shapes[i], cell=rng.choice(free))
    return Scene(scene.background, tuple(shapes))


def write_trace(source: Scene | None, target: Scene, seed: int, error_rate: float = 0.0, min_words: int = 40) -> str:
    """The reasoning trace of an edit (`source` -> `target`) or a generation (`source` None)."""
    rng = random.Random(seed)
    said = _mistake(rng, target) if rng.random() < error_rate and target.shapes else target
    if source is None:
        n = len(target.shapes)
        count = f"{['one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine'][n - 1]} shape{'s' * (n > 1)}"
        sentences = [rng.choice(ASKS_DRAW).format(count=count, background=target.background)]
    else:
        kept = [s.name() for s in source.shapes if s in target.shapes]
        kept = kept if len(kept) <= 1 else ["the other shapes"]
        sentences = [rng.choice(ASKS).format(change=_listed(changes(source, target))),
                     rng.choice(STAYS).format(kept=_listed(kept + [f"the {target.background} background"]))]
    ordered = sorted(said.shapes, key=lambda s: s.cell)  # reading order
    result = rng.choice(RESULTS[1:] if source is None else RESULTS).format(
        shapes=_listed([s.phrase() for s in ordered]), background=said.background)
    fillers = rng.sample(FILLERS, len(FILLERS))
    while len(" ".join(sentences + [result]).split()) < min_words and fillers:
        sentences.append(fillers.pop())
    return " ".join(sentences + [result])


def request_images(request: Request) -> list[Image.Image]:
    """The images of a chat request's data URLs, in order."""
    return [Image.open(io.BytesIO(base64.b64decode(part["image_url"]["url"].split(",", 1)[1]))).convert("RGB")
            for message in request.messages if not isinstance(message["content"], str)
            for part in message["content"] if part.get("type") == "image_url"]


class SceneBackend:
    name = "scene"

    def __init__(self, config: SceneConfig | None = None):
        self.config = config or SceneConfig()

    def run(self, requests: list[Request], sampling: SamplingConfig, on_done: OnDone) -> None:
        run_in_rounds(lambda batch: [self.complete(r) for r in batch], requests, on_done)

    def complete(self, request: Request) -> Completion:
        try:
            scenes = [read_scene(image) for image in request_images(request)]
        except Exception as e:  # this request's images, never the batch's
            return Completion("", None, error=f"undecodable_image: {type(e).__name__}: {e}"[:500])
        if len(scenes) not in (1, 2):
            return Completion("", None, error=f"engine_error: expected 1 or 2 images, got {len(scenes)}")
        if not scenes[-1].shapes:
            return Completion("", None, error="engine_error: the target image shows no shape")
        source, target = (None, scenes[0]) if len(scenes) == 1 else scenes
        text = write_trace(source, target, request.seed, self.config.error_rate, self.config.min_words)
        return Completion(text, "stop", 0, len(text.split()))

