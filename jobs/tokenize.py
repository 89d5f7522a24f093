"""Cluster entrypoint for `pipeline tokenize` (see jobs/entrypoint.py)."""

from jobs.entrypoint import run

if __name__ == "__main__":
    run("pipeline", "tokenize")
