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
