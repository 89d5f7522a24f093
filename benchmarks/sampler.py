"""The parallel sampler's overhead: a whole sampling run against (number of forwards x one bare
forward of the same batch), in one run. Everything the sampler does besides the model (scatter of the
state, logit slicing, Gumbel noise in float64, softmax, top-k commits, CFG mixing) is the overhead.
Goal: <= 5%.

    python -m benchmarks.sampler [--steps 32] [--batch 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from schemas import SequenceConfig, TokenLayout
from trainer.model import MMaDAConfig, MMaDAModel
from trainer.sampling import ParallelSampler, Prompt, SamplerConfig
from trainer.sequence import SequenceBuilder

# The sampler's own work is per output position and vocabulary entry, independent of the model's
# width, so its share shrinks as the model grows (MMaDA-8B: d_model 4096, 32 layers). Two sizes show it.
MODELS = {
    "8M d256 x4 layers": ({"d_model": 256, "n_heads": 4, "n_layers": 4, "mlp_hidden_size": 768}, 4, 32),
    "51M d768 x6 layers": ({"d_model": 768, "n_heads": 12, "n_layers": 6, "mlp_hidden_size": 2048}, 2, 16),
}  # name: (model, batch, steps)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(model, layout, batch: int, steps: int, repeats: int) -> list[tuple]:
    # 256 px edits: a 256-code input image, 64 instruction tokens, 256 output codes, 128 text tokens
    prompts = [Prompt("edit", list(range(10, 40 + i)), [(7 * i + j) % 8192 for j in range(256)]) for i in range(batch)]
    common = dict(steps=steps, image_tokens=256, block_length=32, text_temperature=0.7)
    builder = SequenceBuilder(layout, SequenceConfig(preset="paraforge", instruction_len=64, reasoning_len=128))
    configs = {"parallel, image CFG 4.0": SamplerConfig(**common),
               "parallel, no CFG, trajectory x3": SamplerConfig(**common, image_cfg_scale=0.0)}
    rows = []
    for name, cfg in configs.items():
        sampler = ParallelSampler(model, builder, cfg)
        ids, attention, _ = sampler.inputs(prompts, torch.device("cpu"))  # the exact batch the sampler feeds
        record = [steps // 4, steps // 2, -1] if "trajectory" in name else None
        with torch.no_grad():
            model(ids, attention)  # warm-up
            # the lambdas run inside `timed`, before the loop moves on
            bare = timed(lambda: model(ids, attention), repeats * 3) * len(sampler.schedule)  # noqa: B023
            run = timed(lambda: sampler.sample(prompts, record_steps=record), repeats)  # noqa: B023
        rows.append((name, tuple(ids.shape), bare, run))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated names from MODELS")
    args = parser.parse_args()
    torch.set_num_threads(2)
    layout = TokenLayout.compact(1024)
    print(f"sampler benchmark: 256 px edits (256 + 256 codes, 64 + 128 text tokens), CPU fp32 2 threads, "
          f"median of {args.repeats}; bare = steps x one forward of the same batch")
    print(f"| {'model':<21} | {'sampler':<40} | {'batch':>9} | {'bare s':>7} | {'run s':>7} | {'overhead':>8} |")
    print(f"|{'-' * 23}|{'-' * 42}|{'-' * 11}|{'-' * 9}|{'-' * 9}|{'-' * 10}|")
    overheads = {}
    for name in args.models.split(","):
        spec, batch, steps = MODELS[name]
        torch.manual_seed(0)
        model = MMaDAModel(MMaDAConfig(**spec, embedding_size=layout.vocab_size, vocab_size=layout.text_vocab_size)).eval()
        for sampler, shape, bare, run in measure(model, layout, batch, steps, args.repeats):
            overheads[(name, sampler)] = run / bare - 1
            print(f"| {name:<21} | {sampler + f', {steps} steps':<40} | {shape[0]}x{shape[1]:<7} | {bare:>7.2f} | "
                  f"{run:>7.2f} | {run / bare - 1:>7.1%} |")
    largest = list(MODELS)[-1]
    worst = max(v for (m, _), v in overheads.items() if m == largest) if any(m == largest for m, _ in overheads) else None
    if worst is not None:
        print(f"goal: overhead <= 5% at {largest} -> {'met' if worst <= 0.05 else 'NOT met'} (worst {worst:.1%})")


if __name__ == "__main__":
    main()
