"""What a submitted job runs on the cluster: `python -m jobs.<stage> [--require-env=NAME ...] ARGS`.

It checks that the secrets the job declared are present in the cluster's environment (they are
never sent in the runtime env), then runs the same CLI command a user runs locally."""

from __future__ import annotations

import os
import sys

import paraforge_compat  # noqa: F401


def run(program: str, stage: str) -> None:
    args = sys.argv[1:]
    required = [a.split("=", 1)[1] for a in args if a.startswith("--require-env=")]
    args = [a for a in args if not a.startswith("--require-env=")]
    missing = [name for name in required if not os.environ.get(name)]
    if missing:
        sys.exit(f"error: the cluster does not provide {', '.join(missing)}: set it in the Ray nodes' "
                 "environment (a Kubernetes secret in the RayJob pod spec, or the environment `ray start` ran in)")
    sys.argv = [program, stage, *args]
    if program == "pipeline":
        from pipeline.cli import main  # one CLI's imports, not both: a job pays only for its own start-up
    else:
        from trainer.cli import main  # likewise
    main()
