"""eval.html: the summary of a `trainer eval` run and one card per sample, in the report's style
(pipeline/html.py): a single offline file. A failed judgement is shown as failed, with its reason
and the judge's raw answer, never as a number. The summary table's cells (`summary_rows`) are the
terminal's too (`trainer.eval.format_summary`)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from annotators.judge import DIMENSIONS
from pipeline.html import FILTER_SCRIPT, bar_chart, esc, page, png_data_url, table, thumbnail

EXTRA_CSS = """
.card{width:420px} .scores{border-collapse:collapse;width:100%;font-size:12px} .scores td{padding:2px 4px}
.card details{font-size:12px} .card details p{background:#f7f7f7;padding:4px;max-height:160px;overflow:auto}
tr.failed td{background:#fdecea}
"""

HEADERS = {"text_quality": "text qual", "text_alignment": "text align", "image_consistency": "image cons",
           "image_alignment": "image align", "image_quality": "image qual", "output_alignment": "output align"}


def summary_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """The table as strings: one row per category, then "all"; n/a where a dimension does not
    apply, "-" where every judgement of it failed."""
    header = ["category", "samples", *HEADERS.values(), "overall", "CLIP x100", "failed"]
    rows = []
    for name, row in [*summary["categories"].items(), ("all", summary["all"])]:
        cells = [name, str(row["samples"])]
        for dim in DIMENSIONS:
            d = row["dimensions"][dim]
            cells.append("n/a" if not d["applies"] else "-" if d["mean"] is None else f"{d['mean']:.1f}")
        cells += ["-" if row["overall"] is None else f"{row['overall']:.1f}",
                  "-" if row["clip_output_alignment"] is None else f"{row['clip_output_alignment']:.1f}",
                  str(row["failed"])]
        rows.append(cells)
    return header, rows


def _summary_section(results: dict) -> str:
    summary = results["summary"]
    header, rows = summary_rows(summary)
    failed = [(dim, reason, count) for dim, d in summary["all"]["dimensions"].items()
              for reason, count in sorted(d["failed_reasons"].items())]
    failures = (table(["dimension", "reason", "failed judgements"], failed, 'id="failures"')
                if failed else "<p class=ok>every judgement gave a score</p>")
    means = {dim: d["mean"] for dim, d in summary["all"]["dimensions"].items() if d["mean"] is not None}
    overall = {name: row["overall"] for name, row in summary["categories"].items() if row["overall"] is not None}
    return (f'<h2>Summary</h2>{table(header, rows, "id=summary", numeric_from=1)}'
            "<p class=muted>means over successful judgements (0-100); overall = mean of the dimension means; "
            "n/a: the dimension does not apply; -: every judgement of it failed. CLIP: cosine(image, reasoning) "
            f"x 100, judge-free.</p><h2>Failed judgements</h2>{failures}"
            f'<div class="charts">{bar_chart(means, "all: mean per dimension")}'
            f'{bar_chart(overall, "overall per category")}</div>')


def _card(record: dict, out: Path) -> str:
    folder = out / "samples" / record["id"]
    pictures = [("input", folder / "input.png"), ("output", folder / "output.png"),
                ("reference", Path(record["reference_image"]) if record["reference_image"] else None)]
    shown = [(label, path) for label, path in pictures if path is not None and path.is_file()]
    images = "".join(f'<img alt="{label}" title="{label}" src="{png_data_url(thumbnail(Image.open(path), 224))}">'
                     for label, path in shown) + f'<p class="meta">{" · ".join(label for label, _ in shown)}</p>'
    rows = []
    for dim in DIMENSIONS:
        j = record["judgements"].get(dim)
        if j is None:
            rows.append(f'<tr><td>{dim}</td><td class="muted">n/a</td></tr>')
            continue
        score = (f'<td class="n">{j["score"]:g}</td>' if j["score"] is not None
                 else f'<td class="bad">FAILED: {esc(j["error"])}</td>')
        answer = j["raw"] if j["raw"] is not None else j["detail"] or ""
        rows.append(f'<tr class="{"ok" if j["score"] is not None else "failed"}" data-dimension="{dim}"><td>{dim}</td>'
                    f'{score}<td><details><summary>judge\'s answer</summary><p>{esc(answer)}</p></details></td></tr>')
    clip = record["clip_output_alignment"]
    failed = any(j["score"] is None for j in record["judgements"].values())
    return (f'<div class="card" id="sample-{esc(record["id"])}" data-category="{esc(record["category"])}" '
            f'data-failed="{"yes" if failed else "no"}">{images}'
            f'<p class="meta">{esc(record["task"])} · {esc(record["category"])} · <code>{esc(record["id"])}</code>'
            f' · CLIP {clip:.1f}</p><p><b>{esc(record["instruction"])}</b></p>'
            f'<details open><summary>reasoning</summary><p>{esc(record["reasoning"]) or "(empty)"}</p></details>'
            f'<table class="scores">{"".join(rows)}</table></div>')


def write_page(results: dict, out: Path) -> Path:
    cfg, judge, records = results["config"], results["judge"], results["samples"]
    categories = sorted({r["category"] for r in records})
    options = "".join(f'<option value="{esc(c)}">{esc(c)}</option>' for c in categories)
    filters = (f'<div class="filters">category: <select data-filter="category" data-target=".cards .card">'
               f'<option value="">all</option>{options}</select> judgements: <select data-filter="failed" '
               'data-target=".cards .card"><option value="">all</option><option value="yes">with a failure</option>'
               '<option value="no">all scored</option></select><span class="shown"></span></div>')
    body = (f"<h1>Evaluation of {esc(cfg['model'])}</h1>"
            f"<p class=muted>benchmark {esc(cfg['benchmark'])} · {len(records)} prompts · judge "
            f"{esc(judge['backend'])}{':' + esc(judge['model']) if judge['model'] else ''} · rubrics {esc(judge['rubrics'])} "
            f"(<code>{esc(judge['rubrics_sha256'][:12])}</code>) · {cfg['sampler']['steps']} sampler steps · "
            f"{cfg['resolution']} px</p>{_summary_section(results)}<h2>Samples</h2>{filters}"
            f'<div class="cards">{"".join(_card(r, out) for r in records)}</div>')
    path = out / "eval.html"
    path.write_text(page(f"eval: {Path(cfg['model']).name}", body, FILTER_SCRIPT, EXTRA_CSS))
    return path
