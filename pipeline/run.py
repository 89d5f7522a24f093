"""The one stage driver: plan -> run key -> units -> totals -> publish, the same for every stage.

A stage module declares what differs in `plan(config, registry) -> Plan` (pipeline.stage): its
input version or its own units, its provenance, how its Stage is built. This driver does the rest
on Ray (`pipeline.ray_runtime`): it holds the plan, one completion marker per unit and the counts,
never rows. Commands, jobs and tests run a stage as `run_stage(annotate.plan, config)`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

from pipeline import ray_runtime
from pipeline.config import run_identity
from pipeline.lineage import lineage
from pipeline.registry import TARGET_SHARD_BYTES, DatasetRegistry
from pipeline.stage import Plan, plan_row_ranges, read_row_range, totals
from schemas import VersionManifest


def run_key(plan: Plan, config: Any, units: list[dict[str, Any]]) -> str:
    """Same arguments -> same key -> the same work folder to resume from: the config less its
    speed-only fields, the input version, the provenance (prompt and model hashes, rules) and the
    units. Whatever changes only pace or placement may change on resume."""
    identity = {"config": run_identity(config), "input": plan.source.ref if plan.source else None,
                "provenance": plan.provenance, "units": units}
    return f"{plan.name}-" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def run_stage(make_plan: Callable[[Any, DatasetRegistry], Plan], config: Any, progress: bool = True) -> VersionManifest:
    """Run one stage from its module's `plan` and its config (which has `registry` and
    `ray_address`); returns the published version."""
    registry = DatasetRegistry(config.registry)
    registry.check_reachable()  # credentials, endpoint, bucket: before any work, and before Ray starts
    plan = make_plan(config, registry)  # input resolved, models and servers checked: before any work
    units = plan.units if plan.units is not None else plan_row_ranges(plan.source, plan.unit_rows, plan.columns)
    key = run_key(plan, config, units)
    work = registry.work_dir(plan.output, key)
    ray_runtime.init_ray(config.ray_address)
    with registry.lease(work):  # `versions gc` spares what this run writes until it has published
        return _run(plan, config, registry, units, key, work, progress)


def _run(plan: Plan, config: Any, registry: DatasetRegistry, units: list[dict[str, Any]], key: str, work: str,
         progress: bool) -> VersionManifest:
    """Verify the input, run the units not done yet, apply `after`, total and publish."""
    if plan.source is not None:
        ray_runtime.verify_input(registry, plan.source, work)
    started = time.perf_counter()
    results, resumed = ray_runtime.run_units(
        plan.make_stage(ray_runtime.use_gpus(plan.device, plan.gpu_wait_s)), units,
        plan.read or functools.partial(read_row_range, registry=registry.root), registry=registry,
        dataset=plan.output, work=work, target_bytes=plan.target_bytes or TARGET_SHARD_BYTES, keys=plan.keys,
        progress=progress, secrets=plan.secrets)
    results, removed = plan.after(results, ray_runtime.map_tasks, work) if plan.after else (results, 0)
    seconds = time.perf_counter() - started
    counts, reasons, stats = totals(results, removed)
    stats = {**plan.summarize(stats, counts, seconds), "quarantine_reasons": reasons, "seconds": round(seconds, 3),
             "units": len(units), "resumed_units": resumed}
    return registry.publish(plan.output, plan.name, plan.schema, plan.source.ref if plan.source else None, counts,
                            [s for r in results for s in r.shards], [s for r in results for s in r.quarantine_shards],
                            lineage(dataclasses.asdict(config), **{plan.name: {**plan.provenance, "run_key": key}}),
                            stats, rule=plan.rule)
