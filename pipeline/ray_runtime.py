"""Where Ray comes from: an embedded local Ray by default, a cluster with --ray-address/RAY_ADDRESS.

This is the one place that starts Ray and the one adapter that maps stages onto Ray Data; stage
code stays plain functions over Arrow tables."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import ray
import ray.data

# Every Ray worker runs this first, so torchvision imports cleanly beside a CPU torch.
RUNTIME_ENV = {"worker_process_setup_hook": "paraforge_compat.install"}


def init_ray(address: str | None = None) -> None:
    """Connect once per process; a Ray already started (by a test or a job) is reused."""
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = {"runtime_env": RUNTIME_ENV, "logging_level": logging.WARNING}
        if address is None:
            kwargs["include_dashboard"] = False
        ray.init(address=address, **kwargs)
    ctx = ray.data.DataContext.get_current()
    # Output order follows input order, so identical inputs give byte-identical shards and the
    # same version id.
    ctx.execution_options.preserve_order = True
    # Per-operator resource reservation holds CPUs back for operators our single-map jobs don't
    # have; on a small machine it serialises the map (measured: 1.4 s -> 0.85 s for 512 samples).
    ctx.op_resource_reservation_enabled = False


def map_stage(tables: list[pa.Table], fn: Callable[..., pa.Table], *, batch_size: int,
              **fn_kwargs: Any) -> ray.data.Dataset:
    """Run a pure `fn(table, **fn_kwargs) -> table` over `tables` as a Ray Data job."""
    # One block per batch: Ray schedules blocks, so a big table left whole would run as one task.
    refs = [ray.put(t.slice(i, batch_size)) for t in tables for i in range(0, t.num_rows, batch_size)]
    ds = ray.data.from_arrow_refs(refs)
    return ds.map_batches(fn, batch_format="pyarrow", batch_size=batch_size, fn_kwargs=fn_kwargs)
