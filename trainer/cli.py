"""The `trainer` command: the root only registers command groups."""

from __future__ import annotations

import json

import typer

import paraforge_compat  # noqa: F401
from pipeline.cli import run

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="paraforge trainer: sft, rl (ParaRL), sample.")


@app.command()
def layout() -> None:
    """Print the token layout (special ids of the MMaDA -M vocabulary) the trainer builds with."""
    from schemas import MMADA_M

    print(json.dumps({"vocab_size": MMADA_M.vocab_size, **MMADA_M.special_ids()}, indent=2))


@app.callback()
def _root() -> None:
    pass


def main() -> None:
    run(app)
