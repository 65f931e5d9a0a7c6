"""Garg et al. 2022's out-of-distribution prompts, as fixed held-out sets.

Followed: dtsip/in-context-learning `src/eval.py` (`build_evals` and the `gen_*` prompt strategies),
`src/samplers.py` (`sample_transformation`) and `src/tasks.py` (`NoisyLinearRegression`'s
`renormalize_ys`). Tasks come from the training prior; what moves is the x's, the scale of w or of
the noise. A condition is a list of prompt sets: one, scored at every k; or one per k, where set k
puts its own query at position k and is scored there only (their `xs_p`), NaN past the last set.
"""

import jax
import jax.numpy as jnp

from icl_lr.task.sampling import sample_xs, skew, transformation

SCALES = (0.333, 0.5, 2, 3)  # Garg et al.'s x and y scale factors


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


def conditions(key, task, n_prompts: int) -> dict:
    """{condition: ([(xs [P, N, D], ys [P, N]), ...], per_k)}: the suite's prompt sets of `task` (a linear
    one: its `draw` gives w), `per_k` when set k is scored at its k only (module docstring)."""
    w_key, x_key, sigma_key, noise_key, rotation_key, sign_key, pick_key = jax.random.split(key, 7)
    cfg = task.cfg
    d = cfg.n_dims
    ws = task.draw(w_key, n_prompts)  # tasks from the prior
    xs = sample_xs(x_key, cfg, n_prompts)  # the training x's, which the conditions then move
    sigma = jax.random.choice(sigma_key, jnp.asarray(cfg.noise_stds, jnp.float32), (n_prompts, 1))
    unit_noise = jax.random.normal(noise_key, (n_prompts, cfg.n_points))
    labels = lambda xs_, ws_=ws, noise=sigma * unit_noise: jnp.einsum("pnd,pd->pn", xs_, ws_) + noise
    one_set = lambda xs_, ys_=None: ([(xs_, labels(xs_) if ys_ is None else ys_)], False)

    def per_query(context, queries):  # set k: the context with its own query at position k
        return [(context.at[:, k].set(q), labels(context.at[:, k].set(q))) for k, q in enumerate(queries)], True

    suite = {}
    for s in SCALES:
        suite[f"scale_x_{s:g}"] = one_set(xs @ transformation(rotation_key, s * jnp.ones(d)))
        suite[f"scale_y_{s:g}"] = one_set(xs, labels(xs, s * ws))
    suite["skewed"] = one_set(xs @ transformation(rotation_key, skew(d), normalize=True))
    if d >= 2:  # half of one dimension is none: at d = 1 the condition does not exist
        half = (jnp.arange(d) < d // 2).astype(jnp.float32)
        suite["half_subspace"] = one_set(xs @ transformation(rotation_key, half, normalize=True))
    noisy = labels(xs, ws, unit_noise)  # noise std 1, then y rescaled to std sqrt(d), as their noisyLR
    suite["noisy_labels"] = one_set(xs, noisy * jnp.sqrt(d) / jnp.std(noisy))
    signs = jnp.sign(jax.random.normal(sign_key, (n_prompts, 1, d)))
    suite["random_quadrants"] = per_query(jnp.abs(xs) * signs, list(xs.transpose(1, 0, 2)))
    suite["orthogonal_query"] = per_query(xs, _orthogonal_queries(xs))
    suite["repeated_query"] = per_query(xs, _repeated_queries(pick_key, xs))
    return suite
