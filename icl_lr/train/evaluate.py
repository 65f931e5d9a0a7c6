"""Error curves on fixed prompt sets: squared error / d at every context length k = 0..n-1.

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
import json
import logging
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from icl_lr.model.encoding import Encoding
from icl_lr.records.run_dir import config_record
from icl_lr.records.schema import (
    BAYES,
    EXCESS,
    HELD_OUT,
    MODEL,
    REFERENCE,
    SIMILARITIES,
    is_error_curve,
    loops_curve,
    metric_prefix,
    set_reference,
)
from icl_lr.records.tracking import Tracker
from icl_lr.task.base import Batch, Task, pool_key
from icl_lr.train import attention, parallel, probes
from icl_lr.train.config import EvalConfig, RunConfig
from icl_lr.train.setup import Setup

log = logging.getLogger("icl_lr")


class EvalSet(NamedTuple):
    inputs: jax.Array  # encoded prompts, [P, L, ...]
    ys: jax.Array  # [P, N]
    baseline_curves: dict  # name -> np.ndarray [N]
    prompts: Batch | None = None  # as the model sees them, kept where the model is compared with `references`
    references: dict = {}  # algorithm name -> (predictions [P, N], gradients at each query [P, N, D])


class EvalSets(NamedTuple):
    """Prompt sets scored as one curve: a set scored at every k; or, `per_k`, set k scored at its k only
    (a query of its own at position k, as Garg et al.'s OOD prompts), NaN past the last set."""

    sets: list  # [EvalSet]
    per_k: bool = False
    reference: str | None = None  # the predictor their excess is over; None: the run's task's


def squared_error_curve(preds_PxN, ys_PxN, n_dims: int) -> jax.Array:
    return jnp.mean((preds_PxN - ys_PxN) ** 2, axis=0) / n_dims


def _baseline_curves(task: Task, xs, ys, ys_scored, noise_stds: tuple, pool, suffix: str = "") -> dict:
    """Each baseline's squared error / d by k, and its curves of the task's other metrics (`<metric>/<name>`)."""
    curves = {}
    for name, p in task.baselines(xs, ys, noise_stds, pool).items():
        curves[name + suffix] = np.asarray(squared_error_curve(p, ys_scored, task.cfg.n_dims))
        curves |= {
            f"{metric}/{name}{suffix}": np.asarray(v.mean(0)) for metric, v in task.metrics(p, ys_scored).items()
        }
    return curves


def eval_set_of(task: Task, encoding: Encoding, batch: Batch, pool=None) -> EvalSet:
    """The prompts of `batch`, encoded, with the baselines' error curves on them (dMMSE given the run's
    task pool [M, d]). An encoding that quantises its inputs adds each baseline on the decoded values the
    model sees (`<name>_on_bins`, scored against the exact ys; Bayes's noise there includes the
    quantisation's), and a binned output adds its cross-entropy baselines."""
    noise_stds = task.cfg.noise_stds
    curves = _baseline_curves(task, batch.xs, batch.ys, batch.scored, noise_stds, pool)
    seen = encoding.seen_values(batch.xs, batch.ys)
    if seen is not None:
        xs_seen, ys_seen, added_var = seen
        seen_stds = tuple(float((sigma**2 + added_var) ** 0.5) for sigma in noise_stds)
        curves |= _baseline_curves(task, xs_seen, ys_seen, batch.scored, seen_stds, pool, suffix="_on_bins")
    curves |= {name: np.asarray(v.mean(axis=0)) for name, v in encoding.baseline_metrics(batch.xs, batch.ys).items()}
    return EvalSet(encoding.encode(batch.xs, batch.ys), batch.scored, curves)


def _prompts(xs, ys) -> Batch:
    return Batch(xs, ys, jnp.ones(ys.shape[1]), jnp.ones(ys.shape[0]))


def _set_key(eval_cfg: EvalConfig, stream: int):
    """The held-out set's key (stream 0) and one per other fixed set, all from eval.seed."""
    key = jax.random.PRNGKey(eval_cfg.seed)
    return key if stream == 0 else jax.random.fold_in(key, stream)


def held_out_set(task: Task, encoding: Encoding, eval_cfg: EvalConfig, pool=None) -> EvalSet:
    """The held-out set; with eval.algorithms, the iterative algorithms' curves beside the baselines'."""
    batch = task.sample_batch(_set_key(eval_cfg, 0), eval_cfg.n_prompts)
    held_out = eval_set_of(task, encoding, batch, pool)
    if not eval_cfg.algorithms:
        return held_out
    predictors, rates = task.algorithms(eval_cfg.algorithm_steps)
    log.info("algorithm baselines: learning rates tuned on their own prompts: %s",
             ", ".join(f"{name} {rate:.3g}" for name, rate in rates.items()))  # fmt: skip
    batched = {name: jax.vmap(predict) for name, predict in predictors.items()}
    references = {name: predictions_and_query_gradients(p, batch.xs, batch.ys) for name, p in batched.items()}
    curves = {n: np.asarray(squared_error_curve(p, batch.scored, task.cfg.n_dims)) for n, (p, _) in references.items()}
    return held_out._replace(baseline_curves=held_out.baseline_curves | curves, prompts=batch, references=references)


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


def probe_sets(task: Task, encoding: Encoding, eval_cfg: EvalConfig) -> tuple[probes.ProbeSet, probes.ProbeSet]:
    """(probe-training set, the held-out prompts) with their probe targets, for eval.probes."""
    of = lambda stream: probes.probe_set_of(task, encoding, _set_key(eval_cfg, stream), eval_cfg.n_prompts)
    return of(4), of(0)


def train_set(task: Task, encoding: Encoding, eval_cfg: EvalConfig, run_key, pool=None) -> EvalSet:
    """The first min(train_size, eval.n_prompts) prompts of the run's finite training set, full task."""
    ids = jnp.arange(min(task.cfg.train_size, eval_cfg.n_prompts))
    return eval_set_of(task, encoding, task.training_set_prompts(run_key, ids), pool)


def pretrain_set(task: Task, encoding: Encoding, eval_cfg: EvalConfig, run_key, pool) -> EvalSet:
    """Held-out prompts whose tasks come from the run's own pool (Raventos et al.'s "Pretrain" eval)."""
    batch = task.sample_batch(_set_key(eval_cfg, 1), eval_cfg.n_prompts, pool_key=pool_key(run_key))
    return eval_set_of(task, encoding, batch, pool)


def sigma_sets(task: Task, encoding: Encoding, eval_cfg: EvalConfig) -> dict:
    """Under a hierarchical noise prior, {sigma: set} with every prompt's noise at that sigma (the same x's
    and w's for all), scored beside the mixture's Bayes and ridge at each sigma (Bai et al. 2023)."""
    fixed = lambda sigma: dataclasses.replace(task, cfg=dataclasses.replace(task.cfg, noise_std=sigma,
                                                                             noise_std_choices=None))  # fmt: skip
    sample = lambda sigma: fixed(sigma).sample_batch(_set_key(eval_cfg, 2), eval_cfg.n_prompts)
    return {sigma: eval_set_of(task, encoding, sample(sigma)) for sigma in task.cfg.noise_stds}


def class_sets(task: Task, encoding: Encoding, eval_cfg: EvalConfig) -> dict:
    """Under a mixture of task classes, {class: set} of prompts of that class alone, scored by the mixture's
    baselines (Bai et al. 2023's per-class evaluation)."""
    sample = lambda component: component.sample_batch(_set_key(eval_cfg, 5), eval_cfg.n_prompts)
    return {c.cfg.task: eval_set_of(task, encoding, sample(c)) for c in task.components}


def ood_sets(task: Task, encoding: Encoding, eval_cfg: EvalConfig) -> dict:
    """{condition: EvalSets} of the task's OOD prompts (Garg et al.'s suite), each beside the baselines of the
    task that labels it and with its reference (icl_lr/task/ood.py)."""
    suite = task.ood_conditions(_set_key(eval_cfg, 3), eval_cfg.n_prompts)
    return {
        name: EvalSets(
            [eval_set_of(c.task, encoding, _prompts(xs, ys)) for xs, ys in c.sets], c.per_k, c.task.reference
        )
        for name, c in suite.items()
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


def headline(curves: dict, n_dims: int, reference: str = BAYES) -> str:
    """Errors at k = 2d (or the last k the curves score): the model beside the task's reference (the
    Bayes-optimal where it is exact), least squares and, where the run has a task pool, dMMSE."""
    scored = [k for k in range(min(2 * n_dims + 1, len(curves[MODEL]))) if np.isfinite(curves[MODEL][k])]
    if not scored:
        return "error: not finite at any k"
    k = max(scored)
    names = dict.fromkeys((MODEL, reference, "least_squares", "dmmse"))
    parts = [f"{name} {curves[name][k]:.4f}" for name in names if name in curves]
    return f"error@k={k}: " + ", ".join(parts) + f" (k=0: {curves[MODEL][0]:.4f})"


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


class Evaluator:
    """The eval phase: the model's curves on every fixed prompt set (`fixed_sets`) and on Garg et al.'s OOD
    suite (`ood/<condition>`, at the final eval or every eval), logged as scalars (schema.metric_prefix) and
    per-set curve tables; each set beside its reference (the task's, or an OOD condition's own); on the held-out
    set, what eval.probes, eval.attention and eval.n_loops add."""

    def __init__(self, setup: Setup, cfg: RunConfig, run_key, mesh: Mesh, shared: dict | None = None):
        """`shared`: {key: sets} of the other runs of a pack, which this one reuses where its config makes the
        same sets (and adds its own to)."""
        started = time.perf_counter()
        self.setup, self.cfg, self.mesh, self.shared = setup, cfg, mesh, {} if shared is None else shared
        self.model_curves = make_model_curves_fn(setup.model, cfg.eval, mesh)
        d = cfg.data
        own = cfg.seed if d.train_size or d.task_pool_size else None  # sets of the run's own pool or prompts
        self.key = json.dumps([config_record(d), config_record(cfg.eval), own])
        if self.key in self.shared:
            log.info("eval sets and their baselines shared with an earlier run of the pack")
        else:
            with on_host():
                pool = setup.task.eval_pool(run_key)  # the whole pool, for baselines that need it; sampling needs none
                self.shared[self.key] = placed(fixed_sets(setup, cfg, run_key, pool), mesh)
            log.info("eval sets and their baselines ready in %.1fs", time.perf_counter() - started)
        self.sets = self.shared[self.key]
        self.ood_sets, self.ood_seconds = None, 0.0
        self.model_gradients = make_model_gradients_fn(setup.model) if cfg.eval.algorithms else None
        self.reference = setup.task.reference  # the baseline the excess is measured against
        self.set_references = {}  # {set: its own reference}, of the sets scored that have one
        self.probe_sets = probe_sets(setup.task, setup.encoding, cfg.eval) if cfg.eval.probes else None
        self.hidden_states = probes.make_hidden_states_fn(setup.model) if cfg.eval.probes else None
        self.attention = attention.make_attention_fn(setup.model) if cfg.eval.attention else None
        looped = lambda n: setup.model.clone(config=dataclasses.replace(setup.model.config, n_loops=n))
        self.loop_curves = {n: make_model_curves_fn(looped(n), cfg.eval, mesh) for n in cfg.eval.n_loops}

    def reference_of(self, eval_set: str) -> str:
        """The predictor `eval_set`'s excess is over."""
        return self.set_references.get(eval_set, self.reference)

    @property
    def references(self) -> dict:
        """The summary's names of the references: the run's (schema.REFERENCE) and each scored set's own."""
        return {REFERENCE: self.reference} | {set_reference(name): r for name, r in self.set_references.items()}

    def _ood(self) -> dict:
        """The OOD suite's sets, built on first use (or shared with a run of the pack with the same data)."""
        if self.ood_sets is None:
            started, key = time.perf_counter(), ("ood", self.key)
            if key not in self.shared:
                with on_host():
                    conditions = ood_sets(self.setup.task, self.setup.encoding, self.cfg.eval)
                self.shared[key] = placed({f"ood/{name}": sets for name, sets in conditions.items()}, self.mesh)
            self.ood_sets = self.shared[key]
            self.ood_seconds += time.perf_counter() - started
            log.info("OOD suite: %d conditions and their baselines ready in %.1fs", len(self.ood_sets),
                     self.ood_seconds)  # fmt: skip
        return self.ood_sets

    def _held_out_extras(self, params, held_out: EvalSet, tracker: Tracker, step: int) -> dict:
        """What the held-out set alone adds: each layer's probes (eval.probes), the attention (eval.attention,
        its maps to the tracker) and the model at other loop counts (eval.n_loops)."""
        curves, chunk = {}, self.cfg.eval.batch_size
        if self.probe_sets:
            curves |= probes.r2_curves(self.hidden_states, params, *self.probe_sets, chunk)
        if self.attention:
            weights = attention.mean_weights(self.attention, params, held_out.inputs, chunk)
            shares = attention.shares(weights, self.setup.encoding.inputs.tokens_per_point)
            tracker.log_attention(weights, shares, step)
            curves |= attention.share_curves(shares)
        for n_loops, model_curves in self.loop_curves.items():
            curves[loops_curve(n_loops)] = np.asarray(model_curves(params, held_out.inputs, held_out.ys)[MODEL])
        return curves

    def __call__(self, params, tracker: Tracker, step: int, final: bool) -> dict:
        """Logs every set's scalars and curves; returns the scalars."""
        e, n_dims, scalars = self.cfg.eval, self.cfg.data.n_dims, {}
        with_ood = e.ood and (final or e.ood_every_eval)
        all_curves = {}
        for name, eval_sets in (self.sets | (self._ood() if with_ood else {})).items():
            started = time.perf_counter()
            all_curves[name] = curves = score(self.model_curves, params, eval_sets)
            if eval_sets.sets[0].references and self.model_gradients:  # the model beside each algorithm
                held_out = eval_sets.sets[0]
                preds, grads = self.model_gradients(params, held_out.prompts.xs, held_out.prompts.ys)
                curves |= similarity_curves(preds, grads, held_out, n_dims)
            if name == HELD_OUT:
                curves |= self._held_out_extras(params, eval_sets.sets[0], tracker, step)
            if name.startswith("ood/"):
                self.ood_seconds += time.perf_counter() - started
            if eval_sets.reference:
                self.set_references[name] = eval_sets.reference
            summary = summarize(curves, n_dims, self.reference_of(name))
            scalars |= {metric_prefix(name) + k: v for k, v in summary.items()}
            tracker.log_curves(curves, step, name)
        tracker.log(scalars, step)
        line = headline(all_curves[HELD_OUT], n_dims, self.reference)
        log.info(
            "eval at step %d | %s | excess over %s (mean over k) %.4f", step, line, self.reference, scalars[EXCESS]
        )
        for name, curves in all_curves.items():
            if name != HELD_OUT:
                log.info("  %s %s", name, headline(curves, n_dims, self.reference_of(name)))
        if with_ood:
            log.info("OOD suite: %.1fs so far (building its sets and scoring them)", self.ood_seconds)
        return scalars
