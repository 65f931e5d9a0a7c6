"""Essential dynamics: a run's trajectory of checkpoints in prediction space, reduced by PCA (as Carroll et
al.'s essential dynamics of in-context learning). Each checkpoint is the vector of its predictions on a fixed
prompt set (eval.predictions: K prompts x N points, flattened); one PCA (numpy's SVD) is fitted jointly on
every checkpoint of every run given, centred on their mean, so their trajectories share one plane, and the
baselines' predictions on the same prompts are projected into it: where the model heads, and which
algorithm it passes by. Pure numpy.
"""

from typing import NamedTuple

import numpy as np


class Dynamics(NamedTuple):
    trajectories: dict  # run -> its checkpoints' coordinates [steps, components], in step order
    explained: np.ndarray  # [components]: each component's share of the trajectories' variance
    baselines: dict  # baseline name -> its predictions' coordinates [components]
    mean: np.ndarray  # [K * N]: the centre of the checkpoints
    components: np.ndarray  # [components, K * N]: the principal directions, unit norm


def _flat(predictions) -> np.ndarray:
    """[steps, K, N] or [K, N] predictions as float64 rows [steps, K * N] or a row [K * N]."""
    predictions = np.asarray(predictions, np.float64)
    return predictions.reshape(len(predictions), -1) if predictions.ndim == 3 else predictions.reshape(-1)


def project(dynamics: Dynamics, predictions) -> np.ndarray:
    """Coordinates [components] (or [steps, components]) of predictions [K, N] (or [steps, K, N]) in the
    plane of `dynamics`."""
    return (_flat(predictions) - dynamics.mean) @ dynamics.components.T


def off_plane(dynamics: Dynamics, predictions) -> np.ndarray:
    """The distance (root of the summed squares, in y's units) of predictions [K, N] (or [steps, K, N]) from
    their projection: how much of them the components kept do not show."""
    centred = _flat(predictions) - dynamics.mean
    return np.linalg.norm(centred - project(dynamics, predictions) @ dynamics.components, axis=-1)


def essential_dynamics(runs: dict, baselines: dict | None = None, n_components: int = 3) -> Dynamics:
    """The joint PCA of `runs` {run: predictions [steps, K, N]} (all on one prompt set), with `baselines`
    {name: predictions [K, N]} projected into its first `n_components` (at most the checkpoints' rank).
    Each component's sign is set so its largest loading is positive: the same runs give the same picture."""
    rows = {run: _flat(predictions) for run, predictions in runs.items()}
    widths = {row.shape[1] for row in rows.values()} | {_flat(p).size for p in (baselines or {}).values()}
    if len(widths) != 1:
        raise ValueError(f"essential dynamics needs predictions on one prompt set; got widths {sorted(widths)}")
    stacked = np.concatenate(list(rows.values()))
    mean = stacked.mean(axis=0)
    _, singular, directions = np.linalg.svd(stacked - mean, full_matrices=False)
    variance = singular**2
    total = variance.sum()
    explained = variance / total if total > 0 else np.zeros_like(variance)
    kept = min(n_components, len(singular))
    directions = directions[:kept]
    largest = np.argmax(np.abs(directions), axis=1)
    directions = directions * np.sign(directions[np.arange(kept), largest])[:, None]
    found = Dynamics({}, explained[:kept], {}, mean, directions)
    trajectories = {run: project(found, predictions) for run, predictions in runs.items()}
    projected = {name: project(found, p) for name, p in (baselines or {}).items()}
    return found._replace(trajectories=trajectories, baselines=projected)
