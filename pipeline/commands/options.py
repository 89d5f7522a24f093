"""Options every pipeline command shares, declared once."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

Registry = Annotated[Optional[str], typer.Option(help="registry root (else $PARAFORGE_REGISTRY, ./paraforge-data)")]
RayAddress = Annotated[Optional[str], typer.Option(help="Ray cluster (else $RAY_ADDRESS, else a local Ray)")]
ConfigFile = Annotated[Optional[str], typer.Option(help="YAML config file")]
Overrides = Annotated[Optional[list[str]], typer.Option("--set", help="key=value config override, repeatable "
                                                                          "(nested: sampling.temperature=0.2)")]
Progress = Annotated[bool, typer.Option(help="show progress bars")]
Output = Annotated[Optional[str], typer.Option(help="output dataset name (default: the input's)")]

# The VLM backend's options (annotate, score): the same words reach the same config keys.
Backend = Annotated[Optional[str], typer.Option(help="vllm | openai | transformers")]
Revision = Annotated[Optional[str], typer.Option()]
BaseUrl = Annotated[Optional[str], typer.Option(help="openai: server URL, e.g. http://host:8000/v1")]
RequestConcurrency = Annotated[Optional[int], typer.Option(help="openai: requests in flight per task")]
TensorParallelSize = Annotated[Optional[int], typer.Option()]
MaxModelLen = Annotated[Optional[int], typer.Option()]
GpuMemoryUtilization = Annotated[Optional[float], typer.Option()]


def print_published(manifest, report: str) -> None:
    """What every stage command prints last: its report, where the version went, and the version id
    alone on the last line (for scripts)."""
    print(report)
    print(f"published {manifest.ref} (parent {manifest.parent})")
    print(manifest.version)


def backend_settings(base_url: str | None = None, request_concurrency: int | None = None,
                     **vllm: int | float | None) -> dict[str, dict]:
    """The VLM backend's named options (annotate, score) as the nested config keys they set; options
    not given are left out, so a config file's values stand."""
    nested = {"openai": {"base_url": base_url, "concurrency": request_concurrency}, "vllm": vllm}
    nested = {k: {f: v for f, v in d.items() if v is not None} for k, d in nested.items()}
    return {k: v for k, v in nested.items() if v}
