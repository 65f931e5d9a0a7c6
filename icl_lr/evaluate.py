"""Error curves on fixed prompt sets: squared error / d at every context length k = 0..n-1.

The held-out prompts come from a fixed seed and always from the Gaussian prior (no task pool, no
curriculum), so every run and every eval of a run is scored on the same prompts. A run with a
finite training set is also scored on (the first prompts of) that set, so memorisation shows.
Baselines do not change during training and are computed once per set.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from icl_lr import baselines, data
from icl_lr.config import DataConfig, EvalConfig
from icl_lr.encoding import encoding_of

BAYES = "bayes"  # the Bayes-optimal predictor on the eval distribution (a mixture if sigma is hierarchical)


class EvalSet(NamedTuple):
    inputs: jax.Array  # encoded prompts, [P, L, ...]
    ys: jax.Array  # [P, N]
    baseline_curves: dict  # name -> np.ndarray [N]


def squared_error_curve(preds_PxN, ys_PxN, n_dims: int) -> jax.Array:
    return jnp.mean((preds_PxN - ys_PxN) ** 2, axis=0) / n_dims


def eval_set_of(data_cfg: DataConfig, batch: data.Batch) -> EvalSet:
    """The prompts of `batch`, encoded, with the baselines' error curves on them."""
    preds = jax.jit(baselines.all_predictions, static_argnums=(2, 3))(
        batch.xs, batch.ys, data_cfg.prior_scale, data_cfg.noise_stds
    )
    curves = {name: np.asarray(squared_error_curve(p, batch.ys, data_cfg.n_dims)) for name, p in preds.items()}
    return EvalSet(encoding_of(data_cfg).encode(batch.xs, batch.ys), batch.ys, curves)


def make_eval_set(data_cfg: DataConfig, eval_cfg: EvalConfig) -> EvalSet:
    return eval_set_of(data_cfg, data.sample_batch(jax.random.PRNGKey(eval_cfg.seed), data_cfg, eval_cfg.n_prompts))


def make_train_set_eval(data_cfg: DataConfig, eval_cfg: EvalConfig, run_key) -> EvalSet:
    """The first min(train_size, eval.n_prompts) prompts of the run's finite training set, full task."""
    ids = jnp.arange(min(data_cfg.train_size, eval_cfg.n_prompts))
    return eval_set_of(data_cfg, data.training_set_prompts(run_key, data_cfg, ids))


def make_model_curve_fn(model, data_cfg: DataConfig, eval_cfg: EvalConfig):
    """jitted params, inputs, ys -> model error curve [N], in batches of `eval_cfg.batch_size` prompts."""

    def predict_one(params, inputs):
        return model.encoding.predict(model.apply({"params": params}, inputs[None]))[0]

    @jax.jit
    def curve(params, inputs, ys):
        preds = jax.lax.map(lambda one: predict_one(params, one), inputs, batch_size=eval_cfg.batch_size)
        return squared_error_curve(preds, ys, data_cfg.n_dims)

    return curve


def summarize(curves: dict, n_dims: int) -> dict:
    """Scalars for dashboards: each curve at k = d/2, d, 2d, the model's mean, its excess over Bayes."""
    n = len(curves["model"])
    points = {f"k{k}": k for k in (n_dims // 2, n_dims, 2 * n_dims) if k < n}
    summary = {
        f"{name}/error_{label}": float(curve[k]) for name, curve in curves.items() for label, k in points.items()
    }
    excess = np.asarray(curves["model"]) - np.asarray(curves[BAYES])
    summary |= {f"excess/error_{label}": float(excess[k]) for label, k in points.items()}
    summary["excess/mean"] = float(excess.mean())
    summary["model/error_mean"] = float(np.mean(curves["model"]))
    return summary
