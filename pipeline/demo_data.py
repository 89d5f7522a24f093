"""`pipeline demo-data`: a procedurally generated editing/generation set in the canonical JSONL layout.

Scenes of coloured shapes on a 3x3 grid (the scene model lives in `annotators.world.scene`, where the
verifier and the trainer's judge read it too; its names are re-exported here). Edits are exact (recolour, move, add, remove, resize), so
the instruction fully determines the output image; generation prompts describe the whole scene.
It is the embedded default data of `make demo` and the fixture of the tests.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

from annotators.world.scene import BACKGROUNDS, CELLS, COLOURS, EDITS, SHAPES, Scene, Shape, random_edit, random_scene

__all__ = ["BACKGROUNDS", "CELLS", "COLOURS", "EDITS", "SHAPES", "Scene", "Shape", "make_demo_data", "random_edit",
           "random_scene"]


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
