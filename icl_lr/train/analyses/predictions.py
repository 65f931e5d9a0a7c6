"""eval.predictions = K: the model's predictions on the first K held-out prompts at every eval, kept as arrays so
that a run's trajectory of checkpoints can be studied in prediction space (analyze.py's essential dynamics,
icl_lr/analysis/dynamics.py) beside the baselines' predictions on the same prompts.

Each eval writes predictions/step_<n>.npz with `model` [K, N]; the first eval of a process adds `targets`
[K, N] (the prompts' scored ys, which also tell two runs' prompt sets apart) and `baseline/<name>` [K, N] of
every baseline (and eval.algorithms' algorithm) the held-out set holds (eval_sets.held_out_set): they do
not change during training. Without eval.algorithms (whose similarity curves span every held-out prompt), each
eval also logs `similarity_mse/<baseline>` on these K prompts: what the algorithm phases read (train/phases.py).
"""

import jax
import numpy as np

from icl_lr.components import NoKeys
from icl_lr.fields import check
from icl_lr.records.schema import DISTANCE, PREDICTED_BY, PREDICTED_TARGETS, PREDICTIONS_MODEL
from icl_lr.train.analyses import Result
from icl_lr.train.config import PREDICTION_LIMIT
from icl_lr.train.eval_sets import EvalSet


def make_predict_fn(model):
    """jitted params, inputs [K, ...] -> the model's y predictions [K, N]."""
    return jax.jit(lambda params, inputs: model.encoding.predict(model.apply({"params": params}, inputs)))


class Predictions:
    """The arrays `model` (every eval) and `targets`, `baseline/<name>` (the first) of eval.predictions."""

    Config = NoKeys

    @staticmethod
    def wanted(eval_cfg) -> bool:
        return eval_cfg.predictions > 0

    @staticmethod
    def check(cfg, task, family) -> None:
        """Any task and family: the model's predictions are its encoding's; at most PREDICTION_LIMIT values an
        eval (eval.predictions' range is the eval section's check)."""
        values = cfg.eval.predictions * cfg.data.n_points
        check(
            values <= PREDICTION_LIMIT,
            f"eval.predictions x data.n_points must be at most {PREDICTION_LIMIT:,} values (each eval writes them), "
            f"got {cfg.eval.predictions:,} x {cfg.data.n_points}",
        )

    def __init__(self, setup, cfg, mesh):
        self.predict, self.k, self.first = make_predict_fn(setup.model), cfg.eval.predictions, True
        self.batch = cfg.eval.batch_size  # prompts the model reads at once, as the eval scores them
        self.n_dims = cfg.data.n_dims

    def __call__(self, params, held_out: EvalSet, step: int) -> Result:
        inputs = held_out.inputs[: self.k]
        chunks = [self.predict(params, inputs[i : i + self.batch]) for i in range(0, self.k, self.batch)]
        model_KxN = np.concatenate([np.asarray(c, np.float32) for c in chunks])
        arrays = {PREDICTIONS_MODEL: model_KxN}
        if self.first:
            arrays[PREDICTED_TARGETS] = np.asarray(held_out.ys[: self.k], np.float32)
            arrays |= {PREDICTED_BY + name: np.asarray(p, np.float32) for name, p in held_out.predictions.items()}
            self.first = False
        curves = {}
        if not held_out.references:  # eval.algorithms' similarity curves span every prompt
            apart = lambda p: np.mean((model_KxN - p) ** 2, axis=0) / self.n_dims
            curves = {f"{DISTANCE}/{name}": apart(p) for name, p in held_out.predictions.items()}
        return Result(curves=curves, arrays=arrays)
