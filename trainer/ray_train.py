"""Run `trainer sft` or `trainer rl` on a Ray cluster through Ray Train's TorchTrainer: Ray places
the workers (one per GPU when `use_gpu`) and sets up torch.distributed; each worker runs the same
`train` it would run under torchrun, and DeepSpeed reuses that process group."""

from __future__ import annotations

import dataclasses
import os

from pipeline.config import load_config
from pipeline.ray_runtime import init_ray
from trainer import sft
from trainer.rl import pararl

COMMANDS = {"sft": (sft.SFTConfig, sft.train), "rl": (pararl.RLConfig, pararl.train)}


def _worker(config: dict) -> None:
    config_class, train = COMMANDS[config.pop("_command")]
    train(load_config(config_class, None, None, **config), progress=False)


def train_on_ray(cfg) -> str:
    """`cfg.ray_workers` ranks (one GPU each with `cfg.ray_gpu`) on the Ray cluster at `cfg.ray_address`."""
    # Ray Train is heavy: imported only where a run is placed on Ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    init_ray(cfg.ray_address)
    # Workers do not run in this folder: give them absolute paths (or URIs) to data and outputs.
    def absolute(path: str | None) -> str | None:
        return path if path is None or "://" in path else os.path.abspath(path)

    cfg = dataclasses.replace(cfg, out_dir=absolute(cfg.out_dir), registry=absolute(cfg.registry))
    command = next(name for name, (config_class, _) in COMMANDS.items() if isinstance(cfg, config_class))
    trainer = TorchTrainer(
        _worker, train_loop_config={**dataclasses.asdict(cfg), "_command": command},
        scaling_config=ScalingConfig(num_workers=cfg.ray_workers, use_gpu=cfg.ray_gpu),
        torch_config=TorchConfig(backend="nccl" if cfg.ray_gpu else "gloo"),
        run_config=RunConfig(name=f"paraforge-{command}", storage_path=f"{cfg.out_dir.rstrip('/')}/ray"))
    trainer.fit()
    return cfg.out_dir
