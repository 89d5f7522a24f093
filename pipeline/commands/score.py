from __future__ import annotations

from typing import Annotated, Optional

import typer

from pipeline.commands.options import (
    Backend,
    BaseUrl,
    Concurrency,
    ConfigFile,
    Model,
    Output,
    Overrides,
    Progress,
    RayAddress,
    Registry,
    backend_options,
    print_published,
)
from pipeline.config import load_config

Opt = typer.Option


def score(
    dataset: Annotated[str, typer.Argument(help="NAME[@VERSION|@TAG] of an annotated version")],
    backend: Backend = None,
    model: Model = None,
    base_url: BaseUrl = None,
    concurrency: Concurrency = None,
    output: Output = None,
    registry: Registry = None,
    ray_address: RayAddress = None,
    config: ConfigFile = None,
    set_: Overrides = None,
    progress: Progress = True,
) -> None:
    """Judge every annotated row on four axes, 0-100 (resumable); prints the version id last.

    Every other setting is a key of ScoreConfig (pipeline/score.py), e.g.
    --set judge.rubrics=my-rubrics.yaml, --set judge.backend.vllm.tensor_parallel_size=4,
    --set judge.backend.openai.concurrency=128.
    """
    # here, not at the top: the stage's libraries and Ray (the driver's) load only when the command runs
    from pipeline import score as stage
    from pipeline.run import run_stage

    cfg = load_config(stage.ScoreConfig, config, set_, dataset=dataset, concurrency=concurrency, output=output,
                      registry=registry, ray_address=ray_address, **backend_options("judge", backend, model, base_url))
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
