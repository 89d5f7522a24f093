"""`pipeline ingest`: editing and generation sources -> a validated, deduplicated `raw` version.

`IngestStage` turns reference rows (see `sources`) into raw rows or quarantine rows; it is a pure
transform over a batch. `plan` plans the sources into units on the driver (listings and metadata
only); the stage driver (`pipeline.run.run_stage`) runs the stage on workers (each reads its unit,
checks and decodes its images and writes its shards), then `deduplicate` removes repeated
sample_ids across units keeping the first in source order (`pipeline.dedup`), and the driver
publishes the manifest. The driver holds counts and shard metadata, never
rows. Every input row ends in exactly one place: the output, the quarantine or the duplicate count.
"""

from __future__ import annotations

import dataclasses
import posixpath
import time
import unicodedata
import urllib.request
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from annotators.annotator import speed_only
from pipeline import dedup
from pipeline.images import ImageRules, Rejected, check_image, stable_message
from pipeline.registry import DatasetRegistry
from pipeline.sources import UNIT_ROWS, detect_format, inside, plan_source, read_file, read_unit
from pipeline.stage import MapTasks, Plan, Processed, Resources, Stage, UnitResult, keys_file, rejected_rows
from pipeline.storage import open_location
from schemas import RAW, TASKS, VersionManifest, sample_id

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
    max_image_bytes: int = 64 * 1024 * 1024  # checked before a file is read or while a URL is fetched
    fetch_deadline_s: float = 60.0  # for a whole URL fetch: a server that trickles its body is cut off
    min_side: int = 32
    max_aspect_ratio: float = 4.0
    max_instruction_chars: int = 4000
    batch_size: int = speed_only(32)  # rows per stage call
    unit_rows: int = UNIT_ROWS  # rows per Ray task for line and folder sources (the unit of resume)
    shard_bytes: int = 256 * 1024 * 1024  # target size of each output shard
    registry: str | None = speed_only(None)
    ray_address: str | None = speed_only(None)

    @property
    def image_rules(self) -> ImageRules:
        return ImageRules(max_pixels=self.max_pixels, min_side=self.min_side,
                          max_aspect_ratio=self.max_aspect_ratio)


KEPT_SCHEMA = pa.schema(list(RAW) + [pa.field("converted", pa.int32())])  # + images re-encoded, for stats


def _load_image(inline: bytes | None, path: str | None, base: str, config: IngestConfig) -> bytes:
    if inline is not None:
        return inline
    assert path is not None
    if "\x00" in path:  # no filesystem accepts it, and os calls raise on it
        raise Rejected("bad_path", f"{path!r} holds a NUL character")
    if path.startswith(_REMOTE_PREFIXES):
        if not config.allow_remote:
            raise Rejected("remote_not_allowed", f"{path}: remote images are fetched only with --allow-remote")
        if path.startswith(("http://", "https://")):
            return _fetch(path, config.max_image_bytes, config.fetch_deadline_s)
        fs, inner = open_location(path)
        return read_file(fs, inner, path, config.max_image_bytes)
    fs, base_path = open_location(base)
    # Resolve against the source's own folder and refuse anything that escapes it, by `..`, an
    # absolute path or a symlink.
    target = posixpath.normpath(posixpath.join(base_path, path))
    if not inside(fs, target, base_path):
        raise Rejected("path_outside_source", f"{path!r} resolves outside the source folder")
    return read_file(fs, target, path, config.max_image_bytes, base_path)


def _fetch(url: str, max_bytes: int, deadline_s: float = 60.0) -> bytes:
    """An image URL, with one deadline for the whole transfer (a socket timeout alone lets a server
    trickle for ever) and a size cap."""
    stop = time.monotonic() + deadline_s
    chunks, size = [], 0
    try:
        with urllib.request.urlopen(url, timeout=min(30.0, deadline_s)) as response:
            # read1 returns what one socket read brings; read(n) would wait for n bytes, so a body
            # trickled a byte at a time would never reach the deadline check
            while chunk := response.read1(1 << 16):
                size += len(chunk)
                if size > max_bytes:
                    raise Rejected("file_too_large", f"{url}: more than max_image_bytes {max_bytes}")
                if time.monotonic() > stop:
                    raise Rejected("fetch_failed", f"{url}: not received within {deadline_s:.0f} s")
                chunks.append(chunk)
    except (OSError, ValueError) as e:  # refused, DNS, HTTP errors, timeouts, malformed URLs
        raise Rejected("fetch_failed", f"{url}: {stable_message(e)}") from None
    return b"".join(chunks)


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
    instruction = normalise_text(instruction)
    if not any(ch.isprintable() and not ch.isspace() and unicodedata.category(ch) != "Cf" for ch in instruction):
        raise Rejected("empty_instruction", "instruction has no visible character")
    if any(unicodedata.category(ch) == "Cc" and ch not in "\n\t" for ch in instruction):
        raise Rejected("control_characters", f"instruction holds control characters: {instruction[:80]!r}")
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
        data = _load_image(ref[f"{side}_image_bytes"], ref[f"{side}_image_path"], ref["base"], config)
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


def normalise_text(text: str) -> str:
    """Once, before the sample_id is hashed: no byte-order mark, Unix line ends, no surrounding
    whitespace, so the same instruction saved by another editor is the same sample."""
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n").strip()


class IngestStage(Stage):
    """Reference rows -> raw rows (images checked, normalised, hashed into the sample_id) or rejects."""

    name = STAGE
    output_schema = RAW

    def __init__(self, config: IngestConfig):
        self.config = config
        self.batch_size = config.batch_size
        self.resources = Resources(num_cpus=1)

    def process(self, refs: pa.Table) -> Processed:
        kept, bad, reasons, messages, records = [], [], [], [], []
        for i, ref in enumerate(refs.to_pylist()):
            try:
                kept.append(_ingest_row(ref, self.config))
            except Exception as e:
                # A Rejected is a known refusal; anything else is an input nobody foresaw (or a bug):
                # this row's problem, kept with its type and message, never the job's.
                reason, message = (e.reason, str(e)) if isinstance(e, Rejected) else ("row_error", stable_message(e))
                bad.append(i)
                reasons.append(reason)
                messages.append(message)
                records.append(ref["record"])
        rejected = rejected_rows(refs.take(pa.array(bad, pa.int64())), reasons, messages, records)
        kept = pa.Table.from_pylist(kept, schema=KEPT_SCHEMA)
        return Processed(kept, rejected, {"images_converted": pc.sum(kept["converted"]).as_py() or 0})


def ingest_batch(refs: pa.Table, config: IngestConfig) -> Processed:
    """The stage as a function: reference rows -> (raw rows, rejected rows with reasons)."""
    return IngestStage(config).process(refs)


def plan_units(config: IngestConfig) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(units of every source, numbered in source order; the sources with their formats)."""
    sources = [canonical_source(s) for s in config.sources]
    formats = [detect_format(s) if config.format == "auto" else config.format for s in sources]
    units = [u for src, fmt in zip(sources, formats)
             for u in plan_source(src, fmt, config.columns, config.unit_rows)]
    for i, unit in enumerate(units):
        unit["unit"] = i
    return units, [{"uri": s, "format": f} for s, f in zip(sources, formats)]


def plan(config: IngestConfig, registry: DatasetRegistry) -> Plan:
    units, sources = plan_units(config)

    def after(results: list[UnitResult], map_tasks: MapTasks, work: str) -> tuple[list[UnitResult], int]:
        if not sum(r.input for r in results):  # an empty or mistaken source: an error, not an empty version
            raise ValueError(f"no rows found in {', '.join(s['uri'] for s in sources)}: nothing to publish")
        return deduplicate(registry, config, results, map_tasks, work)

    return Plan(name=STAGE, schema="raw/1", output=config.dataset, make_stage=lambda on_gpu: IngestStage(config),
                provenance={"sources": sources}, units=units, read=read_unit, keys=True, after=after,
                target_bytes=config.shard_bytes,
                summarize=lambda stats, counts, seconds: {"images_converted": 0, **stats})


def canonical_source(source: str) -> str:
    """One spelling per source (`./data//x.jsonl` is `data/x.jsonl`): the rows' `source` column, and
    so the version id, must not depend on how the path was typed."""
    scheme, sep, rest = source.partition("://")
    if not sep:
        return posixpath.normpath(source)
    return f"{scheme}://{posixpath.normpath(rest)}"


def deduplicate(registry: DatasetRegistry, config: IngestConfig, results: list[UnitResult],
                map_tasks: MapTasks, work: str) -> tuple[list[UnitResult], int]:
    """Drop every repeat of a sample_id after its first occurrence in source order: a hash-bucketed
    scan of the units' keys files, then a rewrite of only the units that hold a repeat, as tasks."""
    buckets = dedup.bucket_count(sum(r.output for r in results))
    keys = [(r.unit, keys_file(work, r)) for r in results if r.output]
    found = map_tasks(dedup.find_repeats, list(range(buckets)), registry=registry.root, keys=keys, buckets=buckets)
    by_unit: dict[int, list[int]] = {}
    for unit, row in (pair for repeats in found for pair in repeats):
        by_unit.setdefault(unit, []).append(row)
    if not by_unit:
        return results, 0
    index = {r.unit: i for i, r in enumerate(results)}
    items = [(results[index[u]].to_json(), sorted(rows)) for u, rows in sorted(by_unit.items())]
    rewritten = map_tasks(dedup.drop_rows, items, registry=registry.root, dataset=config.dataset, schema="raw/1",
                          target_bytes=config.shard_bytes)
    results = list(results)
    for result in map(UnitResult.from_json, rewritten):
        results[index[result.unit]] = result
    return results, sum(len(rows) for rows in by_unit.values())


def accounting_table(manifest: VersionManifest) -> str:
    """The reconciliation, as printed after every ingest."""
    lines = [manifest.counts.line()]
    reasons = manifest.stats.get("quarantine_reasons", {})
    if reasons:
        width = max(len(r) for r in reasons)
        lines.append("quarantined by reason:")
        lines += [f"  {reason:<{width}}  {n}" for reason, n in reasons.items()]
    return "\n".join(lines)

