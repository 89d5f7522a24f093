import dataclasses
import hashlib
import json
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from pipeline.registry import DatasetRegistry
from schemas import RAW, Counts
from tests.helpers import raw_rows


def publish(registry, ids, dataset="d", category="c", shard_bytes=1 << 20, parent=None):
    with registry.writer(dataset, "ingest", RAW, parent=parent, target_shard_bytes=shard_bytes) as w:
        w.write(raw_rows(ids, category))
        return w.publish(Counts(len(ids), len(ids), 0, 0), {"command": "test"})


def test_version_ids_come_from_content(tmp_path):
    registry = DatasetRegistry(str(tmp_path))
    a = publish(registry, ["a", "b", "c"])
    assert publish(registry, ["a", "b", "c"]).version == a.version
    assert publish(registry, ["a", "b", "c"], category="other").version != a.version
    assert publish(registry, ["a", "b", "c"], parent="x@1").version != a.version
    assert len(registry.versions("d")) == 3


def test_shards_roll_over_and_are_hashed(tmp_path):
    registry = DatasetRegistry(str(tmp_path))
    ids = [f"{i:04d}" for i in range(300)]
    m = publish(registry, ids, shard_bytes=8000)
    assert len(m.shards) > 1 and sum(s.rows for s in m.shards) == 300
    for shard, path in zip(m.shards, registry.shard_paths(m)):
        data = open(path, "rb").read()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (shard.bytes, shard.sha256)
    assert registry.read_table(m)["sample_id"].to_pylist() == ids  # order kept across shards
    # the same rows arriving in other batches give the same shards, hence the same version
    with registry.writer("d", "ingest", RAW, target_shard_bytes=8000) as w:
        for lo, hi in ((0, 7), (7, 150), (150, 151), (151, 300)):
            w.write(raw_rows(ids[lo:hi]))
        assert w.publish(Counts(300, 300, 0, 0), {}).version == m.version


def test_unpublished_versions_are_invisible(tmp_path):
    registry = DatasetRegistry(str(tmp_path))
    with registry.writer("d", "ingest", RAW, target_shard_bytes=100) as w:
        w.write(raw_rows(["a", "b"]))
        assert list((tmp_path / "d" / "shards").rglob("*.arrow"))  # shards are in the store...
        assert registry.versions("d") == []  # ...but no version exists until the manifest is written
    with pytest.raises(AssertionError, match="does not reconcile"):
        with registry.writer("d", "ingest", RAW) as w:
            w.publish(Counts(2, 1, 0, 0), {})


def test_resolve_latest_tag_and_prefix(tmp_path):
    registry = DatasetRegistry(str(tmp_path))
    first, second = publish(registry, ["a"]), publish(registry, ["a", "b"])
    assert registry.resolve("d").version == second.version
    assert registry.resolve(f"d@{first.version[:6]}").version == first.version
    registry.tag(f"d@{first.version}", "best")
    assert registry.resolve("d@best").version == first.version
    assert registry.resolve("d@best").tags == ["best"]
    registry.tag("d", "best")  # tags move
    assert registry.resolve("d@best").version == second.version
    with pytest.raises(ValueError, match="no version or tag"):
        registry.resolve("d@nope")
    with pytest.raises(ValueError, match="annotated/1 version is needed"):
        registry.resolve(f"d@{first.version}", schema="annotated/1")
    with pytest.raises(ValueError, match="has no annotated/1 version"):
        registry.resolve("d", schema="annotated/1")
    with pytest.raises(ValueError, match="has no versions"):
        registry.resolve("missing")
    with pytest.raises(ValueError, match="invalid dataset name"):
        registry.resolve("../etc")


def test_diff_by_sample_id(tmp_path):
    registry = DatasetRegistry(str(tmp_path))
    a = publish(registry, ["a", "b", "c", "d"])
    with registry.writer("d", "ingest", RAW) as w:
        w.write(raw_rows(["b", "c"]))
        w.write(raw_rows(["d", "e", "f"], category="new"))  # d changed, e and f added, a removed
        b = w.publish(Counts(5, 5, 0, 0), {})
    d = registry.diff(a.ref, b.ref)
    assert (d["added"], d["removed"], d["changed"], d["unchanged"]) == (2, 1, 1, 2)
    assert d["examples"] == {"added": ["e", "f"], "removed": ["a"], "changed": ["d"]}


@pytest.mark.parametrize("how", ["file-uri", "object-store-style"])
def test_other_filesystems(tmp_path, how):
    if how == "file-uri":
        registry = DatasetRegistry(f"file://{tmp_path}/reg")
    else:  # not a LocalFileSystem: exercises the object-store path (plain PUTs, no renames)
        registry = DatasetRegistry("reg", filesystem=pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem()))
    m = publish(registry, ["a", "b"], shard_bytes=10)
    assert len(m.shards) == 2
    assert registry.resolve("d").version == m.version
    assert registry.read_table(m).num_rows == 2
    assert json.loads((tmp_path / "reg" / "d" / "versions" / m.version / "manifest.json").read_text())["version"] == m.version
    assert not list((tmp_path / "reg").rglob("*.tmp"))


def test_garbage_collection_keeps_what_versions_list(tmp_path):
    registry = DatasetRegistry(str(tmp_path))
    kept = publish(registry, ["a", "b", "c"], shard_bytes=10)
    with registry.writer("d", "ingest", RAW, target_shard_bytes=10) as w:  # a run that never published
        w.write(raw_rows(["x", "y"]))
        w.rows.flush()
    assert registry.collect_garbage("d", older_than_s=3600)["shards"] == 0  # too young: maybe in flight
    found = registry.collect_garbage("d", older_than_s=0, dry_run=True)
    assert (found["shards"], found["shards_kept"]) == (2, 3)
    assert len(list((tmp_path / "d" / "shards").rglob("*.arrow"))) == 5
    registry.collect_garbage("d", older_than_s=0)
    assert len(list((tmp_path / "d" / "shards").rglob("*.arrow"))) == 3
    assert registry.read_table(registry.resolve("d"))["sample_id"].to_pylist() == ["a", "b", "c"] == \
        registry.read_table(kept)["sample_id"].to_pylist()


def test_gc_spares_what_a_live_run_may_publish_and_nothing_once_its_lease_lapses(tmp_path):
    """A live lease spares its work folder, the shards its markers name (a resumed unit's, older than
    the run) and every shard written since it started; a lapsed lease (a killed run) and a finished
    run (lease removed) spare nothing; a lease file cut mid-write counts as live while it is young."""
    import os
    import time

    from pipeline.stage import UnitResult

    registry = DatasetRegistry(str(tmp_path))
    shards = {}
    for name in ("old", "resumed", "new"):
        with registry.writer("d", "ingest", RAW) as w:
            w.write(raw_rows([name]))
            [shards[name]] = w.rows.flush()
    an_hour_ago = time.time() - 3600
    for name in ("old", "resumed"):
        os.utime(registry.shard_path("d", shards[name]), (an_hour_ago, an_hour_ago))

    def shards_left() -> set[str]:
        return {name for name, s in shards.items() if Path(registry.shard_path("d", s)).exists()}

    work = registry.work_dir("d", "run-1")
    marker = UnitResult(unit=0, input=1, shards=[shards["resumed"]], quarantine_shards=[], reasons={}, stats={}, seconds=0)
    registry.write_atomic(f"{work}/units/00000000.json", marker.to_json().encode())
    os.utime(f"{work}/units/00000000.json", (an_hour_ago, an_hour_ago))
    with registry.lease(work, heartbeat_s=0.05):
        time.sleep(0.2)  # a few beats
        found = registry.collect_garbage("d", older_than_s=0)
        assert found["live_runs"] == 1 and shards_left() == {"resumed", "new"}  # "old": no run needs it
        assert Path(f"{work}/units/00000000.json").exists()
    assert not Path(work, "lease.json").exists()
    assert registry.collect_garbage("d", older_than_s=0)["live_runs"] == 0 and shards_left() == set()

    lease = Path(registry.work_dir("d", "killed"), "lease.json")
    lease.parent.mkdir(parents=True)
    lease.write_text(json.dumps({"started": an_hour_ago, "expires": time.time() - 1}))  # lapsed
    assert registry.collect_garbage("d", older_than_s=0, dry_run=True)["live_runs"] == 0
    lease.write_text('{"started": 17')  # cut mid-write, just now
    assert registry.collect_garbage("d", older_than_s=0, dry_run=True)["live_runs"] == 1


def test_versions_written_before_the_shard_store_stay_readable(tmp_path):
    """Such a version keeps its shards in its own folder (`versions/<id>/shards/part-00000.arrow`)."""
    registry = DatasetRegistry(str(tmp_path))
    m = publish(registry, ["a", "b"])
    folder = tmp_path / "d" / "versions" / "0123456789abcdef"
    (folder / "shards").mkdir(parents=True)
    (folder / "shards" / "part-00000.arrow").write_bytes(Path(registry.shard_paths(m)[0]).read_bytes())
    old = dataclasses.replace(m, version="0123456789abcdef", created_at="2000-01-01",
                              shards=[dataclasses.replace(m.shards[0], path="shards/part-00000.arrow")])
    (folder / "manifest.json").write_text(old.to_json())
    assert registry.read_table(registry.resolve("d@0123")).to_pylist() == registry.read_table(m).to_pylist()
    assert publish(registry, ["a", "b"]).version == m.version != old.version  # new writes never take its id


def test_verify_finds_a_flipped_byte_and_a_missing_shard(tmp_path):
    """`pipeline versions verify` re-hashes every shard; a flipped byte or a lost file is named, exit 1."""
    import subprocess
    import sys

    registry = DatasetRegistry(str(tmp_path))
    m = publish(registry, [f"{i:04d}" for i in range(300)], shard_bytes=8000)
    verify = [str(Path(sys.executable).parent / "pipeline"), "versions", "verify", m.ref, "--registry", str(tmp_path)]
    ok = subprocess.run(verify, capture_output=True, text=True)
    assert ok.returncode == 0 and f"{len(m.shards)} shard(s) checked, 0 problem(s)" in ok.stdout
    first, second = registry.shard_paths(m)[:2]
    data = bytearray(Path(first).read_bytes())
    data[len(data) // 2] ^= 1
    Path(first).write_bytes(bytes(data))
    Path(second).unlink()
    bad = subprocess.run(verify, capture_output=True, text=True)
    assert bad.returncode == 1 and "2 problem(s)" in bad.stdout
    assert "the shard is corrupt" in bad.stdout and "unreadable" in bad.stdout


def test_a_parent_cycle_is_refused(tmp_path):
    from pipeline.report import ancestry

    registry = DatasetRegistry(str(tmp_path))
    a = publish(registry, ["a"])
    b = publish(registry, ["b"], parent=a.ref)
    looped = dataclasses.replace(a, parent=b.ref)  # a hand-edited manifest: a's parent is its own child
    registry.write_atomic(registry._path("d", "versions", a.version, "manifest.json"), looped.to_json().encode())
    with pytest.raises(ValueError, match="descends from it"):
        ancestry(registry, registry.manifest(b.ref))


def test_racing_identical_publishes_leave_one_readable_version(tmp_path):
    """Eight processes publishing the same rows at once: one version id, its manifest whole, its
    shards intact (content-addressed files written by several writers hold the same bytes)."""
    import concurrent.futures

    ids = [f"{i:04d}" for i in range(200)]

    with concurrent.futures.ProcessPoolExecutor(8) as pool:
        versions = set(pool.map(_publish_in_a_process, [(str(tmp_path), ids)] * 8))
    registry = DatasetRegistry(str(tmp_path))
    [version] = versions
    [m] = registry.versions("d")
    assert m.version == version and registry.verify(m) == []
    assert registry.read_table(m)["sample_id"].to_pylist() == ids


def _publish_in_a_process(args):
    root, ids = args
    return publish(DatasetRegistry(root), ids, shard_bytes=4000).version


def test_a_broken_manifest_is_named_not_a_traceback(tmp_path):
    registry = DatasetRegistry(str(tmp_path))
    m = publish(registry, ["a"])
    path = tmp_path / "d" / "versions" / m.version / "manifest.json"
    broken = json.loads(path.read_text())
    del broken["counts"]
    path.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=rf"{m.version}/manifest.json: not a valid version manifest \(KeyError"):
        registry.versions("d")
    path.write_text('{"dataset": "d", "vers')  # cut mid-write by hand
    with pytest.raises(ValueError, match="manifest.json: Unterminated string"):
        registry.resolve(m.ref)


def test_a_version_id_always_wins_and_no_tag_can_look_like_one(tmp_path):
    """A tag named like another version's id (written before tags were checked) does not shadow it;
    one named like a prefix of an id is refused as ambiguous; new tags that look like ids or
    prefixes are refused; a tag write leaves no temporary name behind."""
    registry = DatasetRegistry(str(tmp_path))
    a, b = publish(registry, ["a"]), publish(registry, ["a", "b"])
    tags = tmp_path / "d" / "tags"
    tags.mkdir(parents=True, exist_ok=True)
    (tags / a.version).write_text(b.version)  # an old tag named like version a, pointing at b
    (tags / b.version[:6]).write_text(a.version)  # and one named like a prefix of b, pointing at a
    assert registry.resolve(f"d@{a.version}").version == a.version
    with pytest.raises(ValueError, match="both a tag and a version id prefix"):
        registry.resolve(f"d@{b.version[:6]}")
    for tag in (a.version, b.version[:6], "cafe", "0"):
        with pytest.raises(ValueError, match="looks like a version id"):
            registry.tag(f"d@{b.version}", tag)
    registry.tag(f"d@{b.version}", "best")
    assert registry.resolve("d@best").version == b.version
    assert sorted(p.name for p in tags.iterdir()) == sorted([a.version, b.version[:6], "best"])
