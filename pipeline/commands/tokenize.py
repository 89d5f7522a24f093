from __future__ import annotations

from typing import Annotated, Optional

import typer

from pipeline.commands.options import ConfigFile, Output, Overrides, Progress, RayAddress, Registry, print_published
from pipeline.config import load_config

Opt = typer.Option


def tokenize(
    dataset: Annotated[str, typer.Argument(help="NAME[@VERSION|@TAG] of an annotated or scored version")],
    image_tokenizer: Annotated[Optional[str], Opt(help="MAGVIT-v2 folder or hub id (showlab/magvitv2)")] = None,
    text_tokenizer: Annotated[Optional[str], Opt(help="tokenizer folder or hub id (GSAI-ML/LLaDA-8B-Instruct)")] = None,
    resolution: Annotated[Optional[int], Opt(help="square pixels per image, a multiple of 16")] = None,
    concurrency: Annotated[Optional[int], Opt(help="MAGVIT actors (one per GPU)")] = None,
    output: Output = None,
    registry: Registry = None,
    ray_address: RayAddress = None,
    config: ConfigFile = None,
    set_: Overrides = None,
    progress: Progress = True,
) -> None:
    """MAGVIT-v2 codes + text ids -> a tokenized version (resumable); prints the version id last.

    Every other setting is a key of TokenizeConfig (pipeline/tokenize.py), e.g. --set device=cuda,
    --set dtype=bfloat16, --set batch_size=16, --set overflow=truncate, --set sequence.reasoning_len=512.
    """
    # here, not at the top: the stage's libraries and Ray (the driver's) load only when the command runs
    from pipeline import tokenize as stage
    from pipeline.run import run_stage

    cfg = load_config(stage.TokenizeConfig, config, set_, dataset=dataset, image_tokenizer=image_tokenizer,
                      text_tokenizer=text_tokenizer, resolution=resolution, concurrency=concurrency,
                      output=output, registry=registry, ray_address=ray_address)
    manifest = run_stage(stage.plan, cfg, progress=progress)
    print_published(manifest, stage.report(manifest))


def preview(
    dataset: Annotated[str, typer.Argument(help="NAME[@VERSION] of a tokenized version")],
    out: Annotated[str, Opt("--out", help="folder for the PNGs")],
    n: Annotated[int, Opt("--n", help="samples to show")] = 8,
    image_tokenizer: Annotated[Optional[str], Opt(help="default: the one the version was made with")] = None,
    registry: Registry = None,
) -> None:
    """Decode codes back to PNG (source left, decoded right) to see what the tokenizer kept."""
    from pipeline.preview import preview as run_preview  # torch and MAGVIT only when the command runs

    for path in run_preview(dataset, out, n, image_tokenizer, registry):
        print(path)
