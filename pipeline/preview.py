"""`pipeline preview`: decode a tokenized version's codes back to pictures, beside the source image,
so a person can see what the tokenizer kept."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from PIL import Image

from pipeline.image_tokenizer import MagvitV2
from pipeline.registry import DatasetRegistry


def preview(ref: str, out: str | Path, n: int = 8, image_tokenizer: str | None = None,
            registry: str | None = None) -> list[Path]:
    reg = DatasetRegistry(registry)
    manifest = reg.resolve(ref, schema="tokenized/1")
    tokenize = manifest.lineage["tokenize"]
    magvit = MagvitV2.for_version(tokenize, image_tokenizer)
    rows = reg.read_table(manifest).slice(0, n)
    sources = reg.rows_by_id(reg.resolve(manifest.parent), rows["sample_id"].to_pylist(),
                             ["input_image", "output_image"])
    resolution = tokenize["resolution"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, row in enumerate(rows.to_pylist()):
        for side in ("input", "output"):
            codes = row[f"{side}_image_codes"]
            if codes is None:
                continue
            picture, = MagvitV2.postprocess(magvit.decode(torch.tensor([codes]), (row["grid_h"], row["grid_w"])))
            source = Image.open(io.BytesIO(sources[row["sample_id"]][f"{side}_image"])).convert("RGB")
            canvas = Image.new("RGB", (2 * resolution, resolution), "white")
            canvas.paste(source.resize((resolution, resolution), Image.BICUBIC), (0, 0))
            canvas.paste(picture.resize((resolution, resolution)), (resolution, 0))
            path = out / f"{i:03d}-{row['sample_id'][:12]}-{side}.png"
            canvas.save(path)
            written.append(path)
    return written
