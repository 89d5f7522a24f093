"""The `pipeline` CLI as users run it: real processes, a real registry, the session's local Ray."""

import json
import os
import subprocess

from pipeline.demo_data import make_demo_data
from pipeline.registry import DatasetRegistry
from tests.helpers import BIN, cli, kill_when


def test_ingest_versions_show_tag_diff(ray_local, demo_dir, tmp_path):
    reg = tmp_path / "reg"
    out = cli("ingest", demo_dir / "data.jsonl", "--dataset", "demo", "--registry", reg, "--no-progress",
              ray_address=ray_local)
    version = out.stdout.strip().splitlines()[-1]
    assert "input 24 == output 24 + quarantined 0 + duplicates 0" in out.stdout
    shown = json.loads(cli("versions", "show", "demo", "--registry", reg, "--json").stdout)
    assert shown["version"] == version
    for key in ("dataset", "version", "stage", "schema", "parent", "created_at", "counts", "shards",
                "quarantine_shards", "lineage"):
        assert key in shown
    assert shown["counts"] == {"input": 24, "output": 24, "quarantined": 0, "duplicates": 0}
    assert set(shown["lineage"]) >= {"command", "config", "package_version", "git_revision", "ingest"}
    assert shown["lineage"]["command"].startswith("pipeline ingest")
    assert shown["shards"][0]["rows"] == 24 and len(shown["shards"][0]["sha256"]) == 64

    cli("versions", "tag", f"demo@{version}", "v1", "--registry", reg)
    listed = json.loads(cli("versions", "list", "demo", "--registry", reg, "--json").stdout)
    assert [(m["version"], m["tags"]) for m in listed] == [(version, ["v1"])]
    assert version in cli("versions", "list", "demo", "--registry", reg).stdout

    # a second version with 8 more samples (same seed: the first 24 are the same samples)
    bigger = make_demo_data(tmp_path / "more", n=32, seed=3, resolution=64)
    v2 = cli("ingest", bigger, "--dataset", "demo", "--registry", reg, "--no-progress",
             ray_address=ray_local).stdout.strip().splitlines()[-1]
    d = json.loads(cli("versions", "diff", "demo@v1", f"demo@{v2}", "--registry", reg, "--json").stdout)
    # the 24 shared samples were read from another folder: provenance differs, content does not
    assert (d["added"], d["removed"], d["changed"], d["unchanged"]) == (8, 0, 0, 24)
    assert "source_ref" not in d["compared_columns"] and "instruction" in d["compared_columns"]
    assert "+8 added" in cli("versions", "diff", "demo@v1", f"demo@{v2}", "--registry", reg).stdout


def test_user_errors_are_one_line(tmp_path):
    r = cli("versions", "show", "nothing", "--registry", tmp_path, check=False)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: dataset 'nothing' has no versions in registry {tmp_path}"
    r = cli("ingest", tmp_path / "missing.jsonl", "--dataset", "x", "--registry", tmp_path, check=False)
    assert r.returncode == 2 and "does not exist" in r.stderr
    for args, says in ((("ingest", "--bogus"), "No such option: --bogus"),
                       (("ingest", tmp_path / "a.jsonl"), "Missing option '--dataset'"),
                       (("versions", "show"), "Missing argument"), (("nosuchcommand",), "No such command")):
        r = cli(*args, check=False)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and says in r.stderr, r.stderr[-2000:]
        assert r.stderr.startswith("error: ")
    r = subprocess.run([str(BIN / "trainer"), "sft", "--bogus"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == "error: No such option: --bogus (see `trainer sft --help`)"


def test_registry_from_environment(ray_local, demo_dir, tmp_path):
    env_root = tmp_path / "from-env"
    os.environ["PARAFORGE_REGISTRY"] = str(env_root)
    try:
        out = cli("ingest", demo_dir / "data.jsonl", "--dataset", "e", "--no-progress", ray_address=ray_local)
    finally:
        del os.environ["PARAFORGE_REGISTRY"]
    assert DatasetRegistry(str(env_root)).resolve("e").version == out.stdout.split()[-1]


def test_killed_ingest_leaves_no_partial_version(ray_local, tmp_path):
    data = make_demo_data(tmp_path / "data", n=160, seed=1, resolution=256)
    args = ["ingest", data, "--dataset", "k", "--no-progress", "--set", "batch_size=4",
            "--set", "shard_bytes=200000", "--set", "unit_rows=16"]
    clean = cli(*args, "--registry", tmp_path / "clean", ray_address=ray_local).stdout.split()[-1]

    reg = tmp_path / "reg"
    env = {**os.environ, "RAY_ADDRESS": ray_local}
    units = reg / "k" / "_work"
    # mid-run: some units done (shards in the store, markers written), the version not published
    kill_when([str(BIN / "pipeline"), *map(str, args), "--registry", str(reg)],
              lambda: len(list(units.glob("*/units/*.json"))) >= 2, 120, env)
    done = len(list(units.glob("*/units/*.json")))
    assert 2 <= done < 10 and list((reg / "k" / "shards").rglob("*.arrow"))
    assert not list((reg / "k").glob("versions/*/manifest.json"))
    assert DatasetRegistry(str(reg)).versions("k") == []

    resumed = cli(*args, "--registry", reg, ray_address=ray_local).stdout
    assert f"{done} of 10 units already done" in resumed
    rerun = resumed.split()[-1]
    assert rerun == clean
    assert [m.version for m in DatasetRegistry(str(reg)).versions("k")] == [clean]
