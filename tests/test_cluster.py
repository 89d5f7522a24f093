"""Cluster submission against a real Ray head started here (`ray start --head`, token auth on):
a real `pipeline ingest` job through the CLI publishes a version; status, logs, stop, a missing token."""

import os
import secrets
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from pipeline.cluster import SubmitConfig, driver_resources, entrypoint, runtime_env
from tests.helpers import BIN, free_port

REPO = Path(__file__).resolve().parents[1]


def test_secrets_never_enter_the_runtime_env():
    cfg = SubmitConfig(env=["LOG_LEVEL=debug"], secret_env=["OPENAI_API_KEY"], pip=["polars"])
    env = runtime_env(cfg)
    assert env["env_vars"]["LOG_LEVEL"] == "debug" and "OPENAI_API_KEY" not in env["env_vars"]
    assert ".venv" in env["excludes"] and env["pip"] == ["polars"]
    assert "--require-env=OPENAI_API_KEY" in entrypoint("pipeline", "annotate", ["demo"], cfg.secret_env)
    with pytest.raises(ValueError, match="looks like a secret"):
        runtime_env(SubmitConfig(env=["OPENAI_API_KEY=sk-123"]))


def test_runtime_env_templates_install_nothing_and_drivers_ask_for_resources(tmp_path):
    """Code travels as the working dir and dependencies come from the cluster's image: no template
    installs packages (a job virtualenv would shadow the cluster's ray and torch)."""
    templates = sorted((REPO / "jobs" / "runtime_env").glob("*.yaml"))
    assert [t.name for t in templates] == ["cpu-data.yaml", "gpu-annotate.yaml", "gpu-train.yaml"]
    for template in templates:
        env = runtime_env(SubmitConfig(runtime_env=str(template)))
        assert not {"pip", "conda", "uv"} & set(env), template
        assert env["working_dir"] == "." and env["env_vars"]["PARAFORGE_REGISTRY"].startswith("s3://")
    assert driver_resources("pipeline", "annotate", ["demo", "--backend", "vllm"]) == (1.0, 0.0)
    assert driver_resources("trainer", "rl", ["--ray-workers", "8", "--ray-gpu"]) == (1.0, 0.0)
    assert driver_resources("trainer", "sft", ["dataset=x@1"]) == (1.0, 1.0)  # trains in the driver
    assert driver_resources("trainer", "sft", ["--set", "ray_workers=16", "--ray-gpu"]) == (1.0, 0.0)
    config = tmp_path / "rl.yaml"
    config.write_text("ray_workers: 8\nray_gpu: true\n")
    assert driver_resources("trainer", "rl", ["--config", str(config)]) == (1.0, 0.0)
    assert driver_resources("trainer", "rl", ["--config", str(config), "--ray-workers", "0"]) == (1.0, 1.0)


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head on 127.0.0.1 with token auth and no CPUs of its own, and a worker node with two, as
    a cluster's head and worker pods; each in its own process group, stopped at the end."""
    token = secrets.token_hex(32)
    # The agent's HTTP port must be free too: its default (52365) is held by the tests' embedded Ray,
    # and a head whose agent cannot bind never accepts a job ("No available agent").
    port, dashboard, agent = free_port(), free_port(), free_port()
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    # the head runs in the venv, as a cluster node runs in its image: `python` is the venv's
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                             "--port", str(port), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
                             "--dashboard-agent-listen-port", str(agent),
                             "--num-cpus", "0", "--temp-dir", temp, "--disable-usage-stats"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dashboard}"
    nodes = [head]
    try:
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + 120
        while True:
            try:
                JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"}).list_jobs()
                break
            except Exception:
                if head.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the Ray head did not come up") from None
                time.sleep(1)
        # the worker's agents need free ports of their own too (the embedded Ray holds the defaults)
        agent_ports = [f"--{name}={free_port()}" for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                              "metrics-export-port", "runtime-env-agent-port")]
        nodes.append(subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", "--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1",
             "--num-cpus", "2", "--disable-usage-stats", *agent_ports],
            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        while len([n for n in cluster_nodes(address, token) if n["state"] == "ALIVE"]) < 2:
            if nodes[1].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the Ray worker node did not join") from None
            time.sleep(1)
        yield address, token
    finally:
        for node in reversed(nodes):
            os.killpg(node.pid, signal.SIGTERM)  # --block: ray start stops what it started
            try:
                node.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)


def cluster_nodes(address, token) -> list[dict]:
    """The cluster's nodes from the dashboard's state API (the process's own Ray config fixes its
    auth mode at first use, so the token goes in the header here)."""
    import json
    import urllib.request

    request = urllib.request.Request(f"{address}/api/v0/nodes", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["data"]["result"]["result"]


def cli(args, token, timeout=600, home=None):
    env = {**os.environ, "RAY_AUTH_TOKEN": token} if token else {
        k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")}
    env.pop("RAY_ADDRESS", None)
    if home:
        env["HOME"] = str(home)
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=env)


def test_submit_ingest_job_publishes_a_version(ray_head, demo_dir, tmp_path):
    address, token = ray_head
    registry = tmp_path / "registry"
    r = cli(["pipeline", "submit", "ingest", "--address", address, "--submission-id", "paraforge-ingest-1",
             "--runtime-env", "jobs/runtime_env/cpu-data.yaml", "--env", "PARAFORGE_TEST=1", "--",
             str(demo_dir / "data.jsonl"), "--dataset", "demo", "--registry", str(registry), "--no-progress"], token)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "job paraforge-ingest-1: SUCCEEDED" in r.stdout
    assert "input 24 == output" in r.stdout  # the job's own log, followed live

    # the shipped template installs nothing, and the driver asked for a CPU: it ran on the worker
    from pipeline.cluster import client

    os.environ["RAY_AUTH_TOKEN"] = token
    try:
        info = client(address).get_job_info("paraforge-ingest-1")
    finally:
        del os.environ["RAY_AUTH_TOKEN"]
    [worker] = [n["node_id"] for n in cluster_nodes(address, token) if not n["is_head_node"]]
    assert "pip" not in info.runtime_env and "conda" not in info.runtime_env
    assert info.runtime_env["env_vars"]["PARAFORGE_TEST"] == "1"
    assert info.driver_node_id == worker  # a driver asking for nothing runs on the head

    from pipeline.registry import DatasetRegistry

    manifest = DatasetRegistry(str(registry)).resolve("demo")
    assert manifest.stage == "ingest" and manifest.counts.output == 24

    status = cli(["pipeline", "jobs", "status", "paraforge-ingest-1", "--address", address], token)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout
    logs = cli(["pipeline", "jobs", "logs", "paraforge-ingest-1", "--address", address], token)
    assert manifest.version in logs.stdout
    listed = cli(["pipeline", "jobs", "list", "--address", address], token)
    assert "paraforge-ingest-1" in listed.stdout and "python -m jobs.ingest" in listed.stdout


def test_stop_a_long_job_and_a_missing_secret(ray_head, tmp_path):
    address, token = ray_head
    from pipeline.cluster import client

    os.environ["RAY_AUTH_TOKEN"] = token
    try:
        jobs = client(address)
        job = jobs.submit_job(entrypoint="python -c 'import time; time.sleep(600)'")
        deadline = time.monotonic() + 60
        while str(jobs.get_job_status(job).value) != "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        del os.environ["RAY_AUTH_TOKEN"]
    r = cli(["pipeline", "jobs", "stop", job, "--address", address], token)
    assert r.returncode == 0 and f"{job}: STOPPED" in r.stdout

    # a declared secret the cluster does not have: the job fails at once, naming it
    # (a trainer driver without --ray-workers asks for a GPU by default; this cluster has none)
    r = cli(["trainer", "submit", "sft", "--address", address, "--secret-env", "PARAFORGE_MISSING_SECRET",
             "--entrypoint-num-gpus", "0", "--", "dataset=x@y"], token, timeout=300)
    assert r.returncode == 1 and "FAILED" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    assert "does not provide PARAFORGE_MISSING_SECRET" in r.stdout


def test_a_missing_token_is_a_clear_error(ray_head, tmp_path):
    address, _ = ray_head
    r = cli(["pipeline", "jobs", "list", "--address", address], None, home=tmp_path)
    assert r.returncode == 2
    assert "requires a token and it is missing" in r.stderr and "RAY_AUTH_TOKEN" in r.stderr
    r = cli(["pipeline", "jobs", "list", "--address", address], "0" * 64)
    assert r.returncode == 2 and "requires a token and it was refused" in r.stderr
