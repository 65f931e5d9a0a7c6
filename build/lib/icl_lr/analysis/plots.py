"""analyze.py's figures, from the tables of icl_lr.analysis: each a PNG file, groups labelled by what varies."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from icl_lr.analysis.tables import POOL_PREDICTORS, POOL_SETS, TASK_POOL, config_text  # noqa: E402
from icl_lr.records.schema import HELD_OUT, is_error_curve  # noqa: E402


def group_label(keys: list[str], values, separator: str = ", ") -> str:
    """A group's name: `n_embd=32, noise_std=0.5`."""
    values = values if isinstance(values, tuple) else (values,)
    return separator.join(f"{k.split('.')[-1]}={config_text(v)}" for k, v in zip(keys, values, strict=True))


def _panels(n: int, columns: int = 4, width: float = 4.4, height: float = 3.4):
    """A figure of n panels, `columns` a row at most; the spare ones blank."""
    columns = min(columns, n)
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat


def _save(fig, path: Path, dpi: int = 120) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def plot_error_curves(curve_stats: pd.DataFrame, keys: list[str], path: Path, metric: str = "error") -> None:
    """Error (or, with metric="ce", the y bin's cross-entropy of binned outputs) vs number of in-context
    examples, one panel per group: the model (mean, 95% interval over seeds) beside the baselines. Least
    squares' peak at k = d is cut off to keep the rest legible."""
    curve_stats = curve_stats[curve_stats.set == HELD_OUT]
    if metric == "error":
        curve_stats = curve_stats[curve_stats.predictor.map(is_error_curve)]
    else:
        curve_stats = curve_stats[curve_stats.predictor.str.startswith(f"{metric}/")]
        curve_stats = curve_stats.assign(predictor=curve_stats.predictor.str.removeprefix(f"{metric}/"))
    groups = list(curve_stats.groupby(keys, dropna=False, sort=True))
    fig, axes = _panels(len(groups), columns=3, width=4.8, height=3.3 + 0.3 * len(keys))
    for ax, (values, group) in zip(axes, groups, strict=False):
        for predictor, line in group.groupby("predictor", sort=False):
            is_model = predictor == "model"
            ax.plot(
                line.k,
                line["mean"],
                label=predictor,
                lw=2.4 if is_model else 1.3,
                ls="-" if is_model else "--",
                color="black" if is_model else None,
            )
            if is_model:
                ax.fill_between(line.k, line.ci_low, line.ci_high, color="black", alpha=0.2, lw=0)
        top = (
            group[group.k == 0]["mean"].max()
            if metric == "ce"
            else group[(group.predictor == "model") & (group.k == 0)]["mean"].max()
        )
        ax.set_ylim(0, 1.3 * top)
        ax.set_title(group_label(keys, values, "\n"), fontsize=9)
        ylabel = "cross-entropy of the y bin (nats)" if metric == "ce" else "squared error / d"
        ax.set(xlabel="in-context examples k", ylabel=ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    _save(fig, path)


def plot_metric(aggregate: pd.DataFrame, metric: str, x_key: str, keys: list[str], path: Path, x_order=None) -> None:
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
    ax.set(xlabel=x_key, ylabel=metric, title=f"{metric} vs {x_key}")
    ax.grid(alpha=0.3)
    if others:
        ax.legend(fontsize=8)
    _save(fig, path)


def plot_sets(curve_stats: pd.DataFrame, keys: list[str], sets: list[str], path: Path, title: str) -> None:
    """Error vs k, one panel per prompt set (OOD conditions, noise levels): each group's model (mean, 95%
    interval over seeds); the baselines too when there is one group, else each group's Bayes dashed."""
    errors = curve_stats[curve_stats.predictor.map(is_error_curve)]
    groups = list(errors.groupby(keys, dropna=False, sort=True))
    fig, axes = _panels(len(sets))
    for ax, eval_set in zip(axes, sets, strict=False):
        for i, (values, group) in enumerate(groups):
            colour = f"C{i}" if len(groups) > 1 else "black"
            in_set = group[group.set == eval_set]
            for predictor, line in in_set.groupby("predictor", sort=False):
                if predictor == "model":
                    label = group_label(keys, values) if len(groups) > 1 else "model"
                    ax.plot(line.k, line["mean"], color=colour, lw=2.2, label=label)
                    ax.fill_between(line.k, line.ci_low, line.ci_high, color=colour, alpha=0.2, lw=0)
                elif len(groups) == 1 or predictor == "bayes":
                    kwargs = {"color": colour} if len(groups) > 1 else {}
                    ax.plot(line.k, line["mean"], ls="--", lw=1.2, label=predictor if not i else None, **kwargs)
            top = in_set[in_set.predictor == "model"]["mean"].max()
            if np.isfinite(top):
                ax.set_ylim(0, 1.3 * top)
        ax.set_title(eval_set, fontsize=9)
        ax.set(xlabel="in-context examples k", ylabel="squared error / d")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    _save(fig, path, dpi=110)


def plot_error_vs_task_pool(stats: pd.DataFrame, keys: list[str], path: Path) -> None:
    """Raventos et al.'s figure from `task_pool_stats`: error vs the pool's size on pool and on fresh tasks,
    the model (mean, 95% interval over seeds) between dMMSE and Bayes (ridge); a line style per other group."""
    others = [k for k in keys if k != TASK_POOL]
    fig, axes = _panels(len(POOL_SETS), width=5.2, height=3.8)
    for ax, (eval_set, title) in zip(axes, POOL_SETS.items(), strict=True):
        for j, (values, group) in enumerate(stats.groupby(others, dropna=False) if others else [((), stats)]):
            for i, predictor in enumerate(POOL_PREDICTORS):
                line = group[(group.set == eval_set) & (group.predictor == predictor)].sort_values(TASK_POOL)
                label = " ".join(filter(None, [predictor, group_label(others, values) if others else ""]))
                style = ["-", "--", ":"][j % 3]
                ax.plot(line[TASK_POOL], line["mean"], marker="o", color=f"C{i}", ls=style, label=label)
                if predictor == "model":
                    ax.fill_between(line[TASK_POOL], line.ci_low, line.ci_high, color=f"C{i}", alpha=0.2, lw=0)
        ax.set_xscale("log", base=2)
        ax.set(title=title, xlabel="task pool size M", ylabel="squared error / d, mean over k")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    _save(fig, path)


def plot_history(history_stats: pd.DataFrame, keys: list[str], path: Path) -> None:
    """Learning curves from `aggregate_history`: each metric against step, a panel per metric and a line
    per group (mean, band: 95% interval over seeds)."""
    metrics = list(history_stats.metric.unique())
    fig, axes = _panels(len(metrics), columns=2, width=5.6, height=3.8)
    for ax, metric in zip(axes, metrics, strict=False):
        for i, (values, line) in enumerate(history_stats[history_stats.metric == metric].groupby(keys, dropna=False)):
            line = line.sort_values("step")
            ax.plot(line.step, line["mean"], color=f"C{i}", marker=".", label=group_label(keys, values))
            ax.fill_between(line.step, line.ci_low, line.ci_high, color=f"C{i}", alpha=0.2, lw=0)
        means = history_stats[history_stats.metric == metric]["mean"]
        if means.min() > 0 and means.max() > 10 * means.min():  # log only where it spans a decade
            ax.set_yscale("log")
        ax.set(xlabel="training step", ylabel=metric, title=f"{metric} during training")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    _save(fig, path)
