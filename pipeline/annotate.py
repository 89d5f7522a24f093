"""`pipeline annotate`: a raw version -> an `annotated` version with a validated reasoning trace per
sample, or the sample in quarantine with every attempt's reason.

Work is cut into chunks of `chunk_rows` input rows. A Ray Data job reads the chunks still missing,
runs `AnnotateStage` in an actor pool (one annotator, so one model, per actor), and the driver
writes each finished chunk's annotations to the run's work folder with an atomic rename. A killed
run restarted with the same arguments finds those chunks and redoes only the rest; the version is
assembled from the chunks at the end, so it comes out the same either way.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import os
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
from tqdm import tqdm

from annotators import AnnotatorConfig, Sample, build_annotator
from annotators.annotator import to_json
from annotators.prompts import load_prompts
from pipeline.lineage import lineage
from pipeline.ray_runtime import init_ray
from pipeline.registry import DatasetRegistry, split_ref
from schemas import ANNOTATED, Counts, VersionManifest

STAGE = "annotate"
_INPUT_COLUMNS = ["sample_id", "task", "instruction", "input_image", "output_image"]
RESULT_SCHEMA = pa.schema([
    ("chunk", pa.int64()), ("sample_id", pa.string()), ("reasoning", pa.string()),
    ("attempts", pa.int32()), ("finish_reason", pa.string()), ("verdicts", pa.string()),
    ("attempt_reasons", pa.list_(pa.string())), ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
])


@dataclasses.dataclass(kw_only=True)
class AnnotateConfig(AnnotatorConfig):
    dataset: str  # NAME[@VERSION|@TAG] of a raw version
    output: str | None = None  # dataset name of the result; default: the input's name
    concurrency: int = 1  # annotator actors; with vllm, one per GPU
    batch_size: int = 64  # samples per actor call
    chunk_rows: int = 256  # unit of durable progress
    registry: str | None = None
    ray_address: str | None = None

    def annotator_config(self) -> AnnotatorConfig:
        fields = {f.name for f in dataclasses.fields(AnnotatorConfig)}
        return AnnotatorConfig(**{k: v for k, v in vars(self).items() if k in fields})


class AnnotateStage:
    """Ray Data actor: builds the annotator (loads the model) once, then annotates batches."""

    def __init__(self, config: AnnotatorConfig):
        self.annotator = build_annotator(config)

    def __call__(self, batch: pa.Table) -> pa.Table:
        samples = [Sample(**{k: row[k] for k in _INPUT_COLUMNS}) for row in batch.select(_INPUT_COLUMNS).to_pylist()]
        results = self.annotator.annotate(samples)
        return pa.Table.from_pylist([
            {"chunk": chunk, "sample_id": r.sample_id, "reasoning": r.reasoning, "attempts": r.attempts,
             "finish_reason": r.finish_reason, "verdicts": to_json(r.verdicts),
             "attempt_reasons": r.attempt_reasons, "prompt_tokens": r.prompt_tokens,
             "completion_tokens": r.completion_tokens}
            for chunk, r in zip(batch["chunk"].to_pylist(), results)], schema=RESULT_SCHEMA)


def annotate_batch(batch: pa.Table, config: AnnotatorConfig) -> pa.Table:
    """The stage as a stateless task, for backends with no model to keep loaded (openai)."""
    return AnnotateStage(config)(batch)


def _chunks(manifest: VersionManifest, chunk_rows: int) -> list[dict[str, int]]:
    """Chunk descriptors over the input's shards: deterministic for a version and chunk size."""
    chunks, global_start = [], 0
    for shard, info in enumerate(manifest.shards):
        for start in range(0, info.rows, chunk_rows):
            chunks.append({"chunk": len(chunks), "shard": shard, "start": start,
                           "length": min(chunk_rows, info.rows - start), "row": global_start + start})
        global_start += info.rows
    return chunks


def _read_chunks(descriptors: dict[str, Any], registry: str, dataset: str, version: str) -> pa.Table:
    reg = DatasetRegistry(registry)
    manifest = reg.resolve(f"{dataset}@{version}")
    tables = []
    for chunk, shard, start, length in zip(descriptors["chunk"], descriptors["shard"], descriptors["start"],
                                           descriptors["length"]):
        rows = reg.read_rows(manifest, int(shard), int(start), int(length), _INPUT_COLUMNS)
        tables.append(rows.append_column("chunk", pa.array([int(chunk)] * rows.num_rows, pa.int64())))
    return pa.concat_tables(tables)


def run_key(config: AnnotateConfig, source: VersionManifest) -> str:
    """Same arguments -> same key -> the same work folder to resume from. Settings that change
    only speed (concurrency, batch size, Ray address) are left out, so they may change on resume."""
    prompts = load_prompts(config.prompt_edit, config.prompt_generate)
    identity = {"input": source.ref, "chunk_rows": config.chunk_rows,
                "annotator": dataclasses.asdict(config.annotator_config()),
                "prompt_hashes": {t: p.sha256 for t, p in prompts.items()}}
    for speed_only in ("concurrency", "timeout_s", "max_retries", "backoff_base_s", "backoff_max_s", "base_url"):
        identity["annotator"]["openai"].pop(speed_only, None)
    identity["annotator"].pop("vllm")
    identity["annotator"].pop("device")
    return "annotate-" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _ipc_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _annotate_missing(config: AnnotateConfig, registry: DatasetRegistry, source: VersionManifest,
                      missing: list[dict[str, int]], work: str, progress: bool) -> float:
    """Run the Ray Data job over the missing chunks; returns the seconds it took."""
    import ray
    import ray.data

    started = time.perf_counter()
    gpus = ray.cluster_resources().get("GPU", 0)
    on_gpu = config.backend in ("vllm", "transformers") and gpus > 0
    ds = ray.data.from_items(missing).map_batches(
        _read_chunks, batch_size=1, batch_format="pyarrow",
        fn_kwargs={"registry": registry.root, "dataset": source.dataset, "version": source.version})
    if config.backend == "openai":
        # Nothing to load: plain tasks run on Ray's warm worker pool, where an actor would start a
        # fresh process per run (seconds of imports), and `concurrency` tasks run at once.
        # The key travels as an environment variable of the tasks, never inside the config.
        key = os.environ.get("OPENAI_API_KEY")
        env = {"runtime_env": {"env_vars": {"OPENAI_API_KEY": key}}} if key else {}
        ds = ds.map_batches(annotate_batch, batch_size=config.batch_size, batch_format="pyarrow",
                            fn_kwargs={"config": config.annotator_config()}, concurrency=config.concurrency,
                            **env)
    else:  # one model per actor, one actor per GPU (or tensor-parallel group)
        ds = ds.map_batches(AnnotateStage, batch_size=config.batch_size, batch_format="pyarrow",
                            fn_constructor_kwargs={"config": config.annotator_config()},
                            compute=ray.data.ActorPoolStrategy(size=config.concurrency),
                            num_gpus=config.vllm.tensor_parallel_size if on_gpu else 0)
    expected = {c["chunk"]: c["length"] for c in missing}
    pending: dict[int, list[pa.Table]] = collections.defaultdict(list)
    received: collections.Counter[int] = collections.Counter()
    bar = tqdm(total=sum(expected.values()), unit="trace", disable=not progress, desc="annotate")
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        for chunk in set(batch["chunk"].to_pylist()):
            part = batch.filter(pc.equal(batch["chunk"], chunk))
            pending[chunk].append(part)
            received[chunk] += part.num_rows
            if received[chunk] == expected[chunk]:  # chunk complete: make it durable
                registry.write_atomic(f"{work}/chunks/{chunk:08d}.arrow",
                                      _ipc_bytes(pa.concat_tables(pending.pop(chunk))))
        bar.update(batch.num_rows)
    bar.close()
    assert not pending, f"chunks left incomplete: {sorted(pending)}"
    return time.perf_counter() - started


def run_annotate(config: AnnotateConfig, progress: bool = True) -> VersionManifest:
    registry = DatasetRegistry(config.registry)
    source = registry.resolve(config.dataset, schema="raw/1")
    if source.schema != "raw/1":
        raise ValueError(f"{source.ref} has schema {source.schema}; annotate takes a raw/1 version")
    output = config.output or split_ref(config.dataset)[0]
    key = run_key(config, source)
    work = registry.work_dir(output, key)
    chunks = _chunks(source, config.chunk_rows)
    missing = [c for c in chunks if not registry.exists(f"{work}/chunks/{c['chunk']:08d}.arrow")]
    resumed = len(chunks) - len(missing)
    if resumed:
        print(f"resuming {key}: {resumed} of {len(chunks)} chunks already annotated")
    seconds = 0.0
    if missing:
        init_ray(config.ray_address)
        seconds = _annotate_missing(config, registry, source, missing, work, progress)

    prompts = load_prompts(config.prompt_edit, config.prompt_generate)
    results: list[dict[str, Any]] = []
    with registry.writer(output, STAGE, ANNOTATED, parent=source.ref) as writer:
        for c in chunks:
            with registry.fs.open_input_file(f"{work}/chunks/{c['chunk']:08d}.arrow") as f:
                notes = ipc.open_file(f).read_all()
            rows = registry.read_rows(source, c["shard"], c["start"], c["length"])
            assert notes["sample_id"].to_pylist() == rows["sample_id"].to_pylist(), f"chunk {c['chunk']} misaligned"
            results += notes.drop_columns(["chunk"]).to_pylist()
            _write_chunk(writer, rows, notes, config, prompts)
        accepted = sum(r["reasoning"] is not None for r in results)
        counts = Counts(input=source.counts.output, output=accepted, quarantined=len(results) - accepted,
                        duplicates=0)
        stats = _stats(results, seconds, resumed)
        provenance = {"backend": config.backend, "model": config.model, "revision": config.revision,
                      "prompts": {t: {"id": p.id, "sha256": p.sha256} for t, p in prompts.items()},
                      "sampling": dataclasses.asdict(config.sampling),
                      "validators": dataclasses.asdict(config.validators), "max_attempts": config.max_attempts,
                      "run_key": key}
        return writer.publish(counts, lineage(dataclasses.asdict(config), annotate=provenance), stats)


def _write_chunk(writer, rows: pa.Table, notes: pa.Table, config: AnnotateConfig, prompts) -> None:
    accepted = pc.is_valid(notes["reasoning"])
    kept, kept_notes = rows.filter(accepted), notes.filter(accepted)
    n = kept.num_rows
    sampling = to_json(dataclasses.asdict(config.sampling))
    tasks = kept["task"].to_pylist()
    writer.write(kept.append_column("reasoning", kept_notes["reasoning"])
                 .append_column("annotator_model", pa.array([config.model] * n, pa.string()))
                 .append_column("prompt_id", pa.array([prompts[t].id for t in tasks], pa.string()))
                 .append_column("prompt_hash", pa.array([prompts[t].sha256 for t in tasks], pa.string()))
                 .append_column("sampling_params", pa.array([sampling] * n, pa.string()))
                 .append_column("attempts", kept_notes["attempts"])
                 .append_column("finish_reason", kept_notes["finish_reason"])
                 .append_column("verdicts", kept_notes["verdicts"]))
    rejected, rejected_notes = rows.filter(pc.invert(accepted)), notes.filter(pc.invert(accepted))
    reasons = rejected_notes["attempt_reasons"].to_pylist()
    writer.quarantine(pa.table({
        "stage": pa.array([STAGE] * rejected.num_rows, pa.string()),
        "reason": pa.array([r[-1] for r in reasons], pa.string()),
        "message": pa.array(["; ".join(f"attempt {i + 1}: {x}" for i, x in enumerate(r)) for r in reasons], pa.string()),
        "source": rejected["source"], "source_ref": rejected["source_ref"], "sample_id": rejected["sample_id"],
        "record": rejected_notes["verdicts"],
    }))


def _stats(results: list[dict[str, Any]], seconds: float, resumed_chunks: int) -> dict[str, Any]:
    tokens = sum(r["completion_tokens"] for r in results)
    count = collections.Counter
    return {
        "attempts": {str(k): v for k, v in sorted(count(r["attempts"] for r in results).items())},
        "rejected_attempts": dict(sorted(count(x for r in results for x in r["attempt_reasons"]).items())),
        "quarantine_reasons": dict(sorted(count(r["attempt_reasons"][-1] for r in results
                                                if r["reasoning"] is None).items())),
        "generated_tokens": tokens, "seconds": round(seconds, 3), "resumed_chunks": resumed_chunks,
        "traces_per_s": round(len(results) / seconds, 2) if seconds else None,
        "generated_tokens_per_s": round(tokens / seconds, 1) if seconds else None,
    }


def report(manifest: VersionManifest) -> str:
    s = manifest.stats
    lines = [manifest.counts.line().replace("output", "annotated"),
             f"traces/s {s.get('traces_per_s')}  generated tokens/s {s.get('generated_tokens_per_s')}  "
             f"(this run: {s.get('seconds')} s, {s.get('resumed_chunks')} chunk(s) resumed)",
             "attempts histogram: " + ", ".join(f"{k} attempt(s): {v}" for k, v in s.get("attempts", {}).items())]
    for title, key in (("rejected attempts by reason", "rejected_attempts"), ("quarantined by reason", "quarantine_reasons")):
        if s.get(key):
            lines.append(f"{title}:")
            lines += [f"  {reason:<20} {n}" for reason, n in s[key].items()]
    return "\n".join(lines)
