from __future__ import annotations

from typing import Annotated, Optional

import typer

from pipeline.commands.options import ConfigFile, Overrides, Progress, RayAddress, Registry, backend_settings
from pipeline.config import load_config

Opt = typer.Option


def annotate(
    dataset: Annotated[str, typer.Argument(help="NAME[@VERSION|@TAG] of a raw version")],
    backend: Annotated[Optional[str], Opt(help="vllm | openai | transformers")] = None,
    model: Annotated[Optional[str], Opt(help="hub id or local folder (the served name for openai)")] = None,
    revision: Annotated[Optional[str], Opt()] = None,
    base_url: Annotated[Optional[str], Opt(help="openai: server URL, e.g. http://host:8000/v1")] = None,
    concurrency: Annotated[Optional[int], Opt(help="annotator actors (vllm: one per GPU)")] = None,
    request_concurrency: Annotated[Optional[int], Opt(help="openai: requests in flight per actor")] = None,
    tensor_parallel_size: Annotated[Optional[int], Opt()] = None,
    max_model_len: Annotated[Optional[int], Opt()] = None,
    limit_mm_per_prompt: Annotated[Optional[int], Opt(help="vllm: images per prompt")] = None,
    gpu_memory_utilization: Annotated[Optional[float], Opt()] = None,
    max_attempts: Annotated[Optional[int], Opt(help="tries per sample before quarantine")] = None,
    prompt_edit: Annotated[Optional[str], Opt(help="template id or YAML file for edits")] = None,
    prompt_generate: Annotated[Optional[str], Opt(help="template id or YAML file for generation")] = None,
    output: Annotated[Optional[str], Opt(help="output dataset name (default: the input's)")] = None,
    registry: Registry = None,
    ray_address: RayAddress = None,
    config: ConfigFile = None,
    set_: Overrides = None,
    progress: Progress = True,
) -> None:
    """Write a reasoning trace per sample (validated, retried, resumable); prints the version id last."""
    from pipeline.annotate import AnnotateConfig, report, run_annotate

    cfg = load_config(AnnotateConfig, config, set_, dataset=dataset, backend=backend, model=model,
                      revision=revision, concurrency=concurrency, max_attempts=max_attempts,
                      prompt_edit=prompt_edit, prompt_generate=prompt_generate, output=output,
                      registry=registry, ray_address=ray_address, **backend_settings(
                          base_url, request_concurrency, tensor_parallel_size=tensor_parallel_size,
                          max_model_len=max_model_len, limit_mm_per_prompt=limit_mm_per_prompt,
                          gpu_memory_utilization=gpu_memory_utilization))
    manifest = run_annotate(cfg, progress=progress)
    print(report(manifest))
    print(f"published {manifest.ref} (parent {manifest.parent})")
    print(manifest.version)
