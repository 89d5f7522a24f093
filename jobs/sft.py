"""Cluster entrypoint for `trainer sft` (see jobs/entrypoint.py)."""

from jobs.entrypoint import run

if __name__ == "__main__":
    run("trainer", "sft")
