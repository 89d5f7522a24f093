"""Self-contained HTML pages: inline CSS, inline SVG charts, images as data URLs, no network.

Shared by `pipeline report` (a dataset version) and `trainer eval` (a benchmark run), so both look
alike and open offline from a single file. Every piece of text goes through `esc`."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Sequence

from PIL import Image

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:16px 24px;color:#222}
h1{font-size:22px;margin:8px 0} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:6px 0} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4} td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#17692f} .bad{color:#b3261e} .muted{color:#777} code{font-size:12px}
.charts{display:flex;flex-wrap:wrap;gap:18px} figure{margin:0} figcaption{font-size:12px;color:#555}
.cards{display:flex;flex-wrap:wrap;gap:12px} .card{border:1px solid #ccc;border-radius:6px;padding:8px;width:360px}
.card img{width:112px;height:112px;image-rendering:pixelated;border:1px solid #eee;margin-right:4px}
.card p{margin:4px 0;white-space:pre-wrap;word-wrap:break-word} .card .meta{font-size:12px;color:#666}
.filters{margin:8px 0} .filters select{margin-right:14px}
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def png_data_url(image) -> str:
    """A PIL image or encoded image bytes -> a data URL (bytes are re-encoded as PNG)."""
    if isinstance(image, (bytes, bytearray)):
        image = Image.open(io.BytesIO(image))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def thumbnail(image, side: int = 112):
    if isinstance(image, (bytes, bytearray)):
        image = Image.open(io.BytesIO(image))
    image = image.convert("RGB")
    image.thumbnail((side, side), Image.BICUBIC)
    return image


def table(header: Sequence[str], rows: Iterable[Sequence[object]], attrs: str = "",
          numeric_from: int | None = None) -> str:
    """Cells are escaped; numbers, and every cell from column `numeric_from` on (for tables of
    preformatted figures), are right-aligned."""
    def cell(i: int, c: object) -> str:
        numeric = isinstance(c, (int, float)) or (numeric_from is not None and i >= numeric_from)
        return f'<td class="n">{esc(c)}</td>' if numeric else f"<td>{esc(c)}</td>"

    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(i, c) for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table {attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def bar_chart(counts: dict[str, int | float], title: str, width: int = 460, attrs: dict[str, str] | None = None) -> str:
    """Horizontal bars, one per key, largest first, value printed at the end of the bar. Each value
    carries `data-key` and `attrs`, so a script can read the numbers back."""
    extra = "".join(f' {k}="{esc(v)}"' for k, v in (attrs or {}).items())
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    if not items:
        return f"<figure><figcaption>{esc(title)}: none</figcaption></figure>"
    label_w, row_h, top = 170, 18, 4
    height = top + row_h * len(items) + 4
    biggest = max(v for _, v in items) or 1
    bars = []
    for i, (key, value) in enumerate(items):
        y = top + i * row_h
        w = (width - label_w - 60) * value / biggest
        bars.append(f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end" font-size="12">{esc(key)}</text>'
                    f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{row_h - 5}" fill="#4a78c2"/>'
                    f'<text x="{label_w + w + 4:.1f}" y="{y + 13}" font-size="12" data-key="{esc(key)}"{extra}>'
                    f'{esc(fmt_number(value))}</text>')
    return (f'<figure><svg width="{width}" height="{height}" role="img" aria-label="{esc(title)}">'
            f'{"".join(bars)}</svg><figcaption>{esc(title)}</figcaption></figure>')


def line_chart(series: dict[str, Sequence[tuple[float, float]]], title: str, x_label: str = "step",
               width: int = 460, height: int = 220) -> str:
    """Lines of (x, y) points, one per series, on shared axes with their extremes labelled; each
    point carries `data-series`, `data-x` and `data-y`, so a script (or a test) can read it back."""
    points = [p for values in series.values() for p in values]
    if not points:
        return f"<figure><figcaption>{esc(title)}: none</figcaption></figure>"
    colours = ("#4a78c2", "#d9822b", "#3a9d5d", "#b3261e", "#7b4ab3", "#555")
    per_row = max(1, (width - 56) // 150)  # legend entries 150 px apart, in as many rows as they need
    rows = -(-len(series) // per_row)
    left, right, top, bottom = 48, 12, 10, 34 + 13 * (rows - 1)
    xs, ys = [x for x, _ in points], [y for _, y in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def at(x: float, y: float) -> tuple[float, float]:
        return (left + (width - left - right) * (x - x0) / (x1 - x0),
                height - bottom - (height - top - bottom) * (y - y0) / (y1 - y0))

    parts = [f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#999"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#999"/>',
             f'<text x="{left - 4}" y="{top + 10}" text-anchor="end" font-size="11">{esc(fmt_number(y1))}</text>',
             f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end" font-size="11">{esc(fmt_number(y0))}</text>',
             f'<text x="{left}" y="{height - bottom + 14}" font-size="11">{esc(fmt_number(x0))}</text>',
             f'<text x="{width - right}" y="{height - bottom + 14}" text-anchor="end" font-size="11">'
             f'{esc(fmt_number(x1))} {esc(x_label)}</text>']
    for i, (name, values) in enumerate(series.items()):
        colour = colours[i % len(colours)]
        path = " ".join(f"{a:.1f},{b:.1f}" for a, b in (at(x, y) for x, y in values))
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.6"/>')
        parts += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.2" fill="{colour}" data-series="{esc(name)}" '
                  f'data-x="{x}" data-y="{y}"/>' for (x, y), (a, b) in zip(values, (at(x, y) for x, y in values))]
        parts.append(f'<text x="{left + 8 + 150 * (i % per_row)}" y="{height - 4 - 13 * (rows - 1 - i // per_row)}" '
                     f'font-size="11" fill="{colour}">{esc(name)}</text>')
    return (f'<figure><svg width="{width}" height="{height}" role="img" aria-label="{esc(title)}">'
            f'{"".join(parts)}</svg><figcaption>{esc(title)}</figcaption></figure>')


def histogram(values: Sequence[float], title: str, bins: int = 20, width: int = 360, height: int = 150,
              span: tuple[float, float] | None = None, cut: float | None = None, attrs: dict[str, str] | None = None) -> str:
    """Counts per equal-width bin, with the range and the median written underneath. `span` fixes
    the range (scores: 0..100) instead of the values' own; `cut` draws a threshold line there."""
    values = [float(v) for v in values if v is not None]
    extra = "".join(f' {k}="{esc(v)}"' for k, v in (attrs or {}).items())
    if not values:
        return f"<figure{extra}><figcaption>{esc(title)}: no values</figcaption></figure>"
    lo, hi = span or (min(values), max(values))
    bins = bins if span else max(1, min(bins, len(set(values))))
    width_of_range = (hi - lo) or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(max(int((v - lo) / width_of_range * bins), 0), bins - 1)] += 1
    top, bottom = 6, 16
    peak = max(counts)
    bar_w = width / bins
    rects = "".join(
        f'<rect x="{i * bar_w + 1:.1f}" y="{top + (height - top - bottom) * (1 - c / peak):.1f}" '
        f'width="{max(bar_w - 2, 1):.1f}" height="{(height - top - bottom) * c / peak:.1f}" fill="#5b9a68" '
        f'data-bin="{i}" data-n="{c}"><title>{esc(fmt_number(lo + i * width_of_range / bins))}..'
        f'{esc(fmt_number(lo + (i + 1) * width_of_range / bins))}: {c}</title></rect>'
        for i, c in enumerate(counts))
    axis = (f'<text x="0" y="{height - 3}" font-size="11">{esc(fmt_number(lo))}</text>'
            f'<text x="{width}" y="{height - 3}" font-size="11" text-anchor="end">{esc(fmt_number(hi))}</text>')
    line = ""
    if cut is not None:
        x = width * (cut - lo) / width_of_range
        line = (f'<line x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{height - bottom}" stroke="#c0392b" stroke-width="2" '
                f'stroke-dasharray="4 2" data-cut="{esc(fmt_number(cut))}"/><text x="{x + 3:.1f}" y="12" font-size="11" '
                f'fill="#c0392b">cut {esc(fmt_number(cut))}</text>')
    median = sorted(values)[len(values) // 2]
    return (f'<figure{extra}><svg width="{width}" height="{height}" role="img" aria-label="{esc(title)}">{rects}{axis}'
            f'{line}</svg><figcaption>{esc(title)}: n={len(values)}, median {esc(fmt_number(median))}, peak bin {peak}'
            f'</figcaption></figure>')


def fmt_number(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e9):
        return str(int(value))
    return f"{value:.3g}" if math.isfinite(value) else str(value)


# Each <select data-filter=ATTR data-target=CSS> hides the items matching CSS whose data-ATTR is not
# its value; selects with the same target combine. A `.shown` element beside a select gets the count.
FILTER_SCRIPT = """
var selects = Array.from(document.querySelectorAll('select[data-filter]'));
function applyFilters() {
  new Set(selects.map(function (s) { return s.dataset.target; })).forEach(function (target) {
    var mine = selects.filter(function (s) { return s.dataset.target === target; });
    var items = document.querySelectorAll(target), visible = 0;
    items.forEach(function (item) {
      item.hidden = mine.some(function (s) { return s.value !== '' && item.dataset[s.dataset.filter] !== s.value; });
      if (!item.hidden) visible++;
    });
    mine.forEach(function (s) {
      var shown = s.parentElement.querySelector('.shown');
      if (shown) shown.textContent = visible + ' of ' + items.length + ' shown';
    });
  });
}
selects.forEach(function (s) { s.addEventListener('change', applyFilters); });
applyFilters();
"""


def page(title: str, body: str, script: str = "", css: str = "") -> str:
    """One HTML document; `script` is inline JavaScript run after the body is parsed, `css` is added
    to the shared style sheet."""
    js = f"<script>{script}</script>" if script else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<link rel="icon" href="data:,"><style>{CSS}{css}</style></head><body>{body}{js}</body></html>')
