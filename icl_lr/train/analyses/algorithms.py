"""eval.algorithms: how close the model is to each iterative algorithm (icl_lr/task/algorithms.py) and each
baseline on the held-out prompts, in its predictions, its residuals and its gradients at the query.

The algorithms' predictions and gradients, and the baselines' predictions, do not change during training: the
held-out set holds them (eval_sets.held_out_set, its `references`, beside their error curves among its baselines');
each eval computes the model's and compares.
"""

import jax
import jax.numpy as jnp
import numpy as np

from icl_lr.components import NoKeys
from icl_lr.records.schema import SIMILARITIES
from icl_lr.train.analyses import Result, check_linear
from icl_lr.train.eval_sets import EvalSet, predictions_and_query_gradients


def similarity_curves(model_preds_PxN, model_grads_PxNxD, eval_set: EvalSet, n_dims: int) -> dict:
    """Per algorithm or baseline and k: the mean squared difference of predictions / d (`similarity_mse/<name>`), the
    cosine over prompts of the two residuals (`similarity_residual_cos/<name>`), and the mean cosine of the
    gradients at the query (`similarity_grad_cos/<name>`, algorithms only; NaN where a gradient is 0, as for tokens)."""
    cos = lambda a, b, axis: jnp.sum(a * b, axis) / (jnp.linalg.norm(a, axis=axis) * jnp.linalg.norm(b, axis=axis))
    mse, residuals, gradients = SIMILARITIES
    curves = {}
    for name, (preds_PxN, grads_PxNxD) in eval_set.references.items():
        curves[f"{mse}/{name}"] = jnp.mean((model_preds_PxN - preds_PxN) ** 2, axis=0) / n_dims
        curves[f"{residuals}/{name}"] = cos(model_preds_PxN - eval_set.ys, preds_PxN - eval_set.ys, 0)
        if grads_PxNxD is not None:  # an algorithm's (a baseline's are not kept)
            curves[f"{gradients}/{name}"] = jnp.nanmean(cos(model_grads_PxNxD, grads_PxNxD, -1), axis=0)
    return {name: np.asarray(curve) for name, curve in curves.items()}


def make_model_gradients_fn(model):
    """jitted params, xs, ys -> the model's predictions [P, N] and gradients at each query [P, N, D]."""

    @jax.jit
    def predictions_and_gradients(params, xs_PxNxD, ys_PxN):
        predict = lambda xs, ys: model.encoding.predict(model.apply({"params": params}, model.encoding.encode(xs, ys)))
        return predictions_and_query_gradients(predict, xs_PxNxD, ys_PxN)

    return predictions_and_gradients


class Algorithms:
    """The similarity curves `<similarity>/<algorithm>` (schema.SIMILARITIES) of the model at each eval."""

    Config = NoKeys

    @staticmethod
    def wanted(eval_cfg) -> bool:
        return eval_cfg.algorithms

    @staticmethod
    def check(cfg, task, family) -> None:
        check_linear("algorithms", cfg, task)

    def __init__(self, setup, cfg, mesh):
        self.model_gradients, self.n_dims = make_model_gradients_fn(setup.model), cfg.data.n_dims

    def __call__(self, params, held_out: EvalSet, step: int) -> Result:
        preds, grads = self.model_gradients(params, held_out.prompts.xs, held_out.prompts.ys)
        return Result(curves=similarity_curves(preds, grads, held_out, self.n_dims))
