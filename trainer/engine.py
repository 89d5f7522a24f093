"""DeepSpeed behind one small interface: initialise, forward, backward, step, save, load.

The DeepSpeed JSON in trainer/configs holds the parallelism (ZeRO stage, offload); the command's
config fills in what it owns (batch sizes, AdamW, the learning-rate schedule, precision), so one JSON
serves every model size and every command. On a machine without GPUs DeepSpeed runs on its CPU
accelerator with gloo.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclasses.dataclass(kw_only=True)
class OptimConfig:
    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    schedule: str = "cosine"  # cosine: warmup, then down to lr * min_lr_ratio at the last step | constant: warmup, then lr
    warmup_steps: int = 50  # 0: none; a logarithmic ramp (DeepSpeed's default)...
    warmup_min_ratio: float = 0.0  # ...from lr * warmup_min_ratio
    min_lr_ratio: float = 0.1  # where cosine ends
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"optim.schedule must be cosine or constant, not {self.schedule!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, not {self.warmup_steps}")


def init_distributed() -> tuple[int, int]:
    """(rank, world size); a lone process without a launcher becomes a world of one."""
    import deepspeed  # seconds to import, and it probes the accelerators: only where it runs

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    launched = all(key in os.environ for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))
    if not torch.distributed.is_initialized() and not launched:
        # No launcher: an in-process store, so no port is bound. A TCP store's port would outlive
        # this call in a long-lived process (a test session, a notebook) and be handed to every
        # child through MASTER_PORT, which then cannot bind it.
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        torch.distributed.init_process_group(backend, store=torch.distributed.HashStore(), rank=0, world_size=1)
    deepspeed.init_distributed(dist_backend=backend)
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def deepspeed_config(template: str, optim: OptimConfig, *, micro_batch_size: int, grad_accum: int,
                     total_steps: int, bf16: bool) -> dict[str, Any]:
    path = Path(template)
    if not path.is_file():
        path = CONFIG_DIR / f"{template}.json"
    config = json.loads(path.read_text())
    config["train_micro_batch_size_per_gpu"] = micro_batch_size
    config["gradient_accumulation_steps"] = grad_accum
    config.pop("train_batch_size", None)
    config["gradient_clipping"] = optim.grad_clip
    config["bf16"] = {"enabled": bf16}
    params = config["optimizer"]["params"]
    params.update(lr=optim.lr, betas=list(optim.betas), weight_decay=optim.weight_decay)
    if not torch.cuda.is_available():
        params["torch_adam"] = True  # DeepSpeed's fused Adam needs a compiler toolchain per accelerator
    if "scheduler" in config:
        raise ValueError(f"{path}: the learning-rate schedule is the run config's (optim.schedule, optim.warmup_steps, "
                         "...), not the DeepSpeed JSON's: remove its scheduler block")
    config["scheduler"] = lr_schedule(optim, total_steps)
    return config


def lr_schedule(optim: OptimConfig, total_steps: int) -> dict[str, Any]:
    """DeepSpeed's scheduler block for `optim`: both schedules are its WarmupCosineLR, constant being a
    cosine that ends where it starts, and no warmup one step that already starts at the full rate
    (DeepSpeed needs at least one)."""
    warmup = optim.warmup_steps > 0
    return {"type": "WarmupCosineLR",
            "params": {"total_num_steps": total_steps, "warmup_num_steps": optim.warmup_steps if warmup else 1,
                       "warmup_min_ratio": optim.warmup_min_ratio if warmup else 1.0,
                       "cos_min_ratio": optim.min_lr_ratio if optim.schedule == "cosine" else 1.0}}


class Engine:
    def __init__(self, model: torch.nn.Module, config: dict[str, Any]):
        import deepspeed  # seconds to import, and it probes the accelerators: only where it runs

        self.ds, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
        self.device = self.ds.device
        scheduler = self.ds.lr_scheduler
        if getattr(scheduler, "last_batch_iteration", None) == -1:
            # DeepSpeed's WarmupCosineLR holds lr at 0 until its first step(), so the first optimizer
            # step would be lost: start the schedule at its iteration 0 (a checkpoint load overrides it)
            scheduler.step(0)

    @property
    def module(self) -> torch.nn.Module:
        return self.ds.module

    @property
    def dtype(self) -> torch.dtype:
        """What DeepSpeed runs the module in: bfloat16 with bf16 on, else float32."""
        return next(self.ds.module.parameters()).dtype

    def place_frozen(self, model: torch.nn.Module) -> torch.nn.Module:
        """A frozen model that runs beside the trained one (ParaRL's reference) on the same device and
        in the same dtype, so their log-probabilities meet without a copy between devices. Under
        ZeRO-3 it is partitioned over the ranks like the policy (a DeepSpeed engine without an
        optimizer, gathering each layer as it runs), not a whole copy per GPU."""
        model = model.eval().requires_grad_(False)
        if not self.ds.zero_optimization_partition_weights():
            return model.to(self.device, self.dtype)
        import deepspeed  # seconds to import, and it probes the accelerators: only where it runs

        config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3},
                  "bf16": {"enabled": self.dtype == torch.bfloat16}}
        frozen, _, _, _ = deepspeed.initialize(model=model, config=config)
        frozen.eval()  # DeepSpeed's engine returns None here, not itself
        return frozen

    @contextlib.contextmanager
    def gathered_for_inference(self):
        """The module in eval mode with its whole weights on every rank, for a phase of many
        forwards without gradients (ParaRL's rollouts): under ZeRO-3 the partitions are gathered
        once for the phase, as TRL's unwrap_model_for_generation does, never once per forward."""
        module = self.ds.module
        gather = contextlib.nullcontext()
        if self.ds.zero_optimization_partition_weights():
            import deepspeed  # seconds to import, and it probes the accelerators: only where it runs

            gather = deepspeed.zero.GatheredParameters(list(module.parameters()))
        module.eval()
        try:
            with gather, torch.no_grad():
                yield module
        finally:
            module.train()

    def forward(self, *args, **kwargs):
        return self.ds(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss)

    def step(self) -> None:
        self.ds.step()  # steps the optimizer and schedule at gradient-accumulation boundaries

    @property
    def lr(self) -> float:
        return self.ds.get_lr()[0]

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole module's weights in the training dtype, on rank 0 (None on other ranks). Under
        ZeRO-3 the parameters are gathered, so every rank must call it."""
        if self.ds.zero_optimization_partition_weights():
            return self.ds._zero3_consolidated_16bit_state_dict()  # what DeepSpeed's save_16bit_model uses
        if torch.distributed.get_rank() != 0:
            return None
        return {k: v.detach().to("cpu").contiguous() for k, v in self.ds.module.state_dict().items()}

    def save(self, directory: str | Path, tag: str, client_state: dict[str, Any]) -> None:
        self.ds.save_checkpoint(str(directory), tag=tag, client_state=client_state)

    def load(self, directory: str | Path, tag: str | None = None) -> dict[str, Any]:
        _, client_state = self.ds.load_checkpoint(str(directory), tag=tag)
        return client_state or {}
