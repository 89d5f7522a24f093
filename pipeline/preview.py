"""`pipeline preview`: decode a tokenized version's codes back to pictures, beside the source image,
so a person can see what the tokenizer kept."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow.compute as pc
import torch
from PIL import Image

from pipeline.image_tokenizer import MagvitV2
from pipeline.registry import DatasetRegistry


def preview(ref: str, out: str | Path, n: int = 8, image_tokenizer: str | None = None,
            registry: str | None = None) -> list[Path]:
    reg = DatasetRegistry(registry)
    manifest = reg.resolve(ref, schema="tokenized/1")
    tokenize = manifest.lineage["tokenize"]
    magvit = MagvitV2.from_pretrained(image_tokenizer or tokenize["image_tokenizer"])
    rows = reg.read_table(manifest).slice(0, n)
    parent = reg.resolve(manifest.parent)
    wanted, sources = rows["sample_id"], {}
    for batch in reg.iter_batches(parent, ["sample_id", "input_image", "output_image"]):  # stop once all found
        sources.update((r["sample_id"], r) for r in batch.filter(pc.is_in(batch["sample_id"], wanted)).to_pylist())
        if len(sources) == len(wanted):
            break
    resolution = tokenize["resolution"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, row in enumerate(rows.to_pylist()):
        for side in ("input", "output"):
            codes = row[f"{side}_image_codes"]
            if codes is None:
                continue
            decoded = magvit.decode(torch.tensor([codes]), (row["grid_h"], row["grid_w"]))[0]
            picture = Image.fromarray((decoded.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
            source = Image.open(io.BytesIO(sources[row["sample_id"]][f"{side}_image"])).convert("RGB")
            canvas = Image.new("RGB", (2 * resolution, resolution), "white")
            canvas.paste(source.resize((resolution, resolution), Image.BICUBIC), (0, 0))
            canvas.paste(picture.resize((resolution, resolution)), (resolution, 0))
            path = out / f"{i:03d}-{row['sample_id'][:12]}-{side}.png"
            canvas.save(path)
            written.append(path)
    return written
