"""Resumable chunked execution, shared by the stages that call models (annotate, tokenize).

The input version is cut into chunks of `chunk_rows` rows (deterministic for a version and chunk
size). A Ray Data job reads the chunks still missing straight from the registry, runs the stage,
and the driver writes each finished chunk's results, tagged by a `chunk` column, to the run's work
folder under one atomic rename. A killed run restarted with the same arguments redoes only missing
chunks; the version is assembled from all chunk files at the end, so it comes out the same.
"""

from __future__ import annotations

import collections
import io
import time
from collections.abc import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
from tqdm import tqdm

from pipeline.registry import DatasetRegistry
from schemas import VersionManifest


def plan_chunks(manifest: VersionManifest, chunk_rows: int) -> list[dict[str, int]]:
    chunks = []
    for shard, info in enumerate(manifest.shards):
        for start in range(0, info.rows, chunk_rows):
            chunks.append({"chunk": len(chunks), "shard": shard, "start": start,
                           "length": min(chunk_rows, info.rows - start)})
    return chunks


def chunk_path(work: str, chunk: int) -> str:
    return f"{work}/chunks/{chunk:08d}.arrow"


def read_chunks(descriptors: dict, registry: str, ref: str, columns: list[str]) -> pa.Table:
    """Ray task: the input rows of some chunks, each row tagged with its chunk id."""
    reg = DatasetRegistry(registry)
    manifest = reg.resolve(ref)
    tables = []
    for chunk, shard, start, length in zip(descriptors["chunk"], descriptors["shard"], descriptors["start"],
                                           descriptors["length"]):
        rows = reg.read_rows(manifest, int(shard), int(start), int(length), columns)
        tables.append(rows.append_column("chunk", pa.array([int(chunk)] * rows.num_rows, pa.int64())))
    return pa.concat_tables(tables)


def _ipc_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def run_missing(registry: DatasetRegistry, source: VersionManifest, chunks: list[dict[str, int]], work: str,
                columns: list[str], apply_stage: Callable, *, progress: bool, unit: str) -> tuple[int, float]:
    """Process the chunks with no result file yet. `apply_stage(dataset) -> dataset` adds the stage
    (a map_batches that keeps the `chunk` column). Returns (chunks resumed, seconds spent)."""
    import ray.data

    missing = [c for c in chunks if not registry.exists(chunk_path(work, c["chunk"]))]
    resumed = len(chunks) - len(missing)
    if resumed:
        print(f"resuming {work.rsplit('/', 1)[-1]}: {resumed} of {len(chunks)} chunks already done")
    if not missing:
        return resumed, 0.0
    started = time.perf_counter()
    # Reading is light I/O: it reserves no CPU, so it can never wait behind a stage whose actors
    # hold every CPU (that would deadlock the job).
    ds = ray.data.from_items(missing).map_batches(
        read_chunks, batch_size=1, batch_format="pyarrow", num_cpus=0,
        fn_kwargs={"registry": registry.root, "ref": source.ref, "columns": columns})
    expected = {c["chunk"]: c["length"] for c in missing}
    pending: dict[int, list[pa.Table]] = collections.defaultdict(list)
    received: collections.Counter[int] = collections.Counter()
    bar = tqdm(total=sum(expected.values()), unit=unit, disable=not progress, desc=unit + "s")
    for batch in apply_stage(ds).iter_batches(batch_format="pyarrow", batch_size=None):
        for chunk in sorted(set(batch["chunk"].to_pylist())):
            part = batch.filter(pc.equal(batch["chunk"], chunk))
            pending[chunk].append(part)
            received[chunk] += part.num_rows
            if received[chunk] == expected[chunk]:  # complete: make it durable
                registry.write_atomic(chunk_path(work, chunk), _ipc_bytes(pa.concat_tables(pending.pop(chunk))))
        bar.update(batch.num_rows)
    bar.close()
    assert not pending, f"chunks left incomplete: {sorted(pending)}"
    return resumed, time.perf_counter() - started


def iter_results(registry: DatasetRegistry, source: VersionManifest, chunks: list[dict[str, int]],
                 work: str) -> Iterator[tuple[pa.Table, pa.Table]]:
    """(input rows, results) per chunk, in order, checked to line up by sample_id."""
    for c in chunks:
        with registry.fs.open_input_file(chunk_path(work, c["chunk"])) as f:
            results = ipc.open_file(f).read_all()
        rows = registry.read_rows(source, c["shard"], c["start"], c["length"])
        assert results["sample_id"].to_pylist() == rows["sample_id"].to_pylist(), f"chunk {c['chunk']} misaligned"
        yield rows, results
