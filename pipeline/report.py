"""`pipeline report`: one self-contained HTML page to look at a dataset version.

What a person needs to judge a reasoning dataset: the version's ancestry with the accounting of
every stage (in = out + quarantined + duplicates, and each stage's input equal to its parent's
output), why rows were rejected (read from the quarantine shards themselves, so the page shows what
is stored, not what a stage claimed), length and size distributions, categories, sample cards with
the traces beside the images (and, for tokenized versions, the image decoded from its codes), the
judge's scores when the chain holds a `pipeline score` version (histograms per axis and per
category over every scored row, the cut of a `pipeline filter` below it drawn on them, the judge's
words on the cards), and a diff against the parent or any other version. Filters by category and by rejection reason run in a
few lines of inline JavaScript; nothing is fetched, so the file opens offline.

Collecting (`collect`) and rendering (`render`) are separate: the first reads the registry into a
`ReportData`, the second is a pure function of it. Images are read only for the cards.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.html import FILTER_SCRIPT, bar_chart, esc, fmt_number, histogram, page, png_data_url, table, thumbnail
from pipeline.registry import DatasetRegistry
from schemas import SCORE_AXES, VersionManifest

CONTENT_SCHEMAS = ("raw/1", "annotated/1", "scored/1")  # versions that hold the text and the images
SCORE_COLUMNS = ["sample_id", "task", "category", "scores", "judge_failed"]
TEXT_COLUMNS = ["sample_id", "task", "instruction", "category", "output_width", "output_height",
                "input_width", "input_height"]


@dataclasses.dataclass(kw_only=True)
class ReportConfig:
    dataset: str  # NAME, NAME@VERSION or NAME@TAG
    out: str = "report.html"
    registry: str | None = None
    against: str | None = None  # the version to diff against (default: the parent)
    cards: int = 24  # sample cards shown (the first rows of the version, in stored order)
    quarantine_rows: int = 500  # quarantine rows listed in the table (the chart counts them all)
    decode_codes: bool = True  # tokenized versions: decode the cards' output codes with MAGVIT-v2
    image_tokenizer: str | None = None  # default: the checkpoint the version was tokenized with


@dataclasses.dataclass
class ReportData:
    manifest: VersionManifest
    chain: list[VersionManifest]  # oldest first, ending with `manifest`
    quarantine: dict[str, list[dict[str, Any]]]  # version id -> its quarantine rows (no record column)
    rows: pa.Table  # this version's rows: text columns of the content version (+ token lengths)
    cards: list[dict[str, Any]]
    diff: dict[str, Any] | None
    quarantine_rows: int = 500
    scored: VersionManifest | None = None  # the chain's `pipeline score` version, if any
    scores: pa.Table | None = None  # its rows' SCORE_COLUMNS: the population before any cut
    cut: VersionManifest | None = None  # the chain's `pipeline filter` version below it, if any


def ancestry(registry: DatasetRegistry, manifest: VersionManifest) -> list[VersionManifest]:
    """The version's parents, oldest first; a manifest whose parents loop is refused."""
    chain = [manifest]
    while chain[0].parent:
        if chain[0].parent in {m.ref for m in chain}:
            raise ValueError(f"{chain[0].ref} names {chain[0].parent} as its parent, which descends from it: "
                             "the registry's manifests were edited by hand or are corrupt")
        chain.insert(0, registry.resolve(chain[0].parent))
    return chain


def collect(cfg: ReportConfig) -> ReportData:
    registry = DatasetRegistry(cfg.registry)
    manifest = registry.resolve(cfg.dataset)
    chain = ancestry(registry, manifest)
    quarantine = {m.version: registry.read_table(m, ["stage", "reason", "message", "source_ref", "sample_id"],
                                                 quarantine=True).to_pylist() for m in chain}
    content = next(m for m in reversed(chain) if m.schema in CONTENT_SCHEMAS)
    columns = TEXT_COLUMNS + (["reasoning"] if content.schema in ("annotated/1", "scored/1") else [])
    rows = registry.read_table(content, columns)
    if manifest is not content:  # a tokenized version: keep its rows, add their token lengths
        tokens = registry.read_table(manifest, ["sample_id", "instruction_len", "reasoning_len"])
        rows = tokens.join(rows, "sample_id", join_type="left outer")
        rows = rows.take(pc.sort_indices(pc.index_in(rows["sample_id"], value_set=tokens["sample_id"])))
    against = cfg.against or manifest.parent
    diff = registry.diff(against, manifest.ref) if against else None
    cards = _cards(registry, manifest, content, rows, cfg)
    scored = next((m for m in reversed(chain) if m.stage == "score"), None)
    scores = registry.read_table(scored, SCORE_COLUMNS) if scored else None
    cut = next((m for m in reversed(chain) if m.stage == "filter"), None)
    return ReportData(manifest, chain, quarantine, rows, cards, diff, cfg.quarantine_rows, scored, scores, cut)


def _cards(registry: DatasetRegistry, manifest: VersionManifest, content: VersionManifest, rows: pa.Table,
           cfg: ReportConfig) -> list[dict[str, Any]]:
    picked = rows.slice(0, cfg.cards).to_pylist()
    wanted = [r["sample_id"] for r in picked]
    judged = ["scores", "judge_answers", "judge_errors"] if content.schema == "scored/1" else []
    images = registry.rows_by_id(content, wanted, ["input_image", "output_image", *judged])
    decoded = _decode_codes(registry, manifest, wanted, cfg) if manifest.schema.startswith("tokenized") else {}
    cards = []
    for r in picked:
        found = images.get(r["sample_id"], {})
        cards.append({**r, "input_image": found.get("input_image"), "output_image": found.get("output_image"),
                      "decoded": decoded.get(r["sample_id"]), **{c: found.get(c) for c in judged}})
    return cards


def _decode_codes(registry: DatasetRegistry, manifest: VersionManifest, wanted: list[str], cfg: ReportConfig) -> dict:
    if not cfg.decode_codes or not wanted:
        return {}
    # torch and MAGVIT only for a report that decodes codes back to pictures
    import torch

    from pipeline.image_tokenizer import MagvitV2

    magvit = MagvitV2.for_version(manifest.lineage["tokenize"], cfg.image_tokenizer)
    rows = registry.rows_by_id(manifest, wanted, ["output_image_codes", "grid_h", "grid_w"])
    decoded = {}
    for start in range(0, len(wanted), 8):  # the grid is the version's: one resolution per tokenize run
        ids = [sid for sid in wanted[start:start + 8] if sid in rows]
        codes = torch.tensor([rows[sid]["output_image_codes"] for sid in ids])
        grid = (rows[ids[0]]["grid_h"], rows[ids[0]]["grid_w"])
        decoded.update(zip(ids, MagvitV2.postprocess(magvit.decode(codes, grid))))
    return decoded


# -- rendering ---------------------------------------------------------------------------------
def render(data: ReportData) -> str:
    m = data.manifest
    sections = [
        f"<h1>{esc(m.ref)}</h1><p>stage <b>{esc(m.stage)}</b>, schema <code>{esc(m.schema)}</code>, "
        f"created {esc(m.created_at[:19])} UTC, tags: {esc(', '.join(m.tags) or '-')}</p>",
        _chain_section(data), _quarantine_section(data), _scores_section(data), _distributions_section(data),
        _diff_section(data), _cards_section(data)]
    return page(f"paraforge report: {m.ref}", "".join(sections), FILTER_SCRIPT)


def _count(key: str, value: int, version: str, tag: str = "td") -> str:
    """A count the page states, tagged so tests (and scripts) can check it against the manifest."""
    return f'<{tag} class="n" data-count="{key}" data-version="{esc(version)}">{value}</{tag}>'


def _chain_section(data: ReportData) -> str:
    rows, previous = [], None
    for m in data.chain:
        c = m.counts
        link_ok = previous is None or c.input == previous.counts.output
        ok = c.reconciles() and link_ok
        verdict = "reconciles" if ok else ("does not reconcile" if not c.reconciles() else "input != parent output")
        rows.append(f"<tr><td><code>{esc(m.version)}</code></td><td>{esc(m.stage)}</td><td>{esc(m.schema)}</td>"
                    f"<td>{esc(m.created_at[:19])}</td>{_count('input', c.input, m.version)}"
                    f"{_count('output', c.output, m.version)}{_count('quarantined', c.quarantined, m.version)}"
                    f"{_count('duplicates', c.duplicates, m.version)}"
                    f'<td class="{"ok" if ok else "bad"}" data-reconciles="{str(ok).lower()}">{verdict}</td></tr>')
        previous = m
    head = "".join(f"<th>{h}</th>" for h in ("version", "stage", "schema", "created (UTC)", "input", "output",
                                             "quarantined", "duplicates", "accounting"))
    lineage = []
    for m in data.chain:
        detail = {k: v for k, v in m.lineage.items() if k in ("ingest", "annotate", "score", "filter", "tokenize")}
        lineage.append(f"<li><code>{esc(m.version)}</code> {esc(m.lineage.get('command', ''))} "
                       f"(git {esc(m.lineage.get('git_revision'))})<br><code>{esc(json.dumps(detail)[:600])}</code></li>")
    return (f"<h2>Ancestry and accounting</h2><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}"
            f"</tbody></table><p class=muted>Each stage: input = output + quarantined + duplicates; each "
            f"stage's input is its parent's output.</p><details><summary>lineage</summary><ul>{''.join(lineage)}"
            f"</ul></details>")


def _quarantine_section(data: ReportData) -> str:
    charts, listed, reasons = [], [], collections.Counter()
    for m in data.chain:
        stored = collections.Counter(r["reason"] for r in data.quarantine[m.version])
        reasons.update(stored)
        if stored:
            charts.append(bar_chart(dict(stored), f"{m.stage} ({m.version[:8]}): {sum(stored.values())} quarantined",
                                    attrs={"data-kind": "quarantine", "data-version": m.version}))
        listed += [(m, r) for r in data.quarantine[m.version]]
    limit = data.quarantine_rows
    shown = listed[:limit]
    options = "".join(f'<option value="{esc(r)}">{esc(r)} ({n})</option>' for r, n in sorted(reasons.items()))
    body = "".join(f'<tr data-reason="{esc(r["reason"])}"><td>{esc(m.stage)}</td><td>{esc(r["reason"])}</td>'
                   f'<td>{esc(r["message"][:200])}</td><td>{esc(r["source_ref"])}</td>'
                   f'<td><code>{esc((r["sample_id"] or "-")[:12])}</code></td></tr>' for m, r in shown)
    total = sum(reasons.values())
    return (f'<h2>Quarantine</h2><p><span data-count="quarantined-total">{total}</span> rows quarantined along '
            f'the chain, by stage and reason.</p><div class="charts">{"".join(charts) or "<p>none</p>"}</div>'
            f'<div class="filters">reason: <select data-filter="reason" data-target="#quarantine tbody tr">'
            f'<option value="">all</option>{options}</select> <span class="shown"></span></div>'
            f'<table id="quarantine"><thead><tr><th>stage</th><th>reason</th><th>message</th><th>source</th>'
            f'<th>sample</th></tr></thead><tbody>{body}</tbody></table>'
            + (f"<p class=muted>first {limit} of {len(listed)} rows listed</p>" if len(listed) > limit else ""))


def _words(texts: list[str | None]) -> list[int]:
    return [len(t.split()) for t in texts if t is not None]


def _distributions_section(data: ReportData) -> str:
    rows = data.rows
    charts = [histogram(_words(rows["instruction"].to_pylist()), "instruction length (words)")]
    if "reasoning" in rows.column_names:
        charts.append(histogram(_words(rows["reasoning"].to_pylist()), "reasoning length (words)"))
    if "reasoning_len" in rows.column_names:
        charts += [histogram(rows["instruction_len"].to_pylist(), "instruction length (tokens)"),
                   histogram(rows["reasoning_len"].to_pylist(), "reasoning length (tokens)")]
    sides = [max(w, h) for w, h in zip(rows["output_width"].to_pylist(), rows["output_height"].to_pylist())
             if w is not None]
    charts.append(histogram(sides, "output image size (longer side, px)"))
    categories = collections.Counter(c or "(none)" for c in rows["category"].to_pylist())
    tasks = collections.Counter(rows["task"].to_pylist())
    counts = table(["category", "rows"], sorted(categories.items()), 'id="categories"')
    return (f'<h2>Distributions</h2><p><span data-count="rows">{rows.num_rows}</span> rows: '
            + ", ".join(f"{esc(t)} {n}" for t, n in sorted(tasks.items()))
            + f'</p><div class="charts">{"".join(charts)}{bar_chart(dict(categories), "categories", attrs={"data-kind": "category"})}</div>{counts}')


def _diff_section(data: ReportData) -> str:
    d = data.diff
    if d is None:
        return "<h2>Diff</h2><p>no parent version to compare with</p>"
    rows = [(kind, d[kind], " ".join(s[:12] for s in d["examples"].get(kind, []))) for kind in
            ("added", "removed", "changed")] + [("unchanged", d["unchanged"], "")]
    quarantined = len(data.quarantine[data.manifest.version])
    note = f"<p class=muted>this stage quarantined {quarantined} of its input rows.</p>"
    return (f"<h2>Diff: {esc(d['a'])} &rarr; {esc(d['b'])}</h2><p class=muted>by sample_id, comparing "
            f"{esc(', '.join(d['compared_columns']))}</p>{table(['rows', 'count', 'examples'], rows, 'id=diff')}{note}")


def _cards_section(data: ReportData) -> str:
    cards = []
    for c in data.cards:
        pictures = "".join(f'<img alt="{label}" title="{label}" src="{png_data_url(thumbnail(image))}">'
                           for label, image in (("input", c["input_image"]), ("output", c["output_image"]),
                                                ("decoded from codes", c["decoded"])) if image is not None)
        reasoning = c.get("reasoning")
        tokens = f" · tokens {c['instruction_len']}/{c['reasoning_len']}" if "reasoning_len" in c else ""
        cards.append(f'<div class="card" data-category="{esc(c["category"] or "(none)")}">{pictures}'
                     f'<p class="meta">{esc(c["task"])} · {esc(c["category"] or "(none)")} · '
                     f'<code>{esc(c["sample_id"][:12])}</code>{tokens}</p><p><b>{esc(c["instruction"])}</b></p>'
                     + (f"<p>{esc(reasoning)}</p>" if reasoning is not None else "") + _judged(c) + "</div>")
    categories = sorted({c["category"] or "(none)" for c in data.cards})
    options = "".join(f'<option value="{esc(c)}">{esc(c)}</option>' for c in categories)
    return (f'<h2>Samples</h2><div class="filters">category: <select data-filter="category" '
            f'data-target=".cards .card"><option value="">all</option>{options}</select> <span class="shown"></span>'
            f'</div><div class="cards">{"".join(cards)}</div>'
            f'<p class=muted>the first {len(cards)} of {data.rows.num_rows} rows</p>')


def _judged(card: dict[str, Any]) -> str:
    """A card's scores, each with the judge's words (or why its judgement failed)."""
    if card.get("scores") is None:
        return ""
    items = []
    for axis in SCORE_AXES:
        score, answer, error = card["scores"][axis], card["judge_answers"][axis], card["judge_errors"][axis]
        if score is None and error is None:
            continue  # does not apply (consistency for a generation)
        shown = f"<b>{fmt_number(score)}</b>" if score is not None else f'<b class="bad">failed</b> ({esc(error)})'
        words = f": <i>{esc(answer[:300])}</i>" if answer else ""
        items.append(f'<li data-axis="{axis}" data-score="{"" if score is None else fmt_number(score)}">'
                     f"{esc(axis)} {shown}{words}</li>")
    return f'<ul class="judge">{"".join(items)}</ul>'


def _axis_values(scores: pa.Table, axis: str) -> list[float]:
    """The scored values of one axis (failures and not-applicable rows are null and left out),
    read column-wise: a million rows stay an Arrow column until the histogram."""
    return pc.drop_null(pc.struct_field(scores["scores"], axis)).to_pylist()


def _scores_section(data: ReportData) -> str:
    """Histograms of every scored row per axis (before any cut: the filter's threshold is drawn on
    them) and per category; failed judgements are counted beside, never plotted as 0."""
    if data.scored is None or data.scores is None:
        return ""
    scores, version = data.scores, data.scored.version
    rule = data.cut.lineage.get("filter", {}) if data.cut else {}
    floors = {axis: rule["min"][axis] for axis in SCORE_AXES if axis in rule.get("min", {})}  # JSON sorted them
    judge = data.scored.lineage.get("score", {})
    charts, summary = [], []
    for axis in SCORE_AXES:
        values = _axis_values(scores, axis)
        floor = floors.get(axis)
        below = sum(v < floor for v in values) if floor is not None else 0
        charts.append(histogram(values, f"{axis} (0-100)", bins=10, span=(0, 100), cut=floor,
                                attrs={"data-axis": axis, "data-kind": "scores"}))
        mean = f"{sum(values) / len(values):.1f}" if values else "-"
        summary.append((axis, _count(f"scored-{axis}", len(values), version), mean,
                        "-" if floor is None else f">= {fmt_number(floor)}", _count(f"below-{axis}", below, version)))
    head = "".join(f"<th>{h}</th>" for h in ("axis", "scored", "mean", "cut", "scored below the cut"))
    body = "".join(f"<tr><td>{esc(a)}</td>{n}<td class=n>{m}</td><td>{esc(c)}</td>{b}</tr>" for a, n, m, c, b in summary)
    failed = pc.sum(scores["judge_failed"]).as_py() or 0
    # per category in one pass over the columns: a million rows in thousands of categories stay cheap
    flat = scores.select(["category", "scores", "judge_failed"]).flatten()
    flat = flat.set_column(0, "category", pc.fill_null(flat["category"], "(none)"))
    grouped = flat.group_by("category").aggregate(
        [("judge_failed", "count"), ("judge_failed", "sum")] + [(f"scores.{a}", "mean") for a in SCORE_AXES])
    means = [(g["category"], g["judge_failed_count"],
              *("-" if g[f"scores.{a}_mean"] is None else f"{g[f'scores.{a}_mean']:.1f}" for a in SCORE_AXES),
              g["judge_failed_sum"]) for g in grouped.sort_by("category").to_pylist()]
    per_category = []
    for category, rows, *_ in means[:24]:  # the page stays readable; the table has every category
        members = scores.filter(pc.equal(flat["category"], category))
        per_category.append(
            f'<div class="category-scores" data-category="{esc(category)}"><h4>{esc(category)} ({rows} rows)</h4>'
            f'<div class="charts">' + "".join(
                histogram(_axis_values(members, axis), axis, bins=10, span=(0, 100), width=220, height=90,
                          cut=floors.get(axis)) for axis in SCORE_AXES) + "</div></div>")
    cut = (f'<p>cut by <code>{esc(data.cut.ref)}</code>: ' + esc(", ".join(f"{a} >= {fmt_number(v)}" for a, v in floors.items())
           or "no score thresholds") + f"; at most {rule.get('max_failed')} failed judgement(s) per row. "
           f"It kept {data.cut.counts.output} of {data.cut.counts.input} rows.</p>") if data.cut else \
        "<p class=muted>no filter below this version yet</p>"
    rubrics = judge.get("rubrics", {})
    return (f'<section id="scores"><h2>Judge scores</h2><p>{_count("scored-rows", scores.num_rows, version, "span")} '
            f'rows of <code>{esc(data.scored.ref)}</code> judged by <code>{esc(judge.get("model"))}</code> with rubrics '
            f'{esc(rubrics.get("id"))} (sha256 {esc(rubrics.get("sha256", "")[:12])}); '
            f'{_count("judge-failed", failed, version, "span")} judgements failed '
            f'(not plotted: a failure is no score, not 0).</p>{cut}<div class="charts">{"".join(charts)}</div>'
            f'<table id="score-summary"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
            f'<h3>Mean score per category</h3>'
            + table(["category", "rows", *SCORE_AXES, "failed judgements"], means, 'id="category-scores"')
            + f"<details open><summary>histograms per category</summary>{''.join(per_category)}</details></section>")


def write_report(cfg: ReportConfig) -> Path:
    data = collect(cfg)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(data), encoding="utf-8")
    return out
