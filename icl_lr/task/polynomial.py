"""Polynomial regression, the `polynomial` task: y = w^T phi(x) + eps, phi an additive polynomial basis.

phi(x) = [1, b_1(x_j), ..., b_p(x_j) for each coordinate j]: per-coordinate powers up to p = data.poly_degree
and no cross terms (F = 1 + d p features, not C(d + p, p)), b_q(x) = x^q (data.poly_basis=monomial) or the
Chebyshev polynomial T_q(x / sqrt(3)) (chebyshev: data.x_dist=uniform's x on [-sqrt(3), sqrt(3)] mapped onto
[-1, 1], where T_q is bounded). Each feature is divided by its root second moment under the basis's x law
(x ~ N(0, 1): E x^2q = (2q - 1)!!; u = x / sqrt(3) ~ U[-1, 1]: E T_q(u)^2 = (1 - 1 / (4q^2 - 1)) / 2), and
w ~ N(0, prior_scale^2 I / F): E[y^2] = prior_scale^2 + sigma^2 whatever the degree and d.

Linear in phi with a Gaussian prior: Bayes is ridge on phi with lambda = sigma^2 F / prior_scale^2 (exact under
Gaussian noise; under Laplace or Student's t, ridge at the noise's mean variance is the best linear predictor,
named lmmse_ridge: linear_regression's sampled posterior mean would need too many draws in F dimensions). Beside
it, least squares on phi and the prior-free baselines on x.
"""

import math
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp

from icl_lr.fields import check
from icl_lr.records.schema import BAYES
from icl_lr.task import baselines, ood
from icl_lr.task.linear import LMMSE, lmmse_ridge
from icl_lr.task.sampling import Prompts

POLY_BASES = ("monomial", "chebyshev")
MAX_DEGREE = 10


@dataclass(frozen=True)
class PolynomialConfig:
    """polynomial's keys (configs/data/linear_regression.yaml documents them)."""

    poly_degree: int = 3
    poly_basis: str = "monomial"

    def check(self) -> None:
        degree, basis = self.poly_degree, self.poly_basis
        check(1 <= degree <= MAX_DEGREE, f"data.poly_degree must be in [1, {MAX_DEGREE}], got {degree}")
        check(basis in POLY_BASES, f"data.poly_basis must be one of {POLY_BASES}, got {basis!r}")
        check(
            basis == "monomial" or self.x_dist == "uniform",
            f"data.poly_basis=chebyshev takes data.x_dist=uniform (x / sqrt(3) on [-1, 1]), not {self.x_dist}",
        )


def n_features(n_dims: int, degree: int) -> int:
    """F = 1 + d p: the constant and each coordinate's p powers."""
    return 1 + n_dims * degree


def raw_features(xs_NxD, degree: int, basis: str) -> jax.Array:
    """[1, b_1(x_0), ..., b_p(x_0), b_1(x_1), ...] of each point, [N, F], before normalising: b_q(x) = x^q, or
    T_q(x / sqrt(3)) by the three-term recurrence T_{q+1} = 2u T_q - T_{q-1}."""
    u = xs_NxD / math.sqrt(3.0) if basis == "chebyshev" else xs_NxD
    columns = [jnp.ones_like(u), u]
    for _ in range(degree - 1):
        columns.append(2 * u * columns[-1] - columns[-2] if basis == "chebyshev" else u * columns[-1])
    powers_NxDxP = jnp.stack(columns[1:], axis=-1)
    return jnp.concatenate([jnp.ones_like(u[:, :1]), powers_NxDxP.reshape(u.shape[0], -1)], axis=-1)


def second_moments(degree: int, basis: str) -> list:
    """E b_q^2 for q = 1..p under the basis's x law: (2q - 1)!! for x ~ N(0, 1); (1 - 1/(4q^2 - 1)) / 2 for
    u ~ U[-1, 1]."""
    if basis == "chebyshev":
        return [(1 - 1 / (4 * q * q - 1)) / 2 for q in range(1, degree + 1)]
    return [math.prod(range(1, 2 * q, 2)) for q in range(1, degree + 1)]


def features(xs_NxD, degree: int, basis: str) -> jax.Array:
    """phi(x) [N, F]: raw_features, each divided by its root second moment (the constant's is 1)."""
    scale_P = jnp.asarray(second_moments(degree, basis), xs_NxD.dtype) ** -0.5
    scale_F = jnp.concatenate([jnp.ones(1, xs_NxD.dtype), jnp.tile(scale_P, xs_NxD.shape[-1])])
    return raw_features(xs_NxD, degree, basis) * scale_F


@dataclass(frozen=True)
class Polynomial(Prompts):
    Config = PolynomialConfig
    hierarchical_noise = True  # its Bayes mixes ridge over data.noise_std_choices, as linear_regression's
    non_gaussian_noise = True  # its reference is named for data.noise_dist (LMMSE)

    @property
    def weight_scale(self) -> float:
        """The std of each of w's F coordinates: prior_scale / sqrt(F)."""
        return self.cfg.prior_scale / math.sqrt(n_features(self.cfg.n_dims, self.cfg.poly_degree))

    @property
    def reference(self) -> str:
        return BAYES if self.cfg.gaussian_noise else LMMSE

    def draw(self, key, batch_size: int) -> jax.Array:
        size = n_features(self.cfg.n_dims, self.cfg.poly_degree)
        return self.weight_scale * jax.random.normal(key, (batch_size, size))

    def label(self, ws_BxF, xs_BxNxD) -> jax.Array:
        phi_BxNxF = jax.vmap(lambda x: features(x, self.cfg.poly_degree, self.cfg.poly_basis))(xs_BxNxD)
        return jnp.einsum("bnf,bf->bn", phi_BxNxF, ws_BxF)

    def ood_conditions(self, key, n_prompts: int) -> dict:
        """The OOD suite's conditions that move the x's: the class is defined at any x, and Bayes stays exact."""
        return ood.conditions(key, self, n_prompts, moves_labels=False)

    def baselines(self, xs, ys, noise_stds: tuple, pool=None) -> dict:
        c = self.cfg
        return _baselines(xs, ys, c.poly_degree, c.poly_basis, self.weight_scale, noise_stds, c.gaussian_noise)

    def bayes_evidence(self, xs_NxD, ys_N, noise_std: float) -> tuple:
        phi = features(xs_NxD, self.cfg.poly_degree, self.cfg.poly_basis)
        return baselines.ridge_and_evidence(phi, ys_N, self.weight_scale, noise_std)


@partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def _baselines(xs, ys, degree: int, basis: str, weight_scale: float, noise_stds: tuple, gaussian: bool) -> dict:
    """The prior-free baselines on x, least squares on phi, and Bayes (ridge on phi at each sigma, mixed by
    evidence) or, under non-Gaussian noise, LMMSE ridge at the noise prior's mean variance."""
    on_phi = lambda predict: lambda x, y: predict(features(x, degree, basis), y)
    own = {"poly_least_squares": on_phi(baselines.least_squares)}
    if gaussian:
        own[BAYES] = on_phi(lambda phi, y: baselines.bayes_optimal(phi, y, weight_scale, noise_stds))
    else:
        own[LMMSE] = on_phi(lambda phi, y: lmmse_ridge(phi, y, noise_stds, weight_scale))
    return baselines.on_prompts(baselines.PRIOR_FREE | own, xs, ys)
