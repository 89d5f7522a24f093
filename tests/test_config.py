import dataclasses

import pytest

from pipeline.config import load_config, parse_overrides


@dataclasses.dataclass(kw_only=True)
class Inner:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)


@dataclasses.dataclass(kw_only=True)
class Outer:
    name: str
    steps: int = 10
    sources: list[str] = dataclasses.field(default_factory=list)
    optim: Inner = dataclasses.field(default_factory=Inner)
    note: str | None = None


def test_yaml_then_values_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: a\nsteps: 5\noptim:\n  lr: 0.1\n")
    cfg = load_config(Outer, path, ["optim.lr=3", "sources=x.jsonl"], steps=7, note=None)
    assert cfg == Outer(name="a", steps=7, sources=["x.jsonl"], optim=Inner(lr=3.0))
    assert load_config(Outer, None, ["name=a", "optim.lr=2e-3"]).optim.lr == 0.002  # YAML 1.1 reads a string
    assert isinstance(cfg.optim.lr, float)


def test_unknown_keys_and_bad_types_are_errors():
    with pytest.raises(ValueError, match="unknown config key.*optim.lrr"):
        load_config(Outer, None, ["name=a", "optim.lrr=1"])
    with pytest.raises(ValueError, match="expected int"):
        load_config(Outer, None, ["name=a", "steps=many"])
    with pytest.raises(ValueError, match="not key=value"):
        parse_overrides(["steps"])
    with pytest.raises(ValueError, match=r"optim: a group of settings \(betas, lr\), not 3"):
        load_config(Outer, None, ["name=a", "optim=3"])


def test_trainer_settings_below_one_are_refused_before_anything_is_built():
    """`--set micro_batch_size=0` (or log_every=0, steps=0, ...) fails as the config is read, one error
    naming each such setting, not as a division by zero after the model is built."""
    from trainer.rl.pararl import RLConfig
    from trainer.sft import SFTConfig

    with pytest.raises(ValueError, match=r"micro_batch_size=0, log_every=0: must be at least 1"):
        load_config(SFTConfig, None, ["dataset=d", "micro_batch_size=0", "log_every=0"])
    with pytest.raises(ValueError, match=r"reward_steps=0: must be at least 1"):
        load_config(RLConfig, None, ["dataset=d", "model=m", "reward_steps=0"])
    with pytest.raises(ValueError, match="cfg_dropout is a probability"):
        load_config(SFTConfig, None, ["dataset=d", "cfg_dropout=1.5"])


@dataclasses.dataclass(kw_only=True)
class Command:
    optim: Inner = dataclasses.field(default_factory=lambda: Inner(lr=1e-6))  # this command's defaults: data


def test_a_partial_section_keeps_the_commands_own_defaults():
    assert load_config(Command).optim == Inner(lr=1e-6)
    assert load_config(Command, None, ["optim.betas=[0.8, 0.9]"]).optim == Inner(lr=1e-6, betas=(0.8, 0.9))
    assert load_config(Command, None, ["optim.lr=1e-3"]).optim.lr == 1e-3


def test_the_learning_rate_schedule_is_a_config_field_not_a_template(tmp_path):
    import torch
    from deepspeed.runtime.lr_schedules import WarmupCosineLR

    from trainer.engine import OptimConfig, deepspeed_config
    from trainer.rl.pararl import RLConfig

    def lrs(optim: OptimConfig, steps: int = 6) -> list[float]:
        block = deepspeed_config("ds_zero2", optim, micro_batch_size=1, grad_accum=1, total_steps=steps,
                                 bf16=False)["scheduler"]
        assert block["type"] == "WarmupCosineLR"
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=optim.lr)
        schedule = WarmupCosineLR(optimizer, **block["params"])
        out = []
        for i in range(steps):
            schedule.step(i)
            out.append(optimizer.param_groups[0]["lr"])
        return out

    rl = RLConfig(dataset="d", model="m").optim
    assert rl.schedule == "constant" and lrs(rl) == [rl.lr] * 6  # ParaRL's default: the full rate from step 1
    cosine = lrs(OptimConfig(lr=1.0, warmup_steps=2, min_lr_ratio=0.1))
    assert cosine[0] == 0.0 and max(cosine) == 1.0 and cosine[-1] == pytest.approx(0.1)
    assert lrs(OptimConfig(lr=1.0, schedule="constant", warmup_steps=2))[2:] == [1.0] * 4
    assert load_config(RLConfig, None, ["dataset=d", "model=m", "optim.lr=1e-3"]).optim.schedule == "constant"
    with pytest.raises(ValueError, match="cosine or constant"):
        OptimConfig(schedule="linear")
    template = tmp_path / "ds.json"
    template.write_text('{"optimizer": {"type": "AdamW", "params": {}}, "scheduler": {"type": "WarmupLR"}}')
    with pytest.raises(ValueError, match="remove its scheduler block"):
        deepspeed_config(str(template), rl, micro_batch_size=1, grad_accum=1, total_steps=1, bf16=False)
