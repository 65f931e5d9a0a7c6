"""One self-contained report.html of an analysis, for reviews without a W&B server: `analyze.py --html`.

Everything is inside the file (Plotly's JavaScript inlined once, the static PNGs as data URIs, the style
and the small table script inline), so it can be mailed, attached to a pull request or opened from any
folder with nothing fetched. It answers "which config is best" first, then shows the interactive figures,
the PNGs for papers, and the tables (sortable, filterable).
"""

import base64
import html
from datetime import datetime
from pathlib import Path

import pandas as pd
from plotly.offline import get_plotlyjs

from icl_lr.analysis import sections

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1250px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
code, pre { background: #f4f4f4; border-radius: 3px; } pre { padding: .6em; white-space: pre-wrap; }
table { border-collapse: collapse; font-size: 13px; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; text-align: left; } tr:nth-child(even) td { background: #fafafa; }
table.sortable th { cursor: pointer; user-select: none; } table.sortable th:after { content: " \\2195"; color: #aaa; }
tr.best td { background: #d9f2d9 !important; font-weight: 600; } tr.overlap td { background: #f3f9e8 !important; }
.scroll { overflow-x: auto; max-height: 32em; overflow-y: auto; } input.filter { margin: .3em 0; width: 24em; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; } nav a { margin-right: 1em; } .note { color: #444; }
details summary { cursor: pointer; color: #0a58ca; margin: .5em 0; } .headline { font-size: 1.1em; }
"""

# Click a header to sort by it (numbers as numbers, again to reverse); type in the box to keep matching rows.
SCRIPT = """
function cellValue(row, i) {
  const text = row.cells[i].innerText.trim(), number = parseFloat(text);
  return isNaN(number) ? text.toLowerCase() : number;
}
document.querySelectorAll("table.sortable").forEach(table => {
  table.querySelectorAll("thead th").forEach((th, i) => th.addEventListener("click", () => {
    const body = table.tBodies[0], ascending = th.dataset.order !== "asc";
    const rows = Array.from(body.rows).sort((a, b) => {
      const x = cellValue(a, i), y = cellValue(b, i);
      return (x > y ? 1 : x < y ? -1 : 0) * (ascending ? 1 : -1);
    });
    table.querySelectorAll("thead th").forEach(other => delete other.dataset.order);
    th.dataset.order = ascending ? "asc" : "desc";
    rows.forEach(row => body.appendChild(row));
  }));
});
document.querySelectorAll("input.filter").forEach(input => input.addEventListener("input", () => {
  const table = document.getElementById(input.dataset.table), words = input.value.toLowerCase();
  Array.from(table.tBodies[0].rows).forEach(row => {
    row.style.display = row.innerText.toLowerCase().includes(words) ? "" : "none";
  });
}));
"""


def _table(frame: pd.DataFrame, table_id: str, row_classes: list[str] | None = None, links: dict | None = None) -> str:
    """A sortable table with a filter box; numbers to 4 significant digits, a missing value blank; a run id
    links to its W&B page where `links` has one."""
    frame = frame.copy()
    escaped = {c: frame[c].map(lambda v: "" if pd.isna(v) else html.escape(_text(v))) for c in frame}
    if links and "run_id" in frame:
        escaped["run_id"] = frame.run_id.map(
            lambda r: f'<a href="{html.escape(links[r])}">{html.escape(r)}</a>' if links.get(r) else html.escape(r)
        )
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame)
    classes = row_classes or [""] * len(frame)
    rows = "".join(
        f'<tr class="{classes[i]}">' + "".join(f"<td>{escaped[c].iloc[i]}</td>" for c in frame) + "</tr>"
        for i in range(len(frame))
    )
    return (
        f'<input class="filter" data-table="{table_id}" placeholder="filter rows ({len(frame)})">'
        f'<div class=scroll><table class="sortable" id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table></div>"
    )


def _text(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _png(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(caption)
    return (
        f'<figure id="{html.escape(path.stem)}"><img src="data:image/png;base64,{data}" alt="{alt}">'
        f"<figcaption><b>{html.escape(path.name)}</b>: {alt}</figcaption></figure>"
    )


def _trajectory(parts: dict) -> str:
    """sections.TRAJECTORY: a part per title, each its lines, figures and tables (runs with a trajectory, read
    from their run dirs: no W&B report has it)."""
    shown = (
        f"<h2>{sections.TRAJECTORY}</h2>\n<p>Runs with a trajectory (training.trajectory, eval.predictions, "
        "eval.py --trajectory), each at every step it was evaluated.</p>\n"
    )
    for i, (title, part) in enumerate(parts.items()):
        lines = "".join(f"<li>{html.escape(line)}</li>" for line in part.get("lines", ()))
        shown += f"<h3>{html.escape(title)}</h3>\n<ul>{lines}</ul>\n"
        shown += "".join(_png(p, caption) for p, caption in part.get("figures", {}).items())
        for j, (name, frame) in enumerate(part.get("tables", {}).items()):
            shown += f"<p><b>{html.escape(name)}</b></p>{_table(frame, f'trajectory{i}_{j}')}\n"
    return shown


def write_report(
    path: Path,
    command: str,
    sources: list[str],
    varied: dict,
    counts: dict,
    summary: pd.DataFrame,
    note: str,
    interactive: dict,
    figures: dict,
    tables: dict,
    links: dict,
    evaluations: pd.DataFrame | None = None,
    eval_figures: dict | None = None,
    trajectory: dict | None = None,
) -> None:
    """`varied`: {group key: its values}; `counts`: runs by status; `summary`: tables.summary_table, best
    first; `note`: what its order and cells mean; `interactive`: {title: Plotly fragment}; `figures`: {png
    path: caption}; `tables`: {title: frame}; `links`: {run id: W&B URL}; `evaluations`: the eval dirs' rows
    (python eval.py: the model each scored, the conditions, the headline) and `eval_figures` {png: caption};
    `trajectory`: {title: {"lines": [str], "figures": {png: caption}, "tables": {title: frame}}}, shown as
    sections.TRAJECTORY's parts."""
    runs = ", ".join(f"{n} {status}" for status, n in counts.items())
    keys = list(varied)
    metric = [c for c in summary if c not in ("rank", "verdict", *keys)][0]
    classes = ["best" if v == "best" else "overlap" if v == "overlaps best" else "" for v in summary.verdict]
    varied_rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(', '.join(map(str, v)))}</td></tr>" for k, v in varied.items()
    )
    nav = "".join(f'<a href="#fig{i}">{html.escape(t)}</a>' for i, t in enumerate(interactive))
    plotted = "".join(
        f'<section id="fig{i}"><h3>{html.escape(title)}</h3>{fragment}</section>'
        for i, (title, fragment) in enumerate(interactive.items())
    )
    folded = "".join(
        f"<details><summary>{html.escape(title)} ({len(frame)} rows)</summary>{_table(frame, f't{i}', links=links)}"
        "</details>"
        for i, (title, frame) in enumerate(tables.items())
    )
    evaluated = ""
    if evaluations is not None and len(evaluations):
        pngs = "".join(_png(p, caption) for p, caption in (eval_figures or {}).items())
        evaluated = (
            f"<h2>{sections.EVALUATIONS}</h2>\n<p>Trained models scored by <code>python eval.py</code> on other "
            f"prompts, each in an eval dir of its own, grouped by the model they read.</p>\n"
            f"{_table(evaluations, 'evaluations')}\n<details><summary>Their error vs k</summary>{pngs}</details>\n"
        )
    over_steps = _trajectory(trajectory) if trajectory else ""
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>icl-lr analysis</title><style>{STYLE}</style>
<script>{get_plotlyjs()}</script></head>
<body>
<h1>icl-lr analysis</h1>
<p>Made {datetime.now():%Y-%m-%d %H:%M} by</p>
<pre>{html.escape(command)}</pre>
<p>from {html.escape(", ".join(sources))}: {runs} runs; only finished runs are aggregated.</p>
<h2>{sections.BEST}</h2>
<p class="headline">{html.escape(sections.headline(summary, keys, metric))}</p>
<p class="note">{html.escape(note)}</p>
{_table(summary, "summary", classes)}
<h2>What varies</h2>
<p>Runs are grouped by the config keys that differ between them (seeds aside).</p>
<table>{varied_rows}</table>
<h2>Figures</h2>
<p class="note">Hover for values, drag to zoom (double-click resets), click a legend entry to hide or show it.
Bands: the 95% interval of the mean over seeds.</p>
<nav>{nav}</nav>
{plotted}
<details><summary>Static figures (PNG, for papers; beside this file too)</summary>
{"".join(_png(p, caption) for p, caption in figures.items())}
</details>
{evaluated}{over_steps}<h2>Tables</h2>
<p>The same tables are beside this file as CSV.</p>
{folded}
<script>{SCRIPT}</script>
</body></html>
"""
    path.write_text(page)
