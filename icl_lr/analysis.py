"""Runs into pandas tables: one row per run, a long table of error curves, seed aggregates, plots.

Runs come from local run dirs (what train.py writes: .hydra/config.yaml, summary.json,
curves.jsonl) or from the W&B API (config, summary and the last `eval/curves` and `eval/<set>/curves`
tables). Both give the same columns: `run_id`, `run_dir` or `run_path`, the flattened config
(`data.noise_std`, ...), `model_size` and the scalar summary metrics (`eval/excess/mean`, ...); curves
carry the prompt set they were scored on (`set`: held_out, pretrain, sigma_<s>, ood/<condition>).
"""

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from icl_lr.config import RunConfig, flatten
from icl_lr.run_dir import RunDirLock, config_record
from icl_lr.tracking import is_error_curve, read_jsonl

CONFIG_PREFIXES = ("data.", "model.", "training.", "eval.", "seed")  # config columns that can define a group
CURVE_COLUMNS = ["run_id", "set", "step", "predictor", "k", "value"]  # predictor: an error curve, or metric/predictor
HELD_OUT = "held_out"  # the `set` of the held-out prompts; others: pretrain, train_set, sigma_<s>, ood/<condition>
STATS = ["n", "mean", "std", "ci_low", "ci_high"]
MODEL_SHAPE = ("model.n_layer", "model.n_embd", "model.n_head")  # summed up by the model_size column
log = logging.getLogger("analyze")


GROUP_CHOICES = ("data", "model", "training", "experiment")  # W&B's config also records the groups' choices


def _flatten(tree: dict) -> dict:
    """Dotted keys; a list becomes its JSON text, so it can be a table cell and a group key."""
    return {k: json.dumps(v) if isinstance(v, list) else v for k, v in flatten(tree).items()}


def _config_columns(config: dict) -> dict:
    """Flat config columns, the same from a run dir's nested config and W&B's flat one.

    W&B's group choices are dropped (model_size stands for the model), a sweep parameter's text
    ('null', '[0.1,0.5]') is read as YAML, and data.noise_std, ignored under a hierarchical noise
    prior, is NaN there: runs group by the noise prior they really had.
    """
    import yaml

    flat = {}
    choices = [k for k, v in config.items() if k in GROUP_CHOICES and not isinstance(v, dict)]
    for key, value in _flatten({k: v for k, v in config.items() if k not in choices}).items():
        if isinstance(value, str) and key.startswith(CONFIG_PREFIXES):
            parsed = yaml.safe_load(value)
            value = json.dumps(parsed) if isinstance(parsed, list) else value if isinstance(parsed, str) else parsed
        flat[key] = value
    if flat.get("data.noise_std_choices") is not None:
        flat["data.noise_std"] = float("nan")
    return flat


def summary_scalars(summary: dict) -> dict:
    """A summary's numbers: W&B's own keys (_runtime, ...) and media (tables, charts) left out."""
    kept = {k: v for k, v in summary.items() if not k.startswith("_") and not (isinstance(v, dict) and "_type" in v)}
    return {k: v for k, v in _flatten(kept).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _run_row(run_id: str, config: dict, summary: dict, **source) -> dict:
    """A run's row. A config key its record lacks (added to the code after the run started) gets its
    default, as a resumed run dir reads it (run_dir.differing_keys): runs group by what really varied."""
    columns = _config_columns(config)
    for key, value in config_record(RunConfig()).items():
        columns.setdefault(key, json.dumps(value) if isinstance(value, list) else value)
    size = f"{columns['model.n_layer']}L/{columns['model.n_embd']}d/{columns['model.n_head']}H"
    return {"run_id": run_id, **source, **columns, "model_size": size, **summary_scalars(summary)}


def _curve_rows(run_id: str, step: int, curves: dict, eval_set: str = HELD_OUT) -> list:
    return [
        (run_id, eval_set, step, name, k, float(e)) for name, errors in curves.items() for k, e in enumerate(errors)
    ]


def _last_curves(run_id: str, records: list) -> list:
    """Curve rows of each set's last eval, from curves.jsonl records (held-out records carry no "set")."""
    last = {record.get("set", HELD_OUT): record for record in records}
    return [
        row
        for eval_set, record in last.items()
        for row in _curve_rows(
            run_id, record["step"], {k: v for k, v in record.items() if k not in ("step", "set")}, eval_set
        )
    ]


def _curve_tables(summary: dict) -> dict:
    """{set: table file reference} of a W&B summary's last curve tables: eval/curves, eval/<set>/curves."""
    tables = {}
    for key, value in summary.items():
        if key.startswith("eval/") and key.endswith("curves") and isinstance(value, dict) and value.get("path"):
            eval_set = key.removeprefix("eval/").removesuffix("curves").rstrip("/")
            tables[eval_set or HELD_OUT] = value["path"]
    return tables


def _read_json(path: Path):
    return json.loads(path.read_text())


def _local_run(run_dir: Path) -> tuple[dict, list] | None:
    """(row, curve rows) of one run dir; None (and a warning) when one of its files is damaged.

    Only a finished run's summary and curves count: a run without summary.json, or whose
    summary.json is older than its metrics (a resumed run that has not finished again), is listed
    with status `running` or `crashed` and no metrics.
    """
    from omegaconf import OmegaConf

    try:
        config = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"), resolve=True)
        summary = _read_json(run_dir / "summary.json") if (run_dir / "summary.json").exists() else None
        evals = read_jsonl(run_dir / "curves.jsonl")
        last_step = max((r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")), default=None)
    except (OSError, ValueError, KeyError) as error:
        log.warning("skipping %s: a damaged file (%s: %s)", run_dir, type(error).__name__, error)
        return None
    id_file = run_dir / "wandb_run_id"
    run_id = id_file.read_text().strip() if id_file.exists() else run_dir.name
    if summary is not None and summary.get("step") == last_step:
        curve_rows = _last_curves(run_id, evals)
        return _run_row(run_id, config, summary, run_dir=str(run_dir), status="finished"), curve_rows
    status = "running" if RunDirLock(run_dir).is_held() else "crashed"
    log.info("%s: %s at step %s, not in the aggregates", run_dir, status, last_step or 0)
    return _run_row(run_id, config, {}, run_dir=str(run_dir), status=status), []


def load_local(paths) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every run dir (one holding .hydra/config.yaml) at or below `paths`: (runs, curves).

    `runs` has a `status` column: finished, running or crashed; only finished runs have metrics.
    """
    run_dirs = sorted({p.parents[1] for path in map(Path, paths) for p in path.rglob(".hydra/config.yaml")})
    if not run_dirs:
        raise FileNotFoundError(f"no run dirs (with .hydra/config.yaml) under {', '.join(map(str, paths))}")
    loaded = [run for run in map(_local_run, run_dirs) if run is not None]
    if not any(row["status"] == "finished" for row, _ in loaded):
        raise FileNotFoundError(
            f"no finished runs among the {len(run_dirs)} run dirs under {', '.join(map(str, paths))}"
        )
    rows = [row for row, _ in loaded]
    curve_rows = [r for _, rows_of_run in loaded for r in rows_of_run]
    return pd.DataFrame(rows), pd.DataFrame(curve_rows, columns=CURVE_COLUMNS)


def _table_curves(table: dict) -> dict:
    """{predictor: errors by k} from a W&B `eval/curves` table file."""
    return {name: [row[i] for row in table["data"]] for i, name in enumerate(table["columns"]) if name != "k"}


def load_wandb(
    project_path: str, sweep: str | None = None, state: str | None = "finished"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Runs of `entity/project` from the W&B API (needs a key and the network): (runs, curves)."""
    import wandb

    filters = {k: v for k, v in (("sweep", sweep), ("state", state)) if v}
    rows, curve_rows = [], []
    with tempfile.TemporaryDirectory() as downloads:
        for run in wandb.Api().runs(project_path, filters=filters):
            config = {k: v for k, v in run.config.items() if not k.startswith("_")}
            summary = run.summary._json_dict
            rows.append(_run_row(run.id, config, summary, run_path="/".join(run.path), status=run.state))
            for eval_set, path in _curve_tables(summary).items():
                with run.file(path).download(root=downloads, replace=True) as f:
                    curve_rows += _curve_rows(run.id, summary.get("step"), _table_curves(json.load(f)), eval_set)
    if not rows:
        raise LookupError(f"no runs in {project_path} matching {filters}")
    return pd.DataFrame(rows), pd.DataFrame(curve_rows, columns=CURVE_COLUMNS)


def read_wandb_file(run_folder: Path) -> dict:
    """State, config and summary of a local W&B run folder (offline-run-*), read by W&B's own reader."""
    import subprocess
    import sys

    wandb_cli = Path(sys.executable).with_name("wandb")
    command = [str(wandb_cli), "leet", "inspect", "--summary", "--json", str(run_folder)]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def load_wandb_files(paths) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Runs that exist only as local W&B files (offline, not synced), at or below `paths`: (runs, curves).

    A run resumed several times has several folders with one id: the last one holds its final state.
    """
    folders = sorted({p for path in map(Path, paths) for p in path.rglob("offline-run-*") if p.is_dir()})
    if not folders:
        raise FileNotFoundError(f"no W&B run folders (offline-run-*) under {', '.join(map(str, paths))}")
    latest = {}
    for folder in folders:  # names start with the start time: the last of an id is its latest start
        latest[folder.name.rsplit("-", 1)[-1]] = folder
    rows, curve_rows = [], []
    for run_id, folder in latest.items():
        record = read_wandb_file(folder)
        config = {k: v for k, v in record["config"].items() if not k.startswith("_")}
        summary = record["summary"]
        status = {"finished": "finished"}.get(record.get("state"), "crashed")
        rows.append(_run_row(run_id, config, summary, run_dir=str(folder), status=status))
        for eval_set, path in _curve_tables(summary).items() if status == "finished" else ():
            curves = _table_curves(json.loads((folder / "files" / path).read_text()))
            curve_rows += _curve_rows(run_id, summary.get("step"), curves, eval_set)
    return pd.DataFrame(rows), pd.DataFrame(curve_rows, columns=CURVE_COLUMNS)


def apply_filters(runs: pd.DataFrame, curves: pd.DataFrame, where: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keeps runs where every KEY=VALUE holds, VALUE written as in the YAML (0.5, 16, null)."""
    keep = pd.Series(True, index=runs.index)
    for condition in where:
        key, sep, value = condition.partition("=")
        if not sep or key not in runs:
            raise KeyError(
                f"--where {condition!r}: expected KEY=VALUE with KEY one of the run columns, e.g. data.noise_std"
            )
        keep &= runs[key].map(_config_text) == value
    runs = runs[keep]
    return runs, curves[curves["run_id"].isin(runs["run_id"])]


def group_keys(runs: pd.DataFrame) -> list[str]:
    """What a sweep varied: config columns (seed aside) whose values differ between runs, with the
    model's shape as one `model_size` column; just `model_size` when nothing varies."""
    columns = [c for c in runs if c.startswith(CONFIG_PREFIXES) and c != "seed"]
    varied = [c for c in columns if runs[c].nunique(dropna=False) > 1]
    shape = [c for c in varied if c in MODEL_SHAPE]
    return ["model_size"] * bool(shape or not varied) + [c for c in varied if c not in MODEL_SHAPE]


def bootstrap_interval(values: np.ndarray, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean; NaN below two values (no spread to resample)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float("nan"), float("nan")
    resamples = np.random.default_rng(seed).choice(values, size=(n_resamples, len(values)))
    low, high = np.percentile(resamples.mean(axis=1), [2.5, 97.5])
    return float(low), float(high)


def _stats(values: pd.Series, n_resamples: int) -> pd.Series:
    low, high = bootstrap_interval(values.to_numpy(), n_resamples)
    return pd.Series(
        {"n": len(values), "mean": values.mean(), "std": values.std(ddof=1), "ci_low": low, "ci_high": high}
    )


def aggregate_runs(runs: pd.DataFrame, keys: list[str], metrics: list[str], n_resamples: int = 2000) -> pd.DataFrame:
    """Long table: one row per (group, metric) with n, mean, std (ddof 1) and the bootstrap interval."""
    long = runs.melt(id_vars=keys, value_vars=metrics, var_name="metric", value_name="value").dropna(subset=["value"])
    table = long.groupby([*keys, "metric"], dropna=False).value.apply(_stats, n_resamples=n_resamples).unstack()
    return table[STATS].reset_index()


def aggregate_curves(
    runs: pd.DataFrame, curves: pd.DataFrame, keys: list[str], n_resamples: int = 2000
) -> pd.DataFrame:
    """Per group, prompt set, predictor and context length k: the curve's statistics over the group's runs
    (NaN, a k an OOD condition does not score, left out)."""
    labelled = curves.dropna(subset=["value"]).merge(runs[["run_id", *keys]], on="run_id")
    by = [*keys, "set", "predictor", "k"]
    table = labelled.groupby(by, dropna=False).value.apply(_stats, n_resamples=n_resamples).unstack()
    return table[STATS].reset_index()


def _config_text(value) -> str:
    """A config value as the YAML shows it: null, 16 (not 16.0 from a column with nulls)."""
    if pd.isna(value):
        return "null"
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def markdown_table(aggregate: pd.DataFrame, keys: list[str], metrics: list[str]) -> str:
    """One row per group; each metric as `mean ± std [95% interval] (n)`, just `mean (n=1)` for one run."""
    chosen = aggregate[aggregate.metric.isin(metrics)].copy()
    chosen["cell"] = [
        f"{r.mean:.4f} ± {r.std:.4f} [{r.ci_low:.4f}, {r.ci_high:.4f}] (n={r.n:.0f})"
        if r.n > 1
        else f"{r.mean:.4f} (n=1)"
        for r in chosen.itertuples()
    ]
    wide = chosen.set_index([*keys, "metric"])["cell"].unstack("metric").reset_index()
    wide[keys] = wide[keys].map(_config_text)
    return wide.to_markdown(index=False)


def _label(keys: list[str], values, separator: str = ", ") -> str:
    values = values if isinstance(values, tuple) else (values,)
    return separator.join(f"{k.split('.')[-1]}={_config_text(v)}" for k, v in zip(keys, values, strict=True))


def plot_error_curves(curve_stats: pd.DataFrame, keys: list[str], path: Path, metric: str = "error") -> None:
    """Error (or, with metric="ce", the y bin's cross-entropy of binned outputs) vs number of in-context
    examples, one panel per group: the model (mean, 95% interval over seeds) beside the baselines. Least
    squares' peak at k = d is cut off to keep the rest legible."""
    import matplotlib.pyplot as plt

    curve_stats = curve_stats[curve_stats.set == HELD_OUT]
    if metric == "error":
        curve_stats = curve_stats[curve_stats.predictor.map(is_error_curve)]
    else:
        curve_stats = curve_stats[curve_stats.predictor.str.startswith(f"{metric}/")]
        curve_stats = curve_stats.assign(predictor=curve_stats.predictor.str.removeprefix(f"{metric}/"))
    groups = list(curve_stats.groupby(keys, dropna=False, sort=True))
    columns = min(3, len(groups))
    rows = -(-len(groups) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.8 * columns, (3.3 + 0.3 * len(keys)) * rows), squeeze=False)
    for ax, (values, group) in zip(axes.flat, groups, strict=False):  # spare panels stay empty
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
        ax.set_title(_label(keys, values, "\n"), fontsize=9)
        ylabel = "cross-entropy of the y bin (nats)" if metric == "ce" else "squared error / d"
        ax.set(xlabel="in-context examples k", ylabel=ylabel)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(groups) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_metric(aggregate: pd.DataFrame, metric: str, x_key: str, keys: list[str], path: Path, x_order=None) -> None:
    """One metric's mean (bars: 95% interval over seeds) against x_key, a line per other group.
    `x_order` puts categorical x values (model sizes) in order; numeric x values plot as numbers."""
    import matplotlib.pyplot as plt

    rows = aggregate[aggregate.metric == metric]
    others = [k for k in keys if k != x_key]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for values, line in rows.groupby(others, dropna=False, sort=True) if others else [((), rows)]:
        line = line.sort_values(x_key, key=(lambda s: s.map(x_order.index)) if x_order else None)
        x = [x_order.index(v) for v in line[x_key]] if x_order else line[x_key]
        error = np.abs(np.stack([line["mean"] - line.ci_low, line.ci_high - line["mean"]]))
        ax.errorbar(
            x, line["mean"], yerr=np.nan_to_num(error), marker="o", capsize=3, label=_label(others, values) or None
        )
    if x_order:
        ax.set_xticks(range(len(x_order)), x_order)
    ax.set(xlabel=x_key, ylabel=metric, title=f"{metric} vs {x_key}")
    ax.grid(alpha=0.3)
    if others:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _panels(n: int, width: float = 4.4, height: float = 3.4):
    import matplotlib.pyplot as plt

    columns = min(4, n)
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat


def plot_sets(curve_stats: pd.DataFrame, keys: list[str], sets: list[str], path: Path, title: str) -> None:
    """Error vs k, one panel per prompt set (OOD conditions, noise levels): each group's model (mean, 95%
    interval over seeds); the baselines too when there is one group, else each group's Bayes dashed."""
    import matplotlib.pyplot as plt

    errors = curve_stats[curve_stats.predictor.map(is_error_curve)]
    groups = list(errors.groupby(keys, dropna=False, sort=True))
    fig, axes = _panels(len(sets))
    for ax, eval_set in zip(axes, sets, strict=False):
        for i, (values, group) in enumerate(groups):
            colour = f"C{i}" if len(groups) > 1 else "black"
            in_set = group[group.set == eval_set]
            for predictor, line in in_set.groupby("predictor", sort=False):
                if predictor == "model":
                    label = _label(keys, values) if len(groups) > 1 else "model"
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    by = [*others, TASK_POOL, "set", "predictor"]
    stats = labelled.groupby(by, dropna=False).value.apply(_stats, n_resamples=n_resamples)
    return stats.unstack()[STATS].reset_index()


def plot_error_vs_task_pool(stats: pd.DataFrame, keys: list[str], path: Path) -> None:
    """Raventos et al.'s figure from `task_pool_stats`: error vs the pool's size on pool and on fresh tasks,
    the model (mean, 95% interval over seeds) between dMMSE and Bayes (ridge); a line style per other group."""
    import matplotlib.pyplot as plt

    others = [k for k in keys if k != TASK_POOL]
    fig, axes = _panels(len(POOL_SETS), width=5.2, height=3.8)
    for ax, (eval_set, title) in zip(axes, POOL_SETS.items(), strict=True):
        for j, (values, group) in enumerate(stats.groupby(others, dropna=False) if others else [((), stats)]):
            for i, predictor in enumerate(POOL_PREDICTORS):
                line = group[(group.set == eval_set) & (group.predictor == predictor)].sort_values(TASK_POOL)
                label = " ".join(filter(None, [predictor, _label(others, values) if others else ""]))
                style = ["-", "--", ":"][j % 3]
                ax.plot(line[TASK_POOL], line["mean"], marker="o", color=f"C{i}", ls=style, label=label)
                if predictor == "model":
                    ax.fill_between(line[TASK_POOL], line.ci_low, line.ci_high, color=f"C{i}", alpha=0.2, lw=0)
        ax.set_xscale("log", base=2)
        ax.set(title=title, xlabel="task pool size M", ylabel="squared error / d, mean over k")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
