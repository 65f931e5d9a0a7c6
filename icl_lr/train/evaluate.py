"""Error curves on fixed prompt sets: squared error / d at every context length k = 0..n-1.

The held-out prompts come from a fixed seed and always from the task's prior (no task pool, no
curriculum), so every run and every eval of a run is scored on the same prompts. A run with a
finite training set is also scored on (the first prompts of) that set, so memorisation shows; one
with a task pool on prompts from its pool (Raventos et al.'s "Pretrain"); one with a hierarchical
noise prior on one set per noise level (Bai et al.); one with a mixture of task classes on one set
per class; and every run on Garg et al.'s OOD suite (icl_lr/task/ood.py). Every set comes from
eval.seed. Baselines do not change during training and are computed once per set.
"""

import dataclasses
import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from icl_lr.model.encoding import encoding_of
from icl_lr.records.schema import BAYES, MODEL, SIMILARITIES, is_error_curve
from icl_lr.task.base import Batch, pool_key
from icl_lr.task.config import DataConfig
from icl_lr.task.mixture import component_config
from icl_lr.task.registry import task_of
from icl_lr.train import parallel, probes
from icl_lr.train.config import EvalConfig

log = logging.getLogger("icl_lr")


class EvalSet(NamedTuple):
    inputs: jax.Array  # encoded prompts, [P, L, ...]
    ys: jax.Array  # [P, N]
    baseline_curves: dict  # name -> np.ndarray [N]
    xs: jax.Array | None = None  # [P, N, D], kept where the model is compared with `references`
    references: dict = {}  # algorithm name -> (predictions [P, N], gradients at each query [P, N, D])


class EvalSets(NamedTuple):
    """Prompt sets scored as one curve: a set scored at every k; or, `per_k`, set k scored at its k only
    (a query of its own at position k, as Garg et al.'s OOD prompts), NaN past the last set."""

    sets: list  # [EvalSet]
    per_k: bool = False


def squared_error_curve(preds_PxN, ys_PxN, n_dims: int) -> jax.Array:
    return jnp.mean((preds_PxN - ys_PxN) ** 2, axis=0) / n_dims


def _baseline_curves(xs, ys, ys_scored, noise_stds: tuple, data_cfg: DataConfig, pool, suffix: str = "") -> dict:
    """Each baseline's squared error / d by k, and its curves of the task's other metrics (`<metric>/<name>`)."""
    task = task_of(data_cfg)
    curves = {}
    for name, p in task.baselines(xs, ys, noise_stds, pool).items():
        curves[name + suffix] = np.asarray(squared_error_curve(p, ys_scored, data_cfg.n_dims))
        curves |= {
            f"{metric}/{name}{suffix}": np.asarray(v.mean(0)) for metric, v in task.metrics(p, ys_scored).items()
        }
    return curves


def eval_set_of(data_cfg: DataConfig, batch: Batch, pool=None) -> EvalSet:
    """The prompts of `batch`, encoded, with the baselines' error curves on them (dMMSE given the run's
    task pool [M, d]). An encoding that quantises its inputs adds each baseline on the decoded values the
    model sees (`<name>_on_bins`, scored against the exact ys; Bayes's noise there includes the
    quantisation's), and a binned output adds its cross-entropy yardsticks."""
    encoding = encoding_of(data_cfg)
    curves = _baseline_curves(batch.xs, batch.ys, batch.ys, data_cfg.noise_stds, data_cfg, pool)
    seen = encoding.seen_values(batch.xs, batch.ys)
    if seen is not None:
        xs_seen, ys_seen, added_var = seen
        noise_stds = tuple(float((sigma**2 + added_var) ** 0.5) for sigma in data_cfg.noise_stds)
        curves |= _baseline_curves(xs_seen, ys_seen, batch.ys, noise_stds, data_cfg, pool, suffix="_on_bins")
    curves |= {name: np.asarray(v.mean(axis=0)) for name, v in encoding.yardsticks(batch.xs, batch.ys).items()}
    return EvalSet(encoding.encode(batch.xs, batch.ys), batch.ys, curves)


def _prompts(xs, ys) -> Batch:
    return Batch(xs, ys, jnp.ones(ys.shape[1]), jnp.ones(ys.shape[0]))


def _set_key(eval_cfg: EvalConfig, stream: int):
    """The held-out set's key (stream 0) and one per other fixed set, all from eval.seed."""
    key = jax.random.PRNGKey(eval_cfg.seed)
    return key if stream == 0 else jax.random.fold_in(key, stream)


def make_eval_set(data_cfg: DataConfig, eval_cfg: EvalConfig, pool=None) -> EvalSet:
    """The held-out set; with eval.algorithms, the iterative algorithms' curves beside the baselines'."""
    task = task_of(data_cfg)
    batch = task.sample_batch(_set_key(eval_cfg, 0), eval_cfg.n_prompts)
    held_out = eval_set_of(data_cfg, batch, pool)
    if not eval_cfg.algorithms:
        return held_out
    predictors, rates = task.algorithms(eval_cfg.algorithm_steps)
    log.info("algorithm baselines: learning rates tuned on their own prompts: %s",
             ", ".join(f"{name} {rate:.3g}" for name, rate in rates.items()))  # fmt: skip
    batched = {name: jax.vmap(predict) for name, predict in predictors.items()}
    references = {name: predictions_and_query_gradients(p, batch.xs, batch.ys) for name, p in batched.items()}
    curves = {n: np.asarray(squared_error_curve(p, batch.ys, data_cfg.n_dims)) for n, (p, _) in references.items()}
    return held_out._replace(baseline_curves=held_out.baseline_curves | curves, xs=batch.xs, references=references)


def predictions_and_query_gradients(predict, xs_PxNxD, ys_PxN) -> tuple[jax.Array, jax.Array]:
    """The predictions [P, N] of `predict(xs [B, N, D], ys [B, N]) -> [B, N]` and d prediction_k / d x_k
    [P, N, D], the diagonal blocks of each prompt's Jacobian (prediction k's sensitivity to its own query),
    from one pass."""

    def one(xy):
        xs_NxD, ys_N = xy
        with_value = lambda x: (lambda preds_N: (preds_N, preds_N))(predict(x[None], ys_N[None])[0])
        jacobian_NxNxD, preds_N = jax.jacrev(with_value, has_aux=True)(xs_NxD)
        n = xs_NxD.shape[0]
        return preds_N, jacobian_NxNxD[jnp.arange(n), jnp.arange(n)]

    return jax.lax.map(one, (xs_PxNxD, ys_PxN), batch_size=64)


def similarity_curves(model_preds_PxN, model_grads_PxNxD, eval_set: EvalSet, n_dims: int) -> dict:
    """Per algorithm and k: the mean squared difference of predictions / d (`similarity_mse/<name>`), the
    cosine over prompts of the two residuals (`similarity_residual_cos/<name>`), and the mean cosine of the
    gradients at the query (`similarity_grad_cos/<name>`; NaN where a gradient is 0, as for tokens)."""
    cos = lambda a, b, axis: jnp.sum(a * b, axis) / (jnp.linalg.norm(a, axis=axis) * jnp.linalg.norm(b, axis=axis))
    mse, residuals, gradients = SIMILARITIES
    curves = {}
    for name, (preds_PxN, grads_PxNxD) in eval_set.references.items():
        curves[f"{mse}/{name}"] = jnp.mean((model_preds_PxN - preds_PxN) ** 2, axis=0) / n_dims
        curves[f"{residuals}/{name}"] = cos(model_preds_PxN - eval_set.ys, preds_PxN - eval_set.ys, 0)
        curves[f"{gradients}/{name}"] = jnp.nanmean(cos(model_grads_PxNxD, grads_PxNxD, -1), axis=0)
    return {name: np.asarray(curve) for name, curve in curves.items()}


def make_model_gradients_fn(model):
    """jitted params, xs, ys -> the model's predictions [P, N] and gradients at each query [P, N, D]."""

    @jax.jit
    def predictions_and_gradients(params, xs_PxNxD, ys_PxN):
        predict = lambda xs, ys: model.encoding.predict(model.apply({"params": params}, model.encoding.encode(xs, ys)))
        return predictions_and_query_gradients(predict, xs_PxNxD, ys_PxN)

    return predictions_and_gradients


def make_probe_sets(data_cfg: DataConfig, eval_cfg: EvalConfig) -> tuple[probes.ProbeSet, probes.ProbeSet]:
    """(probe-training set, the held-out prompts) with their probe targets, for eval.probes."""
    task, encoding = task_of(data_cfg), encoding_of(data_cfg)
    of = lambda stream: probes.probe_set_of(task, encoding, _set_key(eval_cfg, stream), eval_cfg.n_prompts)
    return of(4), of(0)


def make_train_set_eval(data_cfg: DataConfig, eval_cfg: EvalConfig, run_key, pool=None) -> EvalSet:
    """The first min(train_size, eval.n_prompts) prompts of the run's finite training set, full task."""
    ids = jnp.arange(min(data_cfg.train_size, eval_cfg.n_prompts))
    return eval_set_of(data_cfg, task_of(data_cfg).training_set_prompts(run_key, ids), pool)


def make_pretrain_set(data_cfg: DataConfig, eval_cfg: EvalConfig, run_key, pool) -> EvalSet:
    """Held-out prompts whose tasks come from the run's own pool (Raventos et al.'s "Pretrain" eval)."""
    batch = task_of(data_cfg).sample_batch(_set_key(eval_cfg, 1), eval_cfg.n_prompts, pool_key=pool_key(run_key))
    return eval_set_of(data_cfg, batch, pool)


def make_sigma_sets(data_cfg: DataConfig, eval_cfg: EvalConfig) -> dict:
    """Under a hierarchical noise prior, {sigma: set} with every prompt's noise at that sigma (the same x's
    and w's for all), scored beside the mixture's Bayes and ridge at each sigma (Bai et al. 2023)."""
    fixed = lambda sigma: dataclasses.replace(data_cfg, noise_std=sigma, noise_std_choices=None)
    sample = lambda sigma: task_of(fixed(sigma)).sample_batch(_set_key(eval_cfg, 2), eval_cfg.n_prompts)
    return {sigma: eval_set_of(data_cfg, sample(sigma)) for sigma in data_cfg.noise_stds}


def make_class_sets(data_cfg: DataConfig, eval_cfg: EvalConfig) -> dict:
    """Under a mixture of task classes, {class: set} of prompts of that class alone, scored by the mixture's
    baselines (Bai et al. 2023's per-class evaluation)."""
    sample = lambda name: task_of(component_config(data_cfg, name)).sample_batch(
        _set_key(eval_cfg, 5), eval_cfg.n_prompts
    )
    return {name: eval_set_of(data_cfg, sample(name)) for name in data_cfg.task_mixture}


def make_ood_sets(data_cfg: DataConfig, eval_cfg: EvalConfig) -> dict:
    """{condition: EvalSets} of the task's OOD prompts (Garg et al.'s suite), baselines under the training prior."""
    suite = task_of(data_cfg).ood_conditions(_set_key(eval_cfg, 3), eval_cfg.n_prompts)
    return {
        name: EvalSets([eval_set_of(data_cfg, _prompts(xs, ys)) for xs, ys in sets], per_k)
        for name, (sets, per_k) in suite.items()
    }


def score(model_curves, params, eval_sets: EvalSets) -> dict:
    """{curve name: [N]}: the model's curves (`make_model_curves_fn`) and the baselines' on `eval_sets`."""
    per_set = [
        jax.tree.map(np.asarray, model_curves(params, s.inputs, s.ys)) | s.baseline_curves for s in eval_sets.sets
    ]
    if not eval_sets.per_k:
        return per_set[0]
    n = eval_sets.sets[0].ys.shape[1]
    return {
        name: np.array([per_set[k][name][k] if k < len(per_set) else np.nan for k in range(n)]) for name in per_set[0]
    }


def make_model_curves_fn(model, eval_cfg: EvalConfig, mesh):
    """jitted params, inputs, ys -> the model's curves {name: [N]} (`Encoding.eval_metrics` averaged over
    prompts), in chunks of `eval_cfg.batch_size` prompts, each split across the mesh's devices (the last
    chunk padded, its padding left out of the means)."""

    @jax.jit
    def curves(params, inputs, ys):
        n_prompts = ys.shape[0]
        chunk = min(eval_cfg.batch_size, -(-n_prompts // mesh.size) * mesh.size)
        n_chunks = -(-n_prompts // chunk)
        padded = n_chunks * chunk - n_prompts
        split = lambda a: jnp.pad(a, [(0, padded)] + [(0, 0)] * (a.ndim - 1)).reshape(n_chunks, chunk, *a.shape[1:])

        def chunk_sums(_, one):
            inputs_CxT, ys_CxN, counted_C = parallel.constrain_rows(mesh, one)
            metrics = model.encoding.eval_metrics(model.apply({"params": params}, inputs_CxT), ys_CxN)
            return None, {name: jnp.where(counted_C[:, None], v, 0.0).sum(axis=0) for name, v in metrics.items()}

        _, sums = jax.lax.scan(chunk_sums, None, (split(inputs), split(ys), split(jnp.ones(n_prompts, bool))))
        return {name: v.sum(axis=0) / n_prompts for name, v in sums.items()}

    return curves


def summarize(curves: dict, n_dims: int, reference: str = BAYES) -> dict:
    """Scalars for dashboards: each curve at k = d/2, d, 2d (error curves as <predictor>/error_k<k>, other
    metrics as <metric>/<predictor>_k<k>), the model's mean error and its excess over the task's reference
    predictor (Bayes where it is exact; and its excess cross-entropy, where there is one). A curve's NaN (a
    k an OOD condition cannot score) is left out of its scalars."""
    n = len(curves[MODEL])
    points = {f"k{k}": k for k in (n_dims // 2, n_dims, 2 * n_dims) if k < n}
    key = lambda name, label: f"{name}/error_{label}" if is_error_curve(name) else f"{name}_{label}"
    summary = {key(name, label): float(curve[k]) for name, curve in curves.items() for label, k in points.items()}
    excess = np.asarray(curves[MODEL]) - np.asarray(curves[reference])
    summary |= {f"excess/error_{label}": float(excess[k]) for label, k in points.items()}
    if "ce/bayes" in curves:
        excess_ce = np.asarray(curves["ce/model"]) - np.asarray(curves["ce/bayes"])
        summary |= {f"excess/ce_{label}": float(excess_ce[k]) for label, k in points.items()}
    summary["excess/mean"] = float(np.nanmean(excess))
    summary["model/error_mean"] = float(np.nanmean(curves[MODEL]))
    return {name: value for name, value in summary.items() if np.isfinite(value)}
