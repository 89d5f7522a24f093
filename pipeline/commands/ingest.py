from __future__ import annotations

from typing import Annotated, Optional

import typer

from pipeline.commands.options import ConfigFile, Overrides, Progress, RayAddress, Registry
from pipeline.config import load_config

Opt = typer.Option


def parse_columns(text: str | None) -> dict[str, str] | None:
    """"input_image=src,output_image=edited" -> {"input_image": "src", ...}."""
    if not text:
        return None
    pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
    if any(len(p) != 2 for p in pairs):
        raise ValueError(f"--columns {text!r}: expected canonical=source_column[,...]")
    return {k.strip(): v.strip() for k, v in pairs}


def ingest(
    sources: Annotated[list[str], typer.Argument(help="JSONL/Parquet files, folders, HF datasets on disk, tars")],
    dataset: Annotated[str, Opt("--dataset", help="dataset name in the registry")],
    format: Annotated[str, Opt(help="auto|jsonl|parquet|folder|hf|webdataset")] = "auto",
    columns: Annotated[Optional[str], Opt(help="column mapping, e.g. input_image=src,output_image=edited")] = None,
    allow_remote: Annotated[bool, Opt("--allow-remote", help="fetch image URLs")] = False,
    registry: Registry = None,
    ray_address: RayAddress = None,
    config: ConfigFile = None,
    set_: Overrides = None,
    progress: Progress = True,
) -> None:
    """Validate and version editing/generation sources; prints the new version id last.

    Every other setting is a key of IngestConfig (pipeline/ingest.py), e.g. --set min_side=256,
    --set max_aspect_ratio=3, --set max_pixels=20000000, --set unit_rows=4096.
    """
    # here, not at the top: the stage's libraries and Ray (the driver's) load only when the command runs
    from pipeline import ingest as stage
    from pipeline.run import run_stage

    cfg = load_config(stage.IngestConfig, config, set_, sources=sources, dataset=dataset, format=format,
                      columns=parse_columns(columns), allow_remote=allow_remote or None, registry=registry,
                      ray_address=ray_address)
    manifest = run_stage(stage.plan, cfg, progress=progress)
    print(stage.accounting_table(manifest))
    print(f"published {manifest.ref} ({len(manifest.shards)} shard(s), "
          f"{sum(s.bytes for s in manifest.shards) / 1e6:.1f} MB)")
    print(manifest.version)
