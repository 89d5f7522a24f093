from __future__ import annotations

from typing import Annotated

import typer


def demo_data(
    out: Annotated[str, typer.Argument(help="output folder")],
    n: Annotated[int, typer.Option("--n", help="number of samples")] = 64,
    seed: Annotated[int, typer.Option()] = 0,
    resolution: Annotated[int, typer.Option()] = 512,
) -> None:
    """Write a procedurally generated edit/generate set (canonical JSONL layout)."""
    from pipeline.demo_data import make_demo_data  # image libraries load only when the command runs

    manifest = make_demo_data(out, n=n, seed=seed, resolution=resolution)
    print(manifest)
