"""How a stage that sends requests to a VLM backend runs (annotate, score): one resource rule and
one launch check, shared, so the two stages place and start their backends the same way. The
backend itself (its config, how it is built) is `annotators.backend`; no Ray here.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from annotators.annotator import Backend
from annotators.backend import BackendConfig
from annotators.openai_backend import check_server
from pipeline.stage import Resources


def backend_resources(backend: BackendConfig, concurrency: int, unit_rows: int, on_gpu: bool,
                      requests_per_row: int = 1) -> tuple[Resources, BackendConfig]:
    """The workers' resources (annotate: one request per row at a time; score: one per axis), and
    the backend settings to build it with on them."""
    if backend.kind in ("openai", "scene"):
        # Nothing to load (a server elsewhere; the shapes world's scene reader): plain tasks run on
        # Ray's warm worker pool, where an actor would start a fresh process per run (seconds of imports).
        return Resources(num_cpus=1, max_tasks=concurrency), backend
    if backend.kind == "transformers":  # one request at a time: one unit at a time
        return Resources(num_cpus=1, actors=concurrency, num_gpus=1 if on_gpu else 0), backend
    # The engine keeps up to max_in_flight requests from several units at once, and one more unit
    # waits, so the engine never drains between units.
    units = -(-backend.vllm.max_in_flight // (unit_rows * requests_per_row)) + 1
    tp = backend.vllm.tensor_parallel_size
    if on_gpu and tp > 1:  # the engine's GPUs on one node; vLLM's Ray workers take them from the group
        vllm = dataclasses.replace(backend.vllm, distributed_executor_backend="ray")
        return (Resources(num_cpus=1, actors=concurrency, units_per_actor=units,
                          placement=({"CPU": 1, "GPU": 1},) + ({"GPU": 1},) * (tp - 1)),
                dataclasses.replace(backend, vllm=vllm))
    return Resources(num_cpus=1, actors=concurrency, units_per_actor=units, num_gpus=1 if on_gpu else 0), backend


def backend_stats(backend: Backend) -> dict[str, Any]:
    """What a backend counted in its last run, for the stage's stats: the engine's peak of requests
    in flight (vllm), the transport errors by reason (openai: 429, 5xx, timeout, connection; each
    retried while the request's retries last)."""
    stats: dict[str, Any] = {}
    if hasattr(backend, "peak_in_flight"):
        stats["max_requests_in_flight"] = backend.peak_in_flight
    if getattr(backend, "retries", None):
        stats["transport_errors"] = dict(backend.retries)
    return stats


def transport_errors(errors: dict[str, int]) -> str:
    """The report line of `backend_stats`' transport errors."""
    return "transport errors, retried: " + ", ".join(f"{reason} {n}" for reason, n in sorted(errors.items()))


def launch(backend: BackendConfig, gpu_wait_s: float) -> dict[str, Any]:
    """Before any work: an `openai` server answers, accepts the key and serves the model (else the
    run stops here). Returns the `Plan` fields of a VLM stage: where its actors run (vllm and
    transformers may take GPUs) and the API key, passed beside the config, never inside it."""
    if backend.kind == "openai":
        check_server(backend.model, backend.openai)
        api_key = os.environ.get("OPENAI_API_KEY")
        return {"device": "cpu", "secrets": {"OPENAI_API_KEY": api_key} if api_key else None}
    if backend.kind == "scene":  # reads the images itself, on the CPU
        return {"device": "cpu"}
    return {"device": backend.device, "gpu_wait_s": gpu_wait_s}
