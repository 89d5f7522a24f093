from __future__ import annotations

from typing import Annotated

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


def annotate(
    dataset: Annotated[str, typer.Argument(help="NAME[@VERSION|@TAG] of a raw version")],
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
    """Write a reasoning trace per sample (validated, retried, resumable); prints the version id last.

    Every other setting is a key of AnnotateConfig (pipeline/annotate.py), e.g.
    --set annotator.backend.vllm.tensor_parallel_size=4, --set annotator.validators.min_words=60,
    --set annotator.prompt_edit=my-prompt.yaml, --set unit_rows=512.
    """
    # here, not at the top: the stage's libraries and Ray (the driver's) load only when the command runs
    from pipeline import annotate as stage
    from pipeline.run import run_stage

    cfg = load_config(stage.AnnotateConfig, config, set_, dataset=dataset, concurrency=concurrency, output=output,
                      registry=registry, ray_address=ray_address,
                      **backend_options("annotator", backend, model, base_url))
    manifest = run_stage(stage.plan, cfg, progress=progress)
    print_published(manifest, stage.report(manifest))
