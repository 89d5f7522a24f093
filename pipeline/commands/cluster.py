"""`pipeline submit`, `trainer submit` and `pipeline jobs`: Ray Job submission and management."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pipeline.cluster import SubmitConfig, client, follow_logs
from pipeline.cluster import submit as run_submit
from pipeline.cluster import wait as wait_for_job  # `submit` has a --wait flag of that name

Stage = Annotated[str, typer.Argument(help="the stage to run; every argument after it goes to the stage")]
Address = Annotated[Optional[str], typer.Option(help="Ray dashboard, http://HEAD:8265 (else $RAY_ADDRESS)")]


def submit_command(program: str, stages: tuple[str, ...]):
    """A `submit` command for `program`: everything after the stage name goes to the stage."""

    def submit(ctx: typer.Context,
               stage: Stage,
               address: Address = None,
               working_dir: Annotated[str, typer.Option(help="folder uploaded as the job's working dir")] = ".",
               runtime_env: Annotated[Optional[str], typer.Option(help="runtime env YAML, e.g. jobs/runtime_env/gpu-train.yaml")] = None,
               pip: Annotated[Optional[list[str]], typer.Option(help="pip requirement for the job (repeatable)")] = None,
               image: Annotated[Optional[str], typer.Option(help="container image for the job")] = None,
               env: Annotated[Optional[list[str]], typer.Option(help="KEY=VALUE for the job (not secrets; repeatable)")] = None,
               secret_env: Annotated[Optional[list[str]], typer.Option(help="a secret the cluster provides (name only; repeatable)")] = None,
               submission_id: Annotated[Optional[str], typer.Option(help="job id (default: Ray's)")] = None,
               entrypoint_num_cpus: Annotated[Optional[float], typer.Option(help="the driver's CPUs (default: the stage's)")] = None,
               entrypoint_num_gpus: Annotated[Optional[float], typer.Option(help="the driver's GPUs (default: the stage's)")] = None,
               wait: Annotated[bool, typer.Option(help="follow the logs until the job ends")] = True) -> None:
        if stage not in stages:
            raise ValueError(f"unknown stage {stage!r} for `{program} submit`: {', '.join(stages)}")
        cfg = SubmitConfig(address=address, working_dir=working_dir, runtime_env=runtime_env, pip=pip or [],
                           image=image, env=env or [], secret_env=secret_env or [], submission_id=submission_id,
                           wait=wait, entrypoint_num_cpus=entrypoint_num_cpus, entrypoint_num_gpus=entrypoint_num_gpus)
        job_id, status = run_submit(cfg, program, stage, list(ctx.args))
        if status is None:
            print(f"follow it with: pipeline jobs logs {job_id} --follow")
            return
        print(f"job {job_id}: {status}")
        if status != "SUCCEEDED":
            raise typer.Exit(1)

    submit.__doc__ = f"Run `{program} STAGE ARGS` as a Ray job on a cluster ({' | '.join(stages)})."
    return submit


SUBMIT_SETTINGS = {"allow_extra_args": True, "ignore_unknown_options": True}

app = typer.Typer(no_args_is_help=True, help="Ray jobs on a cluster: status, logs, stop, list.")


@app.command()
def status(job_id: str, address: Address = None) -> None:
    """A job's status and message."""
    info = client(address).get_job_info(job_id)
    print(f"{job_id}: {info.status.value}" + (f" ({info.message})" if info.message else ""))


@app.command()
def logs(job_id: str, address: Address = None,
         follow: Annotated[bool, typer.Option("--follow", "-f", help="stream until the job ends")] = False) -> None:
    """A job's driver logs."""
    jobs = client(address)
    if follow:
        follow_logs(jobs, job_id)
    else:
        print(jobs.get_job_logs(job_id), end="")


@app.command()
def stop(job_id: str, address: Address = None) -> None:
    """Stop a running job."""
    jobs = client(address)
    jobs.stop_job(job_id)
    print(f"{job_id}: {wait_for_job(jobs, job_id, timeout=60)}")


@app.command("list")
def list_(address: Address = None) -> None:
    """Jobs on the cluster, newest last."""
    for job in sorted(client(address).list_jobs(), key=lambda j: j.start_time or 0):
        print(f"{job.submission_id or job.job_id:<36} {job.status.value:<10} {job.entrypoint}")
