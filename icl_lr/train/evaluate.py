"""The eval phase: the model's curves on the fixed prompt sets (icl_lr/train/eval_sets.py), their scalars for
the dashboards, and the analyses of the held-out prompts (icl_lr/train/analyses/) beside them.

A curve is a value per context length k = 0..n-1: the model's metrics (its encoding's `eval_metrics`) and
the baselines', each set's beside its reference predictor.
"""

import json
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from icl_lr.records.run_dir import config_record
from icl_lr.records.schema import (
    BAYES,
    EXCESS,
    HELD_OUT,
    MODEL,
    REFERENCE,
    is_error_curve,
    metric_prefix,
    set_reference,
)
from icl_lr.records.tracking import Tracker
from icl_lr.train import analyses, parallel
from icl_lr.train.config import EvalConfig, RunConfig
from icl_lr.train.eval_sets import EvalSet, EvalSets, fixed_sets, on_host, ood_sets, placed
from icl_lr.train.setup import Setup

log = logging.getLogger("icl_lr")


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


class Evaluator:
    """The eval phase: the model's curves on every fixed prompt set (`fixed_sets`) and on Garg et al.'s OOD
    suite (`ood/<condition>`, at the final eval or every eval), logged as scalars (schema.metric_prefix) and
    per-set curve tables; each set beside its reference (the task's, or an OOD condition's own); on the held-out
    set, what each analysis the run turns on adds (icl_lr/train/analyses/)."""

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
        self.reference = setup.task.reference  # the baseline the excess is measured against
        self.set_references = {}  # {set: its own reference}, of the sets scored that have one
        self.analyses = {name: analysis(setup, cfg, mesh) for name, analysis in analyses.wanted(cfg.eval).items()}

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

    def _analysed(self, params, held_out: EvalSet, tracker: Tracker, step: int) -> tuple[dict, dict]:
        """The curves and the scalars (eval/<name>) the analyses add to the held-out set's; their arrays and
        figures go to the tracker."""
        curves, scalars = {}, {}
        for name, analysis in self.analyses.items():
            result = analysis(params, held_out, step)
            tracker.log_arrays(name, result.arrays, step)
            tracker.log_figures(result.figures, step)
            curves |= result.curves
            scalars |= {metric_prefix(HELD_OUT) + k: float(v) for k, v in result.scalars.items()}
        return curves, scalars

    def __call__(self, params, tracker: Tracker, step: int, final: bool) -> dict:
        """Logs every set's scalars and curves; returns the scalars."""
        e, n_dims, scalars = self.cfg.eval, self.cfg.data.n_dims, {}
        with_ood = e.ood and (final or e.ood_every_eval)
        all_curves = {}
        for name, eval_sets in (self.sets | (self._ood() if with_ood else {})).items():
            started = time.perf_counter()
            all_curves[name] = curves = score(self.model_curves, params, eval_sets)
            if name == HELD_OUT:
                analysed, analysed_scalars = self._analysed(params, eval_sets.sets[0], tracker, step)
                curves |= analysed
                scalars |= analysed_scalars
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
