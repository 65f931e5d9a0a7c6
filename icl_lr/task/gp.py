"""Gaussian-process regression, the `gp_regression` task: f ~ GP(0, prior_scale^2 k), y_i = f(x_i) + eps_i.

k is data.gp_kernel's stationary correlation of r = |x - x'| / l, l = data.gp_length_scale: rbf exp(-r^2 / 2),
or Matern's of nu = 1/2, 3/2, 5/2 (matern12 exp(-r), matern32 (1 + sqrt(3) r) exp(-sqrt(3) r), matern52
(1 + sqrt(5) r + 5 r^2 / 3) exp(-sqrt(5) r)); the definitions of scikit-learn's RBF and Matern kernels. A
prompt's f is drawn jointly at its points, f = chol(prior_scale^2 (K + JITTER I)) z with z ~ N(0, I): what
`draw` gives is z, and the function exists only at the prompt's points (so no finite task pool).

Bayes is exact: y ~ N(0, C), C = prior_scale^2 (K + JITTER I) + sigma^2 I (the jitter is part of the prior,
a nugget), and each y_k's posterior mean given the points before it, the GP's posterior mean there, is
(L_strict e)_k for C = L L^T and e = L^-1 y (y_k = sum_{j <= k} L_kj e_j, the e_j independent): one Cholesky
per prompt for every prefix.
"""

import math
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp

from icl_lr.fields import check
from icl_lr.records.schema import BAYES
from icl_lr.task import baselines, ood
from icl_lr.task.sampling import Prompts

GP_KERNELS = ("rbf", "matern12", "matern32", "matern52")
JITTER = 1e-4  # times prior_scale^2 on K's diagonal: float32 Cholesky of smooth kernels at close points


@dataclass(frozen=True)
class GPRegressionConfig:
    """gp_regression's keys (configs/data/linear_regression.yaml documents them)."""

    gp_kernel: str = "rbf"
    gp_length_scale: float = 2.0

    def check(self) -> None:
        check(self.gp_kernel in GP_KERNELS, f"data.gp_kernel must be one of {GP_KERNELS}, got {self.gp_kernel!r}")
        scale = self.gp_length_scale
        check(0 < scale < math.inf, f"data.gp_length_scale must be > 0 and finite, got {scale}")
        check(
            self.task_pool_size is None,
            "data.task_pool_size is for functions drawn apart from their x's, not data.task=gp_regression's "
            "(drawn jointly at each prompt's points)",
        )


def kernel(xs_NxD, zs_MxD, name: str, length_scale: float) -> jax.Array:
    """The correlation k(x, z) [N, M] of data.gp_kernel `name` (k(x, x) = 1)."""
    r2 = jnp.sum((xs_NxD[:, None] - zs_MxD[None]) ** 2, axis=-1) / length_scale**2
    if name == "rbf":
        return jnp.exp(-r2 / 2)
    r = jnp.sqrt(r2)
    if name == "matern12":
        return jnp.exp(-r)
    if name == "matern32":
        return (1 + math.sqrt(3) * r) * jnp.exp(-math.sqrt(3) * r)
    return (1 + math.sqrt(5) * r + 5 * r2 / 3) * jnp.exp(-math.sqrt(5) * r)


def prior_covariance(xs_NxD, name: str, length_scale: float, prior_scale: float) -> jax.Array:
    """f's covariance at the points, prior_scale^2 (K + JITTER I), [N, N]."""
    k = kernel(xs_NxD, xs_NxD, name, length_scale)
    return prior_scale**2 * (k + JITTER * jnp.eye(xs_NxD.shape[0]))


def posterior_and_evidence(xs_NxD, ys_N, name: str, length_scale: float, prior_scale: float, noise_std: float):
    """Each y_k's posterior mean given the points before it [N] (0 at k = 0) and the log evidence of those
    points [N], log N(y_<k; 0, C_<k) up to k log(2 pi) / 2 (as ridge_and_evidence's)."""
    c = prior_covariance(xs_NxD, name, length_scale, prior_scale) + noise_std**2 * jnp.eye(xs_NxD.shape[0])
    chol = jnp.linalg.cholesky(c)
    e_N = jax.scipy.linalg.solve_triangular(chol, ys_N, lower=True)
    terms_N = -0.5 * e_N**2 - jnp.log(jnp.diagonal(chol))
    return jnp.tril(chol, -1) @ e_N, jnp.cumsum(terms_N) - terms_N


@dataclass(frozen=True)
class GPRegression(Prompts):
    Config = GPRegressionConfig

    def draw(self, key, batch_size: int) -> jax.Array:
        """z [B, N]: the standard normals `label` colours by the kernel at the prompt's points."""
        return jax.random.normal(key, (batch_size, self.cfg.n_points))

    def label(self, zs_BxN, xs_BxNxD) -> jax.Array:
        c = self.cfg
        cov = lambda x: prior_covariance(x, c.gp_kernel, c.gp_length_scale, c.prior_scale)
        return jnp.einsum("bnm,bm->bn", jnp.linalg.cholesky(jax.vmap(cov)(xs_BxNxD)), zs_BxN)

    def ood_conditions(self, key, n_prompts: int) -> dict:
        """The OOD suite's conditions that move the x's: the class is defined at any x, and Bayes stays exact."""
        return ood.conditions(key, self, n_prompts, moves_labels=False)

    def baselines(self, xs, ys, noise_stds: tuple, pool=None) -> dict:
        c = self.cfg
        return _baselines(xs, ys, c.gp_kernel, c.gp_length_scale, c.prior_scale, noise_stds[0])

    def bayes_evidence(self, xs_NxD, ys_N, noise_std: float) -> tuple:
        c = self.cfg
        return posterior_and_evidence(xs_NxD, ys_N, c.gp_kernel, c.gp_length_scale, c.prior_scale, noise_std)


@partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _baselines(xs, ys, name: str, length_scale: float, prior_scale: float, noise_std: float) -> dict:
    """The prior-free baselines and Bayes, the GP's posterior mean."""
    bayes = lambda x, y: posterior_and_evidence(x, y, name, length_scale, prior_scale, noise_std)[0]
    return baselines.on_prompts(baselines.PRIOR_FREE | {BAYES: bayes}, xs, ys)
