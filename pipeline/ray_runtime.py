"""Where Ray comes from, and the one adapter that runs stages on it.

`init_ray` connects to an embedded local Ray by default, a cluster with --ray-address/RAY_ADDRESS.
`run_units` runs a `pipeline.stage.Stage` over units of work as a Ray Data job: stateless tasks
(read -> prepare -> process -> write in one task), or, for a stage that holds a model, CPU tasks
that read and prepare each unit feeding a pool of actors that process and write it. Workers write
the shards and a completion marker per unit; the driver receives only those markers, so a rerun
with the same arguments skips the units already done. Stage modules never import Ray.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import ray
import ray.data
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from tqdm import tqdm

from pipeline.registry import DatasetRegistry
from pipeline.stage import Reader, Stage, UnitResult, ipc_bytes, keys_file, read_ipc, run_unit, schema_fingerprint
from schemas import VersionManifest

# Every Ray worker runs this first, so torchvision imports cleanly beside a CPU torch.
RUNTIME_ENV = {"worker_process_setup_hook": "paraforge_compat.install"}

# Messages of object-store errors worth a retry (pyarrow's S3 and GCS clients, dropped connections).
TRANSIENT_STORAGE_ERRORS = ["AWS Error SLOW_DOWN", "AWS Error NETWORK_CONNECTION", "AWS Error SERVICE_UNAVAILABLE",
                            "AWS Error INTERNAL_FAILURE", "Connection reset by peer", "google::cloud::Status"]


def init_ray(address: str | None = None) -> None:
    """Connect once per process; a Ray already started (by a test or a job) is reused."""
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = {"runtime_env": RUNTIME_ENV, "logging_level": logging.WARNING}
        if address is None:
            kwargs["include_dashboard"] = False
        ray.init(address=address, **kwargs)
    ctx = ray.data.DataContext.get_current()
    # Units finish in any order; the driver orders their markers by unit id, so output order (and
    # the version id) never depends on scheduling, and no unit waits behind a slow one.
    ctx.execution_options.preserve_order = False
    # Per-operator resource reservation holds CPUs back for operators a job may not have; on a
    # small machine it serialises the map (measured: 1.4 s -> 0.85 s for 512 samples).
    ctx.op_resource_reservation_enabled = False
    # A unit is redone whole, so retrying one after a transient storage error is safe; any other
    # error fails the job, which resumes from its completion markers after a fix.
    ctx.retried_map_errors = TRANSIENT_STORAGE_ERRORS
    ctx.max_map_retries = 3


def cluster_has_gpus() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0


def use_gpus(device: str, wait_s: float) -> bool:
    """Whether a stage's actors take GPUs. `cpu`: never; `auto`: when the cluster has any now;
    `cuda`: wait up to `wait_s` for GPUs to join (an autoscaling cluster starts from none), then
    stop with an error: a 72B annotator or MAGVIT silently on CPUs would run for weeks."""
    if device == "cpu":
        return False
    if device == "auto":
        return cluster_has_gpus()
    deadline = time.monotonic() + wait_s
    while not cluster_has_gpus():
        if time.monotonic() >= deadline:
            raise ValueError(f"device=cuda, but no GPU joined the Ray cluster within {wait_s:g} s "
                             f"(it has {ray.cluster_resources().get('CPU', 0):g} CPUs and no GPU): check the GPU "
                             "worker group, or raise gpu_wait_s while it scales up")
        time.sleep(min(5.0, max(deadline - time.monotonic(), 0.0)))
    return True


def _unit_rows(spec: dict[str, Any], stage: Stage, read: Reader) -> list[pa.Table]:
    tables = [t for t in read(spec) if t.num_rows]
    return [stage.prepare(pa.concat_tables(tables))] if tables else []


def _read_task(batch: dict, stage: Stage, read: Reader) -> dict:
    """CPU task ahead of the actors: one unit read and prepared, shipped whole as one IPC cell (a
    one-row block Ray Data cannot split, so a unit never straddles two actors)."""
    rows = _unit_rows(json.loads(batch["spec"][0]), stage, read)
    return {"spec": [batch["spec"][0]], "rows": [ipc_bytes(rows[0]) if rows else b""]}


def _run_task(batch: dict, stage: Stage, read: Reader, secrets: dict[str, str], **where: Any) -> dict:
    """A stateless stage: read, prepare, process and write one unit in one task."""
    os.environ.update(secrets)
    stage.setup()
    spec = json.loads(batch["spec"][0])
    tables = read(spec) if type(stage).prepare is Stage.prepare else _unit_rows(spec, stage, read)
    result = run_unit(stage, spec["unit"], tables, **_where(**where))
    return {"result": [result.to_json()]}


class _UnitActor:
    """A stage that holds a model: set up once, then process and write whole units."""

    def __init__(self, stage: Stage, secrets: dict[str, str], **where: Any):
        self.stage, self.where = stage, where
        os.environ.update(secrets)
        stage.setup()

    def __call__(self, batch: dict) -> dict:
        spec = json.loads(batch["spec"][0])
        rows = batch["rows"][0]
        result = run_unit(self.stage, spec["unit"], [read_ipc(rows)] if rows else [], **_where(**self.where))
        return {"result": [result.to_json()]}


def _where(registry: str, dataset: str, work: str, target_bytes: int, keys: bool) -> dict[str, Any]:
    return {"registry": DatasetRegistry(registry), "dataset": dataset, "work": work,
            "target_bytes": target_bytes, "keys": keys}


def _placement(bundles: tuple[dict[str, float], ...], groups: list[Any]) -> Any:
    """A placement group of `bundles` packed on one node, for one actor and what it starts."""
    group = placement_group(list(bundles), strategy="STRICT_PACK")
    groups.append(group)
    return PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0,
                                            placement_group_capture_child_tasks=True)


def done_units(registry: DatasetRegistry, dataset: str, work: str, transient: tuple[str, ...] = (),
               schema: str | None = None) -> dict[int, UnitResult]:
    """The units a previous run of the same work finished, by their completion markers. A marker
    counts only when it parses; was written in the layout `schema` (a fingerprint; a marker from
    before fingerprints counts as another layout), so a version never mixes shards of two layouts;
    quarantined nothing for a `transient` reason; and when what it names is there: every shard at
    its recorded size (one listing of the dataset's shard store for all markers, not a request per
    file) and its keys file hashing to the recorded sha256. Every other unit is redone; the
    reason is printed once per kind."""
    folder = f"{work}/units"
    if not registry.exists(folder):
        return {}
    paths = [i.path for i in registry.fs.get_file_info(pafs.FileSelector(folder)) if i.path.endswith(".json")]

    def read(path: str) -> UnitResult | str:
        try:
            result = UnitResult.from_json(registry.read_text(path))
        except (OSError, ValueError, TypeError, KeyError) as e:  # cut, empty or foreign
            return f"an unreadable marker ({path.rsplit('/', 1)[-1]}: {type(e).__name__})"
        if result.keys is not None:
            try:
                with registry.fs.open_input_stream(keys_file(work, result)) as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            except OSError:
                digest = None
            if digest != result.keys_sha256:
                return "a keys file missing or not the one its marker names"
        return result

    with concurrent.futures.ThreadPoolExecutor(16) as pool:  # thousands of small GETs on an object store
        found = list(pool.map(read, paths))
    sizes = registry.shard_sizes(dataset)
    done, redo = {}, {}
    for r in found:
        if isinstance(r, str):
            problem = r
        elif set(r.reasons) & set(transient):
            continue  # transient trouble (a server outage): retried, as expected, not worth a line
        elif schema is not None and r.schema != schema:
            problem = "a marker of another layout"
        elif any(sizes.get(s.path) != s.bytes for s in r.shards + r.quarantine_shards):
            problem = "shards missing or of another size than their marker says"
        else:
            done[r.unit] = r
            continue
        redo[problem] = redo.get(problem, 0) + 1
    for problem, n in sorted(redo.items()):
        print(f"redoing {n} unit(s): {problem}")
    return done


def run_units(stage: Stage, units: list[dict[str, Any]], read: Reader, *, registry: DatasetRegistry,
              dataset: str, work: str, target_bytes: int, keys: bool = False, progress: bool = True,
              secrets: dict[str, str] | None = None) -> tuple[list[UnitResult], int]:
    """Run `stage` over the units with no completion marker yet. Returns (every unit's result in unit
    order, units resumed from an earlier run)."""
    done = done_units(registry, dataset, work, stage.transient_reasons, schema_fingerprint(stage.output_schema))
    missing = [u for u in units if u["unit"] not in done]
    resumed = len(units) - len(missing)
    if resumed:
        print(f"resuming {work.rsplit('/', 1)[-1]}: {resumed} of {len(units)} units already done")
    if missing:
        ray.data.DataContext.get_current().enable_progress_bars = False
        where = {"registry": registry.root, "dataset": dataset, "work": work, "target_bytes": target_bytes,
                 "keys": keys}
        res = stage.resources
        groups: list[Any] = []  # placement groups made for the actors, removed at the end
        # Secrets travel as task arguments, set in the worker's environment before `setup`: never in
        # a runtime env, which Ray writes to its logs and returns from its job API.
        secrets = secrets or {}
        options: dict[str, Any] = {}
        ds = ray.data.from_items([{"spec": json.dumps(u)} for u in missing], override_num_blocks=len(missing))
        if res.actors:
            # The prepare tasks reserve CPUs only where the actors leave some: a reservation nobody
            # can get would deadlock the job (actors waiting for rows, rows waiting for a CPU).
            spare = ray.cluster_resources().get("CPU", 0) - res.actors * res.num_cpus
            ds = ds.map_batches(_read_task, batch_size=1, num_cpus=res.prepare_cpus if spare >= res.prepare_cpus else 0,
                                fn_kwargs={"stage": stage, "read": read})
            threaded = {"max_concurrent_calls_per_actor": res.units_per_actor, "enable_true_multi_threading": True,
                        "max_tasks_in_flight_per_actor": res.units_per_actor + 1}  # one more, read and waiting
            pool = ray.data.ActorPoolStrategy(size=res.actors, **(threaded if res.units_per_actor > 1 else {}))
            if res.placement:  # a group per actor, made as Ray starts it (ray.data.llm places TP engines so too)
                options["ray_remote_args_fn"] = lambda: {"scheduling_strategy": _placement(res.placement, groups)}
            ds = ds.map_batches(_UnitActor, batch_size=1,
                                fn_constructor_kwargs={"stage": stage, "secrets": secrets, **where},
                                compute=pool, num_cpus=res.num_cpus, num_gpus=res.num_gpus, **options)
        else:
            ds = ds.map_batches(_run_task, batch_size=1, num_cpus=res.num_cpus, concurrency=res.max_tasks,
                                fn_kwargs={"stage": stage, "read": read, "secrets": secrets, **where}, **options)
        bar = tqdm(total=len(missing), unit="unit", disable=not progress, desc=stage.name)
        try:
            for row in ds.iter_rows():
                result = UnitResult.from_json(row["result"])
                done[result.unit] = result
                bar.update(1)
        finally:
            bar.close()
            for group in groups:  # the actors are gone; their reservations must go too
                ray.util.remove_placement_group(group)
    assert all(u["unit"] in done for u in units), "units left without a result"
    return [done[u["unit"]] for u in units], resumed


def verify_input(registry: DatasetRegistry, manifest: VersionManifest, work: str, tasks: int = 64) -> None:
    """Hash the row shards of the version a stage reads against its manifest, in parallel tasks,
    before any unit runs, and once per work folder (a resumed run does not read them again). A
    corrupt or missing shard stops the job naming it: rows read from it would be wrong in silence.
    A resumed run checks, from one listing, that the shards are still there at their sizes: one
    deleted since (by hand, or a gc with no grace period) stops it here, not in a worker."""
    marker = f"{work}/input-verified.json"
    if registry.exists(marker):
        sizes = registry.shard_sizes(manifest.dataset)
        gone = [s.path for s in manifest.shards if s.path.startswith("shards/") and sizes.get(s.path) != s.bytes]
        if gone:
            raise ValueError(f"{manifest.ref}: {len(gone)} of {len(manifest.shards)} shards are gone or changed since "
                             f"this run verified them ({gone[0]}, ...): `pipeline versions verify {manifest.ref}`")
        return
    per_task = -(-len(manifest.shards) // tasks) or 1
    groups = [list(range(i, min(i + per_task, len(manifest.shards)))) for i in range(0, len(manifest.shards), per_task)]
    problems = [p for found in map_tasks(_verify_shards, groups, registry=registry.root, ref=manifest.ref) for p in found]
    if problems:
        raise ValueError(f"{manifest.ref}: {len(problems)} of {len(manifest.shards)} shards fail their hash: "
                         + "; ".join(problems[:3]) + " (`pipeline versions verify` lists them all)")
    registry.write_atomic(marker, json.dumps({"ref": manifest.ref, "shards": len(manifest.shards)}).encode())


def _verify_shards(indices: list[int], registry: str, ref: str) -> list[str]:
    reg = DatasetRegistry(registry)
    return reg.verify(reg.manifest(ref), shards=indices)


def map_tasks(fn: Callable[..., Any], items: list[Any], **kwargs: Any) -> list[Any]:
    """`fn(item, **kwargs)` for every item as plain Ray tasks; small results, in item order."""
    remote = ray.remote(num_cpus=1)(fn)
    return ray.get([remote.remote(item, **kwargs) for item in items])
