"""Per-layer linear probes: how much of what an algorithm computes in context can be read, linearly, from a
model's hidden state before it predicts y_k (Akyurek et al. 2022's probes for w and X^T y; Fu et al. 2023's
per-layer read-outs).

Every trunk sows its states before its first layer and after each (model.config.HIDDEN); the state that
predicts y_k is the encoding's prediction position. Per layer l and position k a ridge probe with an
intercept is fitted, in closed form and float64, on a probe-training set of prompts and scored by R² on the
held-out prompts, for each of the task's probe targets (Task.probe_set): R² = 1 - SSE / SST pooled over the
target's coordinates, NaN where the target does not vary (X^T y at k = 0). The probe-training set has
eval.n_prompts prompts of its own (eval.seed's stream 4).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from icl_lr.components import NoKeys
from icl_lr.model.config import HIDDEN
from icl_lr.records.schema import PROBE_R2
from icl_lr.train.analyses import Result, check_linear
from icl_lr.train.eval_sets import EvalSet, set_key

PROBE_RIDGE = 1e-6  # each probe's ridge, times the mean variance of its features: a guard against singular
# covariances (constant features), too small to shrink what a probe reads


class ProbeSet(NamedTuple):
    inputs: jax.Array  # encoded prompts [P, L, ...]
    targets_PxNxM: np.ndarray  # every target's coordinates side by side, float64
    slices: dict  # target name -> its coordinates' slice of M


def probe_set_of(task, encoding, key, n_prompts: int) -> ProbeSet:
    """The prompts of `task.probe_set(key, n_prompts)`, encoded, with their targets."""
    batch, targets = task.probe_set(key, n_prompts)
    slices, start = {}, 0
    for name, target in targets.items():
        slices[name], start = slice(start, start + target.shape[-1]), start + target.shape[-1]
    stacked = np.concatenate([np.asarray(t, np.float64) for t in targets.values()], axis=-1)
    return ProbeSet(encoding.encode(batch.xs, batch.ys), stacked, slices)


def make_hidden_states_fn(model):
    """jitted params, inputs [C, ...] -> the trunk's states at each prediction position, [layers, C, N, E]."""

    @jax.jit
    def hidden_states(params, inputs):
        _, sown = model.apply({"params": params}, inputs, mutable=[HIDDEN])
        states = sown[HIDDEN]["transformer"]["hidden"]
        return jnp.stack([model.encoding.prediction_outputs(h.astype(jnp.float32)) for h in states])

    return hidden_states


def _chunks(hidden_states, params, probe_set: ProbeSet, chunk: int):
    """(states [layers, N, C, E] float64, targets [N, C, M]) per chunk of `chunk` prompts."""
    for start in range(0, probe_set.targets_PxNxM.shape[0], chunk):
        states = np.asarray(hidden_states(params, probe_set.inputs[start : start + chunk]), np.float64)
        yield states.transpose(0, 2, 1, 3), probe_set.targets_PxNxM[start : start + chunk].transpose(1, 0, 2)


def fit(hidden_states, params, train: ProbeSet, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Each (layer, position)'s ridge probe: weights [layers, N, E, M] and intercepts [layers, N, M]."""
    n, sums = 0, None
    for f_LxNxCxE, t_NxCxM in _chunks(hidden_states, params, train, chunk):
        parts = (
            f_LxNxCxE.sum(2),
            t_NxCxM.sum(1),
            np.swapaxes(f_LxNxCxE, -1, -2) @ f_LxNxCxE,
            np.swapaxes(f_LxNxCxE, -1, -2) @ t_NxCxM[None],
        )
        sums = parts if sums is None else tuple(a + b for a, b in zip(sums, parts, strict=True))
        n += t_NxCxM.shape[1]
    f_sum, t_sum, ff_sum, ft_sum = sums
    f_mean, t_mean = f_sum / n, t_sum / n
    cov_ff = ff_sum / n - f_mean[..., :, None] * f_mean[..., None, :]
    cov_ft = ft_sum / n - f_mean[..., :, None] * t_mean[None, :, None, :]
    width = cov_ff.shape[-1]
    ridge = PROBE_RIDGE * np.maximum(np.trace(cov_ff, axis1=-2, axis2=-1) / width, np.finfo(np.float64).tiny)
    weights = np.linalg.solve(cov_ff + ridge[..., None, None] * np.eye(width), cov_ft)
    return weights, t_mean[None] - np.einsum("lne,lnem->lnm", f_mean, weights)


def r2_curves(hidden_states, params, train: ProbeSet, test: ProbeSet, chunk: int) -> dict:
    """{`probe_r2/<target>/layer_<l>`: R² [N] at each position} of the probes fitted on `train`, on `test`."""
    weights, intercepts = fit(hidden_states, params, train, chunk)
    sse, t_sum, t_sq, n = 0.0, 0.0, 0.0, 0
    for f_LxNxCxE, t_NxCxM in _chunks(hidden_states, params, test, chunk):
        predicted = f_LxNxCxE @ weights + intercepts[:, :, None]
        sse = sse + ((predicted - t_NxCxM[None]) ** 2).sum(2)  # [layers, N, M]
        t_sum, t_sq, n = t_sum + t_NxCxM.sum(1), t_sq + (t_NxCxM**2).sum(1), n + t_NxCxM.shape[1]
    sst = t_sq - t_sum**2 / n  # [N, M]
    curves = {}
    for name, part in test.slices.items():
        total = sst[:, part].sum(-1)
        varies = total > 1e-12 * t_sq[:, part].sum(-1)
        r2 = 1 - sse[:, :, part].sum(-1) / np.where(varies, total, 1.0)
        for layer, r2_N in enumerate(r2):
            curves[f"{PROBE_R2}/{name}/layer_{layer}"] = np.where(varies, r2_N, np.nan)
    return curves


class Probes:
    """The curves `probe_r2/<target>/layer_<l>` (schema.PROBE_R2) of probes fitted afresh at each eval."""

    Config = NoKeys

    @staticmethod
    def wanted(eval_cfg) -> bool:
        return eval_cfg.probes

    @staticmethod
    def check(cfg, task, family) -> None:
        check_linear("probes", cfg, task)

    def __init__(self, setup, cfg, mesh):
        """The probe-training set and the held-out prompts, with their probe targets."""
        of = lambda stream: probe_set_of(setup.task, setup.encoding, set_key(cfg.eval, stream), cfg.eval.n_prompts)
        self.train, self.test = of(4), of(0)
        self.hidden_states, self.chunk = make_hidden_states_fn(setup.model), cfg.eval.batch_size

    def __call__(self, params, held_out: EvalSet, step: int) -> Result:
        return Result(curves=r2_curves(self.hidden_states, params, self.train, self.test, self.chunk))
