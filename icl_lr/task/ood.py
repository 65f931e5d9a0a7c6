"""Garg et al. 2022's out-of-distribution prompts, as fixed held-out sets.

Followed: dtsip/in-context-learning `src/eval.py` (`build_evals` and the `gen_*` prompt strategies),
`src/samplers.py` (`sample_transformation`) and `src/tasks.py` (`NoisyLinearRegression`'s
`renormalize_ys`). Tasks come from the training prior; what moves is the x's, the scale of w or of
the noise. A condition is a list of prompt sets: one, scored at every k; or one per k, where set k
puts its own query at position k and is scored there only (their `xs_p`), NaN past the last set.

Each condition carries the task whose prior over w and noise labels its prompts, and so its reference
(`task.reference`: its Bayes predictor where that is exact). Moving the x's leaves the posterior over w
as it was (x's are drawn apart from w), so those conditions keep the training task. `scale_y_<s>` draws
s w: the prior scaled by s. `noisy_labels` draws x.w + unit noise times c = sqrt(d) / std(y): w's prior
scaled by c and noise std c, a Gaussian prior's Bayes being ridge at lambda = 1 / prior_scale^2 for any
c. The suite's labels have no outliers (data.outlier_fraction): its tasks have none either. The x's and the
noise are the task's own (`sample_xs`, `sample_noise`: data.x_dist, data.noise_dist, ...).
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from icl_lr.task.base import Task
from icl_lr.task.sampling import skew, transformation

SCALES = (0.333, 0.5, 2, 3)  # Garg et al.'s x and y scale factors


class Condition(NamedTuple):
    """A condition's prompt sets and the task that labels them, whose baselines and reference score it."""

    sets: list  # [(xs [P, N, D], ys [P, N])]
    per_k: bool  # set k scored at its k only (module docstring)
    task: Task  # the training task with w's prior and the noise the condition's labels have


def labels_task(task, w_scale: float, noise_stds: tuple):
    """`task` with w's prior scaled by `w_scale` (its scale and, under a Gaussian mixture, its means), noise
    `noise_stds` and no outliers: the prior of a condition's labels."""
    cfg = task.cfg
    return dataclasses.replace(task, cfg=dataclasses.replace(
        cfg, prior_scale=w_scale * cfg.prior_scale, w_centre=w_scale * cfg.w_centre, noise_std=noise_stds[0],
        noise_std_choices=noise_stds if len(noise_stds) > 1 else None, outlier_fraction=0.0))  # fmt: skip


def _orthogonal_queries(xs_PxNxD) -> list:
    """For k < d: x_k minus its projection on the span of x_0..x_{k-1}, rescaled to |x_k|."""
    queries = []
    for k in range(min(xs_PxNxD.shape[1], xs_PxNxD.shape[2])):
        context_PxKxD, query_PxD = xs_PxNxD[:, :k], xs_PxNxD[:, k]
        _, _, vt_PxKxD = jnp.linalg.svd(context_PxKxD, full_matrices=False)
        along_PxD = jnp.einsum("pkd,pk->pd", vt_PxKxD, jnp.einsum("pkd,pd->pk", vt_PxKxD, query_PxD))
        orthogonal_PxD = query_PxD - along_PxD
        scale = jnp.linalg.norm(query_PxD, axis=1) / jnp.linalg.norm(orthogonal_PxD, axis=1)
        queries.append(orthogonal_PxD * scale[:, None])
    return queries


def _repeated_queries(key, xs_PxNxD) -> list:
    """For k >= 1: a context point x_j, j uniform in [0, k); k = 0 keeps x_0."""
    n_prompts, n_points, _ = xs_PxNxD.shape
    picks = [jnp.zeros(n_prompts, int)] + [
        jax.random.randint(jax.random.fold_in(key, k), (n_prompts,), 0, k) for k in range(1, n_points)
    ]
    return [xs_PxNxD[jnp.arange(n_prompts), j] for j in picks]


def conditions(key, task, n_prompts: int, moves_labels: bool = True) -> dict:
    """{condition: Condition}: the suite's prompt sets of `task` (its `draw` and `label`) with the task that labels
    each (module docstring). `moves_labels`: the conditions that scale w and the noise too (a linear task's,
    whose prior they rescale); without it, those that move the x's alone, which any function class defines."""
    w_key, x_key, sigma_key, noise_key, rotation_key, sign_key, pick_key = jax.random.split(key, 7)
    cfg = task.cfg
    d = cfg.n_dims
    ws = task.draw(w_key, n_prompts)  # tasks from the prior
    xs = task.sample_xs(x_key, n_prompts)  # the training x's, which the conditions then move
    sigma = jax.random.choice(sigma_key, jnp.asarray(cfg.noise_stds, jnp.float32), (n_prompts, 1))
    unit_noise = task.sample_noise(noise_key, (n_prompts, cfg.n_points))  # the training noise's law
    labels = lambda xs_, ws_=ws, noise=sigma * unit_noise: task.label(ws_, xs_) + noise
    same = labels_task(task, 1.0, cfg.noise_stds) if moves_labels else task  # as the suite labels (no outliers)
    one_set = lambda xs_, ys_=None, task_=same: Condition([(xs_, labels(xs_) if ys_ is None else ys_)], False, task_)

    def per_query(context, queries):  # set k: the context with its own query at position k
        sets = [(context.at[:, k].set(q), labels(context.at[:, k].set(q))) for k, q in enumerate(queries)]
        return Condition(sets, True, same)

    suite = {}
    for s in SCALES:
        suite[f"scale_x_{s:g}"] = one_set(xs @ transformation(rotation_key, s * jnp.ones(d)))
        if moves_labels:
            suite[f"scale_y_{s:g}"] = one_set(xs, labels(xs, s * ws), labels_task(task, s, cfg.noise_stds))
    suite["skewed"] = one_set(xs @ transformation(rotation_key, skew(d), normalize=True))
    if d >= 2:  # half of one dimension is none: at d = 1 the condition does not exist
        half = (jnp.arange(d) < d // 2).astype(jnp.float32)
        suite["half_subspace"] = one_set(xs @ transformation(rotation_key, half, normalize=True))
    if moves_labels:
        noisy = labels(xs, ws, unit_noise)  # noise std 1, then y rescaled to std sqrt(d), as their noisyLR
        c = float(jnp.sqrt(d) / jnp.std(noisy))
        suite["noisy_labels"] = one_set(xs, c * noisy, labels_task(task, c, (c,)))
    signs = jnp.sign(jax.random.normal(sign_key, (n_prompts, 1, d)))
    suite["random_quadrants"] = per_query(jnp.abs(xs) * signs, list(xs.transpose(1, 0, 2)))
    suite["orthogonal_query"] = per_query(xs, _orthogonal_queries(xs))
    suite["repeated_query"] = per_query(xs, _repeated_queries(pick_key, xs))
    return suite
