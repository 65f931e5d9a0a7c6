"""The fixed prompt sets a run is scored on, each with its baselines' curves: squared error / d at every
context length k = 0..n-1.

The held-out prompts come from a fixed seed and always from the task's prior (no task pool, no
curriculum), so every run and every eval of a run is scored on the same prompts. The sets and their
baselines are built on the host's CPU (its LAPACK: a GPU takes far longer over their many small
solves) and then placed beside the model; the runs of a pack share the sets their configs share. A run with a
finite training set is also scored on (the first prompts of) that set, so memorisation shows; one
with a task pool on prompts from its pool (Raventos et al.'s "Pretrain"); one with a hierarchical
noise prior on one set per noise level (Bai et al.); one with a mixture of task classes on one set
per class; and every run on Garg et al.'s OOD suite (icl_lr/task/ood.py), each condition beside the baselines of
the task that labels it. Every set comes from eval.seed. Baselines do not change during training and are
computed once per set.
"""

import dataclasses
import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from icl_lr.model.encoding import Encoding
from icl_lr.records.schema import HELD_OUT
from icl_lr.task.base import Batch, Task, pool_key
from icl_lr.train import parallel
from icl_lr.train.config import EvalConfig, RunConfig
from icl_lr.train.setup import Setup

log = logging.getLogger("icl_lr")


class EvalSet(NamedTuple):
    inputs: jax.Array  # encoded prompts, [P, L, ...]
    ys: jax.Array  # [P, N]
    baseline_curves: dict  # name -> np.ndarray [N]
    prompts: Batch | None = None  # as the model sees them, kept where the model is compared with `references`
    references: dict = {}  # name -> (predictions [P, N], gradients at each query [P, N, D]; None for a baseline)
    predictions: dict = {}  # eval.predictions: on the first K prompts, each baseline's predictions [K, N] (host)


class EvalSets(NamedTuple):
    """Prompt sets scored as one curve: a set scored at every k; or, `per_k`, set k scored at its k only
    (a query of its own at position k, as Garg et al.'s OOD prompts), NaN past the last set."""

    sets: list  # [EvalSet]
    per_k: bool = False
    reference: str | None = None  # the predictor their excess is over; None: the run's task's


def squared_error_curve(preds_PxN, ys_PxN, n_dims: int) -> jax.Array:
    return jnp.mean((preds_PxN - ys_PxN) ** 2, axis=0) / n_dims


def _baseline_curves(task: Task, predictions: dict, ys_scored, suffix: str = "") -> dict:
    """Each baseline's squared error / d by k, and its curves of the task's other metrics (`<metric>/<name>`), of
    their `predictions` {name: [P, N]}."""
    curves = {}
    for name, p in predictions.items():
        curves[name + suffix] = np.asarray(squared_error_curve(p, ys_scored, task.cfg.n_dims))
        curves |= {
            f"{metric}/{name}{suffix}": np.asarray(v.mean(0)) for metric, v in task.metrics(p, ys_scored).items()
        }
    return curves


def eval_set_of(task: Task, encoding: Encoding, batch: Batch, pool=None, baselines: dict | None = None) -> EvalSet:
    """The prompts of `batch`, encoded, with the baselines' error curves on them (dMMSE given the run's
    task pool [M, d]; `baselines`: their predictions on `batch` where the caller has them). An encoding that
    quantises its inputs adds each baseline on the decoded values the model sees (`<name>_on_bins`, scored
    against the exact ys; Bayes's noise there includes the quantisation's), and a binned output adds its
    cross-entropy baselines."""
    noise_stds = task.cfg.noise_stds
    baselines = baselines if baselines is not None else task.baselines(batch.xs, batch.ys, noise_stds, pool)
    curves = _baseline_curves(task, baselines, batch.scored)
    seen = encoding.seen_values(batch.xs, batch.ys)
    if seen is not None:
        xs_seen, ys_seen, added_var = seen
        seen_stds = tuple(float((sigma**2 + added_var) ** 0.5) for sigma in noise_stds)
        on_bins = task.baselines(xs_seen, ys_seen, seen_stds, pool)
        curves |= _baseline_curves(task, on_bins, batch.scored, suffix="_on_bins")
    curves |= {name: np.asarray(v.mean(axis=0)) for name, v in encoding.baseline_metrics(batch.xs, batch.ys).items()}
    return EvalSet(encoding.encode(batch.xs, batch.ys), batch.scored, curves)


def _prompts(xs, ys) -> Batch:
    return Batch(xs, ys, jnp.ones(ys.shape[1]), jnp.ones(ys.shape[0]))


def set_key(eval_cfg: EvalConfig, stream: int):
    """The held-out set's key (stream 0) and one per other fixed set, all from eval.seed."""
    key = jax.random.PRNGKey(eval_cfg.seed)
    return key if stream == 0 else jax.random.fold_in(key, stream)


def held_out_set(task: Task, encoding: Encoding, eval_cfg: EvalConfig, pool=None) -> EvalSet:
    """The held-out set; with eval.algorithms, the iterative algorithms' curves beside the baselines'; with
    eval.predictions = K, the baselines' (and algorithms') predictions on its first K prompts."""
    batch = task.sample_batch(set_key(eval_cfg, 0), eval_cfg.n_prompts)
    baselines = task.baselines(batch.xs, batch.ys, task.cfg.noise_stds, pool)
    held_out = eval_set_of(task, encoding, batch, pool, baselines)
    first = slice(0, eval_cfg.predictions)
    if eval_cfg.predictions:
        held_out = held_out._replace(predictions={name: np.asarray(p[first]) for name, p in baselines.items()})
    if not eval_cfg.algorithms:
        return held_out
    predictors, rates = task.algorithms(eval_cfg.algorithm_steps)
    log.info("algorithm baselines: learning rates tuned on their own prompts: %s",
             ", ".join(f"{name} {rate:.3g}" for name, rate in rates.items()))  # fmt: skip
    batched = {name: jax.vmap(predict) for name, predict in predictors.items()}
    references = {name: predictions_and_query_gradients(p, batch.xs, batch.ys) for name, p in batched.items()}
    curves = {n: np.asarray(squared_error_curve(p, batch.scored, task.cfg.n_dims)) for n, (p, _) in references.items()}
    # the baselines are compared with the model too (their predictions), so a phase (train/phases.py) can be any one
    references |= {name: (preds_PxN, None) for name, preds_PxN in baselines.items()}
    predictions = {n: np.asarray(p[first]) for n, (p, _) in references.items()} if eval_cfg.predictions else {}
    return held_out._replace(baseline_curves=held_out.baseline_curves | curves, prompts=batch, references=references,
                             predictions=predictions)  # fmt: skip


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


def train_set(task: Task, encoding: Encoding, eval_cfg: EvalConfig, run_key, pool=None) -> EvalSet:
    """The first min(train_size, eval.n_prompts) prompts of the run's finite training set, full task."""
    ids = jnp.arange(min(task.cfg.train_size, eval_cfg.n_prompts))
    return eval_set_of(task, encoding, task.training_set_prompts(run_key, ids), pool)


def pretrain_set(task: Task, encoding: Encoding, eval_cfg: EvalConfig, run_key, pool) -> EvalSet:
    """Held-out prompts whose tasks come from the run's own pool (Raventos et al.'s "Pretrain" eval)."""
    batch = task.sample_batch(set_key(eval_cfg, 1), eval_cfg.n_prompts, pool_key=pool_key(run_key))
    return eval_set_of(task, encoding, batch, pool)


def sigma_sets(task: Task, encoding: Encoding, eval_cfg: EvalConfig) -> dict:
    """Under a hierarchical noise prior, {sigma: set} with every prompt's noise at that sigma (the same x's
    and w's for all), scored beside the mixture's Bayes and ridge at each sigma (Bai et al. 2023)."""
    fixed = lambda sigma: dataclasses.replace(task, cfg=dataclasses.replace(task.cfg, noise_std=sigma,
                                                                             noise_std_choices=None))  # fmt: skip
    sample = lambda sigma: fixed(sigma).sample_batch(set_key(eval_cfg, 2), eval_cfg.n_prompts)
    return {sigma: eval_set_of(task, encoding, sample(sigma)) for sigma in task.cfg.noise_stds}


def class_sets(task: Task, encoding: Encoding, eval_cfg: EvalConfig) -> dict:
    """Under a mixture of task classes, {class: set} of prompts of that class alone, scored by the mixture's
    baselines (Bai et al. 2023's per-class evaluation)."""
    sample = lambda component: component.sample_batch(set_key(eval_cfg, 5), eval_cfg.n_prompts)
    return {c.cfg.task: eval_set_of(task, encoding, sample(c)) for c in task.components}


def ood_sets(task: Task, encoding: Encoding, eval_cfg: EvalConfig) -> dict:
    """{condition: EvalSets} of the task's OOD prompts (Garg et al.'s suite), each beside the baselines of the
    task that labels it and with its reference (icl_lr/task/ood.py)."""
    suite = task.ood_conditions(set_key(eval_cfg, 3), eval_cfg.n_prompts)
    return {
        name: EvalSets(
            [eval_set_of(c.task, encoding, _prompts(xs, ys)) for xs, ys in c.sets], c.per_k, c.task.reference
        )
        for name, c in suite.items()
    }


def file_set(task: Task, encoding: Encoding, eval_cfg: EvalConfig, pool=None) -> EvalSet:
    """eval.prompts' prompts (an .npz of xs [B, N, D], ys [B, N]) with the task's baselines on them."""
    with np.load(eval_cfg.prompts) as prompts:
        xs, ys = (jnp.asarray(prompts[name], jnp.float32) for name in ("xs", "ys"))
    return eval_set_of(task, encoding, _prompts(xs, ys), pool)


def fixed_sets(setup: Setup, cfg: RunConfig, run_key, pool) -> dict:
    """{set name: EvalSets} scored at every eval: the held-out prompts (schema.HELD_OUT); the training set's
    (`train_set`) and the pool's (`pretrain`), when finite; one per sigma of a hierarchical noise prior
    (`sigma_<s>`); eval.prompts' (`prompts`); one per class of a mixture of tasks (`task_<class>`)."""
    task, encoding, d, e = setup.task, setup.encoding, cfg.data, cfg.eval
    one = lambda eval_set: EvalSets([eval_set])
    sets = {HELD_OUT: one(held_out_set(task, encoding, e, pool))}
    if d.train_size:
        sets["train_set"] = one(train_set(task, encoding, e, run_key, pool))
    if d.task_pool_size:
        sets["pretrain"] = one(pretrain_set(task, encoding, e, run_key, pool))
    if d.noise_std_choices:
        sets |= {f"sigma_{s:g}": one(v) for s, v in sigma_sets(task, encoding, e).items()}
    if e.prompts:
        sets["prompts"] = one(file_set(task, encoding, e, pool))
    if getattr(task, "components", ()):
        sets |= {f"task_{name}": one(v) for name, v in class_sets(task, encoding, e).items()}
    return sets


def on_host():
    """Where the fixed sets and their baselines are computed: the host's CPU, whatever the default device."""
    return jax.default_device(jax.local_devices(backend="cpu")[0])


def placed(sets: dict, mesh: Mesh) -> dict:
    """{name: EvalSets} with the arrays the model reads replicated over `mesh` (the baselines' curves stay)."""
    place = lambda s: s._replace(**{k: parallel.replicate(getattr(s, k), mesh) for k in ("inputs", "ys", "prompts",
                                                                                          "references")})  # fmt: skip
    return {name: eval_sets._replace(sets=[place(s) for s in eval_sets.sets]) for name, eval_sets in sets.items()}
