"""Lineage recorded in every version manifest: what made it, with which code and settings."""

from __future__ import annotations

import functools
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any


@functools.cache
def package_version() -> str:
    try:
        return metadata.version("paraforge")
    except metadata.PackageNotFoundError:
        return "unknown"


@functools.cache
def git_revision() -> str | None:
    """The checkout's commit, with "-dirty" when it has uncommitted changes; None outside git."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty else "")


def lineage(config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "command": " ".join(["pipeline" if sys.argv[0].endswith("pipeline") else sys.argv[0], *sys.argv[1:]]),
        "config": config,
        "package_version": package_version(),
        "git_revision": git_revision(),
        **extra,
    }
