"""Cluster entrypoint for `pipeline filter` (see jobs/entrypoint.py)."""

from jobs.entrypoint import run

if __name__ == "__main__":
    run("pipeline", "filter")
