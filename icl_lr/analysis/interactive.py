"""report.html's interactive figures (Plotly: hover values, zoom, a click on a legend entry hides a series),
from the same statistics tables as the PNGs of plots.py. Each figure is an HTML fragment without Plotly's
JavaScript, which the page inlines once."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from icl_lr.analysis.plots import R2, YLABELS, group_label, held_out_curves, metric_label, y_axis
from icl_lr.analysis.tables import POOL_PREDICTORS, POOL_SETS, TASK_POOL

COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]
DASHES = ["dash", "dot", "dashdot", "longdash", "longdashdot"]
SYMBOLS = ["circle", "square", "diamond", "triangle-up", "x", "cross", "star"]
ERROR = "squared error / d"
K = "in-context examples k"


def _translucent(colour: str, alpha: float = 0.15) -> str:
    """A band's fill: the line's colour ("black" or "#rrggbb") at `alpha`."""
    red, green, blue = (0, 0, 0) if colour == "black" else (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red}, {green}, {blue}, {alpha})"


def _band(fig, x, low, high, colour: str, group: str, row: int, col: int, floor) -> None:
    """The 95% interval over seeds as a filled band between two invisible lines (no hover of its own); on a
    log axis its lower edge stops at the floor."""
    low = np.asarray(low, dtype=float)
    if np.all(np.isnan(low)):
        return  # one seed: no interval
    low = np.maximum(low, floor) if floor else low
    for y, fill in ((high, None), (low, "tonexty")):
        fig.add_trace(
            go.Scatter(
                x=x, y=y, mode="lines", line={"width": 0, "color": colour}, fill=fill, fillcolor=_translucent(colour),
                showlegend=False, legendgroup=group, hoverinfo="skip",
            ),
            row=row, col=col,
        )  # fmt: skip


def _line(fig, x, stats: pd.DataFrame, name: str, i: int, model: bool, row: int, col: int, legend: bool, axis,
          x_name: str = "k") -> None:  # fmt: skip
    """A series with its hover values; on a log axis, values below its floor (zeros of exact baselines) are
    drawn at the floor as open markers, their hover giving the value."""
    colour = "black" if model and i < 0 else COLOURS[i % len(COLOURS)]
    _, floor = axis
    means = stats["mean"].to_numpy(dtype=float)
    below = np.zeros(len(means), bool) if floor is None else means < floor
    hover = [
        f"{name}<br>{x_name}={k}: {m:.4g}" + (f" [{lo:.4g}, {hi:.4g}]" if np.isfinite(lo) else "") + f" (n={n:.0f})"
        + (" (below the axis: drawn at its floor)" if low else "")
        for k, m, lo, hi, n, low in zip(x, means, stats.ci_low, stats.ci_high, stats.n, below, strict=True)
    ]  # fmt: skip
    symbol = SYMBOLS[i % len(SYMBOLS)]
    if model:
        _band(fig, x, stats.ci_low, stats.ci_high, colour, name, row, col, floor)
    fig.add_trace(
        go.Scatter(
            x=x, y=np.where(below, floor, means) if floor else means, name=name, legendgroup=name, showlegend=legend,
            mode="lines+markers",
            line={"color": colour, "width": 3 if model else 1.5, "dash": "solid" if model else DASHES[i % len(DASHES)]},
            marker={"symbol": [f"{symbol}-open" if b else symbol for b in below], "size": 7 if model else 6},
            hovertext=hover, hoverinfo="text",
        ),
        row=row, col=col,
    )  # fmt: skip


def _panel_axis(fig, values, row: int, col: int):
    """A panel's y axis from its own values (plots.y_axis): log where they span decades."""
    axis = y_axis(values)
    fig.update_yaxes(type=axis[0], row=row, col=col)
    return axis


def _finish(fig, panels: int, columns: int, ylabel: str, xlabel: str, title: str) -> str:
    fig.update_yaxes(title_text=ylabel, showgrid=True)
    fig.update_xaxes(title_text=xlabel, showgrid=True)
    rows = -(-panels // columns)
    fig.update_layout(
        title=title, height=330 * rows + 90, template="plotly_white", hovermode="closest",
        legend={"title": {"text": "click to hide or show"}}, margin={"t": 80},
    )  # fmt: skip
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False, "responsive": True})


def _grid(titles: list[str], columns: int):
    columns = max(1, min(columns, len(titles)))
    rows = -(-len(titles) // columns)
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=titles, horizontal_spacing=0.07, vertical_spacing=0.16)
    return fig, columns


def error_vs_k(curve_stats: pd.DataFrame, keys: list[str], metric: str = "error", title: str = "Error vs k") -> str:
    """Held-out error vs k, a panel per group: the model (95% band over seeds) beside the baselines; or
    another curve `metric` (DISTANCE: each algorithm's distance from the model)."""
    stats = held_out_curves(curve_stats, metric)
    groups = list(stats.groupby(keys, dropna=False, sort=True))
    fig, columns = _grid([group_label(keys, v) for v, _ in groups], 3)
    predictors = list(dict.fromkeys(["model", *stats.predictor]))
    for p, (_, group) in enumerate(groups):
        row, col = p // columns + 1, p % columns + 1
        axis = _panel_axis(fig, group["mean"], row, col)
        for i, predictor in enumerate(predictors):
            line = group[group.predictor == predictor].sort_values("k")
            if len(line):
                _line(fig, line.k, line, predictor, i - 1, predictor == "model", row, col, p == 0, axis)
    return _finish(fig, len(groups), columns, YLABELS[metric], K, f"{title} (hover for values)")


def sets_vs_k(curve_stats: pd.DataFrame, keys: list[str], sets: list[str], title: str) -> str:
    """Error vs k, a panel per prompt set: each group's model (band over seeds) and its Bayes baseline."""
    stats = curve_stats[curve_stats.set.isin(sets) & curve_stats.predictor.isin(["model", "bayes"])]
    groups = list(stats.groupby(keys, dropna=False, sort=True))
    fig, columns = _grid(sets, 4)
    for p, eval_set in enumerate(sets):
        row, col = p // columns + 1, p % columns + 1
        axis = _panel_axis(fig, stats[stats.set == eval_set]["mean"], row, col)
        for i, (values, group) in enumerate(groups):
            label = group_label(keys, values)
            for predictor in ("model", "bayes"):
                line = group[(group.set == eval_set) & (group.predictor == predictor)].sort_values("k")
                name = f"{predictor}: {label}" if len(groups) > 1 else predictor
                _line(fig, line.k, line, name, i if len(groups) > 1 else (i - 1 if predictor == "model" else 1),
                      predictor == "model", row, col, p == 0, axis)  # fmt: skip
    return _finish(fig, len(sets), columns, ERROR, K, title)


def learning_curves(history_stats: pd.DataFrame, keys: list[str], reference: str = "the reference") -> str:
    """Each learning-curve metric against the step, a panel per metric and a line per group (band: seeds)."""
    metrics = list(history_stats.metric.unique())
    groups = list(history_stats.groupby(keys, dropna=False, sort=True))
    fig, columns = _grid([metric_label(m, reference) for m in metrics], 2)
    for p, metric in enumerate(metrics):
        row, col = p // columns + 1, p % columns + 1
        axis = _panel_axis(fig, history_stats[history_stats.metric == metric]["mean"], row, col)
        for i, (values, group) in enumerate(groups):
            line = group[group.metric == metric].sort_values("step")
            _line(fig, line.step, line, group_label(keys, values), i, True, row, col, p == 0, axis, x_name="step")
    return _finish(fig, len(metrics), columns, "", "training step", "Learning curves")


def task_pool(stats: pd.DataFrame, keys: list[str]) -> str:
    """Error (mean over k) vs the task pool's size, on pool and on fresh tasks: the model, dMMSE, Bayes."""
    others = [k for k in keys if k != TASK_POOL]
    fig, columns = _grid(list(POOL_SETS.values()), 2)
    for p, eval_set in enumerate(POOL_SETS):
        axis = _panel_axis(fig, stats[stats.set == eval_set]["mean"], 1, p + 1)
        for j, (values, group) in enumerate(stats.groupby(others, dropna=False) if others else [((), stats)]):
            for i, predictor in enumerate(POOL_PREDICTORS):
                line = group[(group.set == eval_set) & (group.predictor == predictor)].sort_values(TASK_POOL)
                name = " ".join(filter(None, [predictor, group_label(others, values) if others else ""]))
                _line(fig, line[TASK_POOL], line, name, i + j * len(POOL_PREDICTORS), predictor == "model", 1, p + 1,
                      p == 0, axis, x_name="M")  # fmt: skip
    fig.update_xaxes(type="log")
    return _finish(fig, 2, columns, "squared error / d, mean over k", "task pool size M", "Error vs task pool size")


def probe_r2(stats: pd.DataFrame, keys: list[str], title: str) -> str:
    """Probe R² by layer, a panel per target and a line per group (band: seeds), from `tables.probe_r2`."""
    targets = list(dict.fromkeys(stats.target))
    groups = list(stats.groupby(keys, dropna=False, sort=True))
    fig, columns = _grid(targets, 5)
    for p, target in enumerate(targets):
        row, col = p // columns + 1, p % columns + 1
        for i, (values, group) in enumerate(groups):
            line = group[group.target == target].sort_values("layer")
            _line(fig, line.layer, line, group_label(keys, values), i, True, row, col, p == 0, ("linear", None),
                  x_name="layer")  # fmt: skip
    fig.update_yaxes(range=[min(-0.05, stats.ci_low.min(), stats["mean"].min()) - 0.02, 1.05])  # R² on its scale
    return _finish(fig, len(targets), columns, R2, "layer", title)


def attention_maps(weights_LxHxTxT: np.ndarray, title: str) -> str:
    """Attention maps, a heat map per layer (row) and head (column): query down, key across; hover gives the
    weight (mean over the held-out prompts, eval.attention)."""
    layers, heads = weights_LxHxTxT.shape[:2]
    titles = [f"layer {layer}, head {head}" for layer in range(layers) for head in range(heads)]
    fig = make_subplots(rows=layers, cols=heads, subplot_titles=titles, horizontal_spacing=0.05,
                        vertical_spacing=min(0.08, 0.5 / layers))  # fmt: skip
    for layer in range(layers):
        for head in range(heads):
            fig.add_trace(
                go.Heatmap(z=np.round(weights_LxHxTxT[layer, head], 4), zmin=0, zmax=1, colorscale="Viridis",
                           showscale=layer == head == 0, hovertemplate="query %{y}, key %{x}: %{z}<extra></extra>"),
                row=layer + 1, col=head + 1,
            )  # fmt: skip
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title, height=260 * layers + 90, width=300 * heads + 120, template="plotly_white")
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})
