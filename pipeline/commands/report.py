from __future__ import annotations

from typing import Annotated, Optional

import typer

from pipeline.commands.options import ConfigFile, Overrides, Registry
from pipeline.config import load_config

Opt = typer.Option


def report(
    dataset: Annotated[str, typer.Argument(help="NAME[@VERSION|@TAG] (NAME alone: the latest version)")],
    out: Annotated[Optional[str], Opt("--out", help="the HTML file to write")] = None,
    against: Annotated[Optional[str], Opt(help="diff against this version (default: the parent)")] = None,
    cards: Annotated[Optional[int], Opt(help="sample cards to show")] = None,
    image_tokenizer: Annotated[Optional[str], Opt(help="MAGVIT-v2 for decoding codes (default: the version's)")] = None,
    registry: Registry = None,
    config: ConfigFile = None,
    set_: Overrides = None,
) -> None:
    """One self-contained HTML page for a version: ancestry and accounting, quarantine reasons,
    distributions, categories, sample cards, a diff; opens offline."""
    # the report's libraries (torch and MAGVIT to decode codes) load only when the command runs
    from pipeline.report import ReportConfig, write_report

    cfg = load_config(ReportConfig, config, set_, dataset=dataset, out=out, against=against, cards=cards,
                      image_tokenizer=image_tokenizer, registry=registry)
    print(f"report: {write_report(cfg)}")
