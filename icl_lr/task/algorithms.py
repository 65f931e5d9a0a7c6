"""Iterative algorithms as baselines of in-context linear regression, each predicting y_k from the points
before it for every k = 0..n-1, in JAX: what a trained model may be running (Akyurek et al. 2022, von Oswald
et al. 2023, Ahn et al. 2023, Fu et al. 2023 (DeqingFu/transformers-icl-higher-order)).

Each maps one prompt (xs [N, D], ys [N]) to predictions [N]. Gradient descent works on the prefix's mean
loss (1/2k) sum_{j<k} (w^T x_j - y_j)^2 from w = 0.
"""

import jax
import jax.numpy as jnp
import numpy as np

from icl_lr.task.baselines import prefix_masks

LEARNING_RATES = np.geomspace(1e-3, 2.0, 31)  # the grid GD's and online GD's rates are tuned on (numpy: importing
# this module must not start JAX's backend before training.cpu_devices is applied)
TUNING_PROMPTS = 256  # prompts of the tuning set (drawn from the task's prior with a key of their own)


def _prefixes(xs_NxD, ys_N):
    """Each prefix's design [K, N, D] and targets [K, N] (rows j >= k zeroed) and its size k (at least 1)."""
    masks_KxN = prefix_masks(xs_NxD.shape[0])
    return masks_KxN[:, :, None] * xs_NxD[None], masks_KxN * ys_N[None], jnp.maximum(masks_KxN.sum(1), 1)


def gradient_descent(xs_NxD, ys_N, steps: int, lr: float):
    """`steps` full-batch GD steps at rate `lr`, one run per prefix."""
    designs_KxNxD, targets_KxN, k_K = _prefixes(xs_NxD, ys_N)

    def step(w_KxD, _):
        residual_KxN = targets_KxN - jnp.einsum("knd,kd->kn", designs_KxNxD, w_KxD)
        return w_KxD + lr * jnp.einsum("knd,kn->kd", designs_KxNxD, residual_KxN) / k_K[:, None], None

    w_KxD, _ = jax.lax.scan(step, jnp.zeros_like(xs_NxD), None, length=steps)
    return jnp.einsum("kd,kd->k", xs_NxD, w_KxD)


def preconditioned_gd(xs_NxD, ys_N):
    """One GD step preconditioned by Gamma_k = k / (k + D + 1) I: for x ~ N(0, I), w ~ N(0, I) and no noise
    the best one-step preconditioned GD (docs/model_families.md derives it), the optimum of one layer of
    linear self-attention."""
    designs_KxNxD, targets_KxN, k_K = _prefixes(xs_NxD, ys_N)
    gain_K = 1.0 / (k_K + xs_NxD.shape[1] + 1)  # Gamma_k / k
    w_KxD = gain_K[:, None] * jnp.einsum("knd,kn->kd", designs_KxNxD, targets_KxN)
    return jnp.einsum("kd,kd->k", xs_NxD, w_KxD)


def newton_schulz_inverse(s_KxDxD, steps: int):
    """Newton-Schulz iterations M <- M (2I - S M) from M_0 = I / lambda_max(S), towards S's inverse (on its
    range: what w = M X^T y reads): the residual I - M S squares each step (Fu et al.'s Newton iterations)."""
    top_K = jnp.linalg.eigvalsh(s_KxDxD)[:, -1]
    eye = jnp.eye(s_KxDxD.shape[-1])
    m_KxDxD = eye / jnp.where(top_K > 0, top_K, 1.0)[:, None, None]

    def step(m, _):
        return m @ (2 * eye - s_KxDxD @ m), None

    return jax.lax.scan(step, m_KxDxD, None, length=steps)[0]


def newton(xs_NxD, ys_N, steps: int):
    """w = M X^T y with M after `steps` Newton-Schulz iterations towards (X^T X)^+, per prefix."""
    designs_KxNxD, targets_KxN, _ = _prefixes(xs_NxD, ys_N)
    s_KxDxD = jnp.einsum("knd,kne->kde", designs_KxNxD, designs_KxNxD)
    w_KxD = jnp.einsum(
        "kde,ke->kd", newton_schulz_inverse(s_KxDxD, steps), jnp.einsum("knd,kn->kd", designs_KxNxD, targets_KxN)
    )
    return jnp.einsum("kd,kd->k", xs_NxD, w_KxD)


def online_gd(xs_NxD, ys_N, lr: float):
    """One pass of online GD (least mean squares) from w = 0: y_k is predicted by w after points 0..k-1."""

    def visit(w_D, point):
        x_D, y = point
        return w_D + lr * (y - w_D @ x_D) * x_D, w_D @ x_D

    return jax.lax.scan(visit, jnp.zeros(xs_NxD.shape[1]), (xs_NxD, ys_N))[1]


def _tuned(algorithm, xs_BxNxD, ys_BxN) -> float:
    """The grid rate with the least squared error, averaged over prompts and k >= 1, of `algorithm(x, y, lr)`."""
    errors = jax.vmap(
        lambda lr: jnp.mean((jax.vmap(algorithm, (0, 0, None))(xs_BxNxD, ys_BxN, lr) - ys_BxN)[:, 1:] ** 2)
    )
    losses = np.asarray(errors(jnp.asarray(LEARNING_RATES)))
    return float(LEARNING_RATES[np.nanargmin(np.where(np.isfinite(losses), losses, np.nan))])


def tuned_rates(steps: tuple, tuning: tuple) -> dict:
    """{name: learning rate} of GD at each number of `steps` and of online GD, tuned on `tuning` (xs, ys)."""
    rates = {f"gd_{s}": _tuned(lambda x, y, lr, s=s: gradient_descent(x, y, s, lr), *tuning) for s in steps}
    return rates | {"online_gd": _tuned(online_gd, *tuning)}


def predictors(steps: tuple, rates: dict) -> dict:
    """{algorithm name: predict(xs [N, D], ys [N]) -> [N]}: GD and Newton at each number of `steps`, GD and
    online GD at `rates` (tuned_rates), one preconditioned GD step."""
    named = {f"gd_{s}": lambda x, y, s=s: gradient_descent(x, y, s, rates[f"gd_{s}"]) for s in steps}
    named["preconditioned_gd"] = preconditioned_gd
    named |= {f"newton_{s}": lambda x, y, s=s: newton(x, y, s) for s in steps}
    named["online_gd"] = lambda x, y: online_gd(x, y, rates["online_gd"])
    return named
