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
from icl_lr.tracking import is_error_curve

BAYES = "bayes"  # the Bayes-optimal predictor on the eval distribution (a mixture if sigma is hierarchical)


class EvalSet(NamedTuple):
    inputs: jax.Array  # encoded prompts, [P, L, ...]
    ys: jax.Array  # [P, N]
    baseline_curves: dict  # name -> np.ndarray [N]


def squared_error_curve(preds_PxN, ys_PxN, n_dims: int) -> jax.Array:
    return jnp.mean((preds_PxN - ys_PxN) ** 2, axis=0) / n_dims


def _baseline_curves(xs, ys, ys_scored, noise_stds: tuple, data_cfg: DataConfig, suffix: str = "") -> dict:
    preds = jax.jit(baselines.all_predictions, static_argnums=(2, 3))(xs, ys, data_cfg.prior_scale, noise_stds)
    return {name + suffix: np.asarray(squared_error_curve(p, ys_scored, data_cfg.n_dims)) for name, p in preds.items()}


def eval_set_of(data_cfg: DataConfig, batch: data.Batch) -> EvalSet:
    """The prompts of `batch`, encoded, with the baselines' error curves on them. An encoding that
    quantises its inputs adds each baseline on the decoded values the model sees (`<name>_on_bins`,
    scored against the exact ys; Bayes's noise there includes the quantisation's), and a binned
    output adds its cross-entropy yardsticks."""
    encoding = encoding_of(data_cfg)
    curves = _baseline_curves(batch.xs, batch.ys, batch.ys, data_cfg.noise_stds, data_cfg)
    seen = encoding.seen_values(batch.xs, batch.ys)
    if seen is not None:
        xs_seen, ys_seen, added_var = seen
        noise_stds = tuple(float((sigma**2 + added_var) ** 0.5) for sigma in data_cfg.noise_stds)
        curves |= _baseline_curves(xs_seen, ys_seen, batch.ys, noise_stds, data_cfg, suffix="_on_bins")
    curves |= {name: np.asarray(v.mean(axis=0)) for name, v in encoding.yardsticks(batch.xs, batch.ys).items()}
    return EvalSet(encoding.encode(batch.xs, batch.ys), batch.ys, curves)


def make_eval_set(data_cfg: DataConfig, eval_cfg: EvalConfig) -> EvalSet:
    return eval_set_of(data_cfg, data.sample_batch(jax.random.PRNGKey(eval_cfg.seed), data_cfg, eval_cfg.n_prompts))


def make_train_set_eval(data_cfg: DataConfig, eval_cfg: EvalConfig, run_key) -> EvalSet:
    """The first min(train_size, eval.n_prompts) prompts of the run's finite training set, full task."""
    ids = jnp.arange(min(data_cfg.train_size, eval_cfg.n_prompts))
    return eval_set_of(data_cfg, data.training_set_prompts(run_key, data_cfg, ids))


def make_model_curves_fn(model, eval_cfg: EvalConfig):
    """jitted params, inputs, ys -> the model's curves {name: [N]} (`Encoding.eval_metrics` averaged over
    prompts), in batches of `eval_cfg.batch_size` prompts."""

    def metrics_of_one(params, inputs, ys):
        outputs = model.apply({"params": params}, inputs[None])
        return {name: v[0] for name, v in model.encoding.eval_metrics(outputs, ys[None]).items()}

    @jax.jit
    def curves(params, inputs, ys):
        per_prompt = jax.lax.map(lambda one: metrics_of_one(params, *one), (inputs, ys), batch_size=eval_cfg.batch_size)
        return {name: v.mean(axis=0) for name, v in per_prompt.items()}

    return curves


def summarize(curves: dict, n_dims: int) -> dict:
    """Scalars for dashboards: each curve at k = d/2, d, 2d (error curves as <predictor>/error_k<k>, other
    metrics as <metric>/<predictor>_k<k>), the model's mean error and its excess over Bayes (and its
    excess cross-entropy, where there is one)."""
    n = len(curves["model"])
    points = {f"k{k}": k for k in (n_dims // 2, n_dims, 2 * n_dims) if k < n}
    key = lambda name, label: f"{name}/error_{label}" if is_error_curve(name) else f"{name}_{label}"
    summary = {key(name, label): float(curve[k]) for name, curve in curves.items() for label, k in points.items()}
    excess = np.asarray(curves["model"]) - np.asarray(curves[BAYES])
    summary |= {f"excess/error_{label}": float(excess[k]) for label, k in points.items()}
    if "ce/bayes" in curves:
        excess_ce = np.asarray(curves["ce/model"]) - np.asarray(curves["ce/bayes"])
        summary |= {f"excess/ce_{label}": float(excess_ce[k]) for label, k in points.items()}
    summary["excess/mean"] = float(excess.mean())
    summary["model/error_mean"] = float(np.mean(curves["model"]))
    return summary
