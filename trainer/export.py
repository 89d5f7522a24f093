"""`trainer export`: a DeepSpeed checkpoint -> an HF-layout safetensors folder that
`MMaDAModel.from_pretrained` loads (config.json + model.safetensors, sharded when large)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from trainer.model import MMaDAConfig, MMaDAModel


def export(run_dir: str | Path, out: str | Path, tag: str | None = None, dtype: str = "float32") -> Path:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from trainer.checkpoint import Checkpointer

    run_dir = Path(run_dir)
    checkpoints = Checkpointer(run_dir, keep_last=0, rank=0)
    tag = tag or (checkpoints.tags() or [None])[-1]
    if tag is None:
        raise ValueError(f"{run_dir} has no complete checkpoint")
    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoints.directory), tag=tag)
    model_config = json.loads((checkpoints.directory / tag / "model_config.json").read_text())
    with torch.device("meta"):
        model = MMaDAModel(MMaDAConfig.from_dict(model_config))
    model.load_state_dict({k: v.to(getattr(torch, dtype)) for k, v in state.items()}, strict=True, assign=True)
    path = model.save_pretrained(out)
    (Path(out) / "paraforge_export.json").write_text(json.dumps({"run": str(run_dir), "tag": tag}))
    return path
