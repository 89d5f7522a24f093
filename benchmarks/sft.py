"""`trainer sft` step time against a bare PyTorch loop with the same model, batch and optimizer, in
one run; and the loader's samples/s.

The data is a synthetic tokenized version written through the registry (the trainer's input
contract; 256 codes per image, 64 + 256 text tokens), so the benchmark times the trainer alone. The
bare loop runs on batches collated beforehand: forward, the same loss, backward, clipping, AdamW.
`trainer sft` is timed per step from its own metrics (loader, collation, noise, DeepSpeed).
Goals on CPU: step-time ratio <= 1.05; loader >= 2,000 samples/s per core. The trainer runs
twice: ZeRO-0 (the config for one device) and ZeRO-2 (whose partitioning costs show on one process).

    python -m benchmarks.sft [--steps 30] [--micro-batch-size 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from jobs.tiny_models import build_tiny_llada_tokenizer
from pipeline.registry import DatasetRegistry
from pipeline.tokenize import load_text_tokenizer
from schemas import Counts, SequenceConfig, TokenLayout, tokenized_schema
from trainer.data import ShardLoader
from trainer.loss import apply_noise, diffusion_loss
from trainer.model import MMaDAConfig, MMaDAModel
from trainer.sequence import SequenceBuilder
from trainer.sft import SFTConfig, train

CODES, INSTRUCTION, REASONING = 256, 48, 200
MODEL = {"d_model": 256, "n_heads": 4, "n_layers": 4, "mlp_hidden_size": 768}


def synthetic_version(root: str, n: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    rows = [{"sample_id": f"{i:064x}", "task": "edit" if i % 4 else "generate",
             "instruction_ids": rng.integers(0, 700, INSTRUCTION - int(rng.integers(0, 10))).tolist(),
             "reasoning_ids": rng.integers(0, 700, REASONING - int(rng.integers(0, 40))).tolist(),
             "input_image_codes": rng.integers(0, 8192, CODES).tolist() if i % 4 else None,
             "output_image_codes": rng.integers(0, 8192, CODES).tolist(), "grid_h": 16, "grid_w": 16}
            for i in range(n)]
    for r in rows:
        r["instruction_len"], r["reasoning_len"] = len(r["instruction_ids"]), len(r["reasoning_ids"])
    registry = DatasetRegistry(root)
    with registry.writer("bench", "tokenize", tokenized_schema(CODES)) as writer:
        writer.write(pa.Table.from_pylist(rows, schema=tokenized_schema(CODES)))
        return writer.publish(Counts(n, n, 0, 0), {"command": "benchmark"}).ref


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--micro-batch-size", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="paraforge-bench-sft-"))
    ref = synthetic_version(str(work / "reg"), 512)
    tokenizer = build_tiny_llada_tokenizer(work / "tokenizer")
    text = load_text_tokenizer(str(tokenizer))
    layout = TokenLayout.from_tokenizer(text, len(text) + 8192)
    sequence = SequenceConfig(preset="paraforge", instruction_len=64, reasoning_len=256)
    builder = SequenceBuilder(layout, sequence)
    cfg = SFTConfig(dataset=ref, registry=str(work / "reg"), init="tiny", text_tokenizer=str(tokenizer), out_dir=str(work / "run"),
                    steps=args.steps, micro_batch_size=args.micro_batch_size, bf16=False, sequence=sequence,
                    save_every=10**9, cfg_dropout=0.1, init_config=MODEL)

    # loader: rows -> collated tensors, one core
    loader = ShardLoader(ref, str(work / "reg"), 32, builder=builder)
    start, samples = time.perf_counter(), 0
    while time.perf_counter() - start < 3:
        builder.collate(loader.next_rows())
        samples += 32
    loader_rate = samples / (time.perf_counter() - start)

    # bare loop: same model config, batches made beforehand, plain AdamW
    torch.manual_seed(0)
    model = MMaDAModel(MMaDAConfig(**MODEL, embedding_size=layout.vocab_size, vocab_size=layout.text_vocab_size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                                  weight_decay=cfg.optim.weight_decay)
    batches = [builder.collate(loader.next_rows()[: args.micro_batch_size]) for _ in range(args.steps)]
    generator = torch.Generator().manual_seed(0)
    bare_times = []
    for batch in batches:
        t0 = time.perf_counter()
        targets = batch.image_target | batch.text_target
        noised, masked, t = apply_noise(batch.input_ids, targets, layout.mask_id, generator)
        out = diffusion_loss(model(noised, batch.attention_mask, at=masked), batch.input_ids, masked, batch.image_target,
                             batch.text_target, t)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        bare_times.append(time.perf_counter() - t0)
    del model, optimizer

    trainer_times = {}
    for ds in ("ds_zero0", "ds_zero2"):  # one device: ZeRO-0 is the fitting config; ZeRO-2 shows its cost
        run = work / f"run-{ds}"
        train(dataclasses.replace(cfg, deepspeed=ds, out_dir=str(run)), progress=False)
        steps = [json.loads(line)["seconds"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        trainer_times[ds] = statistics.median(steps[3:])
    bare = statistics.median(bare_times[3:])
    tokens = int(batches[0].attention_mask.sum())
    print(f"sft benchmark: {sum(p.numel() for p in MMaDAModel(MMaDAConfig(**MODEL, embedding_size=layout.vocab_size)).parameters()) / 1e6:.1f}M-parameter model, "
          f"micro-batch {args.micro_batch_size} (~{tokens} tokens), CPU fp32, median of {args.steps - 3} steps")
    print(f"| {'path':<40} | {'s/step':>8} | {'ratio':>5} |")
    print(f"|{'-' * 42}|{'-' * 10}|{'-' * 7}|")
    print(f"| {'bare PyTorch loop (AdamW)':<40} | {bare:>8.4f} | {1.0:>5.2f} |")
    for ds, seconds in trainer_times.items():
        print(f"| {'trainer sft, DeepSpeed ' + ds:<40} | {seconds:>8.4f} | {seconds / bare:>5.2f} |")
    print(f"loader + collate: {loader_rate:,.0f} samples/s on one core (goal >= 2,000)")
    ratio = trainer_times["ds_zero0"] / bare
    print(f"goal: ratio <= 1.05 (ZeRO-0, one device) -> {'met' if ratio <= 1.05 else 'NOT met'}")


if __name__ == "__main__":
    main()
