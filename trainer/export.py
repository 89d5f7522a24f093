"""Model folders in and out: `trainer export` (a DeepSpeed checkpoint -> an HF-layout safetensors
folder that `MMaDAModel.from_pretrained` loads) and `load_model`, which takes either kind of folder,
so `trainer sample` and `trainer rl` start from an exported model or straight from a run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from schemas import SequenceConfig, TokenLayout
from trainer.model import MMaDAConfig, MMaDAModel, resolve_folder
from trainer.rundir import RunDir, model_folder
from trainer.sequence import SEQUENCE_FILE, SequenceBuilder

TRAINING_FILE = "paraforge_export.json"  # written beside exported weights: the run and how it was trained


def _checkpoint_state(run_dir: Path, tag: str | None) -> tuple[dict, dict, str]:
    """A checkpoint's weights (its `model.safetensors`) and model config; nothing is unpickled, so a
    run folder from anywhere cannot run code here."""
    from safetensors.torch import load_file

    from trainer.checkpoint import WEIGHTS, Checkpointer

    checkpoints = Checkpointer(run_dir, keep_last=0, rank=0)
    tag = tag or (checkpoints.tags() or [None])[-1]
    if tag is None:
        raise ValueError(f"{run_dir} has no complete checkpoint")
    folder = checkpoints.directory / tag
    if not (folder / WEIGHTS).is_file():
        raise ValueError(f"{folder} has no {WEIGHTS}: it was saved by an older paraforge, whose checkpoints only "
                         "DeepSpeed's pickles hold; resume the run for one step to write one")
    state = load_file(str(folder / WEIGHTS))
    model_config = json.loads((folder / "model_config.json").read_text())
    return state, model_config, tag


def _from_state(state: dict, model_config: dict, dtype: torch.dtype) -> MMaDAModel:
    with torch.device("meta"):
        model = MMaDAModel(MMaDAConfig.from_dict(model_config))
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    return model


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / "checkpoints").is_dir()


def load_model(path: str, dtype: torch.dtype = torch.float32, device: str = "cpu", tag: str | None = None) -> MMaDAModel:
    """An exported / published model folder (or hub id), or a run folder (its newest checkpoint);
    either may be a URI (fetched to the local cache)."""
    path = model_folder(path, tag)
    if is_run_dir(path):
        state, model_config, _ = _checkpoint_state(Path(path), tag)
        return _from_state(state, model_config, dtype).to(device).eval()
    return MMaDAModel.from_pretrained(path, dtype=dtype, device=device).eval()


def training_config(path: str | Path) -> dict:
    """The config a model was trained with (a run's config.json, or what export copied), else {}."""
    path = Path(model_folder(str(path)))
    if is_run_dir(path) and (path / "config.json").is_file():
        return json.loads((path / "config.json").read_text())
    if (path / TRAINING_FILE).is_file():
        return json.loads((path / TRAINING_FILE).read_text()).get("training", {})
    return {}


def sequence_builder(path: str, text_tokenizer: str | None = None) -> SequenceBuilder:
    """How a model reads sequences: what its run or export saved (`paraforge_sequence.json`), else,
    for a published checkpoint, the layout of its own tokenizer and embedding with the
    mmada-parallel-m preset it was trained with."""
    path = model_folder(path)
    saved = Path(path) / SEQUENCE_FILE
    if saved.is_file():
        return SequenceBuilder.from_dict(json.loads(saved.read_text()))
    if is_run_dir(path):
        raise ValueError(f"{path} is a run folder without {SEQUENCE_FILE}: it was made by an older paraforge")
    from pipeline.tokenize import load_text_tokenizer

    folder = resolve_folder(path)
    config = MMaDAConfig.from_dict(json.loads((folder / "config.json").read_text()))
    try:
        tokenizer = load_text_tokenizer(text_tokenizer or str(folder))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} has no text tokenizer to read the token layout from (give text_tokenizer=): {e}") from None
    return SequenceBuilder(TokenLayout.from_tokenizer(tokenizer, config.embedding_size), SequenceConfig())


def export(run_dir: str | Path, out: str | Path, tag: str | None = None, dtype: str = "float32") -> str:
    """A run's checkpoint as a model folder; either may be a URI (the export is written locally,
    then uploaded whole)."""
    run, target = str(run_dir), RunDir(out, mirror="exports")
    if target.remote:
        shutil.rmtree(target.local, ignore_errors=True)  # an earlier export to the same URI
    local_run = Path(model_folder(run, tag))
    state, model_config, tag = _checkpoint_state(local_run, tag)
    _from_state(state, model_config, getattr(torch, dtype)).save_pretrained(target.local)
    (target.local / TRAINING_FILE).write_text(json.dumps({"run": run, "tag": tag,
                                                          "training": training_config(local_run)}, indent=2))
    sequence_builder(str(local_run)).save(target.local)  # the layout and sequences it was trained with travel along
    for path in target.local.iterdir():
        target.upload(path.name)
    return str(target)
