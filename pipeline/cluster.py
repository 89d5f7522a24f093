"""Ray Job submission: the same commands that run locally, sent to a Ray cluster unchanged.

`submit` packs the working directory (Ray uploads it), adds a runtime environment (a YAML template
from jobs/runtime_env/, pip requirements or a container image, plain environment variables) and
submits `python -m jobs.<stage> ARGS` through `JobSubmissionClient`. Token authentication (on by
default in current Ray) is handled here: the token comes from $RAY_AUTH_TOKEN, the file named by
$RAY_AUTH_TOKEN_PATH, or Ray's token file ~/.ray/auth_token, and is sent as an Authorization header
(Ray's client only does that itself when RAY_AUTH_MODE=token is set locally).

Secrets never go into the runtime environment: Ray's job API returns `env_vars` in plain text to
any client. `--secret-env NAME` only declares that the job needs NAME; the cluster provides it (a
Kubernetes secret in the pod spec, the nodes' environment), and the job fails at once, naming it,
when it is missing. Refused outright: a plain `--env` whose name looks like a secret.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import shlex
import time
from pathlib import Path
from typing import Any

import yaml

# Never uploaded: environments, caches and local outputs (Ray refuses working dirs over its limit).
EXCLUDES = [".venv", ".git", "**/__pycache__", "demo-run", "paraforge-data", "runs", ".pytest_cache", "*.egg-info"]
SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL)", re.IGNORECASE)
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@dataclasses.dataclass(kw_only=True)
class SubmitConfig:
    address: str | None = None  # http://HEAD:8265; else $RAY_ADDRESS
    working_dir: str = "."
    runtime_env: str | None = None  # a YAML template, e.g. jobs/runtime_env/gpu-train.yaml
    pip: list[str] = dataclasses.field(default_factory=list)
    image: str | None = None  # a container image for the job (runtime_env image_uri)
    env: list[str] = dataclasses.field(default_factory=list)  # KEY=VALUE, not secret
    secret_env: list[str] = dataclasses.field(default_factory=list)  # names the cluster must provide
    submission_id: str | None = None
    wait: bool = True
    # The driver's own resources; None: the stage's default (`driver_resources`). Ray places a driver
    # that asks for nothing on the head, whose memory and CPUs the whole cluster depends on.
    entrypoint_num_cpus: float | None = None
    entrypoint_num_gpus: float | None = None


def driver_resources(program: str, stage: str, args: list[str]) -> tuple[float, float]:
    """(CPUs, GPUs) a stage's driver needs by default. Pipeline drivers plan and gather markers (one
    CPU; the GPU work is in their actors); a trainer driver with --ray-workers only launches Ray
    Train workers, one without them trains in the driver itself, on one GPU."""
    if program == "trainer" and stage in ("sft", "rl") and not _ray_workers(args):
        return 1.0, 1.0
    return 1.0, 0.0


def _ray_workers(args: list[str]) -> int:
    """The `ray_workers` a trainer command's arguments resolve to, where the command would find it:
    its --config file, then --ray-workers, then --set ray_workers=N (or a bare ray_workers=N)."""
    workers = 0
    for i, arg in enumerate(args):
        value = args[i + 1] if i + 1 < len(args) else ""
        if arg == "--config" and Path(value).is_file():
            workers = (yaml.safe_load(Path(value).read_text()) or {}).get("ray_workers", workers)
        elif arg.startswith("--config="):
            workers = (yaml.safe_load(Path(arg.split("=", 1)[1]).read_text()) or {}).get("ray_workers", workers)
    for i, arg in enumerate(args):
        if arg == "--ray-workers" and i + 1 < len(args):
            workers = int(args[i + 1])
        elif arg.startswith("--ray-workers="):
            workers = int(arg.split("=", 1)[1])
    for arg in args:
        if arg.startswith("ray_workers="):
            workers = int(arg.split("=", 1)[1])
    return int(workers or 0)


def resolve_address(address: str | None) -> str:
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ValueError("no Ray cluster given: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    return address if "://" in address else f"http://{address}"


def auth_token() -> str | None:
    """Ray's token sources, in Ray's order: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    return path.read_text().strip() if path.is_file() else None


def client(address: str | None):
    # the job SDK pulls Ray's dashboard client: loaded only by the commands that submit
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    address = resolve_address(address)
    token = auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except AuthenticationError as e:
        what = "was refused" if token else "is missing"
        raise ValueError(f"the Ray cluster at {address} requires a token and it {what}: set RAY_AUTH_TOKEN, "
                         "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token to the cluster's token "
                         "(`ray get-auth-token` on the head prints it)") from e
    except ConnectionError as e:
        raise ValueError(f"no Ray dashboard answers at {address}: {e}") from e


def runtime_env(cfg: SubmitConfig) -> dict[str, Any]:
    env: dict[str, Any] = {}
    if cfg.runtime_env:
        env = yaml.safe_load(Path(cfg.runtime_env).read_text()) or {}
    env.setdefault("working_dir", cfg.working_dir)
    env["excludes"] = sorted(set(env.get("excludes", [])) | set(EXCLUDES))
    if cfg.pip:
        env["pip"] = list(env.get("pip", [])) + cfg.pip
    if cfg.image:
        env["image_uri"] = cfg.image
    variables = dict(env.get("env_vars", {}))
    for item in cfg.env:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--env takes KEY=VALUE, not {item!r}")
        if SECRET_NAME.search(name):
            raise ValueError(f"{name} looks like a secret: runtime env variables are readable through Ray's job API; "
                             f"provide it on the cluster and pass --secret-env {name}")
        variables[name] = value
    variables.setdefault("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "0"))
    env["env_vars"] = variables
    return env


def entrypoint(program: str, stage: str, args: list[str], secret_env: list[str]) -> str:
    command = ["python", "-m", f"jobs.{stage}", *args]
    if secret_env:
        command[3:3] = [f"--require-env={name}" for name in secret_env]
    return shlex.join(command)


AGENT_WAIT_S = 60


def submit(cfg: SubmitConfig, program: str, stage: str, args: list[str], out=print) -> tuple[str, str | None]:
    """-> (submission id, final status or None when not waiting)."""
    jobs = client(cfg.address)
    cpus, gpus = driver_resources(program, stage, args)
    job = dict(entrypoint=entrypoint(program, stage, args, cfg.secret_env), runtime_env=runtime_env(cfg),
               submission_id=cfg.submission_id, metadata={"paraforge": f"{program} {stage}"},
               entrypoint_num_cpus=cpus if cfg.entrypoint_num_cpus is None else cfg.entrypoint_num_cpus,
               entrypoint_num_gpus=gpus if cfg.entrypoint_num_gpus is None else cfg.entrypoint_num_gpus)
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            job_id = jobs.submit_job(**job)
            break
        except RuntimeError as e:
            # A head that has just started answers before its job agent registers; Ray says to retry.
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            out("the cluster's job agent is not up yet; retrying")
            time.sleep(2)
    out(f"submitted {job_id} to {resolve_address(cfg.address)}")
    if not cfg.wait:
        return job_id, None
    follow_logs(jobs, job_id, out)
    return job_id, wait(jobs, job_id)


def wait(jobs, job_id: str, timeout: float | None = None) -> str:
    started = time.monotonic()
    while (status := str(jobs.get_job_status(job_id).value)) not in TERMINAL:
        if timeout is not None and time.monotonic() - started > timeout:
            return status
        time.sleep(1)
    return status


def follow_logs(jobs, job_id: str, out=print) -> None:
    async def tail() -> None:
        async for lines in jobs.tail_job_logs(job_id):
            out(lines.rstrip("\n"))

    asyncio.run(tail())
