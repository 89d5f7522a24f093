"""Exact deduplication by sample_id across all of ingest's units, without a driver in the way.

Each unit leaves a small keys file (the sample_ids of its kept rows, in order). The sample_id space
is cut into buckets by hash; one task per bucket reads every unit's keys, keeps its bucket's ids
and marks each repeat of an id seen earlier in unit order, which is source order. So the first
occurrence wins, deterministically, however the units were scheduled. Only units holding a repeat
have their shards rewritten without it; the rest keep theirs. Plain functions: the Ray fan-out is
`pipeline.ray_runtime.map_tasks`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from pipeline.registry import DatasetRegistry, ShardWriter
from pipeline.stage import UnitResult
from schemas import get_schema

IDS_PER_BUCKET = 250_000  # ~25 MB of ids held by one bucket task


def bucket_count(rows: int) -> int:
    return max(1, -(-rows // IDS_PER_BUCKET))


def _read(registry: DatasetRegistry, path: str) -> pa.Table:
    with registry.fs.open_input_file(path) as f:
        return ipc.open_file(f).read_all()


def find_repeats(bucket: int, *, registry: str, keys: list[tuple[int, str]], buckets: int) -> list[tuple[int, int]]:
    """(unit, row) of every repeat of an id in `bucket`, scanning units in order."""
    reg = DatasetRegistry(registry)
    seen: set[str] = set()
    repeats = []
    for unit, path in keys:
        ids = _read(reg, path)["sample_id"]
        # sample_ids are hex sha256 digests: their first 15 digits are a uniform 60-bit hash.
        hashes = np.array([int(s[:15], 16) for s in ids.to_pylist()], dtype=np.int64)
        rows = np.flatnonzero(hashes % buckets == bucket)
        for row, sid in zip(rows.tolist(), ids.take(pa.array(rows)).to_pylist()):
            if sid in seen:
                repeats.append((unit, row))
            else:
                seen.add(sid)
    return repeats


def drop_rows(item: tuple[str, list[int]], *, registry: str, dataset: str, schema: str,
              target_bytes: int) -> str:
    """A unit's result with its shards rewritten without `rows` (indices into the unit's kept rows)."""
    result_json, rows = item
    result = UnitResult.from_json(result_json)
    reg = DatasetRegistry(registry)
    table = pa.concat_tables([_read(reg, reg.shard_path(dataset, s)) for s in result.shards])
    keep = np.ones(table.num_rows, dtype=bool)
    keep[rows] = False
    writer = ShardWriter(reg, dataset, get_schema(schema), target_bytes)
    writer.add(table.filter(pa.array(keep)))
    return dataclasses.replace(result, shards=writer.flush()).to_json()

