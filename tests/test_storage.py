"""Storage locations (pipeline/storage.py), as a hostile store or user would try them (issue 28):
names from an object listing or a manifest stay inside the folder they are written to, and a URI
with credentials in it is refused before anything records or prints it."""

import os
import subprocess

import boto3
import pytest

from pipeline.registry import DatasetRegistry
from pipeline.storage import cached_shard_name, confined
from tests.helpers import BIN
from trainer.rundir import RunDir

SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize("name", ["../x", "a/../../x", "..", "/etc/passwd", "", "a//b", "./a", "a/.", "a\\..\\b"])
def test_a_name_that_could_leave_its_folder_is_refused(tmp_path, name):
    with pytest.raises(ValueError, match="refused the name"):
        confined(tmp_path, name)


def test_a_plain_name_lands_inside_its_folder(tmp_path):
    assert confined(tmp_path, "checkpoints/step-2/model.safetensors") == tmp_path / "checkpoints" / "step-2" / "model.safetensors"
    with pytest.raises(ValueError, match="64 hex digits"):
        cached_shard_name("../../../home/user/.bashrc")  # a manifest's sha256 names the cached copy


def _put(bucket_uri: str, keys: list[str]) -> None:
    """Objects with exactly these keys (boto3: pyarrow itself would not write a `..` segment)."""
    bucket, _, prefix = bucket_uri.removeprefix("s3://").partition("/")
    client = boto3.client("s3")
    for key in keys:
        client.put_object(Bucket=bucket, Key=f"{prefix}/{key}" if prefix else key, Body=b"{}")


def test_a_model_folder_whose_names_climb_out_is_refused_by_every_model_command(s3_bucket, tmp_path):
    """`--model s3://...` (trainer layout | sample | eval | rl | export, all through model_io.resolve):
    a folder whose object names hold `../` is refused in one line, and nothing lands outside the
    cache."""
    _put(s3_bucket, ["models/evil/config.json", "models/evil/../../escape.txt", "models/evil/a/../../../../up.txt"])
    cache = tmp_path / "home" / "cache"
    r = subprocess.run([str(BIN / "trainer"), "layout", "--model", f"{s3_bucket}/models/evil"], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "PARAFORGE_CACHE": str(cache)})
    assert r.returncode == 2 and "refused the name" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert all(cache in p.parents for p in tmp_path.rglob("*") if p.is_file())
    assert not any(p.name in ("escape.txt", "up.txt") for p in tmp_path.rglob("*"))


def test_a_run_or_checkpoint_whose_names_climb_out_is_refused_on_resume(s3_bucket, tmp_path, monkeypatch):
    """A run resumed from an object store (RunDir.pull, then its newest checkpoint): a top-level name
    `..` or a checkpoint file under `../` is refused, and nothing is written outside the mirror."""
    monkeypatch.setenv("PARAFORGE_CACHE", str(tmp_path / "cache"))
    _put(s3_bucket, ["runs/a/config.json", "runs/a/.."])
    with pytest.raises(ValueError, match="refused the name"):
        RunDir(f"{s3_bucket}/runs/a").pull()
    _put(s3_bucket, ["runs/b/config.json", "runs/b/checkpoints/step-1/done", "runs/b/checkpoints/step-1/../../../x.pt"])
    run = RunDir(f"{s3_bucket}/runs/b")
    run.pull()
    assert run.checkpoint_tags() == ["step-1"]
    with pytest.raises(ValueError, match="refused the name"):
        run.download("checkpoints/step-1")
    assert not any(p.name == "x.pt" for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("uri", [f"s3://AKIAIOSFODNN7EXAMPLE:{SECRET}@bucket/registry",
                                 f"s3://{SECRET}@bucket/registry", f"gs://user:{SECRET}@bucket/r"])
def test_a_uri_with_credentials_is_refused_without_repeating_them(uri):
    with pytest.raises(ValueError, match="credentials") as refused:
        DatasetRegistry(uri)
    assert SECRET not in str(refused.value)
    with pytest.raises(ValueError, match="credentials") as refused:
        RunDir(uri)
    assert SECRET not in str(refused.value)


def test_the_commands_refuse_credentials_in_a_uri_in_one_line(tmp_path):
    """Given on the command line (an option or `--set`), a URI with credentials stops the command
    before any work: one line, exit 2, the secret in neither output, no registry written."""
    uri = f"s3://AKIAIOSFODNN7EXAMPLE:{SECRET}@bucket/registry"
    (tmp_path / "data.jsonl").write_text("")
    for args in (["pipeline", "ingest", str(tmp_path / "data.jsonl"), "--dataset", "d", "--registry", uri],
                 ["pipeline", "versions", "list", "d", "--registry", uri],
                 ["trainer", "sft", "--set", "init=tiny", "--set", "dataset=d", "--set", f"out_dir={uri}/run"]):
        r = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stderr[-2000:])
        assert "credentials" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
        assert SECRET not in r.stdout + r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl"]


def test_a_registry_that_cannot_be_reached_is_one_line_before_ray_starts(s3_server, tmp_path, demo_dir):
    """A bucket that does not exist and an endpoint nothing answers on: `pipeline ingest` stops with
    one line naming the registry, exit 2, before it starts Ray (no Ray session is made)."""
    ray_sessions = set(os.listdir("/tmp/ray")) if os.path.isdir("/tmp/ray") else set()
    cases = [("s3://no-such-bucket/reg", {}, "bucket 'no-such-bucket' does not exist"),
             ("s3://b/reg", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, "cannot reach the registry s3://b/reg: ")]
    for registry, env, message in cases:
        r = subprocess.run([str(BIN / "pipeline"), "ingest", str(demo_dir / "data.jsonl"), "--dataset", "d",
                            "--registry", registry, "--no-progress"], capture_output=True, text=True, timeout=120,
                           env={**os.environ, **env, "RAY_ADDRESS": ""})
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (set(os.listdir("/tmp/ray")) if os.path.isdir("/tmp/ray") else set()) <= ray_sessions | {"session_latest"}
