"""MMaDA model files in and out, in one place: nothing else in the trainer opens them.

A model is named by a local folder, a hub id or a URI (`s3://...`, any pyarrow filesystem), and is
either the published layout (`config.json` + `model.safetensors`, or shards listed in
`model.safetensors.index.json`; what `trainer export` writes too) or a run folder (an sft / rl run:
its newest complete checkpoint's `model.safetensors` and `model_config.json`). Loading is strict:
every tensor present, nothing extra. Nothing is unpickled, so a model folder from anywhere cannot
run code here (DeepSpeed's own pickles are read only by the resume of the run that wrote them).

    resolve -> load_model / sequence_builder / training_config;  save_model;  export
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow.fs as pafs
import torch
from safetensors.torch import load_file, save_file

from pipeline.hub import hub_folder, load_text_tokenizer
from pipeline.storage import confined, is_uri
from schemas import SequenceConfig, TokenLayout
from trainer.model import MMaDAConfig, MMaDAModel
from trainer.rundir import DONE, RunDir
from trainer.sequence import SEQUENCE_FILE, SequenceBuilder

HUB_FILES = ["*.json", "*.safetensors"]  # the weights, config and tokenizer of a published repo
WEIGHTS = "model.safetensors"  # a checkpoint's whole module, in the training dtype
MODEL_CONFIG = "model_config.json"  # beside it: the model's config.json
TRAINING_FILE = "paraforge_export.json"  # written beside exported weights: the run and how it was trained


# -- where a model is -------------------------------------------------------------------------
def resolve(model: str | Path, tag: str | None = None) -> Path:
    """A local folder for a model given as a local folder, a hub id (fetched through the hub cache)
    or a URI: an exported or published folder (fetched whole, again only when it changed) or a run
    (its checkpoint `tag`, default the newest complete one, and its small files)."""
    model = str(model)
    if not is_uri(model):
        return hub_folder(model, HUB_FILES)
    run = RunDir(model, mirror="models")  # never the mirror of a run training on this machine
    tags = run.checkpoint_tags()
    if not tags:
        listing = run.fs.get_file_info(pafs.FileSelector(run.base, recursive=True))
        files = sorted((i.path, i.size, i.mtime_ns) for i in listing if i.type == pafs.FileType.File)
        if not files:
            raise ValueError(f"{model} holds no files")
        fingerprint = hashlib.sha256(repr(files).encode()).hexdigest().encode()
        marker = run.local / DONE
        if not marker.exists() or marker.read_bytes() != fingerprint:
            run.download("")  # the whole folder, replacing an older copy
            marker.write_bytes(fingerprint)
        return run.local
    wanted = tag or tags[-1]
    run.pull(keep_checkpoint=wanted)
    if not run.has_local_copy(wanted):
        run.download(f"checkpoints/{wanted}")
    return run.local


def is_run(folder: str | Path) -> bool:
    return (Path(folder) / "checkpoints").is_dir()


# -- weights in -------------------------------------------------------------------------------
def load_model(model: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               tag: str | None = None) -> MMaDAModel:
    """A published / exported model or a run (its checkpoint `tag`, default the newest), in eval mode."""
    folder = resolve(model, tag)
    if is_run(folder):
        state, config, _ = _checkpoint(folder, tag)
    else:
        state, config = _published(folder)
    return _build(state, config, dtype, folder).to(device).eval()


def load_checkpoint_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    """A checkpoint folder's weights into `model`, strictly (ParaRL resuming on another world size)."""
    state = _read_weights(checkpoint / WEIGHTS)
    check_weights(state, model, checkpoint)
    model.load_state_dict(state, strict=True)


def _published(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    config = _read_json(folder / "config.json")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: no weight_map naming the shard files")
        files = sorted(set(weight_map.values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise ValueError(f"{folder}: no model.safetensors or model.safetensors.index.json")
    state: dict[str, torch.Tensor] = {}
    for name in files:  # names from the index file: confined to the folder
        state.update(_read_weights(confined(folder, name)))
    return state, config


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a JSON file ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return value


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, or a ValueError naming it: a truncated download, a corrupt or absurd
    header (safetensors refuses headers over 100 MB) or a file that is not safetensors at all."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise ValueError(f"{path} is missing") from None
    except Exception as e:  # safetensors' own error type (SafetensorError), and OSError
        raise ValueError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e}); "
                         "download or export it again") from None


def _checkpoint(run_dir: Path, tag: str | None) -> tuple[dict[str, torch.Tensor], dict, str]:
    """A run's checkpoint weights (its safetensors), model config and tag."""
    tag = tag or (RunDir(run_dir).checkpoint_tags() or [None])[-1]
    if tag is None:
        raise ValueError(f"{run_dir} has no complete checkpoint")
    folder = run_dir / "checkpoints" / tag
    if not (folder / WEIGHTS).is_file():
        raise ValueError(f"{folder} has no {WEIGHTS}: it was saved by an older paraforge, whose checkpoints only "
                         "DeepSpeed's pickles hold; resume the run for one step to write one")
    return _read_weights(folder / WEIGHTS), _read_json(folder / MODEL_CONFIG), tag


def _build(state: dict[str, torch.Tensor], config: dict, dtype: torch.dtype, where: str | Path = "") -> MMaDAModel:
    with torch.device("meta"):  # every tensor comes from the file: no random init
        model = MMaDAModel(MMaDAConfig.from_dict(config))
    check_weights(state, model, where)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    return model


def check_layout(model: MMaDAModel, layout: TokenLayout, where: str | Path) -> None:
    """A model and the token layout it is read with (its `paraforge_sequence.json`, or its
    tokenizer's) must agree on the vocabulary, or every image code would index the wrong row."""
    if model.config.embedding_size != layout.vocab_size:
        raise ValueError(f"{where}: the model has {model.config.embedding_size} embeddings, but its token layout "
                         f"({SEQUENCE_FILE} or tokenizer) says {layout.vocab_size}; they come from different models")


def check_weights(state: dict[str, torch.Tensor], model: torch.nn.Module, where: str | Path = "") -> None:
    """The file's tensors must be exactly the model's, name for name and shape for shape: a
    ValueError saying what differs (the first few of each kind) instead of torch's page of them."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    problems = []
    for what, names in (("missing", sorted(set(want) - set(got))), ("unexpected", sorted(set(got) - set(want)))):
        if names:
            problems.append(f"{len(names)} {what} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
    shapes = [f"{k} {list(got[k])} where the config says {list(want[k])}" for k in sorted(set(want) & set(got))
              if want[k] != got[k]]
    if shapes:
        problems.append(f"{len(shapes)} of the wrong shape ({'; '.join(shapes[:3])})")
    if problems:
        raise ValueError(f"{where or 'the weights'}: the tensors do not match the model's config: {'; '.join(problems)}")


# -- weights out ------------------------------------------------------------------------------
def save_model(model: MMaDAModel, path: str | Path, max_shard_bytes: int = 5 * 1024**3) -> Path:
    """The published layout: config.json plus safetensors, sharded with an index when large."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2))
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in model.state_dict().items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.detach().to("cpu").contiguous()
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], path / "model.safetensors", metadata={"format": "pt"})
        return path
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, path / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return path


def save_checkpoint_weights(folder: Path, weights: dict[str, torch.Tensor], model_config: dict) -> None:
    """What export, sample, eval and rl read from a checkpoint, beside DeepSpeed's files."""
    save_file(weights, str(folder / WEIGHTS), metadata={"format": "pt"})
    (folder / MODEL_CONFIG).write_text(json.dumps(model_config))


def export(run_dir: str | Path, out: str | Path, tag: str | None = None, dtype: str = "float32") -> str:
    """A run's checkpoint as a model folder in the published layout, with the run's config and
    sequence layout beside it; either may be a URI (the export is written locally, then uploaded)."""
    run, target = str(run_dir), RunDir(out, mirror="exports")
    if str(out).rstrip("/") == run.rstrip("/") or (not target.remote and not is_uri(run)
                                                  and target.local.resolve() == Path(run).resolve()):
        raise ValueError(f"export {run} --out {out}: that is the run's own folder, whose config.json and "
                         "checkpoints the export would overwrite; give another --out")
    if target.remote:
        shutil.rmtree(target.local, ignore_errors=True)  # an earlier export to the same URI
    local_run = resolve(run, tag)
    state, config, tag = _checkpoint(local_run, tag)
    save_model(_build(state, config, getattr(torch, dtype), local_run), target.local)
    (target.local / TRAINING_FILE).write_text(json.dumps({"run": run, "tag": tag,
                                                          "training": training_config(local_run)}, indent=2))
    sequence_builder(local_run).save(target.local)  # the layout and sequences it was trained with travel along
    for path in target.local.iterdir():
        target.upload(path.name)
    return str(target)


# -- how it was trained -----------------------------------------------------------------------
def training_config(model: str | Path) -> dict:
    """The config a model was trained with (a run's config.json, or what export copied), else {}."""
    folder = resolve(model)
    if is_run(folder) and (folder / "config.json").is_file():
        return json.loads((folder / "config.json").read_text())
    if (folder / TRAINING_FILE).is_file():
        return json.loads((folder / TRAINING_FILE).read_text()).get("training", {})
    return {}


def sequence_builder(model: str | Path, text_tokenizer: str | None = None) -> SequenceBuilder:
    """How a model reads sequences: what its run or export saved (`paraforge_sequence.json`), else,
    for a published checkpoint, the layout of its own tokenizer and embedding with the
    mmada-parallel-m preset it was trained with."""
    folder = resolve(model)
    if (folder / SEQUENCE_FILE).is_file():
        return SequenceBuilder.from_dict(json.loads((folder / SEQUENCE_FILE).read_text()))
    if is_run(folder):
        raise ValueError(f"{model} is a run folder without {SEQUENCE_FILE}: it was made by an older paraforge")
    config = MMaDAConfig.from_dict(json.loads((folder / "config.json").read_text()))
    try:
        tokenizer = load_text_tokenizer(text_tokenizer or str(folder))
    except (OSError, ValueError) as e:
        raise ValueError(f"{model} has no text tokenizer to read the token layout from (give text_tokenizer=): {e}") from None
    return SequenceBuilder(TokenLayout.from_tokenizer(tokenizer, config.embedding_size), SequenceConfig())
