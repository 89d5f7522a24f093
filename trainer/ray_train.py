"""Run `trainer sft` on a Ray cluster through Ray Train's TorchTrainer: Ray places the workers
(one per GPU when `use_gpu`) and sets up torch.distributed; each worker runs the same `train`
it would run under torchrun, and DeepSpeed reuses that process group."""

from __future__ import annotations

import dataclasses
import os


def _worker(config: dict) -> None:
    import paraforge_compat  # noqa: F401
    from pipeline.config import load_config
    from trainer.sft import SFTConfig, train

    train(load_config(SFTConfig, None, None, **config), progress=False)


def train_on_ray(cfg, num_workers: int, use_gpu: bool, ray_address: str | None = None) -> str:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipeline.ray_runtime import init_ray

    init_ray(ray_address)
    # Workers do not run in this folder: give them absolute paths (or URIs) to data and outputs.
    def absolute(path: str | None) -> str | None:
        return path if path is None or "://" in path else os.path.abspath(path)

    cfg = dataclasses.replace(cfg, out_dir=absolute(cfg.out_dir), registry=absolute(cfg.registry))
    trainer = TorchTrainer(
        _worker, train_loop_config=dataclasses.asdict(cfg),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name="paraforge-sft", storage_path=f"{cfg.out_dir.rstrip('/')}/ray"))
    trainer.fit()
    return cfg.out_dir
