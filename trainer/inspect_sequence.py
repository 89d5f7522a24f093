"""`trainer layout` and `trainer sequence`: what a model's vocabulary and its training sequences
look like, printed from the same objects the trainer uses."""

from __future__ import annotations

from pipeline.registry import DatasetRegistry
from trainer.data import COLUMNS, check_compatible
from trainer.model_io import sequence_builder
from trainer.sequence import KEEP, UNCONDITIONAL, recorded_blank_codes


def model_layout(model: str, text_tokenizer: str | None = None) -> dict:
    """The token layout a model was trained with (keys as in `TokenLayout`)."""
    return sequence_builder(model, text_tokenizer).layout.to_dict()


def row_sequence(dataset: str, model: str, *, registry: str | None = None, index: int = 0, uncond: bool = False,
                 text_tokenizer: str | None = None) -> dict:
    """The exact ids, attention mask and target flags `trainer sft` builds for row `index` of a
    tokenized version, for `model`'s layout and sequence preset (`uncond`: the row with both
    conditions dropped, which is also the sampler's unconditional row)."""
    builder = sequence_builder(model, text_tokenizer)
    reg = DatasetRegistry(registry)
    manifest = reg.resolve(dataset, schema="tokenized/1")
    if builder.blank_image_codes is None:
        builder.blank_image_codes = recorded_blank_codes(manifest)
    if not 0 <= index < manifest.counts.output:
        raise ValueError(f"{manifest.ref} has {manifest.counts.output} rows; --index {index} is outside")
    check_compatible(manifest, builder, reg)
    row = reg.read_table(manifest, ["sample_id"] + COLUMNS).slice(index, 1).to_pylist()[0]
    batch = builder.collate([row], [UNCONDITIONAL if uncond else KEEP])
    return {"dataset": manifest.ref, "index": index, "sample_id": row["sample_id"], "task": row["task"],
            "preset": builder.config.preset, "unconditional": uncond,
            "image_token_offset": builder.layout.image_token_offset,
            "input_ids": batch.input_ids[0].tolist(), "attention_mask": batch.attention_mask[0].tolist(),
            "image_target": batch.image_target[0].int().tolist(), "text_target": batch.text_target[0].int().tolist(),
            "parts": builder.parts(row, UNCONDITIONAL if uncond else KEEP)}


def format_sequence(view: dict, width: int = 12) -> str:
    """A table of the parts, each with its first and last ids."""
    ids = view["input_ids"]
    lines = [f"{view['dataset']} row {view['index']} ({view['task']}, sample {view['sample_id'][:12]}): "
             f"{len(ids)} positions, preset {view['preset']}, image offset {view['image_token_offset']}"
             + (", unconditional" if view["unconditional"] else ""),
             f"{'positions':>11}  {'part':<34} ids"]
    for p in view["parts"]:
        seg = ids[p["start"]:p["end"]]
        shown = " ".join(map(str, seg)) if len(seg) <= width else (
            " ".join(map(str, seg[:width // 2])) + " ... " + " ".join(map(str, seg[-width // 2:])))
        lines.append(f"{p['start']:>5}-{p['end'] - 1:<5}  {p['part']:<34} {shown}")
    mask, image, text = view["attention_mask"], view["image_target"], view["text_target"]
    lines.append(f"attention_mask: {sum(mask)} of {len(mask)} attended; targets: {sum(image)} image, {sum(text)} text")
    return "\n".join(lines)
