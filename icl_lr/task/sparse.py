"""Sparse linear regression, the `sparse_linear` task (Garg et al. 2022's SparseLinearRegression,
dtsip/in-context-learning src/tasks.py): w ~ N(0, prior_scale^2 I_d) with all but data.sparsity of its
coordinates, a uniformly random support, set to 0; y_i = w^T x_i + eps_i.

Its baselines beside linear regression's: the Lasso (FISTA, its penalty tuned on prompts of its own) and
the exact posterior mean, a mixture over the C(d, s) supports of each support's ridge.
"""

import functools
import logging
import math
from dataclasses import dataclass
from functools import partial
from itertools import combinations

import jax
import jax.numpy as jnp
import numpy as np

from icl_lr.records.schema import BAYES
from icl_lr.task import baselines
from icl_lr.task.linear import TUNING_SEED, LinearRegression

log = logging.getLogger("icl_lr")
LASSO_ALPHAS = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3)  # the Lasso penalties tuned over
LASSO_STEPS = 500  # FISTA iterations per prefix
MAX_SUPPORTS = 5000  # past this many supports the exact posterior is left out (a log line)


def lasso_weights(xs_NxD, ys_N, alpha: float, steps: int = LASSO_STEPS):
    """Each prefix's Lasso w [K, D]: argmin (1/2k) |X_k w - y_k|^2 + alpha |w|_1 by FISTA from w = 0 (Beck
    and Teboulle 2009; scikit-learn's Lasso objective), its step 1/L with L = lambda_max(X_k^T X_k / k)."""
    masks_KxN = baselines.prefix_masks(xs_NxD.shape[0])
    k_K = jnp.maximum(masks_KxN.sum(1), 1)
    designs_KxNxD = masks_KxN[:, :, None] * xs_NxD[None]
    gram_KxDxD = jnp.einsum("knd,kne->kde", designs_KxNxD, designs_KxNxD) / k_K[:, None, None]
    xty_KxD = jnp.einsum("knd,kn->kd", designs_KxNxD, masks_KxN * ys_N[None]) / k_K[:, None]
    step_K = 1.0 / jnp.maximum(jnp.linalg.eigvalsh(gram_KxDxD)[:, -1], 1e-12)
    shrink = lambda v, t: jnp.sign(v) * jnp.maximum(jnp.abs(v) - t, 0.0)

    def iterate(carry, _):
        w, z, t = carry
        gradient = jnp.einsum("kde,ke->kd", gram_KxDxD, z) - xty_KxD
        w_next = shrink(z - step_K[:, None] * gradient, alpha * step_K[:, None])
        t_next = (1 + jnp.sqrt(1 + 4 * t**2)) / 2
        return (w_next, w_next + (t - 1) / t_next * (w_next - w), t_next), None

    zeros = jnp.zeros_like(xty_KxD)
    (w_KxD, _, _), _ = jax.lax.scan(iterate, (zeros, zeros, jnp.ones(())), None, length=steps)
    return w_KxD


def lasso(xs_NxD, ys_N, alpha: float):
    return jnp.einsum("kd,kd->k", xs_NxD, lasso_weights(xs_NxD, ys_N, alpha))


def supports(n_dims: int, sparsity: int) -> np.ndarray:
    """Every support of `sparsity` of `n_dims` coordinates, as index rows [C(d, s), s]."""
    return np.array(list(combinations(range(n_dims), sparsity)))


def support_bayes(xs_NxD, ys_N, supports_CxS, prior_scale: float, noise_std: float):
    """(Posterior-mean prediction, log evidence) under the sparse prior: each support's ridge (w_S ~ N(0,
    prior_scale^2 I_s)) mixed by the support's posterior weight, from its evidence (a uniform prior over
    supports; ridge_and_evidence's noise floor for noiseless prompts)."""

    def one(support_S):
        return baselines.ridge_and_evidence(xs_NxD[:, support_S], ys_N, prior_scale, noise_std)

    return baselines.posterior_mixture(*jax.lax.map(one, supports_CxS, batch_size=64))


@dataclass(frozen=True)
class SparseLinear(LinearRegression):
    """The task interface of sparse linear regression; linear regression's but for its prior and baselines."""

    @property
    def reference(self) -> str:
        """Bayes, or past MAX_SUPPORTS supports (where it is left out) the Lasso."""
        return BAYES if math.comb(self.cfg.n_dims, self.cfg.sparsity) <= MAX_SUPPORTS else "lasso"

    def draw(self, key, batch_size: int) -> jax.Array:
        cfg = self.cfg
        w_key, support_key = jax.random.split(key)
        ws = cfg.prior_scale * jax.random.normal(w_key, (batch_size, cfg.n_dims))
        kept = jax.lax.top_k(jax.random.uniform(support_key, (batch_size, cfg.n_dims)), cfg.sparsity)[1]
        return ws * jax.nn.one_hot(kept, cfg.n_dims).sum(axis=1)

    def baselines(self, xs, ys, noise_stds: tuple, pool=None) -> dict:
        """Linear regression's, its Gaussian-prior Bayes renamed `ridge`; the Lasso; the exact Bayes."""
        cfg = self.cfg
        predictions = LinearRegression.baselines(self, xs, ys, noise_stds, pool)
        predictions["ridge"] = predictions.pop(BAYES)
        predictions["lasso"] = _lassos(xs, ys, lasso_alpha(self))
        if self.reference != BAYES:
            log.info("the sparse prior's posterior mean left out: past %d supports", MAX_SUPPORTS)
            del predictions[BAYES]
            return predictions
        every = jnp.asarray(supports(cfg.n_dims, cfg.sparsity))
        predictions[BAYES] = _support_bayes(xs, ys, every, cfg.prior_scale, noise_stds[0])
        return predictions

    def bayes_evidence(self, xs_NxD, ys_N, noise_std: float) -> tuple:
        every = jnp.asarray(supports(self.cfg.n_dims, self.cfg.sparsity))
        return support_bayes(xs_NxD, ys_N, every, self.cfg.prior_scale, noise_std)


@functools.cache
def lasso_alpha(task: SparseLinear) -> float:
    """The penalty of LASSO_ALPHAS with the least error on prompts of its own (k >= 1), once per task."""
    tuning = task.sample_batch(jax.random.PRNGKey(TUNING_SEED), 256)
    errors = [float(jnp.mean((_lassos(tuning.xs, tuning.ys, a) - tuning.ys)[:, 1:] ** 2)) for a in LASSO_ALPHAS]
    alpha = LASSO_ALPHAS[int(np.argmin(errors))]
    log.info("sparse_linear: the Lasso's penalty, tuned on prompts of its own: %g", alpha)
    return alpha


@jax.jit
def _lassos(xs, ys, alpha):
    return jax.vmap(lasso, (0, 0, None))(xs, ys, alpha)


@partial(jax.jit, static_argnums=(3, 4))
def _support_bayes(xs, ys, every, prior_scale, noise_std):
    return jax.vmap(lambda x, y: support_bayes(x, y, every, prior_scale, noise_std)[0])(xs, ys)
