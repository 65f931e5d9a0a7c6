"""Algorithm phases: at each evaluated step of a run, which predictor the model is closest to on the held-out
prompts, and the steps at which that changes (Raventos et al.'s dMMSE-to-ridge transition, Akyurek et al.'s
GD-to-least-squares phases). Pure numpy, on a run's held-out curves by step (curves.jsonl); `recorded` logs
them as a table to a run's trackers.

The distance, averaged over k >= 1 (at k = 0 every predictor guesses without a context):
- `similarity`, where the step's curves hold `similarity_mse/<name>` (eval.algorithms, on every held-out prompt;
  else eval.predictions, on its K): the mean squared difference of the model's and the predictor's predictions
  / d, per predictor that has such a curve (every algorithm and baseline);
- `error_gap`, otherwise: |model error - predictor error| of every baseline's error curve, a proxy (two
  predictors with the same error need not predict alike), named so in every table.
"""

from pathlib import Path
from typing import NamedTuple

import numpy as np

from icl_lr.records.schema import CURVES_FILE, DISTANCE, HELD_OUT, MODEL, is_error_curve, set_of
from icl_lr.records.tracking import Table, read_jsonl

SIMILARITY, ERROR_GAP = "similarity", "error_gap"


class Phase(NamedTuple):
    step: int
    closest: str  # the predictor at the least distance from the model
    distance: float
    measure: str  # SIMILARITY or ERROR_GAP
    runner_up: str | None  # the next closest, and how much farther it is (None where there is one predictor)
    margin: float


def distances(curves: dict) -> tuple[dict, str]:
    """({predictor: its distance from the model, mean over k >= 1}, measure) of one eval's held-out curves
    {name: [value per k]}: by similarity where the curves have it, else by error gap. Predictors whose
    distance is not finite at any k are left out."""
    mean = lambda values: float(np.nanmean(values)) if np.isfinite(values).any() else np.nan
    prefix = DISTANCE + "/"
    similar = {
        name.removeprefix(prefix): np.asarray(v, float)[1:] for name, v in curves.items() if name.startswith(prefix)
    }
    if similar:
        found, measure = {name: mean(v) for name, v in similar.items()}, SIMILARITY
    else:
        model = np.asarray(curves[MODEL], float)[1:]
        baselines = {n: v for n, v in curves.items() if is_error_curve(n) and not n.startswith(MODEL)}
        found = {n: mean(np.abs(model - np.asarray(v, float)[1:])) for n, v in baselines.items()}
        measure = ERROR_GAP
    return {name: d for name, d in found.items() if np.isfinite(d)}, measure


def closest(curves: dict, step: int) -> Phase | None:
    """The step's closest predictor (the first in the curves' order on a tie), None where none is measured."""
    found, measure = distances(curves)
    if not found:
        return None
    ranked = sorted(found, key=found.get)
    best = ranked[0]
    runner_up = ranked[1] if len(ranked) > 1 else None
    margin = found[runner_up] - found[best] if runner_up else np.nan
    return Phase(step, best, found[best], measure, runner_up, margin)


def held_out_by_step(run_dir: Path) -> dict:
    """{step: the held-out curves {name: [value per k]}} of every eval a run's curves.jsonl holds."""
    records = [r for r in read_jsonl(run_dir / CURVES_FILE) if set_of(r) == HELD_OUT]
    return {r["step"]: {k: v for k, v in r.items() if k not in ("step", "set")} for r in records}


def phases(curves_by_step: dict) -> list[Phase]:
    """Each evaluated step's Phase, in step order, of {step: held-out curves}."""
    found = (closest(curves_by_step[step], step) for step in sorted(curves_by_step))
    return [phase for phase in found if phase is not None]


def changes(found: list[Phase]) -> list[tuple[int, str, str]]:
    """(step, from, to) at each step whose closest predictor differs from the previous evaluated step's."""
    return [
        (now.step, before.closest, now.closest)
        for before, now in zip(found, found[1:], strict=False)
        if now.closest != before.closest
    ]


PHASES_TABLE = "eval/phases"  # W&B's table of a trajectory's phases (Phase's fields by step)


def summary(found: list[Phase]) -> dict:
    """The summary's phases of a run with a trajectory: the closest predictor at its last eval, the measure, and
    each change as [step, from, to]."""
    if not found:
        return {}
    return {
        "phases/closest": found[-1].closest,
        "phases/measure": found[-1].measure,
        "phases/changes": [list(change) for change in changes(found)],
    }


def recorded(curves_by_step: dict, tracker, step: int) -> dict:
    """The phases of a run's (or a trajectory eval's) evals by step: their table logged to `tracker` at `step`,
    their summary returned."""
    found = phases(curves_by_step)
    tracker.log_figures({PHASES_TABLE: Table(Phase._fields, [list(p) for p in found])}, step)
    return summary(found)
