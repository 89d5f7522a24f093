"""Training metrics to JSONL and TensorBoard (rank 0), with a tokens/s and MFU estimate."""

from __future__ import annotations

import json
from pathlib import Path

import torch


class MetricsLogger:
    def __init__(self, run_dir: Path, rank: int, n_params: int, peak_flops: float | None, world_size: int):
        self.rank, self.n_params, self.peak_flops, self.world_size = rank, n_params, peak_flops, world_size
        self.jsonl = self.tb = None
        if rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.jsonl = open(run_dir / "metrics.jsonl", "a")
            # tensorboard (and its protobuf stack) only on the rank that writes it
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, step: int, out: dict[str, torch.Tensor], lr: float, seconds: float, grad_accum: int) -> dict:
        tokens = float(out["tokens"]) * grad_accum * self.world_size  # the last micro-batch's, as an estimate
        record = {"step": step, "lr": lr, "seconds": round(seconds, 4), "tokens_per_s": tokens / seconds}
        record.update({k: float(out[k].detach()) for k in ("loss", "text_loss", "image_loss", "text_acc", "image_acc")})
        if self.peak_flops:  # 6 N flops per token for forward + backward (attention not counted)
            record["mfu"] = 6 * self.n_params * tokens / seconds / (self.peak_flops * self.world_size)
        return self.write(step, record, "sft")

    def write(self, step: int, record: dict, group: str) -> dict:
        """One JSONL line and a TensorBoard scalar per numeric field, under `group/`."""
        record = {"step": step, **record}
        if self.rank == 0:
            self.jsonl.write(json.dumps(record) + "\n")
            self.jsonl.flush()
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(f"{group}/{key}", value, step)
        return record

    def close(self) -> None:
        if self.rank == 0:
            self.jsonl.close()
            self.tb.close()
