"""The `pipeline` command: the root only registers command groups; each lives in pipeline/commands."""

from __future__ import annotations

import sys

import click
import typer

import paraforge_compat  # noqa: F401
from pipeline.commands import annotate, cluster, demo_data, ingest, report, score, tokenize, versions

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="paraforge data pipeline: ingest, annotate, score, filter, tokenize, dataset versions, "
                       "report, cluster jobs.")
app.command("ingest")(ingest.ingest)
app.command("annotate")(annotate.annotate)
app.command("score")(score.score)
app.command("filter")(score.filter_)
app.command("tokenize")(tokenize.tokenize)
app.command("preview")(tokenize.preview)
app.command("report")(report.report)
app.command("demo-data")(demo_data.demo_data)
app.add_typer(versions.app, name="versions")
app.command("submit", context_settings=cluster.SUBMIT_SETTINGS)(
    cluster.submit_command("pipeline", ("ingest", "annotate", "score", "filter", "tokenize")))
app.add_typer(cluster.app, name="jobs")


def run(typer_app: typer.Typer) -> None:
    """Invoke a Typer app with one error formatter: user errors print one line, exit 2."""
    try:
        code = typer_app(standalone_mode=False)  # a typer.Exit(n) inside a command comes back as n here
        if isinstance(code, int) and code:
            sys.exit(code)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as e:
        # usage errors (a misspelled option, a missing argument): typer raises those of the click it
        # vendors, older typers click's own; one line each, with where the help is
        if isinstance(e, (click.ClickException, typer.TyperException)):
            ctx = getattr(e, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            print(f"error: {e.format_message()}{hint}", file=sys.stderr)
            sys.exit(e.exit_code)
        raise


def main() -> None:
    run(app)
