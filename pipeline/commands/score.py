from __future__ import annotations

from typing import Annotated, Optional

import typer

from pipeline.commands.options import (
    Backend,
    BaseUrl,
    ConfigFile,
    GpuMemoryUtilization,
    MaxModelLen,
    Output,
    Overrides,
    Progress,
    RayAddress,
    Registry,
    RequestConcurrency,
    Revision,
    TensorParallelSize,
    backend_settings,
    print_published,
)
from pipeline.config import load_config

Opt = typer.Option


def score(
    dataset: Annotated[str, typer.Argument(help="NAME[@VERSION|@TAG] of an annotated version")],
    backend: Backend = None,
    model: Annotated[Optional[str], Opt(help="the judge: hub id or local folder (the served name for openai)")] = None,
    revision: Revision = None,
    rubrics: Annotated[Optional[str], Opt(help="rubric id (score-v1) or a YAML file defining the four axes")] = None,
    base_url: BaseUrl = None,
    concurrency: Annotated[Optional[int], Opt(help="judge actors (vllm: one per GPU or tensor-parallel group)")] = None,
    request_concurrency: RequestConcurrency = None,
    tensor_parallel_size: TensorParallelSize = None,
    max_model_len: MaxModelLen = None,
    gpu_memory_utilization: GpuMemoryUtilization = None,
    output: Output = None,
    registry: Registry = None,
    ray_address: RayAddress = None,
    config: ConfigFile = None,
    set_: Overrides = None,
    progress: Progress = True,
) -> None:
    """Judge every annotated row on four axes, 0-100 (resumable); prints the version id last."""
    # here, not at the top: the stage's libraries and Ray (the driver's) load only when the command runs
    from pipeline import score as stage
    from pipeline.run import run_stage

    cfg = load_config(stage.ScoreConfig, config, set_, dataset=dataset, backend=backend, model=model, revision=revision,
                      rubrics=rubrics, concurrency=concurrency, output=output, registry=registry,
                      ray_address=ray_address, **backend_settings(
                          base_url, request_concurrency, tensor_parallel_size=tensor_parallel_size,
                          max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization))
    manifest = run_stage(stage.plan, cfg, progress=progress)
    print_published(manifest, stage.report(manifest))


def filter_(
    dataset: Annotated[str, typer.Argument(help="NAME[@VERSION|@TAG] of a scored version")],
    min_: Annotated[Optional[list[str]], Opt("--min", help="AXIS=N: keep rows scoring at least N on AXIS "
                                                           "(repeatable; axes: instruction_following, "
                                                           "reasoning_following, consistency, quality)")] = None,
    max_failed: Annotated[Optional[int], Opt(help="failed judgements a row may have and pass (default 0)")] = None,
    output: Output = None,
    registry: Registry = None,
    ray_address: RayAddress = None,
    config: ConfigFile = None,
    set_: Overrides = None,
    progress: Progress = True,
) -> None:
    """Keep the rows that pass score thresholds, quarantine the rest with why; prints the version id last."""
    # here, not at the top: the stage's libraries and Ray (the driver's) load only when the command runs
    from pipeline import filter as stage
    from pipeline.run import run_stage

    cfg = load_config(stage.FilterConfig, config, set_, dataset=dataset, max_failed=max_failed, output=output,
                      registry=registry, ray_address=ray_address, min=stage.parse_thresholds(min_) if min_ else None)
    manifest = run_stage(stage.plan, cfg, progress=progress)
    print_published(manifest, stage.report(manifest))
