"""analyze.py's figures, from the tables of icl_lr.analysis: each a PNG file, groups labelled by what varies."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from icl_lr.analysis.tables import POOL_PREDICTORS, POOL_SETS, TASK_POOL, config_text  # noqa: E402
from icl_lr.records.schema import DISTANCE, EXCESS, HELD_OUT, is_error_curve  # noqa: E402


def group_label(keys: list[str], values, separator: str = ", ") -> str:
    """A group's name: `n_embd=32, noise_std=0.5`."""
    values = values if isinstance(values, tuple) else (values,)
    return separator.join(f"{k.split('.')[-1]}={config_text(v)}" for k, v in zip(keys, values, strict=True))


DECADES = 2  # a log y axis where the values span more than this many decades
METRIC_LABELS = {
    "eval/model/error_mean": "held-out error, mean over k",
    EXCESS: "excess over {reference}, mean over k",
    "train/loss": "training loss",
}


def metric_label(metric: str, reference: str = "the reference") -> str:
    """A metric's axis label: its words where known (an excess's over `reference`), else its key."""
    return METRIC_LABELS.get(metric, metric).format(reference=reference)


def y_axis(values) -> tuple[str, float | None]:
    """("log", floor) where the positive values span more than DECADES decades and none is clearly negative,
    else ("linear", None). The floor sits under the smallest value above 1e-6 of the largest: what is below
    it (an exact baseline's zeros, to rounding) is drawn at the floor."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    top = values.max() if len(values) else 0.0
    if top <= 0 or (values < -1e-6 * top).any():
        return "linear", None
    smallest = values[values > 1e-6 * top].min()
    if top / smallest <= 10**DECADES:
        return "linear", None
    return "log", smallest / 2


def _panels(n: int, columns: int = 4, width: float = 4.4, height: float = 3.4):
    """A figure of n panels, `columns` a row at most; the spare ones blank."""
    columns = min(columns, n)
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat


MARKERS = "osD^vxP*"
DASHES = ["--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1))]


def _draw(ax, x, stats: pd.DataFrame, axis, i: int, model: bool, label: str, colour=None) -> bool:
    """One series: a model's line solid with its 95% band over seeds, a baseline dashed, each with its own
    marker; on a log axis, values below the floor drawn at it with open markers. True when some were."""
    _, floor = axis
    clip = (lambda v: np.maximum(np.asarray(v, dtype=float), floor)) if floor else (lambda v: v)
    style = {"ls": "-", "lw": 2.2} if model else {"ls": DASHES[i % len(DASHES)], "lw": 1.3}
    marker = MARKERS[i % len(MARKERS)]
    (line,) = ax.plot(x, clip(stats["mean"]), color=colour, marker=marker, ms=4, label=label, **style)
    if model:
        ax.fill_between(x, clip(stats.ci_low), clip(stats.ci_high), color=colour, alpha=0.2, lw=0)
    below = np.asarray(stats["mean"], dtype=float) < floor if floor else np.zeros(len(stats), bool)
    if below.any():
        ax.plot(np.asarray(x)[below], np.full(below.sum(), floor), ls="", marker=marker, ms=6, mfc="white",
                color=line.get_color())  # fmt: skip
    return bool(below.any())


def _axes(ax, axis, xlabel: str, ylabel: str, title: str, floored: bool = False) -> None:
    """Scale, labels, grid and a legend, on every panel; a note where values sit below a log axis's floor."""
    if axis[0] == "log":
        ax.set_yscale("log")
    if floored:
        ax.annotate("open markers: below the axis (about 0)", (0.01, 0.01), xycoords="axes fraction", fontsize=6)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)


def _save(fig, path: Path, dpi: int = 120) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


YLABELS = {
    "error": "squared error / d",
    "ce": "cross-entropy of the y bin (nats)",
    "accuracy": "accuracy (the prediction's sign; 0 counts wrong)",
    DISTANCE: "mean squared difference from the model / d",
}


def held_out_curves(curve_stats: pd.DataFrame, metric: str = "error") -> pd.DataFrame:
    """The held-out set's curves of `metric`: the error curves, or those named `<metric>/<predictor>`, each
    renamed to its predictor."""
    held_out = curve_stats[curve_stats.set == HELD_OUT]
    if metric == "error":
        return held_out[held_out.predictor.map(is_error_curve)]
    chosen = held_out[held_out.predictor.str.startswith(f"{metric}/")]
    return chosen.assign(predictor=chosen.predictor.str.removeprefix(f"{metric}/"))


def plot_error_curves(curve_stats: pd.DataFrame, keys: list[str], path: Path, metric: str = "error") -> None:
    """Error vs number of in-context examples, one panel per group: the model (mean, 95% interval over
    seeds) beside the baselines, nothing cut off (a log axis where the values span decades). Another curve
    `metric` instead: "ce" (the y bin's cross-entropy of binned outputs), "accuracy" (classification's),
    "similarity_mse" (each algorithm's distance from the model)."""
    curve_stats = held_out_curves(curve_stats, metric)
    groups = list(curve_stats.groupby(keys, dropna=False, sort=True))
    ylabel = YLABELS.get(metric, metric)
    fig, axes = _panels(len(groups), columns=3, width=4.8, height=3.3 + 0.3 * len(keys))
    for ax, (values, group) in zip(axes, groups, strict=False):
        axis, floored = y_axis(group["mean"]), False
        predictors = list(dict.fromkeys(["model", *group.predictor]))
        for i, predictor in enumerate(predictors):
            line = group[group.predictor == predictor].sort_values("k")
            if len(line):
                colour = "black" if predictor == "model" else f"C{i - 1}"
                floored |= _draw(ax, line.k, line, axis, i, predictor == "model", predictor, colour)
        _axes(ax, axis, "in-context examples k", ylabel, group_label(keys, values, "\n"), floored)
    _save(fig, path)


def plot_metric(
    aggregate: pd.DataFrame,
    metric: str,
    x_key: str,
    keys: list[str],
    path: Path,
    x_order=None,
    reference: str = "the reference",
) -> None:
    """One metric's mean (bars: 95% interval over seeds) against x_key, a line per other group.
    `x_order` puts categorical x values (model sizes) in order; numeric x values plot as numbers."""
    rows = aggregate[aggregate.metric == metric]
    others = [k for k in keys if k != x_key]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for values, line in rows.groupby(others, dropna=False, sort=True) if others else [((), rows)]:
        line = line.sort_values(x_key, key=(lambda s: s.map(x_order.index)) if x_order else None)
        x = [x_order.index(v) for v in line[x_key]] if x_order else line[x_key]
        error = np.abs(np.stack([line["mean"] - line.ci_low, line.ci_high - line["mean"]]))
        ax.errorbar(
            x, line["mean"], yerr=np.nan_to_num(error), marker="o", capsize=3, label=group_label(others, values) or None
        )
    if x_order:
        ax.set_xticks(range(len(x_order)), x_order)
    label = metric_label(metric, reference)
    ax.set(xlabel=x_key, ylabel=label, title=f"{label} vs {x_key}")
    ax.grid(alpha=0.3)
    if others:
        ax.legend(fontsize=8)
    _save(fig, path)


def plot_sets(curve_stats: pd.DataFrame, keys: list[str], sets: list[str], path: Path, title: str) -> None:
    """Error vs k, one panel per prompt set (OOD conditions, noise levels): each group's model (mean, 95%
    interval over seeds); the baselines too when there is one group, else each group's Bayes dashed."""
    errors = curve_stats[curve_stats.predictor.map(is_error_curve) & curve_stats.set.isin(sets)]
    groups = list(errors.groupby(keys, dropna=False, sort=True))
    fig, axes = _panels(len(sets))
    for ax, eval_set in zip(axes, sets, strict=False):
        axis, floored = y_axis(errors[errors.set == eval_set]["mean"]), False
        for i, (values, group) in enumerate(groups):
            colour = f"C{i}" if len(groups) > 1 else "black"
            in_set = group[group.set == eval_set]
            predictors = list(dict.fromkeys(["model", *in_set.predictor]))
            for j, predictor in enumerate(predictors):
                line = in_set[in_set.predictor == predictor].sort_values("k")
                if predictor == "model":
                    label = group_label(keys, values) if len(groups) > 1 else "model"
                    floored |= _draw(ax, line.k, line, axis, i, True, label, colour)
                elif len(groups) == 1:
                    floored |= _draw(ax, line.k, line, axis, j, False, predictor, f"C{j - 1}")
                elif predictor == "bayes":
                    floored |= _draw(ax, line.k, line, axis, i, False, f"bayes: {group_label(keys, values)}", colour)
        _axes(ax, axis, "in-context examples k", "squared error / d", eval_set, floored)
    fig.suptitle(title)
    _save(fig, path, dpi=110)


def plot_error_vs_task_pool(stats: pd.DataFrame, keys: list[str], path: Path) -> None:
    """Raventos et al.'s figure from `task_pool_stats`: error vs the pool's size on pool and on fresh tasks,
    the model (mean, 95% interval over seeds) between dMMSE and Bayes (ridge); a line style per other group."""
    others = [k for k in keys if k != TASK_POOL]
    axis = y_axis(stats["mean"])
    fig, axes = _panels(len(POOL_SETS), width=5.2, height=3.8)
    for ax, (eval_set, title) in zip(axes, POOL_SETS.items(), strict=True):
        for j, (values, group) in enumerate(stats.groupby(others, dropna=False) if others else [((), stats)]):
            for i, predictor in enumerate(POOL_PREDICTORS):
                line = group[(group.set == eval_set) & (group.predictor == predictor)].sort_values(TASK_POOL)
                label = " ".join(filter(None, [predictor, group_label(others, values) if others else ""]))
                _draw(ax, line[TASK_POOL], line, axis, i + 3 * j, predictor == "model", label, f"C{i}")
        ax.set_xscale("log", base=2)
        _axes(ax, axis, "task pool size M", "squared error / d, mean over k", title)
    _save(fig, path)


def plot_history(history_stats: pd.DataFrame, keys: list[str], path: Path, reference: str = "the reference") -> None:
    """Learning curves from `aggregate_history`: each metric against step, a panel per metric and a line
    per group (mean, band: 95% interval over seeds)."""
    metrics = list(history_stats.metric.unique())
    fig, axes = _panels(len(metrics), columns=2, width=5.6, height=3.8)
    for ax, metric in zip(axes, metrics, strict=False):
        rows = history_stats[history_stats.metric == metric]
        axis = y_axis(rows["mean"])
        for i, (values, line) in enumerate(rows.groupby(keys, dropna=False)):
            line = line.sort_values("step")
            _draw(ax, line.step, line, axis, i, True, group_label(keys, values), f"C{i}")
        label = metric_label(metric, reference)
        _axes(ax, axis, "training step", label, f"{label} during training")
    _save(fig, path)


R2 = "held-out R², mean over k"


def plot_probe_r2(stats: pd.DataFrame, keys: list[str], path: Path) -> None:
    """Probe R² by layer from `tables.probe_r2`: a panel per target, a line per group (band: 95% interval over
    seeds). Layer 0 is the trunk's input."""
    targets = list(dict.fromkeys(stats.target))
    fig, axes = _panels(len(targets), columns=5, width=3.6)
    for ax, target in zip(axes, targets, strict=False):
        rows = stats[stats.target == target]
        for i, (values, line) in enumerate(rows.groupby(keys, dropna=False)):
            line = line.sort_values("layer")
            _draw(ax, line.layer, line, ("linear", None), i, True, group_label(keys, values), f"C{i}")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_ylim(min(-0.05, rows.ci_low.min(), rows["mean"].min()) - 0.02, 1.05)  # R² on its own scale
        _axes(ax, ("linear", None), "layer", R2, target)
    _save(fig, path)


def plot_evaluation(curves_by_set: dict, trained_n_points: int | None, path: Path, title: str) -> None:
    """An evaluation's error vs k, a panel per set: the model solid, the baselines dashed, and a line where
    its training context stopped (a longer context than trained lies to its right)."""
    fig, axes = _panels(len(curves_by_set), columns=3)
    for ax, (name, curves) in zip(axes, curves_by_set.items(), strict=False):
        errors = {n: np.asarray(v, dtype=float) for n, v in curves.items() if is_error_curve(n)}
        axis = y_axis(np.concatenate(list(errors.values())))
        floored = False
        for i, predictor in enumerate(dict.fromkeys(["model", *errors])):
            values = errors[predictor]
            stats = pd.DataFrame({"mean": values, "ci_low": values, "ci_high": values})
            colour = "black" if predictor == "model" else f"C{i - 1}"
            floored |= _draw(ax, np.arange(len(values)), stats, axis, i, predictor == "model", predictor, colour)
        if trained_n_points is not None and trained_n_points < len(errors["model"]):
            ax.axvline(
                trained_n_points - 0.5, color="grey", ls=":", lw=1.2, label=f"trained on {trained_n_points} points"
            )
        _axes(ax, axis, "in-context examples k", YLABELS["error"], f"{title}: {name}", floored)
    _save(fig, path)


def plot_attention(weights_LxHxTxT: np.ndarray, path: Path) -> None:
    """Attention maps, a panel per layer (row) and head (column): query down, key across, colour the weight on a
    square-root scale (mean over the held-out prompts, eval.attention); the caption names the run."""
    layers, heads = weights_LxHxTxT.shape[:2]
    fig, axes = plt.subplots(layers, heads, figsize=(2.6 * heads + 0.6, 2.4 * layers + 0.6), squeeze=False)
    for layer in range(layers):
        for head in range(heads):
            ax = axes[layer, head]
            ax.imshow(np.sqrt(np.clip(weights_LxHxTxT[layer, head], 0, 1)), cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"layer {layer}, head {head}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[-1, 0].set_xlabel("key")
    axes[-1, 0].set_ylabel("query")
    _save(fig, path)


def plot_by_step(table: pd.DataFrame, labels: dict, path: Path) -> None:
    """trajectories.by_step_table, by step on a log axis, a line per run, a panel each: the training loss (in
    the loss's own units), the held-out model error, and, where the runs have it, the LLC with its standard
    error over chains."""
    with_llc = table.llc.notna().any()
    fig, axes = _panels(3 if with_llc else 2, columns=3, width=5.0, height=4.0)
    for i, (run_id, run) in enumerate(table.groupby("run_id", sort=False)):
        colour, name = f"C{i % 10}", labels.get(run_id, run_id)
        axes[0].plot(run.step, run.train_loss, "-", marker=".", color=colour, label=name)
        axes[1].plot(run.step, run.model_error, "-", marker=".", color=colour, label=name)
        if with_llc:
            axes[2].errorbar(run.step, run.llc, yerr=run.llc_std_err, marker=".", color=colour, label=name, capsize=2)
    ylabels = ["training loss (last logged)", "held-out squared error / d, mean over k", "LLC (eval.llc) ± std err"]
    for ax, ylabel in zip(axes, ylabels, strict=False):
        ax.set(xscale="log", xlabel="step", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path)


def plot_dynamics(found: list, labels: dict, path: Path) -> None:
    """Essential dynamics (trajectories.dynamics_of), a panel per prompt set: each run's checkpoints in the
    joint PCA's first two components, a line from its first step (open circle) to its last (filled), its steps
    annotated at both ends; each baseline's predictions projected into the same plane, a cross and its name.
    `labels`: {run id: its name in the legend}."""
    plane = lambda points: np.pad(np.atleast_2d(points), ((0, 0), (0, max(0, 2 - np.shape(points)[-1]))))[:, :2]
    fig, axes = _panels(len(found), columns=2, width=6.4, height=5.2)
    for ax, (group, fitted) in zip(axes, found, strict=False):
        for i, (run_id, coordinates) in enumerate(fitted.trajectories.items()):
            xy, steps, colour = plane(coordinates), group[run_id].steps, f"C{i % 10}"
            ax.plot(xy[:, 0], xy[:, 1], "-", color=colour, lw=1.6, marker=".", ms=5, label=labels.get(run_id, run_id))
            ax.plot(*xy[0], "o", mfc="white", color=colour, ms=8)
            ax.plot(*xy[-1], "o", color=colour, ms=8)
            for at in (0, len(steps) - 1):
                ax.annotate(f"step {steps[at]}", xy[at], fontsize=7, xytext=(4, 4), textcoords="offset points")
        places = {}  # baselines at one place (least squares and Bayes without noise): one cross, their names joined
        scale = 1e-6 * max([1.0, *(np.abs(p).max() for p in fitted.baselines.values())])
        for name, point in fitted.baselines.items():
            xy = plane(point)[0]
            places.setdefault(tuple(np.round(xy / scale)), (xy, []))[1].append(name)
        for (x, y), names in places.values():
            ax.plot(x, y, "x", color="black", ms=8, mew=1.8)
            ax.annotate(" = ".join(names), (x, y), fontsize=7, xytext=(4, -9), textcoords="offset points")
        shares = [f" ({share:.1%} of the variance)" for share in fitted.explained] + ["", ""]
        ax.set(xlabel=f"PC1{shares[0]}", ylabel=f"PC2{shares[1]}")
        ax.set_title("predictions on the first K held-out prompts; crosses: the baselines'", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path)
