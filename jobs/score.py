"""Cluster entrypoint for `pipeline score` (see jobs/entrypoint.py)."""

from jobs.entrypoint import run

if __name__ == "__main__":
    run("pipeline", "score")
