"""world.html: what `make world` measured, as one offline page: the results table, the learning
curves (SFT loss and the verifier against steps; the ParaRL reward and the verifier's consistency
against steps) and sample grids (input, output, reference, reasoning, the denoising strip)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from pipeline.html import esc, line_chart, page, png_data_url, table, thumbnail

CSS = """
.grid td{vertical-align:top} .grid img{image-rendering:pixelated;border:1px solid #ddd}
.grid p{max-width:360px;font-size:12px;margin:2px 0} .strip{max-width:760px}
"""
CURVES = {"edit_accuracy": "edit accuracy", "edited_cells": "edited cells", "kept_cells": "kept cells", "reasoning_correct": "reasoning correct",
          "consistency": "text-image consistency", "scene_accuracy": "generation scene accuracy"}


def _points(curve: list[dict], key: str) -> list[tuple[float, float]]:
    return [(c["step"], c[key]) for c in curve if c.get(key) is not None]


def _metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _smoothed(records: list[dict], key: str, window: int) -> list[tuple[float, float]]:
    """A running mean over `window` logged steps: a per-step loss on 16 samples is noisy."""
    values = [(r["step"], r[key]) for r in records if key in r]
    return [(step, sum(v for _, v in values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1]))
            for i, (step, _) in enumerate(values)]


def _samples(bench: Path, eval_dir: Path, strips: Path, n: int) -> str:
    rows = [json.loads(line) for line in bench.read_text().splitlines()][:n]
    cells = []
    for row in rows:
        folder = eval_dir / "samples" / row["id"]
        pictures = [("input", bench.parent / row["input_image"] if row.get("input_image") else None),
                    ("output", folder / "output.png"), ("reference", bench.parent / row["output_image"])]
        images = "".join(f'<img alt="{label}" title="{label}" width="96" height="96" '
                         f'src="{png_data_url(thumbnail(Image.open(path), 96))}">'
                         for label, path in pictures if path is not None and path.is_file())
        strip = strips / row["id"] / "trajectory.png"
        strip_html = (f'<br><img class="strip" alt="denoising strip" src="{png_data_url(Image.open(strip))}">'
                      if strip.is_file() else "")
        reasoning = (folder / "reasoning.txt").read_text().strip() if (folder / "reasoning.txt").is_file() else ""
        cells.append(f"<tr><td>{images}<p class=muted>input · output · reference</p>{strip_html}</td>"
                     f"<td><p><b>{esc(row['instruction'])}</b></p><p>{esc(reasoning) or '(empty)'}</p></td></tr>")
    return f'<table class="grid">{"".join(cells)}</table>'


def write_page(results: dict, out: Path) -> Path:
    """`results`: what jobs.world saved (tables, curves, config); the runs and evals under `out`."""
    sft_metrics = _metrics(out / "runs" / "sft")
    rl_runs = {name: _metrics(out / "runs" / name) for name in results.get("rl_curves", {})}
    charts = [line_chart({"loss": _smoothed(sft_metrics, "loss", 20)}, "SFT loss (running mean of 20 steps)"),
              line_chart({label: _points(results["sft_curve"], key) for key, label in CURVES.items()},
                         "SFT: the verifier on held-out prompts")]
    for name, records in rl_runs.items():
        charts.append(line_chart({"reward": _smoothed(records, "reward_mean", 5)}, f"{name}: mean reward (running mean of 5)"))
        charts.append(line_chart({label: _points(results["rl_curves"][name], key) for key, label in CURVES.items()},
                                 f"{name}: the verifier on held-out prompts"))
    tables = "".join(f"<h2>{esc(title)}</h2>{table(t['header'], t['rows'], numeric_from=1)}"
                     for title, t in results["tables"].items())
    body = (f"<h1>The shapes world</h1><p class=muted>{esc(results['summary'])}</p>{tables}"
            f'<h2>Learning curves</h2><div class="charts">{"".join(charts)}</div>'
            f"<h2>Samples (final model, held-out prompts)</h2>"
            f"{_samples(Path(results['bench']), Path(results['final_eval']), out / 'strips', 8)}")
    path = out / "world.html"
    path.write_text(page("paraforge: the shapes world", body, css=CSS))
    return path
