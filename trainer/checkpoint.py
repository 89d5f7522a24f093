"""Checkpoints: every N steps and at the end, keep the last K, resume from the newest; in a run
folder on any filesystem (see trainer.rundir)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch.distributed as dist

from trainer.model_io import save_checkpoint_weights
from trainer.rundir import RunDir, sort_tags

STATE = "trainer_state.json"  # the client state's JSON part (step, data cursor) and the world size


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def check_resume_settings(run_dir: Path, now: dict[str, Any], resumable: set[str], force: bool) -> dict | None:
    """Before a run resumes: the settings it was trained with (its `config.json`) must be `now`, but
    for the `resumable` ones (length, pace, placement); otherwise a ValueError naming each change,
    unless `force`, which returns the old settings for the caller to keep beside the new. None when
    there is nothing to compare or nothing changed."""
    saved = run_dir / "config.json"
    if not saved.is_file():
        return None
    before, now = json.loads(saved.read_text()), json.loads(json.dumps(now))
    # a setting newer than the run (absent from its config) has its default: not a change
    changed = sorted(k for k in set(before) & set(now) if k not in resumable and before[k] != now[k])
    if not changed:
        return None
    if not force:
        detail = "; ".join(f"{k}: {before[k]!r} -> {now[k]!r}" for k in changed)
        raise ValueError(f"{run_dir} was trained with other settings ({detail}): resuming would mix them. "
                         "Use a new out_dir, or --set resume=force to go on with the new settings (both are kept)")
    return before


def keep_previous_settings(run_dir: Path, previous: dict | None, step: int) -> None:
    """After `resume=force` over changed settings: the run keeps what it had, as config.before-step-N.json."""
    if previous is not None:
        (run_dir / f"config.before-step-{step + 1}.json").write_text(json.dumps(previous, indent=2))


class Checkpointer:
    def __init__(self, run: RunDir | str | Path, keep_last: int, rank: int):
        self.run = run if isinstance(run, RunDir) else RunDir(run)
        self.directory = self.run.local / "checkpoints"  # where DeepSpeed writes and reads
        self.keep_last, self.rank = keep_last, rank
        # One process per node copies the node's files: all of them share its local folder.
        self.node_leader = int(os.environ.get("LOCAL_RANK", "0")) == 0

    def tags(self) -> list[str]:
        """Complete checkpoints, oldest first: those marked done where the run lives."""
        return self.run.checkpoint_tags()

    def save(self, engine, step: int, client_state: dict[str, Any], model_config: dict[str, Any]) -> str:
        tag = f"step-{step}"
        engine.save(self.directory, tag, client_state)
        weights = engine.full_state_dict()  # a collective under ZeRO-3
        if self.rank == 0:
            # What export, sample, eval and rl read: safetensors and JSON. DeepSpeed's own files are
            # pickles, which only the resume of this run (its own trusted output) ever loads.
            save_checkpoint_weights(self.directory / tag, weights, model_config)
            # what a resume on another number of ranks can use without DeepSpeed's files
            plain = {k: v for k, v in client_state.items() if _json_safe(v)}
            (self.directory / tag / STATE).write_text(json.dumps({"world_size": dist.get_world_size(), **plain}))
        dist.barrier()
        if self.node_leader:
            self.run.upload(f"checkpoints/{tag}")  # each node its own ranks' shards
        dist.barrier()
        if self.rank == 0:
            self.run.mark_done(tag)  # a save killed half-way is never resumed from
            self.run.push_files()
            for old in self.tags()[: -self.keep_last]:
                self.run.delete(f"checkpoints/{old}")
        if self.run.remote and self.node_leader:  # the run holds them all: one local copy is enough
            for old in sort_tags([p.name for p in self.directory.iterdir()])[:-1]:
                self.run.delete_local(f"checkpoints/{old}")
        dist.barrier()
        return tag

    def resume(self, engine, resume: str) -> dict[str, Any] | None:
        """`auto`: the newest complete checkpoint if any; `none`; or a tag / local checkpoint path."""
        if resume == "none":
            return None
        if resume == "auto":
            tags = self.tags()
            if not tags:
                return None
            return self._load(engine, tags[-1])
        path = Path(resume)
        if path.is_dir():
            return engine.load(path.parent, path.name)
        return self._load(engine, resume)

    def resume_tag(self, resume: str) -> str | None:
        """The tag `resume` names (`auto`: the newest complete one), None for none or a path."""
        if resume == "none" or Path(resume).is_dir():
            return None
        if resume == "auto":
            tags = self.tags()
            return tags[-1] if tags else None
        return resume

    def fetch(self, tag: str) -> Path:
        """The checkpoint's local folder, downloaded from the run once per node."""
        if self.node_leader and not self.run.has_local_copy(tag):
            self.run.download(f"checkpoints/{tag}")  # from the run, onto this node
        dist.barrier()
        return self.directory / tag

    def saved_state(self, tag: str) -> dict[str, Any]:
        """The plain part of a checkpoint's client state and the world size it was saved on ({} for
        checkpoints from before it was written)."""
        path = self.fetch(tag) / STATE
        return json.loads(path.read_text()) if path.is_file() else {}

    def _load(self, engine, tag: str) -> dict[str, Any]:
        self.fetch(tag)
        return engine.load(self.directory, tag)

    def prepare(self) -> None:
        """Before anything is written: the mirror becomes the run's copy (a no-op for local runs)."""
        if self.node_leader:
            tags = self.tags()
            self.run.pull(keep_checkpoint=tags[-1] if tags else None)
        dist.barrier()
