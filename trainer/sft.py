"""`trainer sft`: supervised fine-tuning of MMaDA on a tokenized version with the parallel
masked-diffusion loss, on DeepSpeed, resumable exactly."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline.config import require_positive
from pipeline.hub import load_recorded_tokenizer
from pipeline.registry import DatasetRegistry
from schemas import SequenceConfig, TokenLayout
from trainer.checkpoint import Checkpointer, check_resume_settings, keep_previous_settings
from trainer.data import ShardLoader
from trainer.engine import Engine, OptimConfig, deepspeed_config, init_distributed
from trainer.loss import apply_noise, diffusion_loss
from trainer.metrics import MetricsLogger
from trainer.model import MMaDAConfig, MMaDAModel
from trainer.model_io import check_layout, load_model, resolve, sequence_builder
from trainer.rundir import RunDir
from trainer.sequence import SequenceBuilder, recorded_blank_codes

TINY_MODEL = {"d_model": 128, "n_heads": 4, "n_layers": 2, "mlp_hidden_size": 256, "max_sequence_length": 1024}


@dataclasses.dataclass(kw_only=True)
class SFTConfig:
    dataset: str  # NAME@VERSION of a tokenized version
    registry: str | None = None
    model: str | None = None  # checkpoint folder or hub id (MMaDA layout), an export or a run; or init="tiny"
    init: str | None = None  # "tiny": a small random model, for tests, the demo and the shapes world
    init_config: dict = dataclasses.field(default_factory=dict)  # init=tiny: MMaDAConfig fields over TINY_MODEL
    text_tokenizer: str | None = None  # the tokenizer the token layout is read from; default: the model's
    # folder, or for init=tiny the tokenizer the dataset was tokenized with
    out_dir: str = "runs/sft"
    steps: int = 1000
    micro_batch_size: int = 4
    grad_accum: int = 1
    deepspeed: str = "ds_zero2"  # a JSON in trainer/configs or a path
    bf16: bool = True
    gradient_checkpointing: bool = False
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    sequence: SequenceConfig = dataclasses.field(default_factory=SequenceConfig)
    reasoning: bool = True  # False: the ablation without reasoning (its part stays, bos + eos-padding)
    cfg_dropout: float = 0.1  # probability of training without the instruction / the input image (see sequence.preset)
    w_text: str = "inverse_t"  # the paper's finding: 1/t for text...
    w_image: str = "one"  # ...and 1 for image tokens
    # each modality's term scaled (the public code mixes its text and image losses by two coefficients):
    # a sequence holds ~9-16x more text targets than image codes in the shapes world, and its image
    # edit was learned ~3x sooner with image_coef 10 (issue 27's probe)
    text_coef: float = 1.0
    image_coef: float = 1.0
    mask_schedule: str = "linear"
    seed: int = 0
    save_every: int = 100
    keep_last: int = 3
    # auto | none | a checkpoint tag or path | force: auto, even where settings changed (both kept)
    resume: str = "auto"
    log_every: int = 1
    peak_flops: float | None = None  # per device, for the MFU estimate (e.g. 989e12 for H100 bf16)
    ray_workers: int = 0  # > 0: this many ranks as Ray Train workers (--ray-workers), else torchrun's or one
    ray_gpu: bool = False  # one GPU per Ray worker (--ray-gpu)
    ray_address: str | None = None  # the Ray cluster for ray_workers (else $RAY_ADDRESS, else local)

    def __post_init__(self) -> None:
        require_positive(self, "steps", "micro_batch_size", "grad_accum", "save_every", "keep_last", "log_every")
        if not 0.0 <= self.cfg_dropout <= 1.0:
            raise ValueError(f"cfg_dropout is a probability, not {self.cfg_dropout}")
        if min(self.text_coef, self.image_coef) < 0 or self.text_coef + self.image_coef == 0:
            raise ValueError(f"text_coef and image_coef must be >= 0 and not both 0 "
                             f"(text_coef={self.text_coef}, image_coef={self.image_coef})")


def build_model(cfg: SFTConfig, tokenized: dict) -> tuple[MMaDAModel, TokenLayout]:
    """The model and its token layout (from its tokenizer and embedding; see schemas.TokenLayout).
    `tokenized`: the dataset's tokenize lineage; a model built from scratch (`init=tiny`) takes its
    text tokenizer (unless `text_tokenizer` is set) and its image codebook from there."""
    if cfg.init == "tiny":
        tokenizer = load_recorded_tokenizer(tokenized, cfg.text_tokenizer)
        codebook = tokenized.get("image_codebook_size", TokenLayout.image_codebook_size)
        layout = TokenLayout.from_tokenizer(tokenizer, len(tokenizer) + codebook, image_codebook_size=codebook)
        torch.manual_seed(cfg.seed)
        config = MMaDAConfig(**{**TINY_MODEL, **cfg.init_config}, embedding_size=layout.vocab_size, vocab_size=layout.text_vocab_size,
                             gradient_checkpointing=cfg.gradient_checkpointing)
        return MMaDAModel(config), layout
    if not cfg.model:
        raise ValueError("give model=PATH_OR_HUB_ID or init=tiny")
    folder = resolve(cfg.model)  # a hub id, a folder, or a run or export given by URI: fetched once
    layout = sequence_builder(folder, cfg.text_tokenizer).layout
    model = load_model(folder).train()
    check_layout(model, layout, cfg.model)
    model.config.gradient_checkpointing = cfg.gradient_checkpointing
    return model, layout


def train_step(engine: Engine, rows: list[dict], cfg: SFTConfig, builder: SequenceBuilder,
               generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One micro-batch: CFG dropout, noise the output part, weighted CE, backward."""
    if not cfg.reasoning:
        rows = [{**row, "reasoning_ids": []} for row in rows]
    batch = builder.collate(rows, builder.draw_dropout(len(rows), cfg.cfg_dropout, generator))
    layout = builder.layout
    targets = batch.image_target | batch.text_target
    noised, masked, t = apply_noise(batch.input_ids, targets, layout.mask_id, generator,
                                    schedule=cfg.mask_schedule)
    masked = masked.to(engine.device)
    logits = engine.forward(noised.to(engine.device), batch.attention_mask.to(engine.device), at=masked)
    out = diffusion_loss(logits, batch.input_ids.to(engine.device), masked,
                         batch.image_target.to(engine.device), batch.text_target.to(engine.device),
                         t.to(engine.device), cfg.w_text, cfg.w_image, cfg.text_coef, cfg.image_coef)
    engine.backward(out["loss"])
    engine.step()
    out["tokens"] = batch.attention_mask.sum()
    return out


# what may change when a run resumes: its length, its pace and where it runs
RESUMABLE = {"steps", "resume", "save_every", "keep_last", "log_every", "peak_flops", "ray_workers", "ray_gpu",
             "ray_address", "registry", "out_dir"}


def train(cfg: SFTConfig, progress: bool = True) -> Path:
    """Trains, and returns the local run folder (for a URI `out_dir`, its mirror)."""
    rank, world = init_distributed()
    manifest = DatasetRegistry(cfg.registry).resolve(cfg.dataset, schema="tokenized/1")
    model, layout = build_model(cfg, manifest.lineage.get("tokenize", {}))
    builder = SequenceBuilder(layout, cfg.sequence, recorded_blank_codes(manifest))
    loader = ShardLoader(cfg.dataset, cfg.registry, cfg.micro_batch_size, rank, world, cfg.seed, builder)
    engine = Engine(model, deepspeed_config(cfg.deepspeed, cfg.optim, micro_batch_size=cfg.micro_batch_size,
                                            grad_accum=cfg.grad_accum, total_steps=cfg.steps, bf16=cfg.bf16))
    run = RunDir(cfg.out_dir)  # a local folder, or a URI with a local mirror
    run_dir = run.local
    checkpoints = Checkpointer(run, cfg.keep_last, rank)
    checkpoints.prepare()
    resume = "auto" if cfg.resume == "force" else cfg.resume
    previous = (check_resume_settings(run_dir, dataclasses.asdict(cfg), RESUMABLE, cfg.resume == "force")
                if checkpoints.resume_tag(resume) else None)
    state = checkpoints.resume(engine, resume)
    step = 0
    if state:
        step = state["step"]
        loader.load_state_dict(state["loader"])
    metrics = MetricsLogger(run_dir, rank, n_params=sum(p.numel() for p in model.parameters()),
                            peak_flops=cfg.peak_flops, world_size=world)
    if rank == 0:
        keep_previous_settings(run_dir, previous, step)
        (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
        builder.save(run_dir)  # the layout and sequences this model learns: sample, rl, eval, export reuse them
        run.push_files()
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress or rank != 0, desc="sft")
    while step < cfg.steps:
        started = time.perf_counter()
        for micro in range(cfg.grad_accum):
            # noise depends only on (seed, step, rank, micro): a resumed run draws the same masks
            generator = torch.Generator().manual_seed(((cfg.seed * 1_000_003 + step) * 1009 + rank) * 31 + micro)
            out = train_step(engine, loader.next_rows(), cfg, builder, generator)
        step += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            record = metrics.log(step, out, engine.lr, time.perf_counter() - started, cfg.grad_accum)
            bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
        bar.update(1)
        if step % cfg.save_every == 0 or step == cfg.steps:
            checkpoints.save(engine, step, {"step": step, "loader": loader.state_dict(),
                                            "config": dataclasses.asdict(cfg)}, model.config.to_dict())
    bar.close()
    metrics.close()
    if rank == 0:
        run.push_files()
    return run_dir
