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


def annotate(
    dataset: Annotated[str, typer.Argument(help="NAME[@VERSION|@TAG] of a raw version")],
    backend: Backend = None,
    model: Annotated[Optional[str], Opt(help="hub id or local folder (the served name for openai)")] = None,
    revision: Revision = None,
    base_url: BaseUrl = None,
    concurrency: Annotated[Optional[int], Opt(help="annotator actors (vllm: one per GPU)")] = None,
    request_concurrency: RequestConcurrency = None,
    tensor_parallel_size: TensorParallelSize = None,
    max_model_len: MaxModelLen = None,
    limit_mm_per_prompt: Annotated[Optional[int], Opt(help="vllm: images per prompt")] = None,
    gpu_memory_utilization: GpuMemoryUtilization = None,
    max_attempts: Annotated[Optional[int], Opt(help="tries per sample before quarantine")] = None,
    prompt_edit: Annotated[Optional[str], Opt(help="template id or YAML file for edits")] = None,
    prompt_generate: Annotated[Optional[str], Opt(help="template id or YAML file for generation")] = None,
    output: Output = None,
    registry: Registry = None,
    ray_address: RayAddress = None,
    config: ConfigFile = None,
    set_: Overrides = None,
    progress: Progress = True,
) -> None:
    """Write a reasoning trace per sample (validated, retried, resumable); prints the version id last."""
    # here, not at the top: the stage's libraries and Ray (the driver's) load only when the command runs
    from pipeline import annotate as stage
    from pipeline.run import run_stage

    cfg = load_config(stage.AnnotateConfig, config, set_, dataset=dataset, backend=backend, model=model,
                      revision=revision, concurrency=concurrency, max_attempts=max_attempts,
                      prompt_edit=prompt_edit, prompt_generate=prompt_generate, output=output,
                      registry=registry, ray_address=ray_address, **backend_settings(
                          base_url, request_concurrency, tensor_parallel_size=tensor_parallel_size,
                          max_model_len=max_model_len, limit_mm_per_prompt=limit_mm_per_prompt,
                          gpu_memory_utilization=gpu_memory_utilization))
    manifest = run_stage(stage.plan, cfg, progress=progress)
    print_published(manifest, stage.report(manifest))
