"""`pipeline ingest`: editing and generation sources -> a validated, deduplicated `raw` version.

The stage is `ingest_batch`, a pure function from reference rows (see `sources`) to raw rows, each
either accepted or carrying a quarantine reason. `run_ingest` reads the sources, runs the stage as a
Ray Data job, deduplicates by sample_id in source order and writes the version. Every input row ends
in exactly one place: the output, the quarantine or the duplicate count.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import posixpath
import time
import urllib.request
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from pipeline.images import ImageRules, Rejected, check_image, stable_message
from pipeline.lineage import lineage
from pipeline.ray_runtime import init_ray, map_stage
from pipeline.registry import DatasetRegistry
from pipeline.sources import detect_format, filesystem, read_bytes, read_source
from schemas import RAW, TASKS, Counts, VersionManifest, sample_id

STAGE = "ingest"
_REMOTE_PREFIXES = ("http://", "https://", "s3://", "gs://", "gcs://", "hf://", "az://", "abfs://")


@dataclasses.dataclass(kw_only=True)
class IngestConfig:
    sources: list[str]
    dataset: str
    format: str = "auto"  # auto | jsonl | parquet | folder | hf | webdataset
    columns: dict[str, str] = dataclasses.field(default_factory=dict)  # canonical -> source column
    allow_remote: bool = False  # fetch image URLs; never done unless asked
    max_pixels: int = 40_000_000
    min_side: int = 32
    max_aspect_ratio: float = 4.0
    max_instruction_chars: int = 4000
    batch_size: int = 32  # rows per Ray task
    shard_bytes: int = 256 * 1024 * 1024  # target size of each output shard
    registry: str | None = None
    ray_address: str | None = None

    @property
    def image_rules(self) -> ImageRules:
        return ImageRules(max_pixels=self.max_pixels, min_side=self.min_side,
                          max_aspect_ratio=self.max_aspect_ratio)


STAGE_SCHEMA = pa.schema(list(RAW) + [pa.field("reason", pa.string()), pa.field("message", pa.string()),
                                      pa.field("record", pa.string()), pa.field("converted", pa.int32())])


def _load_image(inline: bytes | None, path: str | None, base: str, allow_remote: bool) -> bytes:
    if inline is not None:
        return inline
    assert path is not None
    if path.startswith(_REMOTE_PREFIXES):
        if not allow_remote:
            raise Rejected("remote_not_allowed", f"{path}: remote images are fetched only with --allow-remote")
        if path.startswith(("http://", "https://")):
            with urllib.request.urlopen(path, timeout=30) as response:
                return response.read()
        fs, inner = filesystem(path)
        return read_bytes(fs, inner)
    fs, base_path = filesystem(base)
    # Resolve against the source's own folder and refuse anything that escapes it, by `..`, an
    # absolute path or a symlink.
    target = posixpath.normpath(posixpath.join(base_path, path))
    inside = (target + "/").startswith(base_path.rstrip("/") + "/")
    if inside and isinstance(fs, pafs.LocalFileSystem):
        inside = (os.path.realpath(target) + "/").startswith(os.path.realpath(base_path) + "/")
    if not inside:
        raise Rejected("path_outside_source", f"{path!r} resolves outside the source folder")
    try:
        return read_bytes(fs, target)
    except FileNotFoundError:
        raise Rejected("file_not_found", f"{path!r} does not exist in the source folder") from None
    except OSError as e:
        raise Rejected("unreadable_file", f"{path!r}: {stable_message(e, base_path)}") from None


def _ingest_row(ref: dict[str, Any], config: IngestConfig) -> dict[str, Any]:
    if ref["error_reason"]:
        raise Rejected(ref["error_reason"], ref["error_message"] or ref["error_reason"])
    task, instruction = ref["task"], ref["instruction"]
    if task is None:
        raise Rejected("missing_field", "no task (edit | generate)")
    if task not in TASKS:
        raise Rejected("unknown_task", f"task {task!r} is not one of {TASKS}")
    if instruction is None:
        raise Rejected("missing_field", "no instruction")
    if not instruction.strip():
        raise Rejected("empty_instruction", "instruction is empty or whitespace")
    if len(instruction) > config.max_instruction_chars:
        raise Rejected("instruction_too_long",
                       f"{len(instruction)} characters > max_instruction_chars {config.max_instruction_chars}")
    has_input = ref["input_image_bytes"] is not None or ref["input_image_path"] is not None
    if task == "edit" and not has_input:
        raise Rejected("missing_input_image", "an edit needs an input image")
    if task == "generate" and has_input:
        raise Rejected("unexpected_input_image", "a generate sample must not have an input image")
    if ref["output_image_bytes"] is None and ref["output_image_path"] is None:
        raise Rejected("missing_output_image", "no output image")

    rules = config.image_rules
    images = {}
    for side in ("input", "output") if has_input else ("output",):
        data = _load_image(ref[f"{side}_image_bytes"], ref[f"{side}_image_path"], ref["base"],
                           config.allow_remote)
        try:
            images[side] = check_image(data, rules)
        except Rejected as e:
            raise Rejected(e.reason, f"{side} image: {e}") from None
    inp, out = images.get("input"), images["output"]
    return {
        "sample_id": sample_id(task, instruction, inp.data if inp else None, out.data),
        "task": task, "instruction": instruction,
        "input_image": inp.data if inp else None, "output_image": out.data,
        "input_width": inp.width if inp else None, "input_height": inp.height if inp else None,
        "output_width": out.width, "output_height": out.height,
        "source": ref["source"], "source_ref": ref["source_ref"],
        "category": ref["category"], "meta": ref["meta"],
        "converted": sum(int(i.converted) for i in images.values()),
    }


def ingest_batch(refs: pa.Table, config: IngestConfig) -> pa.Table:
    """The ingest stage: reference rows -> raw rows, rejected ones carrying `reason`/`message`."""
    rows = []
    for ref in refs.to_pylist():
        try:
            rows.append(_ingest_row(ref, config))
        except Rejected as e:
            rows.append({"source": ref["source"], "source_ref": ref["source_ref"], "reason": e.reason,
                         "message": str(e), "record": ref["record"]})
    return pa.Table.from_pylist(rows, schema=STAGE_SCHEMA)


def run_ingest(config: IngestConfig, progress: bool = True) -> VersionManifest:
    started = time.perf_counter()
    registry = DatasetRegistry(config.registry)
    formats = [detect_format(s) if config.format == "auto" else config.format for s in config.sources]
    references = [t for src, fmt in zip(config.sources, formats) for t in read_source(src, fmt, config.columns)]
    n_input = sum(t.num_rows for t in references)

    init_ray(config.ray_address)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = progress
    results = map_stage(references, ingest_batch, batch_size=config.batch_size, config=config)

    seen: set[str] = set()
    reasons: collections.Counter[str] = collections.Counter()
    n_out = n_dup = converted = 0
    with registry.writer(config.dataset, STAGE, RAW, target_shard_bytes=config.shard_bytes) as writer:
        for batch in results.iter_batches(batch_format="pyarrow", batch_size=None):
            is_rejected = pc.is_valid(batch["reason"])
            rejected = batch.filter(is_rejected)
            reasons.update(rejected["reason"].to_pylist())
            writer.quarantine(reason=rejected["reason"], message=rejected["message"], source=rejected["source"],
                              source_ref=rejected["source_ref"], sample_id=rejected["sample_id"],
                              record=rejected["record"])
            accepted = batch.filter(pc.invert(is_rejected))
            keep = []
            for sid in accepted["sample_id"].to_pylist():  # first occurrence in source order wins
                keep.append(sid not in seen)
                seen.add(sid)
            unique = accepted.filter(pa.array(keep, pa.bool_()))
            n_dup += accepted.num_rows - unique.num_rows
            n_out += unique.num_rows
            converted += pc.sum(unique["converted"]).as_py() or 0
            writer.write(unique)
        counts = Counts(input=n_input, output=n_out, quarantined=sum(reasons.values()), duplicates=n_dup)
        stats = {"quarantine_reasons": dict(sorted(reasons.items())), "images_converted": converted,
                 "seconds": round(time.perf_counter() - started, 3)}
        sources = [{"uri": s, "format": f} for s, f in zip(config.sources, formats)]
        return writer.publish(counts, lineage(dataclasses.asdict(config), sources=sources), stats)


def accounting_table(manifest: VersionManifest) -> str:
    """The reconciliation, as printed after every ingest."""
    lines = [manifest.counts.line()]
    reasons = manifest.stats.get("quarantine_reasons", {})
    if reasons:
        width = max(len(r) for r in reasons)
        lines.append("quarantined by reason:")
        lines += [f"  {reason:<{width}}  {n}" for reason, n in reasons.items()]
    return "\n".join(lines)

