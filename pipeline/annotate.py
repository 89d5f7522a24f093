"""`pipeline annotate`: a raw version -> an `annotated` version with a validated reasoning trace per
sample, or the sample in quarantine with every attempt's reason.

`AnnotateStage` runs on the stage adapter (`pipeline.ray_runtime.run_units`): a pool of actors for
backends that hold a model (one engine per actor, one actor per GPU or tensor-parallel group),
plain tasks for the `openai` backend. Each worker reads its unit of the raw version, writes the
complete annotated rows and the quarantine itself, and leaves a completion marker; rerunning with
the same arguments resumes from the units already done.
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

from annotators import AnnotatorConfig, Sample, build_annotator
from annotators.annotator import TRANSIENT_ERRORS, to_json
from annotators.openai_backend import check_server
from annotators.prompts import load_prompts
from annotators.vllm_backend import VLLMConfig
from pipeline import ray_runtime
from pipeline.config import narrowed
from pipeline.lineage import lineage
from pipeline.registry import DatasetRegistry, split_ref
from pipeline.stage import Processed, Resources, Stage, UnitResult, rejected_rows, totals
from schemas import ANNOTATED, RAW, VersionManifest

STAGE = "annotate"


@dataclasses.dataclass(kw_only=True)
class AnnotateConfig(AnnotatorConfig):
    dataset: str  # NAME[@VERSION|@TAG] of a raw version
    output: str | None = None  # dataset name of the result; default: the input's name
    concurrency: int = 1  # annotator actors; with vllm, one per GPU
    batch_size: int = 64  # samples per call of the transformers backend (the others take whole units)
    chunk_rows: int = 256  # unit of durable progress
    gpu_wait_s: float = 600.0  # with device=cuda: how long to wait for GPUs to join the cluster
    registry: str | None = None
    ray_address: str | None = None

    def annotator_config(self) -> AnnotatorConfig:
        return narrowed(self, AnnotatorConfig)


class AnnotateStage(Stage):
    """Raw rows -> annotated rows (the raw row plus its trace and how it was made) or rejects."""

    name = STAGE
    output_schema = ANNOTATED
    transient_reasons = TRANSIENT_ERRORS  # a server outage: the unit is redone on a rerun

    def __init__(self, config: AnnotateConfig, on_gpu: bool = False):
        self.config = config.annotator_config()
        # vllm and openai keep their own number of requests in flight: they take a whole unit at once
        self.batch_size = config.batch_size if config.backend == "transformers" else config.chunk_rows
        self.resources, self.config.vllm = backend_resources(config.backend, config.concurrency, config.chunk_rows,
                                                             config.vllm, on_gpu)

    def setup(self) -> None:
        self.annotator = build_annotator(self.config)
        self.prompts = load_prompts(self.config.prompt_edit, self.config.prompt_generate)
        self.sampling = to_json(dataclasses.asdict(self.config.sampling))

    def process(self, rows: pa.Table) -> Processed:
        fields = ("sample_id", "task", "instruction", "input_image", "output_image")
        samples = [Sample(**r) for r in rows.select(fields).to_pylist()]
        results = self.annotator.annotate(samples)
        ok = [r.accepted for r in results]
        good = [r for r in results if r.accepted]
        kept = rows.filter(pa.array(ok))
        tasks = kept["task"].to_pylist()
        n = kept.num_rows
        kept = (kept.append_column("reasoning", pa.array([r.reasoning for r in good], pa.string()))
                .append_column("annotator_model", pa.array([self.config.model] * n, pa.string()))
                .append_column("prompt_id", pa.array([self.prompts[t].id for t in tasks], pa.string()))
                .append_column("prompt_hash", pa.array([self.prompts[t].sha256 for t in tasks], pa.string()))
                .append_column("sampling_params", pa.array([self.sampling] * n, pa.string()))
                .append_column("attempts", pa.array([r.attempts for r in good], pa.int32()))
                .append_column("finish_reason", pa.array([r.finish_reason for r in good], pa.string()))
                .append_column("verdicts", pa.array([to_json(r.verdicts) for r in good], pa.string())))
        bad = [r for r in results if not r.accepted]
        rejected = rejected_rows(
            rows.filter(pa.array([not x for x in ok])), [r.attempt_reasons[-1] for r in bad],
            [_why(r) for r in bad],
            [to_json(r.verdicts) for r in bad])
        count = collections.Counter
        stats = {"attempts": {str(k): v for k, v in count(r.attempts for r in results).items()},
                 "rejected_attempts": dict(count(x for r in results for x in r.attempt_reasons)),
                 "generated_tokens": sum(r.completion_tokens for r in results)}
        if hasattr(self.annotator.backend, "peak_in_flight"):
            stats["max_requests_in_flight"] = self.annotator.backend.peak_in_flight
        return Processed(kept, rejected, stats)


def backend_resources(backend: str, concurrency: int, chunk_rows: int, vllm: VLLMConfig,
                      on_gpu: bool, requests_per_row: int = 1) -> tuple[Resources, VLLMConfig]:
    """How a stage that sends requests to a VLM backend runs (annotate: one request per row at a time;
    score: one per axis): the workers' resources, and the vLLM settings to build its engine with."""
    if backend == "openai":
        # Nothing to load: plain tasks run on Ray's warm worker pool, where an actor would start a
        # fresh process per run (seconds of imports).
        return Resources(num_cpus=1, max_tasks=concurrency), vllm
    if backend == "transformers":  # one request at a time: one unit at a time
        return Resources(num_cpus=1, actors=concurrency, num_gpus=1 if on_gpu else 0), vllm
    # The engine keeps up to max_in_flight requests from several units at once, and one more unit
    # waits, so the engine never drains between units.
    units = -(-vllm.max_in_flight // (chunk_rows * requests_per_row)) + 1
    tp = vllm.tensor_parallel_size
    if on_gpu and tp > 1:  # the engine's GPUs on one node; vLLM's Ray workers take them from the group
        return (Resources(num_cpus=1, actors=concurrency, units_per_actor=units,
                          placement=({"CPU": 1, "GPU": 1},) + ({"GPU": 1},) * (tp - 1)),
                dataclasses.replace(vllm, distributed_executor_backend="ray"))
    return Resources(num_cpus=1, actors=concurrency, units_per_actor=units, num_gpus=1 if on_gpu else 0), vllm


def _why(result) -> str:
    """A quarantined sample's message: every attempt's reason, then the last backend error."""
    attempts = "; ".join(f"attempt {i + 1}: {x}" for i, x in enumerate(result.attempt_reasons[:result.attempts]))
    error = f"last error: {result.error[:400]}" if result.error else ""
    return " | ".join(part for part in (attempts, error) if part)


# OpenAI client settings that change only pacing: left out of run keys, so they may change on resume
SPEED_ONLY = ("concurrency", "timeout_s", "max_retries", "backoff_base_s", "backoff_max_s", "base_url")


def backend_identity(settings: dict[str, Any]) -> dict[str, Any]:
    """A VLM stage's backend settings (as a dict) without what changes only speed or placement (the
    client's pacing, the engine's memory settings, the device), for its run key."""
    out = {k: v for k, v in settings.items() if k not in ("vllm", "device")}
    out["openai"] = {k: v for k, v in settings["openai"].items() if k not in SPEED_ONLY}
    return out


def run_backend_stage(make_stage: Callable[[bool], Stage], config, registry: DatasetRegistry,
                      source: VersionManifest, output: str, key: str, columns: list[str],
                      progress: bool) -> tuple[list[UnitResult], int, float]:
    """A stage that sends requests to a VLM (annotate, score) over `source`: the server checked before
    any work, GPUs waited for where asked (`make_stage(on_gpu)` builds the stage), the API key passed
    beside the config, never inside it."""
    if config.backend == "openai":  # a rejected key, an unknown model, no server: stop before any work
        check_server(config.model, config.openai)
    on_gpu = lambda: config.backend in ("vllm", "transformers") and ray_runtime.use_gpus(config.device,  # noqa: E731
                                                                                           config.gpu_wait_s)
    api_key = os.environ.get("OPENAI_API_KEY") if config.backend == "openai" else None
    return ray_runtime.run_over_version(
        lambda: make_stage(on_gpu()), source, registry=registry, output=output, key=key, columns=columns,
        rows_per_unit=config.chunk_rows, ray_address=config.ray_address, progress=progress,
        secrets={"OPENAI_API_KEY": api_key} if api_key else None)


def run_key(config: AnnotateConfig, source: VersionManifest) -> str:
    """Same arguments -> same key -> the same work folder to resume from. Settings that change
    only speed (concurrency, batch size, Ray address) are left out, so they may change on resume."""
    prompts = load_prompts(config.prompt_edit, config.prompt_generate)
    identity = {"input": source.ref, "chunk_rows": config.chunk_rows,
                "annotator": backend_identity(dataclasses.asdict(config.annotator_config())),
                "prompt_hashes": {t: p.sha256 for t, p in prompts.items()}}
    return "annotate-" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def run_annotate(config: AnnotateConfig, progress: bool = True) -> VersionManifest:
    registry = DatasetRegistry(config.registry)
    source = registry.resolve(config.dataset, schema="raw/1")
    output = config.output or split_ref(config.dataset)[0]
    key = run_key(config, source)
    results, resumed, seconds = run_backend_stage(lambda on_gpu: AnnotateStage(config, on_gpu), config, registry,
                                                  source, output, key, RAW.names, progress)
    counts, reasons, stats = totals(results)
    prompts = load_prompts(config.prompt_edit, config.prompt_generate)
    provenance = {"backend": config.backend, "model": config.model, "revision": config.revision,
                  "prompts": {t: {"id": p.id, "sha256": p.sha256} for t, p in prompts.items()},
                  "sampling": dataclasses.asdict(config.sampling),
                  "validators": dataclasses.asdict(config.validators), "max_attempts": config.max_attempts,
                  "image_max_pixels": config.image_max_pixels, "max_model_len": config.model_len,
                  "run_key": key}
    tokens = stats.get("generated_tokens", 0)
    stats = {"attempts": dict(sorted(stats.get("attempts", {}).items())),
             "rejected_attempts": dict(sorted(stats.get("rejected_attempts", {}).items())),
             "quarantine_reasons": reasons, "generated_tokens": tokens, "seconds": round(seconds, 3),
             **({"max_requests_in_flight": stats["max_requests_in_flight"]} if "max_requests_in_flight" in stats else {}),
             "resumed_chunks": resumed,
             "traces_per_s": round(counts.input / seconds, 2) if seconds else None,
             "generated_tokens_per_s": round(tokens / seconds, 1) if seconds else None}
    return registry.publish(output, STAGE, "annotated/1", source.ref, counts,
                            [s for r in results for s in r.shards], [s for r in results for s in r.quarantine_shards],
                            lineage(dataclasses.asdict(config), annotate=provenance), stats)


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
