"""Options every pipeline command shares, declared once. A command names only what is typed every
day; every other setting is a key of its config dataclass (the comments there are its documentation),
given in a YAML file (--config) or as --set key=value."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

Registry = Annotated[Optional[str], typer.Option(help="registry root (else $PARAFORGE_REGISTRY, ./paraforge-data)")]
RayAddress = Annotated[Optional[str], typer.Option(help="Ray cluster (else $RAY_ADDRESS, else a local Ray)")]
ConfigFile = Annotated[Optional[str], typer.Option(help="YAML config file")]
Overrides = Annotated[Optional[list[str]], typer.Option(
    "--set", help="key=value config override, repeatable (nested: annotator.sampling.temperature=0.2)")]
Progress = Annotated[bool, typer.Option(help="show progress bars")]
Output = Annotated[Optional[str], typer.Option(help="output dataset name (default: the input's)")]
Concurrency = Annotated[Optional[int], typer.Option(help="actors (vllm: one per GPU or tensor-parallel group)")]

# The VLM backend's options (annotate, score): the same words reach the same keys of a BackendConfig.
Backend = Annotated[Optional[str], typer.Option(
    help="vllm | openai | transformers | scene (the shapes world's annotator) | verifier (its judge, eval only)")]
Model = Annotated[Optional[str], typer.Option(help="hub id or local folder (the served name for openai)")]
BaseUrl = Annotated[Optional[str], typer.Option(help="openai: the server, e.g. http://host:8000/v1")]


def print_published(manifest, report: str) -> None:
    """What every stage command prints last: its report, where the version went, and the version id
    alone on the last line (for scripts)."""
    print(report)
    print(f"published {manifest.ref} (parent {manifest.parent})")
    print(manifest.version)


def backend_options(component: str, backend: str | None, model: str | None,
                    base_url: str | None = None) -> dict[str, dict]:
    """The named backend options as the keys they set in `component`'s BackendConfig (annotate's
    `annotator`, score's and eval's `judge`), for `load_config(..., **backend_options(...))`; those
    not given are left out, so a config file's values stand."""
    given = {"kind": backend, "model": model, "openai": {"base_url": base_url} if base_url else None}
    chosen = {k: v for k, v in given.items() if v is not None}
    return {component: {"backend": chosen}} if chosen else {}
