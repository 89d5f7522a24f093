"""`pipeline tokenize`: an annotated or scored version -> a `tokenized` version of Arrow IPC shards.

Images become MAGVIT-v2 codes (raw codebook indices, 0..8191), text becomes tokenizer ids with no
special tokens; the trainer adds task tokens, bos/eos and image offsets from its TokenLayout, so
shards do not depend on one model's vocabulary. On the stage adapter, CPU tasks read each unit and
decode and resize its images (`TokenizeStage.prepare`), and a pool of MAGVIT actors (one per GPU
when the cluster has them) encodes batches of ready pixels, tokenizes the text and writes the
shards; the job resumes from the units already done.

Text limits come from the sequence contract (`schemas.SequenceConfig`, the same object `trainer sft`
takes): at most L - 2 tokens per text part. Over-long text is quarantined by default
(`overflow=quarantine`): a trace cut at a token limit teaches the model to stop mid-thought, and a
cut instruction asks for another edit than the image shows. `overflow=truncate` keeps such rows,
cut to the limit (what the published training did), when losing rows costs more.

A scored version's judge scores travel into the shards (`scores`, null for an annotated input), as
metadata a trainer may weight or select by; they never change the tokens.

The manifest records what a trainer needs to read the version: the text tokenizer's size (a
model's image offset must equal it), the codebook size, the sequence settings, and the codes of a
black image at the tokenize resolution (the mmada-parallel-m preset writes a generation as an edit
of that black image).
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image

from annotators.annotator import speed_only
from pipeline.hub import hub_revision, load_text_tokenizer, portable_name, sha256_file, tokenizer_fingerprint
from pipeline.image_tokenizer import DEFAULT_ID, MagvitV2, encode_blank_image
from pipeline.image_tokenizer.magvit import checkpoint_file
from pipeline.images import stable_message
from pipeline.registry import DatasetRegistry, split_ref
from pipeline.stage import Plan, Processed, Resources, Stage, rejected_rows
from schemas import SCORES, Counts, SequenceConfig, VersionManifest, text_facts, tokenized_schema

STAGE = "tokenize"
_INPUT_COLUMNS = ["sample_id", "task", "instruction", "reasoning", "input_image", "output_image", "source",
                  "source_ref"]
DEFAULT_TEXT_TOKENIZER = "GSAI-ML/LLaDA-8B-Instruct"


@dataclasses.dataclass(kw_only=True)
class TokenizeConfig:
    dataset: str  # NAME[@VERSION|@TAG] of an annotated or scored (`pipeline score` / `filter`) version
    output: str | None = None
    image_tokenizer: str = DEFAULT_ID
    text_tokenizer: str = DEFAULT_TEXT_TOKENIZER
    resolution: int = 512  # squash-resized to R x R: (R/16)^2 codes per image
    batch_size: int = speed_only(32)  # samples per MAGVIT forward (inputs and outputs go in one batch)
    device: str = speed_only("auto")  # auto | cpu | cuda (cuda: wait gpu_wait_s for GPUs, then fail; never a CPU fallback)
    gpu_wait_s: float = speed_only(600.0)
    dtype: str = "auto"  # auto (bfloat16 on a GPU, float32 on the CPU) | float32 | bfloat16
    sequence: SequenceConfig = dataclasses.field(default_factory=SequenceConfig)  # text limits: L - 2 per part
    overflow: str = "quarantine"  # quarantine | truncate
    concurrency: int = speed_only(1)  # MAGVIT actors (one per GPU)
    cpus_per_actor: int = speed_only(1)  # CPU threads of each actor's MAGVIT when it runs on the CPU
    unit_rows: int = 256  # rows per unit: decoded together on a CPU worker, one resumable step
    registry: str | None = speed_only(None)
    ray_address: str | None = speed_only(None)

    def __post_init__(self) -> None:
        if self.resolution % 16:
            raise ValueError(f"resolution {self.resolution} is not a multiple of 16")
        if self.overflow not in ("quarantine", "truncate"):
            raise ValueError(f"overflow must be quarantine or truncate, not {self.overflow!r}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"dtype must be auto, float32 or bfloat16, not {self.dtype!r}")


def pixel_array(column: pa.ChunkedArray, resolution: int) -> np.ndarray:
    """The non-null R x R x 3 uint8 images of a `prepare`d column as one [N, R, R, 3] view of the
    Arrow data (no copy)."""
    values = pc.drop_null(column).combine_chunks()
    if not len(values):
        return np.empty((0, resolution, resolution, 3), np.uint8)
    offsets = np.frombuffer(values.buffers()[1], np.int64)[values.offset:values.offset + len(values) + 1]
    data = np.frombuffer(values.buffers()[2], np.uint8)[offsets[0]:offsets[-1]]
    return data.reshape(len(values), resolution, resolution, 3)


class TokenizeStage(Stage):
    """Annotated rows -> tokenized rows. `prepare` (CPU workers): decode and resize every image to
    R x R uint8; `process` (the MAGVIT actor): encode batches of pixels, tokenize the text."""

    name = STAGE

    def __init__(self, config: TokenizeConfig, on_gpu: bool = False):
        self.config = config
        self.batch_size = config.batch_size
        self.grid = config.resolution // 16
        self.output_schema = tokenized_schema(self.grid * self.grid)
        self.resources = Resources(actors=config.concurrency, num_gpus=1 if on_gpu else 0,
                                   num_cpus=config.cpus_per_actor, prepare_cpus=1)

    def prepare(self, rows: pa.Table) -> pa.Table:
        pixels: dict[str, list] = {"input_image": [], "output_image": []}
        errors = []
        for row in rows.select(["input_image", "output_image"]).to_pylist():
            error = None
            for side, data in row.items():
                try:
                    pixels[side].append(None if data is None else
                                        MagvitV2.resize(Image.open(io.BytesIO(data)), self.config.resolution).tobytes())
                except Exception as e:  # a row that decoded at ingest but not here: quarantined, not fatal
                    pixels[side].append(None)
                    error = f"{side}: {stable_message(e)}"
            errors.append(error)
        return rows.drop_columns(["input_image", "output_image"]).append_column(
            "input_pixels", pa.array(pixels["input_image"], pa.large_binary())).append_column(
            "output_pixels", pa.array(pixels["output_image"], pa.large_binary())).append_column(
            "prepare_error", pa.array(errors, pa.string()))

    def setup(self) -> None:
        device = self.config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cpu":  # Ray pins workers to 1 thread; use the CPUs the actor holds
            torch.set_num_threads(self.config.cpus_per_actor)
        dtype = self.config.dtype
        if dtype == "auto":
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        self.dtype = getattr(torch, dtype)
        self.magvit = MagvitV2.from_pretrained(self.config.image_tokenizer, device=self.device, dtype=self.dtype)
        torch.backends.cudnn.benchmark = True  # every batch has the same shape: pick the fastest kernels once
        self.text = load_text_tokenizer(self.config.text_tokenizer)

    def _codes(self, pixels: np.ndarray) -> list[list[int]]:
        if not len(pixels):
            return []
        batch = torch.from_numpy(pixels).to(self.device, non_blocking=True)
        return self.magvit.encode(MagvitV2.normalize(batch).to(self.dtype)).to("cpu").int().tolist()

    def _ids(self, texts: list[str], limit: int) -> tuple[list[list[int]], list[bool]]:
        ids = self.text(texts, add_special_tokens=False)["input_ids"] if texts else []
        over = [len(x) > limit for x in ids]
        if self.config.overflow == "truncate":
            ids = [x[:limit] for x in ids]
        return ids, over

    def process(self, rows: pa.Table) -> Processed:
        broken = pc.is_valid(rows["prepare_error"])
        bad_images = rows.filter(broken)
        rows = rows.filter(pc.invert(broken))
        has_input = pc.is_valid(rows["input_pixels"]).to_pylist()
        r = self.config.resolution
        # Inputs and outputs go through MAGVIT as one batch: one copy out of the Arrow buffers.
        codes = iter(self._codes(np.concatenate([pixel_array(rows["input_pixels"], r),
                                                 pixel_array(rows["output_pixels"], r)])))
        input_codes = [next(codes) if present else None for present in has_input]
        output_codes = [next(codes) for _ in range(rows.num_rows)]
        sequence = self.config.sequence
        instruction_ids, long_instruction = self._ids(rows["instruction"].to_pylist(), sequence.max_instruction_tokens)
        reasoning_ids, long_reasoning = self._ids(rows["reasoning"].to_pylist(), sequence.max_reasoning_tokens)
        scores = rows["scores"] if "scores" in rows.column_names else pa.nulls(rows.num_rows, SCORES)
        out = pa.table({
            "sample_id": rows["sample_id"], "task": rows["task"],
            "instruction_ids": pa.array(instruction_ids, pa.list_(pa.int32())),
            "reasoning_ids": pa.array(reasoning_ids, pa.list_(pa.int32())),
            "input_image_codes": pa.array(input_codes, self.output_schema.field("input_image_codes").type),
            "output_image_codes": pa.array(output_codes, self.output_schema.field("output_image_codes").type),
            "grid_h": pa.array([self.grid] * rows.num_rows, pa.int32()),
            "grid_w": pa.array([self.grid] * rows.num_rows, pa.int32()),
            "instruction_len": pa.array([len(x) for x in instruction_ids], pa.int32()),
            "reasoning_len": pa.array([len(x) for x in reasoning_ids], pa.int32()), "scores": scores})
        too_long = [False] * rows.num_rows
        reasons, messages = [], []
        if self.config.overflow == "quarantine":
            for i in range(rows.num_rows):
                which = "instruction" if long_instruction[i] else "reasoning" if long_reasoning[i] else None
                if which:
                    too_long[i] = True
                    ids = instruction_ids[i] if which == "instruction" else reasoning_ids[i]
                    limit = getattr(sequence, f"max_{which}_tokens")
                    reasons.append(f"{which}_too_long")
                    messages.append(f"{which} has {len(ids)} tokens > {limit}")
        mask = pa.array(too_long, pa.bool_())
        kept = out.filter(pc.invert(mask))
        rejected = pa.concat_tables([
            rejected_rows(bad_images, ["undecodable_image"] * bad_images.num_rows,
                          bad_images["prepare_error"].to_pylist()),
            rejected_rows(rows.filter(mask), reasons, messages)])
        stats = {"images": rows.num_rows + sum(has_input)}  # encoded, kept or not
        return Processed(kept, rejected, {**stats, **text_facts(kept)} if kept.num_rows else stats)


def plan(config: TokenizeConfig, registry: DatasetRegistry) -> Plan:
    source = registry.resolve(config.dataset, schema=("annotated/1", "scored/1"))
    text = load_text_tokenizer(config.text_tokenizer)
    # One small MAGVIT forward on the driver: the black image every generation row stands on.
    magvit = MagvitV2.from_pretrained(config.image_tokenizer)
    sequence = config.sequence
    provenance = {"image_tokenizer": portable_name(config.image_tokenizer),
                  "image_tokenizer_revision": hub_revision(config.image_tokenizer),
                  "image_tokenizer_sha256": sha256_file(checkpoint_file(config.image_tokenizer)),
                  "resolution": config.resolution, "image_codebook_size": magvit.config.codebook_size,
                  "text_tokenizer": portable_name(config.text_tokenizer),
                  "text_tokenizer_revision": hub_revision(config.text_tokenizer), "text_tokenizer_sha256": tokenizer_fingerprint(text),
                  "text_tokenizer_size": len(text), "sequence": dataclasses.asdict(sequence),
                  "max_instruction_tokens": sequence.max_instruction_tokens,
                  "max_reasoning_tokens": sequence.max_reasoning_tokens, "overflow": config.overflow,
                  "blank_image_codes": encode_blank_image(magvit, config.resolution)}
    return Plan(name=STAGE, schema="tokenized/1", output=config.output or split_ref(config.dataset)[0],
                make_stage=lambda on_gpu: TokenizeStage(config, on_gpu), provenance=provenance, source=source,
                columns=_INPUT_COLUMNS + (["scores"] if source.schema == "scored/1" else []),
                unit_rows=config.unit_rows, device=config.device, gpu_wait_s=config.gpu_wait_s, summarize=summarize)


def summarize(stats: dict[str, Any], counts: Counts, seconds: float) -> dict[str, Any]:
    images = stats.get("images", 0)
    return {**stats, "images": images, "images_per_s": round(images / seconds, 2) if seconds else None}


def report(manifest: VersionManifest) -> str:
    s = manifest.stats
    lines = [manifest.counts.line().replace("output", "tokenized"),
             f"images {s['images']}  images/s {s['images_per_s']}  (this run: {s['seconds']} s, "
             f"{s['resumed_units']} unit(s) resumed)"]
    lines += [f"  quarantined {reason}: {n}" for reason, n in s["quarantine_reasons"].items()]
    return "\n".join(lines)
