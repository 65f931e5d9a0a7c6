"""The tables analyze.py shows, built from the runs analysis/sources.py reads: runs filtered and grouped by what
varied, seed aggregates with their 95% intervals, the summary table, the task-pool, algorithm-similarity and
probe tables."""

import numpy as np
import pandas as pd
import scipy.stats

from icl_lr.analysis.sources import CONFIG_PREFIXES, MODEL_SHAPE, RunTables
from icl_lr.records.schema import (
    DISTANCE,
    EVALUATED,
    HELD_OUT,
    LEARNING_CURVES,
    PROBE_R2,
    REFERENCE,
    SIMILARITIES,
    probe_of,
)

STATS = ["n", "mean", "std", "ci_low", "ci_high", "ci_method"]
BOOTSTRAP_FROM = 30  # seeds: below, a resampling interval is too narrow (at n = 3 it is the min-max); Student-t


def references(runs: pd.DataFrame) -> str:
    """The predictors the runs' excesses are over (their `excess_over`), for a label: 'bayes', 'bayes / xgboost'."""
    named = runs[REFERENCE].dropna().unique() if REFERENCE in runs else []
    return " / ".join(sorted(named)) or "the reference"


def apply_filters(tables: RunTables, where: list[str]) -> RunTables:
    """Keeps runs where every KEY=VALUE holds, VALUE written as in the YAML (0.5, 16, null)."""
    runs = tables.runs
    keep = pd.Series(True, index=runs.index)
    for condition in where:
        key, sep, value = condition.partition("=")
        if not sep or key not in runs:
            raise KeyError(
                f"--where {condition!r}: expected KEY=VALUE with KEY one of the run columns, e.g. data.noise_std"
            )
        keep &= runs[key].map(config_text) == value
    kept = runs[keep]
    return RunTables(kept, *(t[t["run_id"].isin(kept["run_id"])] for t in (tables.curves, tables.history)))


def group_keys(runs: pd.DataFrame) -> list[str]:
    """What a sweep varied: config columns (seed aside) whose values differ between runs, with the
    model's shape as one `model_size` column; just `model_size` when nothing varies. Eval dirs group by
    the model they scored (`evaluated`) and then by what they scored it on (the conditions that vary)."""
    columns = [c for c in runs if c.startswith(CONFIG_PREFIXES) and c != "seed"]
    varied = [c for c in columns if runs[c].nunique(dropna=False) > 1]
    shape = [c for c in varied if c in MODEL_SHAPE]
    evaluated = [EVALUATED] if EVALUATED in runs and runs[EVALUATED].notna().any() else []  # evals: by model
    return evaluated + ["model_size"] * bool(shape or not varied) + [c for c in varied if c not in MODEL_SHAPE]


def bootstrap_interval(values: np.ndarray, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean; NaN below two values (no spread to resample)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float("nan"), float("nan")
    resamples = np.random.default_rng(seed).choice(values, size=(n_resamples, len(values)))
    low, high = np.percentile(resamples.mean(axis=1), [2.5, 97.5])
    return float(low), float(high)


def mean_interval(values: np.ndarray, n_resamples: int = 2000) -> tuple[float, float, str]:
    """95% interval of the mean over seeds and its method: Student-t below BOOTSTRAP_FROM values, the
    percentile bootstrap from there; none for one value ("", NaN bounds)."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n < 2:
        return float("nan"), float("nan"), ""
    if n >= BOOTSTRAP_FROM:
        return (*bootstrap_interval(values, n_resamples), "bootstrap")
    half = scipy.stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n)
    return float(values.mean() - half), float(values.mean() + half), "t"


def _stats(values: pd.Series, n_resamples: int) -> pd.Series:
    low, high, method = mean_interval(values.to_numpy(), n_resamples)
    return pd.Series(
        {
            "n": len(values),
            "mean": values.mean(),
            "std": values.std(ddof=1),
            "ci_low": low,
            "ci_high": high,
            "ci_method": method,
        }
    )


def _group_stats(long: pd.DataFrame, by: list[str], n_resamples: int) -> pd.DataFrame:
    """The statistics of a long table's `value` over the rows of each `by` group (runs, seeds)."""
    table = long.dropna(subset=["value"]).groupby(by, dropna=False).value.apply(_stats, n_resamples=n_resamples)
    numbers = {c: float for c in STATS if c != "ci_method"}
    return table.unstack()[STATS].astype(numbers).reset_index()


def aggregate_runs(runs: pd.DataFrame, keys: list[str], metrics: list[str], n_resamples: int = 2000) -> pd.DataFrame:
    """Long table: one row per (group, metric) with n, mean, std (ddof 1) and the 95% interval of the mean."""
    long = runs.melt(id_vars=keys, value_vars=metrics, var_name="metric", value_name="value")
    return _group_stats(long, [*keys, "metric"], n_resamples)


def aggregate_curves(
    runs: pd.DataFrame, curves: pd.DataFrame, keys: list[str], n_resamples: int = 2000
) -> pd.DataFrame:
    """Per group, prompt set, predictor and context length k: the curve's statistics over the group's runs
    (NaN, a k an OOD condition does not score, left out)."""
    labelled = curves.merge(runs[["run_id", *keys]], on="run_id")
    return _group_stats(labelled, [*keys, "set", "predictor", "k"], n_resamples)


def aggregate_history(
    runs: pd.DataFrame, history: pd.DataFrame, keys: list[str], metrics=LEARNING_CURVES, n_resamples: int = 2000
) -> pd.DataFrame:
    """Learning curves with seed bands: per group, metric and step, the statistics over the group's runs."""
    labelled = history[history.metric.isin(list(metrics))].merge(runs[["run_id", *keys]], on="run_id")
    return _group_stats(labelled, [*keys, "metric", "step"], n_resamples)


def config_text(value) -> str:
    """A config value as the YAML shows it: null, 16 (not 16.0 from a column with nulls)."""
    if pd.isna(value):
        return "null"
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def higher_is_better(metric: str) -> bool:
    """Errors, excesses and cross-entropies are better lower; accuracies higher."""
    return "accuracy" in metric


def _has_interval(row) -> bool:
    return isinstance(row.ci_method, str) and bool(row.ci_method)  # "" (one run) reads back from CSV as NaN


def interval_text(row) -> str:
    """`mean [low, high] (t, n=3)`: the 95% interval of the mean over seeds and its method; `mean (n=1)`."""
    if not _has_interval(row):
        return f"{row.mean:.4f} (n={row.n:.0f})"
    return f"{row.mean:.4f} [{row.ci_low:.4f}, {row.ci_high:.4f}] ({row.ci_method}, n={row.n:.0f})"


def _verdict(row, best) -> str:
    if not (_has_interval(row) and _has_interval(best)):
        return "no interval (n=1)"
    return "overlaps best" if row.ci_low <= best.ci_high and best.ci_low <= row.ci_high else ""


def compared_within(runs: pd.DataFrame, metric: str) -> list[str]:
    """The columns within whose values `metric` may be ranked: [REFERENCE] for an excess when the runs'
    excesses are over different references (Bayes, logistic regression, XGBoost: not one measure), else []."""
    return [REFERENCE] if "excess" in metric and runs[REFERENCE].nunique() > 1 else []


def summary_table(aggregate: pd.DataFrame, keys: list[str], metrics: list[str], within=()) -> pd.DataFrame:
    """One row per group, the best first by the first metric, with `rank` and `verdict`: "best", "overlaps
    best" (the two 95% intervals overlap: not told apart by these seeds), "" (worse, told apart), "no
    interval (n=1)" or "not measured" (a group without the metric, e.g. accuracy on a regression task: not
    ranked); each metric's cell as `interval_text`. With `within` (columns of keys), groups are ranked only
    against groups of the same values there, each such set with its own best."""
    headline, within = metrics[0], list(within)
    lead = aggregate[aggregate.metric == headline]
    lead = lead.sort_values([*within, "mean"], ascending=[True] * len(within) + [not higher_is_better(headline)])
    lead = lead.sort_values("mean", key=lambda m: m.isna(), kind="stable")  # the unmeasured last
    parts = [part for _, part in lead.groupby(within, sort=False, dropna=False)] if within else [lead]
    ranks, verdicts = [], []
    for part in parts:
        best = part.iloc[0]
        for i, row in enumerate(part.itertuples()):
            measured = row.mean == row.mean
            ranks.append(i + 1 if measured else None)
            verdicts.append("not measured" if not measured else "best" if i == 0 else _verdict(row, best))
    order = pd.concat(parts)[keys].assign(rank=pd.array(ranks, dtype="Int64"), verdict=verdicts)
    chosen = aggregate[aggregate.metric.isin(metrics)].copy()
    chosen["cell"] = [interval_text(r) for r in chosen.itertuples()]
    wide = chosen.set_index([*keys, "metric"])["cell"].unstack("metric").reset_index()
    wide = order.merge(wide, on=keys, how="left")
    wide[keys] = wide[keys].map(config_text)
    wide.columns.name = None  # not a "metric" header over the group keys
    return wide[["rank", "verdict", *keys, *(m for m in metrics if m in wide)]]


def summary_note(metrics: list[str], within=()) -> str:
    """What the summary's order and cells mean, in one line."""
    direction = "higher" if higher_is_better(metrics[0]) else "lower"
    apart = f", ranked within each {', '.join(within)} (an excess over one reference is not one over another)"
    return (
        f"Sorted by {metrics[0]} ({direction} is better){apart if within else ''}. Cells: mean [95% interval of "
        "the mean over seeds] "
        f"(t: Student-t; bootstrap from {BOOTSTRAP_FROM} seeds; n runs). 'overlaps best': its interval overlaps "
        "the best group's, so these seeds do not tell the two apart."
    )


TASK_POOL = "data.task_pool_size"
POOL_PREDICTORS = ("model", "dmmse", "bayes")  # Raventos et al.'s figure: the model between dMMSE and ridge
POOL_SETS = {"pretrain": "tasks from the pretraining pool", HELD_OUT: "fresh tasks"}


def task_pool_stats(runs: pd.DataFrame, curves: pd.DataFrame, keys: list[str], n_resamples: int = 2000) -> pd.DataFrame:
    """Per pool size (and other group), set (pretrain, held_out) and predictor (model, dMMSE, Bayes): each
    run's error averaged over k, aggregated over seeds."""
    others = [k for k in keys if k != TASK_POOL]
    chosen = curves[curves.set.isin(list(POOL_SETS)) & curves.predictor.isin(POOL_PREDICTORS)].dropna(subset=["value"])
    per_run = chosen.groupby(["run_id", "set", "predictor"]).value.mean().reset_index()
    labelled = per_run.merge(runs[["run_id", TASK_POOL, *others]], on="run_id").dropna(subset=[TASK_POOL])
    return _group_stats(labelled, [*others, TASK_POOL, "set", "predictor"], n_resamples)


def algorithm_similarity(curve_stats: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Which algorithm, with how many steps, best matches the model: per group and algorithm, each similarity
    curve's mean over k >= 1 (of the seeds' means), the closest first (least mean squared difference)."""
    chosen = curve_stats[
        (curve_stats.set == HELD_OUT) & curve_stats.predictor.str.startswith(SIMILARITIES) & (curve_stats.k >= 1)
    ]
    split = chosen.predictor.str.split("/", n=1, expand=True)
    chosen = chosen.assign(similarity=split[0], algorithm=split[1])
    table = chosen.pivot_table(
        index=[*keys, "algorithm"], columns="similarity", values="mean", aggfunc="mean", dropna=False
    )
    table = table.reset_index().sort_values([*keys, DISTANCE])
    table.columns.name = None
    table["rank"] = table.groupby(keys, dropna=False).cumcount() + 1
    return table[[*keys, "rank", "algorithm", *(s for s in SIMILARITIES if s in table)]]


def probe_r2(runs: pd.DataFrame, curves: pd.DataFrame, keys: list[str], n_resamples: int = 2000) -> pd.DataFrame:
    """Per group, probe target and layer: each run's held-out probe R² averaged over the k where it is
    defined (eval.probes), aggregated over seeds."""
    chosen = curves[(curves.set == HELD_OUT) & curves.predictor.str.startswith(f"{PROBE_R2}/")].dropna(subset=["value"])
    per_run = chosen.groupby(["run_id", "predictor"]).value.mean().reset_index()
    target_layer = per_run.predictor.map(probe_of)
    per_run = per_run.assign(target=target_layer.str[0], layer=target_layer.str[1])
    labelled = per_run.merge(runs[["run_id", *keys]], on="run_id")
    stats = _group_stats(labelled, [*keys, "target", "layer"], n_resamples)
    logged_order = {target: i for i, target in enumerate(dict.fromkeys(chosen.predictor.map(probe_of).str[0]))}
    return stats.sort_values("target", key=lambda t: t.map(logged_order), kind="stable", ignore_index=True)
