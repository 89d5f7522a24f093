"""Checkpoints: every N steps and at the end, keep the last K, resume from the newest."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

_TAG = re.compile(r"^step-(\d+)$")


class Checkpointer:
    def __init__(self, run_dir: str | Path, keep_last: int, rank: int):
        self.directory = Path(run_dir) / "checkpoints"
        self.keep_last, self.rank = keep_last, rank

    def tags(self) -> list[str]:
        """Complete checkpoints, oldest first (DeepSpeed writes `latest` only after a save)."""
        if not self.directory.is_dir():
            return []
        done = [p.name for p in self.directory.iterdir() if _TAG.match(p.name) and (p / "done").exists()]
        return sorted(done, key=lambda t: int(_TAG.match(t).group(1)))

    def save(self, engine, step: int, client_state: dict[str, Any], model_config: dict[str, Any]) -> str:
        import json

        import torch.distributed as dist

        tag = f"step-{step}"
        engine.save(self.directory, tag, client_state)
        dist.barrier()
        if self.rank == 0:
            (self.directory / tag / "model_config.json").write_text(json.dumps(model_config))  # for export
            (self.directory / tag / "done").touch()  # a save killed half-way is never resumed from
            for old in self.tags()[: -self.keep_last]:
                shutil.rmtree(self.directory / old, ignore_errors=True)
        dist.barrier()
        return tag

    def resume(self, engine, resume: str) -> dict[str, Any] | None:
        """`auto`: the newest complete checkpoint if any; `none`; or a tag / checkpoint path."""
        if resume == "none":
            return None
        if resume == "auto":
            tags = self.tags()
            if not tags:
                return None
            return engine.load(self.directory, tags[-1])
        path = Path(resume)
        return engine.load(path.parent if path.is_dir() else self.directory, path.name)
