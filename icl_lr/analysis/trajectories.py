"""Runs' trajectories in analyze.py's tables: of each finished local run dir or eval dir with a trajectory
(training.trajectory or eval.predictions set), the held-out curves at every evaluated step, read into the
algorithm phases (phases.py), and the eval.predictions arrays, read into the essential dynamics (dynamics.py)."""

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from icl_lr.analysis import dynamics
from icl_lr.records.schema import (
    CURVES_FILE,
    EVAL_MODEL_FILE,
    EXCESS,
    METRICS_FILE,
    MODEL_ERROR,
    PREDICTED_BY,
    PREDICTED_TARGETS,
    PREDICTIONS_DIR,
    PREDICTIONS_MODEL,
)
from icl_lr.records.tracking import read_jsonl
from icl_lr.train import phases

TRAJECTORY_KEYS = ("training.trajectory", "eval.predictions")  # a run with either set is shown by its steps
PHASE_COLUMNS = ["run_id", "step", "closest", "distance", "measure", "runner_up", "margin"]
CHANGE_COLUMNS = ["run_id", "step", "from", "to"]


def _scored_a_trajectory(run_dir: Path) -> bool:
    """Whether `run_dir` is an eval dir of `python eval.py RUN --trajectory` (its model.json names the steps)."""
    path = run_dir / EVAL_MODEL_FILE
    return path.exists() and "trajectory" in json.loads(path.read_text())


def trajectory_runs(runs: pd.DataFrame) -> list[tuple[str, Path]]:
    """(run id, dir) of the finished local runs and eval dirs (with curves.jsonl) that have a trajectory: their
    config sets training.trajectory or eval.predictions, or they scored a run's checkpoints (eval.py --trajectory)."""
    found = []
    for _, row in runs[runs.status == "finished"].iterrows():
        run_dir = row.get("run_dir")
        if not (isinstance(run_dir, str) and (Path(run_dir) / CURVES_FILE).exists()):
            continue
        wanted = any(pd.notna(row.get(key)) and float(row.get(key)) > 0 for key in TRAJECTORY_KEYS)
        if wanted or _scored_a_trajectory(Path(run_dir)):
            found.append((row.run_id, Path(run_dir)))
    return found


def label(run_id: str) -> str:
    """A run's name in a figure: its id, or an eval dir's folder name (its id is its path)."""
    return Path(run_id).name if "/" in run_id else run_id


LLC_MEAN, LLC_ERR, LOSS = "eval/llc/mean", "eval/llc/std_err", "train/loss"
BY_STEP_COLUMNS = ["run_id", "step", "train_loss", "model_error", "excess", "llc", "llc_std_err"]


def by_step_table(runs: list) -> pd.DataFrame:
    """Each run's evaluated steps: the training loss last logged at or before the step, the held-out model
    error and excess (mean over k), and the LLC (eval.llc: its mean and standard error over chains, else NaN)."""
    rows = []
    for run_id, run_dir in runs:
        loss = np.nan
        for record in read_jsonl(run_dir / METRICS_FILE):
            loss = record.get(LOSS, loss)
            if MODEL_ERROR in record:
                values = (record[MODEL_ERROR], record.get(EXCESS, np.nan), record.get(LLC_MEAN, np.nan))
                rows.append((run_id, record["step"], loss, *values, record.get(LLC_ERR, np.nan)))
    return pd.DataFrame(rows, columns=BY_STEP_COLUMNS)


def phase_tables(runs: list) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(phases: each run's closest predictor at every evaluated step; changes: the steps where it changes)."""
    rows, change_rows = [], []
    for run_id, run_dir in runs:
        found = phases.phases(phases.held_out_by_step(run_dir))
        rows += [(run_id, *phase) for phase in found]
        change_rows += [(run_id, *change) for change in phases.changes(found)]
    return pd.DataFrame(rows, columns=PHASE_COLUMNS), pd.DataFrame(change_rows, columns=CHANGE_COLUMNS)


def phase_lines(table: pd.DataFrame, changes: pd.DataFrame) -> list[str]:
    """A line per run: its closest predictor from its first evaluated step and after each change."""
    lines = []
    for run_id, run in table.groupby("run_id", sort=False):
        first = run.iloc[0]
        steps = [f"{first.closest} from step {first.step}"]
        steps += [f"{c.to} from step {c.step}" for c in changes[changes.run_id == run_id].itertuples()]
        by = "similarity of predictions" if (run.measure == phases.SIMILARITY).all() else "error gap, a proxy"
        lines.append(f"algorithm phases of {label(run_id)} (by {by}): " + ", then ".join(steps))
    return lines


class RunPredictions(NamedTuple):
    steps: list  # the evaluated steps, in order
    model: np.ndarray  # [steps, K, N]
    targets: np.ndarray | None  # [K, N]: what tells two runs' prompt sets apart
    baselines: dict  # name -> [K, N]


def read_predictions(run_dir: Path) -> RunPredictions | None:
    """The eval.predictions arrays of a run dir or eval dir, None where it has none; of a run resumed with another
    eval.predictions, the steps of its last K."""
    step = lambda path: int(path.stem.removeprefix("step_"))
    read = []
    for path in sorted((run_dir / PREDICTIONS_DIR).glob("step_*.npz"), key=step):
        with np.load(path) as arrays:
            read.append((step(path), {name: arrays[name] for name in arrays.files}))
    shape = read[-1][1][PREDICTIONS_MODEL].shape if read else None
    kept = [(s, arrays) for s, arrays in read if arrays[PREDICTIONS_MODEL].shape == shape]
    if not kept:
        return None
    targets = next((arrays[PREDICTED_TARGETS] for _, arrays in kept if PREDICTED_TARGETS in arrays), None)
    baselines = {}
    for _, arrays in kept:
        for name in arrays:
            if name.startswith(PREDICTED_BY):
                baselines.setdefault(name.removeprefix(PREDICTED_BY), arrays[name])
    return RunPredictions([s for s, _ in kept], np.stack([a[PREDICTIONS_MODEL] for _, a in kept]), targets, baselines)


def _prompt_sets(runs: list) -> list[dict]:
    """Runs' predictions grouped by prompt set (the same shape and targets): [{run id: RunPredictions}]."""
    groups = {}
    for run_id, run_dir in runs:
        if (read := read_predictions(run_dir)) is None:
            continue
        key = (read.model.shape[1:], None if read.targets is None else read.targets.tobytes())
        groups.setdefault(key, {})[run_id] = read
    return list(groups.values())


def _baselines(group: dict) -> dict:
    """The baselines of a prompt set's runs, each once; one whose predictions differ between runs (dMMSE on each
    run's own task pool) once per run, named `<name> (<run>)` past the first."""
    found = {}
    for run_id, read in group.items():
        for name, predictions in read.baselines.items():
            if name not in found:
                found[name] = predictions
            elif not np.allclose(found[name], predictions):
                found[f"{name} ({label(run_id)})"] = predictions
    return found


def dynamics_of(runs: list) -> list[tuple[dict, dynamics.Dynamics]]:
    """[(its runs {run id: RunPredictions}, their joint Dynamics)], one per prompt set."""
    sets = _prompt_sets(runs)
    found = []
    for group in sets:
        fitted = dynamics.essential_dynamics({run_id: read.model for run_id, read in group.items()}, _baselines(group))
        found.append((group, fitted))
    return found


def dynamics_tables(found: list) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(coordinates: each checkpoint's and baseline's pc1, pc2, ... by prompt set, and its distance from those
    components' span, `off_plane`; variance: each component's explained variance ratio by prompt set)."""
    rows, variance = [], []
    for i, (group, fitted) in enumerate(found):
        pcs = [f"pc{c + 1}" for c in range(len(fitted.explained))]
        row = lambda run_id, predictor, step, point, away, i=i, pcs=pcs: {
            "prompt_set": i, "run_id": run_id, "predictor": predictor, "step": step,
            **dict(zip(pcs, point, strict=True)), "off_plane": float(away),
        }  # fmt: skip
        for run_id, coordinates in fitted.trajectories.items():
            read = group[run_id]
            away = dynamics.off_plane(fitted, read.model)
            rows += [row(run_id, "model", *at) for at in zip(read.steps, coordinates, away, strict=True)]
        for name, predictions in _baselines(group).items():
            rows.append(row(None, name, None, fitted.baselines[name], dynamics.off_plane(fitted, predictions)))
        runs = ", ".join(label(r) for r in group)
        variance += [
            {"prompt_set": i, "component": pc, "explained_variance_ratio": share, "runs": runs}
            for pc, share in zip(pcs, fitted.explained, strict=True)
        ]
    return pd.DataFrame(rows).astype({"step": "Int64"}), pd.DataFrame(variance)
