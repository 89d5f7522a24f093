"""The stage contract: what a data stage (ingest, annotate, tokenize) is, and how one unit of work
runs through it. No Ray here: `pipeline.ray_runtime` runs units on a cluster, tests run them in
process with the same code.

A stage declares its resources and batch size, loads its model in `setup()`, may do CPU work in
`prepare()` (run on CPU workers ahead of the model), and turns a batch of rows into kept rows and
rejected rows with reasons in `process()`. A *unit* is a deterministic slice of the input (a source
file split, a row range of a version): `run_unit` feeds it through the stage, writes the kept and
rejected rows as content-addressed shards from the worker, counts, and writes a completion marker.
The driver only plans units, collects the markers and publishes.

What differs between stages on the driver is declared as data: a stage module's `plan` returns a
`Plan` (its input version, its units or their size, its provenance, how its Stage is built), and
`pipeline.run.run_stage` resolves, keys, runs, totals and publishes every stage the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from pipeline.registry import DatasetRegistry, ShardWriter, quarantine_table
from schemas import Counts, ShardInfo, VersionManifest, get_schema

# What `process` returns for the rows it refuses: the quarantine/1 columns but `stage`, which the
# runner stamps.
REJECTED = pa.schema([("reason", pa.string()), ("message", pa.string()), ("source", pa.string()),
                      ("source_ref", pa.string()), ("sample_id", pa.string()), ("record", pa.string())])


class Processed(NamedTuple):
    """What `Stage.process` returns for one batch."""

    kept: pa.Table  # in the stage's output schema (extra columns are dropped when written)
    rejected: pa.Table  # in REJECTED: one row per refused input row, with a reason code
    stats: dict[str, Any] = {}  # stage counters of this batch, merged over units by `merge_stats`


@dataclasses.dataclass(frozen=True, kw_only=True)
class Resources:
    num_cpus: float = 1.0  # per task or actor
    num_gpus: float = 0.0  # per actor; a tensor-parallel engine asks for its TP size
    actors: int = 0  # 0: stateless tasks; N > 0: N long-lived actors, each holding the model
    max_tasks: int | None = None  # a cap on parallel tasks (e.g. requests against one server)
    prepare_cpus: float = 0.0  # CPUs of each read/prepare task ahead of the actors (0: I/O only)
    # Units an actor works on at once, in threads: for a model that serves many requests at once
    # (an engine with its own scheduler), so it never drains between units. `process` must then be
    # safe to call from several threads.
    units_per_actor: int = 1
    # Resource bundles that must sit on one node (a tensor-parallel engine's GPUs): each actor gets
    # a placement group of them and runs in the first; what it starts (the engine's workers) fills the rest.
    placement: tuple[dict[str, float], ...] = ()


class Stage:
    """Subclasses set `name`, `output_schema`, `batch_size`, `resources` and implement `process`."""

    name: ClassVar[str]
    output_schema: pa.Schema
    batch_size: int = 256
    resources: Resources = Resources()
    # Quarantine reasons that may pass on a rerun (a server outage): a unit with such rows is
    # published as it is, but never taken as done, so a rerun with the same arguments redoes it.
    transient_reasons: ClassVar[tuple[str, ...]] = ()

    def setup(self) -> None:
        """Load models and clients; called once per worker before the first batch."""

    def prepare(self, rows: pa.Table) -> pa.Table:
        """CPU work before the model (decode, resize), on CPU workers; the default passes rows on."""
        return rows

    def process(self, rows: pa.Table) -> Processed:
        """rows -> kept rows, rejected rows with reasons, counters. Every row in comes out once."""
        raise NotImplementedError


def rejected_rows(rows: pa.Table, reason: list[str], message: list[str], record: list | None = None) -> pa.Table:
    """REJECTED rows for `rows`, carrying their source, source_ref and sample_id where they have them."""
    n = rows.num_rows
    nulls = pa.nulls(n, pa.string())
    column = lambda name: rows[name] if name in rows.column_names else nulls  # noqa: E731
    return pa.table({"reason": pa.array(reason, pa.string()), "message": pa.array(message, pa.string()),
                     "source": column("source"), "source_ref": column("source_ref"),
                     "sample_id": column("sample_id"),
                     "record": nulls if record is None else pa.array(record, pa.string())}, schema=REJECTED)


def merge_stats(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Counters add up, nested dicts merge, `max_*` keys keep the larger value."""
    out = dict(a)
    for key, value in b.items():
        if key not in out or out[key] is None:
            out[key] = value
        elif value is None:
            continue
        elif isinstance(value, dict):
            out[key] = merge_stats(out[key], value)
        elif key.startswith("max_"):
            out[key] = max(out[key], value)
        else:
            out[key] = out[key] + value
    return out


@dataclasses.dataclass(kw_only=True)
class UnitResult:
    """What a finished unit leaves behind: its shards and its counts (the completion marker)."""

    unit: int
    input: int
    shards: list[ShardInfo]
    quarantine_shards: list[ShardInfo]
    reasons: dict[str, int]
    stats: dict[str, Any]
    seconds: float
    # The kept rows' sample_ids, when the stage deduplicates: a path relative to the run's work folder
    # (a registry moved elsewhere still resumes; `keys_file`) and the file's sha256, checked on resume
    keys: str | None = None
    keys_sha256: str | None = None
    schema: str | None = None  # fingerprint of the layout the shards were written in (`schema_fingerprint`)

    @property
    def output(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def quarantined(self) -> int:
        return sum(s.rows for s in self.quarantine_shards)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "UnitResult":
        d = json.loads(text)
        d["shards"] = [ShardInfo(**s) for s in d["shards"]]
        d["quarantine_shards"] = [ShardInfo(**s) for s in d["quarantine_shards"]]
        return cls(**d)


def schema_fingerprint(schema: pa.Schema) -> str:
    """A short hash of a layout: a unit written in another one (a column added since) is not done."""
    return hashlib.sha256(schema.to_string().encode()).hexdigest()[:16]


def marker_path(work: str, unit: int) -> str:
    return f"{work}/units/{unit:08d}.json"


def keys_file(work: str, result: UnitResult) -> str:
    """Where a unit's keys file lies (its marker records it relative to the work folder)."""
    return f"{work}/{result.keys}"


def run_unit(stage: Stage, unit: int, tables: Iterable[pa.Table], *, registry: DatasetRegistry, dataset: str,
             work: str, target_bytes: int, keys: bool = False) -> UnitResult:
    """Feed one unit's (prepared) rows through `stage.process` in batches of `stage.batch_size`,
    store kept and rejected rows as shards, write the completion marker last, return the result."""
    started = time.perf_counter()
    kept_writer = ShardWriter(registry, dataset, stage.output_schema, target_bytes)
    rejected_writer = ShardWriter(registry, dataset, get_schema("quarantine/1"), target_bytes)
    n_in, reasons, stats, ids = 0, {}, {}, []
    for table in tables:
        for start in range(0, table.num_rows, stage.batch_size):
            rows = table.slice(start, stage.batch_size)
            kept, rejected, batch_stats = stage.process(rows)
            if kept.num_rows + rejected.num_rows != rows.num_rows:
                raise AssertionError(f"stage {stage.name}: {rows.num_rows} rows in, {kept.num_rows} kept + "
                                     f"{rejected.num_rows} rejected out")
            n_in += rows.num_rows
            kept_writer.add(kept)
            if keys:
                ids += kept["sample_id"].to_pylist()
            if rejected.num_rows:
                rejected_writer.add(quarantine_table(stage.name, **{c: rejected[c] for c in REJECTED.names}))
                for r in pc.value_counts(rejected["reason"]).to_pylist():
                    reasons[r["values"]] = reasons.get(r["values"], 0) + r["counts"]
            stats = merge_stats(stats, batch_stats)
    result = UnitResult(unit=unit, input=n_in, shards=kept_writer.flush(), quarantine_shards=rejected_writer.flush(),
                        reasons=dict(sorted(reasons.items())), stats=stats,
                        seconds=round(time.perf_counter() - started, 3),
                        schema=schema_fingerprint(stage.output_schema))
    if keys:
        data = ipc_bytes(pa.table({"sample_id": pa.array(ids, pa.string())}))
        result.keys, result.keys_sha256 = f"keys/{unit:08d}.arrow", hashlib.sha256(data).hexdigest()
        registry.write_atomic(keys_file(work, result), data)
    registry.write_atomic(marker_path(work, unit), result.to_json().encode())  # the unit's commit point
    return result


def ipc_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def read_ipc(data: bytes) -> pa.Table:
    return ipc.open_file(pa.BufferReader(data)).read_all()


def totals(results: list[UnitResult], duplicates: int = 0) -> tuple[Counts, dict[str, int], dict[str, Any]]:
    """(counts, quarantine reasons, merged stage stats) over all units: the one place rows are counted.
    `duplicates` are rows a later step removed from the units' shards (ingest's dedup)."""
    reasons: dict[str, int] = {}
    stats: dict[str, Any] = {}
    for r in results:
        reasons = merge_stats(reasons, r.reasons)
        stats = merge_stats(stats, r.stats)
    counts = Counts(input=sum(r.input for r in results), output=sum(r.output for r in results),
                    quarantined=sum(r.quarantined for r in results), duplicates=duplicates)
    return counts, dict(sorted(reasons.items())), stats


def plan_row_ranges(manifest: VersionManifest, unit_rows: int, columns: list[str]) -> list[dict[str, Any]]:
    """Units over a version: consecutive row ranges (they may cross shard boundaries), deterministic
    for a version and unit size, so a rerun finds its completion markers."""
    return [{"unit": i, "ref": manifest.ref, "start": start,
             "length": min(unit_rows, manifest.counts.output - start), "columns": columns}
            for i, start in enumerate(range(0, manifest.counts.output, unit_rows))]


def read_row_range(unit: dict[str, Any], registry: str) -> Iterator[pa.Table]:
    """A unit reader for `plan_row_ranges` units: the rows, read on the worker from the registry."""
    reg = DatasetRegistry(registry)
    yield reg.read_rows(reg.manifest(unit["ref"]), unit["start"], unit["length"], unit["columns"])


# A unit reader: its spec (a JSON-able dict with an int "unit") -> the unit's rows, in order.
Reader = Callable[[dict[str, Any]], Iterator[pa.Table]]
# How a step after the units runs small functions as tasks (the executor's, e.g. Ray tasks):
# `map_tasks(fn, items, **kwargs)` -> [fn(item, **kwargs) for item in items].
MapTasks = Callable[..., list[Any]]


@dataclasses.dataclass(kw_only=True)
class Plan:
    """One run of a stage as its module plans it on the driver, from listings and manifests only:
    what `pipeline.run.run_stage` needs beside the config to key, run and publish it."""

    name: str  # the stage: the manifest's `stage`, the run key's prefix, the lineage's key
    schema: str  # the output schema's name, e.g. "annotated/1"
    output: str  # the dataset the version goes to
    # Builds the stage once the executor is up; the argument says whether its actors got GPUs.
    make_stage: Callable[[bool], Stage]
    # What made the rows beyond the config (models and their hashes, prompts, rules): the lineage's
    # `name` entry, and part of the run key.
    provenance: dict[str, Any]
    source: VersionManifest | None = None  # the version read (hashed once before any unit runs)
    columns: list[str] = dataclasses.field(default_factory=list)  # of `source`, read by every unit
    unit_rows: int = 256  # rows of `source` per unit
    # Units planned otherwise (ingest: from its sources) and their reader; default: `unit_rows`
    # row ranges of `source`, read from the registry.
    units: list[dict[str, Any]] | None = None
    read: Reader | None = None
    keys: bool = False  # write each unit's sample_ids beside its shards (for `after`)
    # A step over the finished units (ingest's dedup): (results, map_tasks, the run's work folder) ->
    # (results, rows removed).
    after: Callable[[list[UnitResult], MapTasks, str], tuple[list[UnitResult], int]] | None = None
    target_bytes: int | None = None  # shard size (default: the registry's)
    device: str = "cpu"  # auto | cpu | cuda: whether the stage's actors ask for GPUs (`ray_runtime.use_gpus`)
    gpu_wait_s: float = 0.0
    secrets: dict[str, str] | None = None  # set in each worker's environment, never saved anywhere
    # The stage's merged counters -> what its manifest keeps (rates, sorted histograms); the driver
    # adds quarantine_reasons, seconds, units and resumed_units.
    summarize: Callable[[dict[str, Any], Counts, float], dict[str, Any]] = lambda stats, counts, seconds: stats
    rule: dict[str, Any] | None = None  # what decided the content beyond its input (a filter's thresholds)
