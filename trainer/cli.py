"""The `trainer` command: the root only registers commands; each calls one library function."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

import paraforge_compat  # noqa: F401
from pipeline.cli import run
from pipeline.commands.cluster import SUBMIT_SETTINGS, submit_command
from pipeline.commands.options import backend_options
from pipeline.config import load_config
from schemas import MMADA_M

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="paraforge trainer: sft, rl, sample, eval, export, layout, sequence, submit.")
Overrides = Annotated[Optional[list[str]], typer.Option("--set", help="key=value config override, repeatable "
                                                                       "(nested: optim.lr=2e-5)")]
# Before --set, trainer commands took bare key=value words; they still work, with a notice.
Legacy = Annotated[Optional[list[str]], typer.Argument(help="deprecated: bare key=value overrides (use --set)",
                                                         show_default=False)]
RayWorkers = Annotated[Optional[int], typer.Option(help="train on Ray: N ranks via Ray Train (0: this process)")]
RayGpu = Annotated[Optional[bool], typer.Option("--ray-gpu", help="one GPU per Ray worker")]
RayAddress = Annotated[Optional[str], typer.Option(help="Ray cluster (else $RAY_ADDRESS, else local)")]


def _overrides(set_: list[str] | None, legacy: list[str] | None) -> list[str]:
    """--set pairs, after any bare key=value words (one syntax for `pipeline` and `trainer`)."""
    if legacy:
        print("note: bare key=value overrides are deprecated; write --set key=value (as `pipeline` commands do)",
              file=sys.stderr)
    return [*(legacy or []), *(set_ or [])]


@app.command()
def sft(legacy: Legacy = None, set_: Overrides = None,
        config: Annotated[Optional[str], typer.Option(help="YAML config, e.g. trainer/configs/sft.yaml")] = None,
        progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
        ray_workers: RayWorkers = None, ray_gpu: RayGpu = None, ray_address: RayAddress = None) -> None:
    """Supervised fine-tuning on a tokenized version (DeepSpeed; resumes from the newest checkpoint)."""
    # here, not at the top: torch, DeepSpeed and the command's libraries load only when it runs
    from trainer.sft import SFTConfig, train

    _launch(SFTConfig, train, config, _overrides(set_, legacy), progress,
            ray_workers=ray_workers, ray_gpu=ray_gpu, ray_address=ray_address)


@app.command()
def rl(legacy: Legacy = None, set_: Overrides = None,
       config: Annotated[Optional[str], typer.Option(help="YAML config, e.g. trainer/configs/pararl.yaml")] = None,
       progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
       ray_workers: RayWorkers = None, ray_gpu: RayGpu = None, ray_address: RayAddress = None) -> None:
    """ParaRL: GRPO with CLIP rewards along the denoising trajectory; every rank learns and samples."""
    # here, not at the top: torch, DeepSpeed and the command's libraries load only when it runs
    from trainer.rl.pararl import RLConfig, train

    _launch(RLConfig, train, config, _overrides(set_, legacy), progress,
            ray_workers=ray_workers, ray_gpu=ray_gpu, ray_address=ray_address)


def _launch(config_class, train, config: str | None, overrides: list[str], progress: bool, **ray) -> None:
    """A training command: here (one process, or a torchrun / deepspeed rank) or, with ray_workers,
    as that many Ray Train workers."""
    cfg = load_config(config_class, config, overrides, **ray)
    if cfg.ray_workers:
        # here, not at the top: torch, DeepSpeed and the command's libraries load only when it runs
        from trainer.ray_train import train_on_ray

        train_on_ray(cfg)
    else:
        train(cfg, progress=progress)
    print(f"run {cfg.out_dir}: checkpoints/ and metrics.jsonl")


@app.command()
def export(run_dir: Annotated[str, typer.Argument(help="an sft/rl run folder")],
           out: Annotated[str, typer.Option("--out", help="output folder (HF layout)")],
           tag: Annotated[Optional[str], typer.Option(help="checkpoint tag (default: the newest)")] = None,
           dtype: Annotated[str, typer.Option(help="float32 | bfloat16")] = "float32") -> None:
    """Write a checkpoint as config.json + safetensors (the published MMaDA layout)."""
    # here, not at the top: torch, DeepSpeed and the command's libraries load only when it runs
    from trainer.model_io import export as run_export

    print(run_export(run_dir, out, tag, dtype))


@app.command()
def sample(legacy: Legacy = None, set_: Overrides = None,
           model: Annotated[Optional[str], typer.Option(help="model folder (exported or published) or an sft/rl run folder")] = None,
           instruction: Annotated[Optional[str], typer.Option(help="the edit or generation instruction")] = None,
           out: Annotated[Optional[str], typer.Option("--out", help="output folder")] = None,
           input: Annotated[Optional[str], typer.Option("--input", help="image to edit (absent: generation)")] = None,
           task: Annotated[Optional[str], typer.Option(help="edit | generate (default: edit when --input is given)")] = None,
           image_tokenizer: Annotated[Optional[str], typer.Option(help="MAGVIT-v2 folder or hub id")] = None,
           text_tokenizer: Annotated[Optional[str], typer.Option(help="text tokenizer (default: the model folder)")] = None,
           resolution: Annotated[Optional[int], typer.Option(help="image side in pixels (multiple of 16)")] = None,
           trajectory: Annotated[bool, typer.Option(help="also write the trajectory strip")] = False,
           device: Annotated[Optional[str], typer.Option(help="cpu | cuda")] = None,
           config: Annotated[Optional[str], typer.Option(help="YAML config, e.g. trainer/configs/sample.yaml")] = None,
           ) -> None:
    """Sample reasoning + image with the parallel sampler (sampler.* keys set steps, CFG, temperatures...)."""
    # here, not at the top: torch, DeepSpeed and the command's libraries load only when it runs
    from trainer.sample import SampleConfig, run_sample

    cfg = load_config(SampleConfig, config, _overrides(set_, legacy), model=model, instruction=instruction, out=out, input=input,
                      task=task, image_tokenizer=image_tokenizer, text_tokenizer=text_tokenizer,
                      resolution=resolution, trajectory=trajectory or None, device=device)
    for name, path in run_sample(cfg).items():
        print(f"{name}: {path}")


@app.command("eval")
def eval_(legacy: Legacy = None, set_: Overrides = None,
          model: Annotated[Optional[str], typer.Option(help="model folder (exported or published) or an sft/rl run folder")] = None,
          benchmark: Annotated[Optional[str], typer.Option(help="benchmark JSONL (one prompt per line)")] = None,
          out: Annotated[Optional[str], typer.Option("--out", help="output folder")] = None,
          judge_backend: Annotated[Optional[str], typer.Option(help="openai | vllm | transformers")] = None,
          judge_model: Annotated[Optional[str], typer.Option(help="judge model (served name for openai)")] = None,
          image_tokenizer: Annotated[Optional[str], typer.Option(help="MAGVIT-v2 folder or hub id")] = None,
          text_tokenizer: Annotated[Optional[str], typer.Option(help="text tokenizer (default: the model folder)")] = None,
          resolution: Annotated[Optional[int], typer.Option(help="image side in pixels (multiple of 16)")] = None,
          device: Annotated[Optional[str], typer.Option(help="cpu | cuda")] = None,
          limit: Annotated[Optional[int], typer.Option(help="only the first N prompts")] = None,
          config: Annotated[Optional[str], typer.Option(help="YAML config, e.g. trainer/configs/eval.yaml")] = None,
          ) -> None:
    """ParaBench-style evaluation: sample every prompt, score six dimensions with a judge VLM and CLIP."""
    # here, not at the top: torch, DeepSpeed and the command's libraries load only when it runs
    from trainer.eval import EvalConfig, format_summary, run_eval

    cfg = load_config(EvalConfig, config, _overrides(set_, legacy), model=model, benchmark=benchmark, out=out,
                      **backend_options("judge", judge_backend, judge_model), image_tokenizer=image_tokenizer, text_tokenizer=text_tokenizer,
                      resolution=resolution, device=device, limit=limit)
    print(format_summary(run_eval(cfg)))
    print(f"results: {cfg.out}/results.json; page: {cfg.out}/eval.html")


@app.command()
def layout(model: Annotated[Optional[str], typer.Option(help="model folder (published, exported) or run folder")] = None,
           text_tokenizer: Annotated[Optional[str], typer.Option(help="tokenizer to read the layout from (default: the model's)")] = None,
           ) -> None:
    """Print a model's token layout as JSON (image offset = len of its tokenizer, vocabulary = its embedding)."""
    # here, not at the top: torch, DeepSpeed and the command's libraries load only when it runs
    from trainer.inspect_sequence import model_layout

    print(json.dumps(model_layout(model, text_tokenizer) if model else MMADA_M.to_dict(), indent=2))


@app.command()
def sequence(dataset: Annotated[str, typer.Argument(help="NAME@VERSION of a tokenized version")],
             model: Annotated[str, typer.Option(help="model folder (published, exported) or run folder")],
             index: Annotated[int, typer.Option(help="row number in the version")] = 0,
             uncond: Annotated[bool, typer.Option(help="the row with both conditions dropped (CFG's unconditional row)")] = False,
             as_json: Annotated[bool, typer.Option("--json", help="every id, mask and flag as JSON")] = False,
             registry: Annotated[Optional[str], typer.Option(help="registry root (else $PARAFORGE_REGISTRY)")] = None,
             text_tokenizer: Annotated[Optional[str], typer.Option(help="tokenizer to read the layout from")] = None,
             ) -> None:
    """Print the exact input ids, attention mask and target flags the trainer builds for one row."""
    # here, not at the top: torch, DeepSpeed and the command's libraries load only when it runs
    from trainer.inspect_sequence import format_sequence, row_sequence

    view = row_sequence(dataset, model, registry=registry, index=index, uncond=uncond, text_tokenizer=text_tokenizer)
    print(json.dumps(view) if as_json else format_sequence(view))


app.command("submit", context_settings=SUBMIT_SETTINGS)(submit_command("trainer", ("sft", "rl")))


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
