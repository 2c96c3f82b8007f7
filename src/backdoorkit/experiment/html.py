"""The HTML report: ``backdoorkit report results.db --format html --out DIR`` (``DIR/report.html``).

One self-contained file that opens offline: no external resource of any kind (no scripts, fonts or
style sheets from elsewhere); every image (BA / ASR bars per column group, the defenses' skip-scan
panels, the trigger gallery) is embedded as a base64 ``data:`` URI.  It shows:

* the main table (rows = defenses, column groups = dataset x attack) with the paper's BA / ASR in
  their own columns beside ours when paper numbers are attached (:func:`backdoorkit.experiment.report.
  load_paper`), best values in bold and failures marked as in the Markdown report;
* the tables per defense kind (detection, isolation, repair, inspection metrics);
* the figures, the trigger gallery, paper rows that matched nothing, skipped and failed cells.

A small inline script marks ``<body data-images="ok">`` once every image has loaded (``complete`` and
a non-zero ``naturalWidth``; ``"broken"`` otherwise) and records ``data-images-loaded="k/n"``, so a
headless browser can check the file renders.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backdoorkit.experiment.report import Group, ReportTable

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child, th.key, td.key { text-align: left; }
thead th { border-bottom: 2px solid #444; }
td.paper, th.paper { color: #555; background: #f4f4f8; font-style: italic; }
td.fail { color: #b00020; }
.legend, .note { color: #555; font-size: 0.85em; max-width: 60em; }
.wide { overflow-x: auto; max-width: 100%; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.8em; color: #555; }
"""

SCRIPT = """
(function () {
  function check() {
    var imgs = Array.prototype.slice.call(document.images);
    var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
    document.body.setAttribute("data-images-loaded", ok + "/" + imgs.length);
    document.body.setAttribute("data-images", ok === imgs.length ? "ok" : "broken");
  }
  if (document.readyState === "complete") { check(); } else { window.addEventListener("load", check); }
})();
"""


def data_uri(path: str | Path) -> str:
    """A PNG (or other image) file as a ``data:`` URI."""
    path = Path(path)
    kind = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
    mime = kind.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _table(header: Sequence[str], body: Iterable[Sequence[str]], *, cls: str = "", keys: int = 1) -> str:
    """A plain table; the first ``keys`` columns name the row and are left-aligned, values right."""

    def key(i: int) -> str:
        return ' class="key"' if i < keys else ""

    head = "".join(f"<th{key(i)}>{_e(h)}</th>" for i, h in enumerate(header))
    rows = "".join(
        "<tr>" + "".join(f"<td{key(i)}>{_e(c)}</td>" for i, c in enumerate(row)) + "</tr>" for row in body
    )
    table = f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
    return f'<div class="wide">{table}</div>'


def _main_td(table: ReportTable, d: str, g: Group, which: str, from_paper: bool) -> str:
    """One main-table cell: the paper's value, or ours (bold when best, class ``fail`` on failure)."""
    from backdoorkit.experiment.report import _cell, paper_cell

    if from_paper:
        return f'<td class="paper">{_e(paper_cell(table, d, g, which))}</td>'
    marks = table.cell(d, g) or {}
    text = _e(_cell(table, d, g, which, "plain"))  # failures carry FAIL_MARK already
    if marks.get(f"best_{which}"):
        text = f"<strong>{text}</strong>"
    return f'<td class="{"fail" if marks.get(f"fail_{which}") else ""}">{text}</td>'


def main_table(table: ReportTable) -> str:
    """The main table: a header row of column groups, a row of sub-columns, then the rows (defenses,
    or settings when the report turns the table: :func:`~backdoorkit.experiment.report.main_layout`)."""
    from backdoorkit.experiment.report import main_layout, subcolumn_label

    layout = main_layout(table)
    groups = "".join(
        f'<th colspan="{len(subs)}" style="text-align:center">{_e(top)}</th>' for top, subs in layout.tops
    )
    subs = "".join(
        f'<th class="{"paper" if p else ""}">{_e(subcolumn_label(m, p))}</th>'
        for _, subs in layout.tops
        for m, p in subs
    )
    body = [
        "<tr>" + f"<td>{_e(name)}</td>" + "".join(_main_td(table, *slot) for slot in slots) + "</tr>"
        for name, slots in layout.rows
    ]
    return (
        '<div class="wide"><table class="main"><thead>'
        f'<tr><th rowspan="2">{layout.key}</th>{groups}</tr><tr>{subs}</tr>'
        f"</thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _figures(paths: Iterable[Path], caption: str = "") -> str:
    out = []
    for p in paths:
        alt, text = _e(p.stem.replace("_", " ")), _e(caption or p.stem)
        out.append(f'<figure><img src="{data_uri(p)}" alt="{alt}"><figcaption>{text}</figcaption></figure>')
    return "".join(out)


def _items(items: Iterable[tuple[str, str]], code: bool = False) -> str:
    wrap = (lambda t: f"<code>{_e(t)}</code>") if code else _e
    return "<ul>" + "".join(f"<li>{_e(what)}: {wrap(why)}</li>" for what, why in items) + "</ul>"


def to_html(
    table: ReportTable,
    *,
    title: str = "Backdoor defenses",
    figures: Iterable[Path] = (),
    gallery: Path | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The whole report as one self-contained HTML document (images embedded)."""
    from backdoorkit.experiment.report import _extra_tables, _legend

    figs = [Path(p) for p in figures]
    bars = [p for p in figs if p.name.startswith("bars_")]
    scans = [p for p in figs if p.name.startswith("scan_")]
    other = [p for p in figs if p not in bars and p not in scans]
    parts = [f"<h1>{_e(title)}</h1>"]
    if table.groups:
        parts += [main_table(table), f'<p class="legend">{_e(_legend(table))}</p>']
    else:
        parts.append("<p>No finished cells yet.</p>")
    for extra, header, body in _extra_tables(table):
        parts += [f"<h2>{_e(extra)}</h2>", _table(header, body, keys=2)]
    if bars:
        parts += ["<h2>BA / ASR per column group</h2>", _figures(bars)]
    if scans:
        parts += ["<h2>Skip scans (on the defender's data)</h2>", _figures(scans)]
    if other:
        parts += ["<h2>Other figures</h2>", _figures(other)]
    if gallery is not None:
        parts += [
            "<h2>Trigger gallery</h2>",
            _figures([gallery], "clean / poisoned / amplified difference per attack"),
        ]
    if notes:
        parts.append("".join(f'<p class="note">{_e(n)}</p>' for n in notes))
    if table.paper_unmatched:
        parts += ["<h2>Paper rows without a result here</h2>", _items(table.paper_unmatched)]
    if table.skipped:
        parts += ["<h2>Skipped combinations</h2>", _items(table.skipped)]
    if table.failed:
        parts += ["<h2>Failed cells</h2>", _items(table.failed, code=True)]
    if table.pending:
        parts.append(f'<p class="note">{table.pending} cells not finished yet (pending or running).</p>')
    if table.superseded:
        parts.append(
            f'<p class="note">{table.superseded} older results with the same coordinates are not shown '
            "(report one spec with --spec HASH).</p>"
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head>\n"
        f'<body data-images="pending">\n{chr(10).join(parts)}\n<script>{SCRIPT}</script>\n</body></html>\n'
    )
