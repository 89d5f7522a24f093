"""The stage contract and the shard store, without Ray: a unit runs in process exactly as on a
worker, and the registry publishes by writing one manifest over content-addressed shards."""

import hashlib
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.ingest import IngestConfig, IngestStage, plan_units
from pipeline.registry import DatasetRegistry
from pipeline.sources import read_unit
from pipeline.stage import UnitResult, keys_file, marker_path, merge_stats, run_unit, schema_fingerprint
from schemas import RAW, Counts
from tests.helpers import raw_rows

ROOT = Path(__file__).parent.parent


# Every module a stage is made of; only the driver (pipeline/run.py) and its adapter
# (pipeline/ray_runtime.py) may load Ray.
RAY_FREE = ("stage", "sources", "dedup", "registry", "images", "vlm", "ingest", "annotate", "score", "filter", "tokenize")
FIRST_WITH_RAY = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
    if "ray" in sys.modules:
        print(name)
        break
"""


def test_stage_modules_do_not_import_ray_even_transitively():
    """Stages are plain transforms: importing them, in a fresh interpreter, loads no Ray at all."""
    modules = [f"pipeline.{name}" for name in RAY_FREE]
    found = subprocess.run([sys.executable, "-c", FIRST_WITH_RAY, *modules, "pipeline.run"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    assert found == ["pipeline.run"]  # the driver does load it: the check can see Ray arrive


def test_a_unit_runs_in_process_and_leaves_shards_keys_and_a_marker(demo_dir, tmp_path):
    config = IngestConfig(sources=[str(demo_dir / "data.jsonl")], dataset="d", unit_rows=10, batch_size=3)
    units, _ = plan_units(config)
    assert [u["first_line"] for u in units] == [1, 11, 21]  # 24 lines -> 10 + 10 + 4
    registry = DatasetRegistry(str(tmp_path / "reg"))
    work = registry.work_dir("d", "w")

    def run(batch_size, target_bytes=4_000):
        stage = IngestStage(IngestConfig(**{**config.__dict__, "batch_size": batch_size}))
        return run_unit(stage, 1, read_unit(units[1]), registry=registry, dataset="d", work=work,
                        target_bytes=target_bytes, keys=True)

    result = run(3)
    assert (result.input, result.output, result.quarantined) == (10, 10, 0)
    assert len(result.shards) > 1  # 10 rows of small PNGs (~15 kB) cross 4 kB more than once
    assert UnitResult.from_json(Path(marker_path(work, 1)).read_text()) == result
    rows = []
    for shard in result.shards:  # named by the hash of their bytes, in the dataset's store
        data = Path(registry.shard_path("d", shard)).read_bytes()
        assert shard.path == f"shards/{shard.sha256[:2]}/{shard.sha256}.arrow"
        assert hashlib.sha256(data).hexdigest() == shard.sha256 and len(data) == shard.bytes
        rows += pa.ipc.open_file(pa.BufferReader(data)).read_all()["source_ref"].to_pylist()
    assert rows == [f"data.jsonl:{i}" for i in range(11, 21)]  # source order
    keys = pa.ipc.open_file(Path(keys_file(work, result))).read_all()["sample_id"].to_pylist()
    assert len(keys) == 10
    # how batches are cut never changes the shards: the same unit gives the same files
    assert [s.sha256 for s in run(7).shards] == [s.sha256 for s in result.shards]
    # a marker counts as done only for the layout it was written in: after a column is added to the
    # stage's schema, a rerun redoes the unit instead of publishing shards of two layouts
    from pipeline.ray_runtime import done_units

    assert list(done_units(registry, "d", work, (), schema_fingerprint(RAW))) == [1]
    assert done_units(registry, "d", work, (), schema_fingerprint(RAW.append(pa.field("new", pa.int32())))) == {}


def test_resume_trusts_only_markers_whose_shards_and_keys_are_there(demo_dir, tmp_path, capsys):
    """A unit counts as done only if its marker parses and what it names is there: its shards at
    their recorded sizes and its keys file with its recorded hash. A cut marker, a deleted or cut
    shard, a cut keys file and another unit's keys file each make that unit redone (said once per
    kind), never publish a version with rows missing. Markers name their keys file relative to the
    work folder, so a registry moved elsewhere resumes whole."""
    import shutil

    from pipeline.ray_runtime import done_units

    config = IngestConfig(sources=[str(demo_dir / "data.jsonl")], dataset="d", unit_rows=4, batch_size=4)
    units, _ = plan_units(config)
    registry = DatasetRegistry(str(tmp_path / "reg"))
    work = registry.work_dir("d", "w")
    results = [run_unit(IngestStage(config), u["unit"], read_unit(u), registry=registry, dataset="d", work=work,
                        target_bytes=1 << 30, keys=True) for u in units]
    assert len(results) == 6 and all(len(r.shards) == 1 and r.keys == f"keys/{r.unit:08d}.arrow" for r in results)

    def check(reg: DatasetRegistry, work: str) -> list[int]:
        return sorted(done_units(reg, "d", work, (), schema_fingerprint(RAW)))

    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "reg", moved)
    assert check(DatasetRegistry(str(moved)), DatasetRegistry(str(moved)).work_dir("d", "w")) == [0, 1, 2, 3, 4, 5]

    marker = Path(marker_path(work, 0))
    marker.write_text(marker.read_text()[:40])  # cut
    Path(registry.shard_path("d", results[1].shards[0])).unlink()
    shard = Path(registry.shard_path("d", results[2].shards[0]))
    shard.write_bytes(shard.read_bytes()[:100])
    keys = Path(keys_file(work, results[3]))
    keys.write_bytes(keys.read_bytes()[:50])
    shutil.copy(keys_file(work, results[5]), keys_file(work, results[4]))  # another unit's keys
    capsys.readouterr()
    assert check(registry, work) == [5]
    printed = capsys.readouterr().out
    print(printed)
    assert "redoing 1 unit(s): an unreadable marker (00000000.json: JSONDecodeError)" in printed
    assert "redoing 2 unit(s): shards missing or of another size than their marker says" in printed
    assert "redoing 2 unit(s): a keys file missing or not the one its marker names" in printed


def test_merge_stats_adds_counters_and_keeps_maxima():
    a = {"images": 3, "max_text_id": 9, "tasks": {"edit": 2}, "max_reasoning_len": None}
    b = {"images": 4, "max_text_id": 7, "tasks": {"edit": 1, "generate": 5}, "max_reasoning_len": 12}
    assert merge_stats(a, b) == {"images": 7, "max_text_id": 9, "tasks": {"edit": 3, "generate": 5},
                                 "max_reasoning_len": 12}


def _recording(endpoint: str, action: str) -> list[dict]:
    url = f"{endpoint}/moto-api/recorder/{action}"
    with urllib.request.urlopen(urllib.request.Request(url, method="GET" if "download" in action else "POST")) as r:
        return [json.loads(line) for line in r.read().decode().splitlines()] if "download" in action else []


def test_publishing_on_an_object_store_writes_one_manifest_and_copies_nothing(s3_server, s3_bucket):
    registry = DatasetRegistry(f"{s3_bucket}/reg")
    ids = [f"{i:03d}" for i in range(40)]
    with registry.writer("d", "ingest", RAW, target_shard_bytes=3000) as w:
        w.write(raw_rows(ids))
        _recording(s3_server, "reset-recording")
        _recording(s3_server, "start-recording")
        m = w.publish(Counts(40, 40, 0, 0), {})
    log = _recording(s3_server, "download-recording")
    _recording(s3_server, "stop-recording")
    writes = [r for r in log if r["method"] in ("PUT", "POST")]
    copies = [r for r in writes if any(k.lower() == "x-amz-copy-source" for k in r["headers"])]
    assert not copies and not [r for r in log if r["method"] == "DELETE"]
    written = {r["url"].split("?")[0].split(s3_bucket[5:] + "/", 1)[1] for r in writes}
    # the shards of the last, partly filled buffer are stored at publish; then the manifest
    assert f"reg/d/versions/{m.version}/manifest.json" in written
    assert all(p.startswith("reg/d/shards/") for p in written - {f"reg/d/versions/{m.version}/manifest.json"})
    assert len(m.shards) > 2 and registry.read_table(m)["sample_id"].to_pylist() == ids

    # a version holding the same rows and more shares the shards whose bytes are equal
    with registry.writer("d", "ingest", RAW, target_shard_bytes=3000) as w:
        w.write(raw_rows(ids + ["new-1", "new-2"]))
        bigger = w.publish(Counts(42, 42, 0, 0), {})
    shared = {s.path for s in m.shards} & {s.path for s in bigger.shards}
    assert len(shared) == len(m.shards) == len(bigger.shards) - 1  # 40 rows fill 5 shards; the new rows a 6th
    assert registry.resolve("d").version == bigger.version


def test_trainers_read_remote_shards_through_a_checked_local_cache(s3_bucket, tmp_path):
    registry = DatasetRegistry(f"{s3_bucket}/reg")
    with registry.writer("d", "ingest", RAW, target_shard_bytes=3000) as w:
        w.write(raw_rows([f"{i:03d}" for i in range(20)]))
        m = w.publish(Counts(20, 20, 0, 0), {})
    paths = registry.local_shard_paths(m, cache=str(tmp_path / "cache"))
    assert [Path(p).name for p in paths] == [f"{s.sha256}.arrow" for s in m.shards]
    assert [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths] == [s.sha256 for s in m.shards]
    assert registry.local_shard_paths(m, cache=str(tmp_path / "cache")) == paths  # cached: no second fetch
    # a shard whose stored bytes changed is refused on its way in, never trained on
    registry.write_atomic(registry.shard_paths(m)[0], b"\0" * m.shards[0].bytes)
    with pytest.raises(ValueError, match="corrupt"):
        registry.local_shard_paths(m, cache=str(tmp_path / "fresh"))


def test_an_actor_runs_units_side_by_side_inside_its_placement_group(ray_local, tmp_path):
    """`units_per_actor=2`: two units are inside one actor's `process` at once (a barrier only two
    concurrent calls can pass); `placement`: the actor runs in a one-node group of those bundles,
    which is removed when the job ends. On a GPU cluster the bundles are a tensor-parallel engine's GPUs."""
    import threading

    import ray

    from pipeline.ray_runtime import run_units
    from pipeline.stage import Processed, Resources, Stage, rejected_rows

    class Together(Stage):
        name = "together"
        output_schema = pa.schema([("sample_id", pa.string())])
        resources = Resources(num_cpus=1, actors=1, units_per_actor=2, placement=({"CPU": 1},))

        def setup(self):
            self.barrier = threading.Barrier(2, timeout=60)

        def process(self, rows):
            self.barrier.wait()  # raises BrokenBarrierError if the other unit is not running too
            group = ray.util.get_current_placement_group()
            placed = json.dumps({"strategy": ray.util.placement_group_table(group)["strategy"],
                                 "bundles": group.bundle_specs})
            return Processed(rows, rejected_rows(rows.slice(0, 0), [], []), {placed: 1})

    def read(spec):
        yield pa.table({"sample_id": [f"u{spec['unit']}-{i}" for i in range(3)]})

    registry = DatasetRegistry(str(tmp_path / "reg"))
    results, _ = run_units(Together(), [{"unit": 0}, {"unit": 1}], read, registry=registry, dataset="t",
                              work=registry.work_dir("t", "w"), target_bytes=1 << 20, progress=False)
    assert [r.output for r in results] == [3, 3]
    [placed] = set().union(*(r.stats for r in results))
    assert json.loads(placed) == {"strategy": "STRICT_PACK", "bundles": [{"CPU": 1.0}]}
    assert all(g["state"] == "REMOVED" for g in ray.util.placement_group_table().values())
