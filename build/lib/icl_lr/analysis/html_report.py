"""One self-contained report.html of an analysis, for reviews without a W&B server: `analyze.py --html`.

Everything is inside the file (plots as PNG data URIs, tables as HTML, the style inline), so it can be
mailed, attached to a pull request or opened from any folder.
"""

import base64
import html
from datetime import datetime
from pathlib import Path

import pandas as pd

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
code, pre { background: #f4f4f4; border-radius: 3px; } pre { padding: .6em; white-space: pre-wrap; }
table { border-collapse: collapse; font-size: 13px; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; text-align: left; } tr:nth-child(even) td { background: #fafafa; }
.scroll { overflow-x: auto; max-height: 32em; overflow-y: auto; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; } nav a { margin-right: 1em; }
details summary { cursor: pointer; color: #0a58ca; margin: .5em 0; }
"""


def _table(frame: pd.DataFrame) -> str:
    """Numbers to 4 significant digits; a missing value (a metric a run did not log) left blank."""
    return frame.to_html(index=False, border=0, na_rep="", float_format="{:.4g}".format, escape=True)


def _figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(caption)
    return (
        f'<figure id="{html.escape(path.stem)}"><img src="data:image/png;base64,{data}" alt="{alt}">'
        f"<figcaption><b>{html.escape(path.name)}</b>: {alt}</figcaption></figure>"
    )


def write_report(
    path: Path,
    command: str,
    sources: list[str],
    varied: dict,
    counts: dict,
    summary: pd.DataFrame,
    figures: dict,
    tables: dict,
) -> None:
    """`varied`: {group key: its values}; `counts`: runs by status; `summary`: one row per group;
    `figures`: {png path: caption}; `tables`: {title: frame}, each behind a fold."""
    runs = ", ".join(f"{n} {status}" for status, n in counts.items())
    keys = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(', '.join(map(str, v)))}</td></tr>" for k, v in varied.items()
    )
    folded = "".join(
        f"<details><summary>{html.escape(title)} ({len(frame)} rows)</summary><div class=scroll>{_table(frame)}</div>"
        "</details>"
        for title, frame in tables.items()
    )
    nav = "".join(f'<a href="#{html.escape(p.stem)}">{html.escape(p.stem)}</a>' for p in figures)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>icl-lr analysis</title><style>{STYLE}</style></head>
<body>
<h1>icl-lr analysis</h1>
<p>Made {datetime.now():%Y-%m-%d %H:%M} by</p>
<pre>{html.escape(command)}</pre>
<p>from {html.escape(", ".join(sources))}: {runs} runs; only finished runs are aggregated.</p>
<h2>What varies</h2>
<p>Runs are grouped by the config keys that differ between them (seeds aside); each statistic is
over a group's seeds: mean ± std [bootstrap 95% interval of the mean] (n runs).</p>
<table>{keys}</table>
<h2>Summary</h2>
<div class=scroll>{_table(summary)}</div>
<h2>Figures</h2>
<nav>{nav}</nav>
{"".join(_figure(p, caption) for p, caption in figures.items())}
<h2>Tables</h2>
<p>The same tables are beside this file as CSV.</p>
{folded}
</body></html>
"""
    path.write_text(page)
