"""`pipeline annotate`: a raw version -> an `annotated` version with a validated reasoning trace per
sample, or the sample in quarantine with every attempt's reason.

The annotator runs as a resumable chunked Ray Data job (see `pipeline.chunked`): an actor pool for
backends that hold a model (one engine per actor, one actor per GPU), plain tasks for the `openai`
backend. Rerunning with the same arguments resumes from the chunks already done.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from annotators import AnnotatorConfig, Sample, build_annotator
from annotators.annotator import to_json
from annotators.prompts import load_prompts
from pipeline.chunked import iter_results, plan_chunks, run_missing
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


def _apply_stage(config: AnnotateConfig) -> Callable:
    def apply(ds):
        import ray
        import ray.data

        if config.backend == "openai":
            # Nothing to load: plain tasks run on Ray's warm worker pool, where an actor would start a
            # fresh process per run (seconds of imports). The key travels as an environment variable
            # of the tasks, never inside the config.
            key = os.environ.get("OPENAI_API_KEY")
            env = {"runtime_env": {"env_vars": {"OPENAI_API_KEY": key}}} if key else {}
            return ds.map_batches(annotate_batch, batch_size=config.batch_size, batch_format="pyarrow",
                                  fn_kwargs={"config": config.annotator_config()},
                                  concurrency=config.concurrency, **env)
        on_gpu = config.backend in ("vllm", "transformers") and ray.cluster_resources().get("GPU", 0) > 0
        return ds.map_batches(AnnotateStage, batch_size=config.batch_size, batch_format="pyarrow",
                              fn_constructor_kwargs={"config": config.annotator_config()},
                              compute=ray.data.ActorPoolStrategy(size=config.concurrency),
                              num_gpus=config.vllm.tensor_parallel_size if on_gpu else 0)
    return apply


def run_annotate(config: AnnotateConfig, progress: bool = True) -> VersionManifest:
    registry = DatasetRegistry(config.registry)
    source = registry.resolve(config.dataset, schema="raw/1")
    output = config.output or split_ref(config.dataset)[0]
    key = run_key(config, source)
    work = registry.work_dir(output, key)
    chunks = plan_chunks(source, config.chunk_rows)
    init_ray(config.ray_address)
    resumed, seconds = run_missing(registry, source, chunks, work, _INPUT_COLUMNS, _apply_stage(config),
                                   progress=progress, unit="trace")

    prompts = load_prompts(config.prompt_edit, config.prompt_generate)
    results: list[dict[str, Any]] = []
    with registry.writer(output, STAGE, ANNOTATED, parent=source.ref) as writer:
        for rows, notes in iter_results(registry, source, chunks, work):
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
    writer.quarantine(reason=[r[-1] for r in reasons],
                      message=["; ".join(f"attempt {i + 1}: {x}" for i, x in enumerate(r)) for r in reasons],
                      source=rejected["source"], source_ref=rejected["source_ref"], sample_id=rejected["sample_id"],
                      record=rejected_notes["verdicts"])


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
