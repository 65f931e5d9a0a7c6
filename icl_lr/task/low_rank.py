"""Low-rank matrix sensing, the `low_rank` task (Panwar et al. 2024's LowRankCS, mdrpanwar/icl-bayesian-prism
src/tasks.py): W = prior_scale B^T B with B [r, m] standard normal, so W is m x m, symmetric positive
semi-definite of rank r = data.low_rank_rank; d = data.n_dims = m^2, each x a sensing matrix of N(0, 1) entries
flattened to d, y = <x, vec W> + eps. Their prior and scaling exactly (their `scale` is prior_scale, 1 there):
E|W|_F^2 = prior_scale^2 r m (m + r + 1).

No Bayes in closed form (the posterior over B^T B is not Gaussian): the reference is the nuclear-norm estimate
over the prior's cone, the positive semi-definite W of least nuclear norm (its trace) that fits the context
(exactly when noiseless), by Douglas-Rachford splitting between eigenvalue thresholding and the fit. Beside it,
the same over every matrix (singular-value thresholding, the classical estimate), least squares (min norm) and
LMMSE, ridge about the prior's mean on symmetrised x's: the best affine predictor under the prior's first two
moments.
"""

import math
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp

from icl_lr.fields import check
from icl_lr.task import baselines
from icl_lr.task.sampling import Prompts

NUCLEAR_NORM_PSD = (
    "nuclear_norm_psd"  # the reference (no Bayes in closed form): least nuclear norm over the prior's cone
)
SPLITTING_STEPS = 300  # Douglas-Rachford iterations per prefix (float32 within 1e-4 of float64's minimiser, d = 9)


@dataclass(frozen=True)
class LowRankConfig:
    """low_rank's keys (configs/data/linear_regression.yaml documents them)."""

    low_rank_rank: int = 1

    def check(self) -> None:
        m = math.isqrt(self.n_dims)
        check(m * m == self.n_dims, f"data.n_dims must be a square m^2 for the m x m matrix W, got {self.n_dims}")
        r = self.low_rank_rank
        check(1 <= r <= m, f"data.low_rank_rank must be in [1, sqrt(data.n_dims)={m}], got {r}")


def thresholded(ms_KxMxM, threshold: float, psd: bool) -> jax.Array:
    """The proximal map of threshold x the nuclear norm: each matrix's singular values lowered by `threshold`,
    those below it set to 0, through the eigenvectors V of M^T M (M V diag(max(1 - t / s, 0)) V^T). `psd`: that
    of the trace plus the indicator of positive semi-definite matrices, the eigenvalues of the symmetric part
    lowered by `threshold` and clipped at 0."""
    if psd:
        lam_KxM, v_KxMxM = jnp.linalg.eigh((ms_KxMxM + ms_KxMxM.transpose(0, 2, 1)) / 2)
        return jnp.einsum("kij,kj,klj->kil", v_KxMxM, jnp.maximum(lam_KxM - threshold, 0.0), v_KxMxM)
    lam_KxM, v_KxMxM = jnp.linalg.eigh(jnp.einsum("kji,kjl->kil", ms_KxMxM, ms_KxMxM))
    s_KxM = jnp.sqrt(jnp.maximum(lam_KxM, 0.0))
    shrink_KxM = jnp.where(s_KxM > threshold, 1 - threshold / jnp.maximum(s_KxM, threshold), 0.0)
    return jnp.einsum("kij,kjl,kl,kml->kim", ms_KxMxM, v_KxMxM, shrink_KxM, v_KxMxM)


def nuclear_norm_weights(
    xs_NxD, ys_N, penalty: float, step: float, psd: bool = False, steps: int = SPLITTING_STEPS
) -> jax.Array:
    """Each prefix's vec W [N, D] minimising |W|_* + |X w - y|^2 / (2 penalty) (penalty 0: |W|_* subject to
    X w = y), over positive semi-definite W where `psd`, by Douglas-Rachford splitting with step t: w = fit(z),
    z += thresholded(2 w - z) - w, where fit is the proximal map of the fit, v + V S / (S^2 + penalty / t)
    (U^T y - S V^T v) on each prefix's SVD (the projection onto X w = y at penalty 0). Returns fit(z), which
    satisfies X w = y where the fit is exact."""
    n, d = xs_NxD.shape
    m = math.isqrt(d)
    masks_KxN = baselines.prefix_masks(n)
    u_KxNxR, s_KxR, vt_KxRxD = jnp.linalg.svd(masks_KxN[:, :, None] * xs_NxD[None], full_matrices=False)
    uty_KxR = jnp.einsum("knr,kn->kr", u_KxNxR, masks_KxN * ys_N[None])
    cutoff = jnp.finfo(s_KxR.dtype).eps * max(n, d) * s_KxR[:, :1]
    gain_KxR = jnp.where(s_KxR > cutoff, s_KxR / (s_KxR**2 + penalty / step), 0.0)

    def fit(v_KxD):
        residual_KxR = uty_KxR - s_KxR * jnp.einsum("krd,kd->kr", vt_KxRxD, v_KxD)
        return v_KxD + jnp.einsum("krd,kr->kd", vt_KxRxD, gain_KxR * residual_KxR)

    def iterate(z_KxD, _):
        w_KxD = fit(z_KxD)
        return z_KxD + thresholded((2 * w_KxD - z_KxD).reshape(n, m, m), step, psd).reshape(n, d) - w_KxD, None

    return fit(jax.lax.scan(iterate, jnp.zeros_like(xs_NxD), None, length=steps)[0])


def symmetrised(xs_NxD) -> jax.Array:
    """vec((X + X^T) / 2) of each sensing matrix: <x, vec W> for every symmetric W."""
    n, d = xs_NxD.shape
    m = math.isqrt(d)
    xs_NxMxM = xs_NxD.reshape(n, m, m)
    return ((xs_NxMxM + xs_NxMxM.transpose(0, 2, 1)) / 2).reshape(n, d)


def lmmse(xs_NxD, ys_N, rank: int, prior_scale: float, noise_std: float) -> jax.Array:
    """The best affine predictor under the prior's mean E vec W = prior_scale r vec I and covariance
    prior_scale^2 r (I + K) (K the commutation matrix: Isserlis's theorem), 2 r prior_scale^2 times the
    projection onto symmetric matrices: ridge on the symmetrised x's about the mean, lambda = sigma^2 / (2 r
    prior_scale^2) (least squares at sigma = 0)."""
    m = math.isqrt(xs_NxD.shape[1])
    mean_D = prior_scale * rank * jnp.eye(m, dtype=xs_NxD.dtype).reshape(-1)
    ridge_lambda = noise_std**2 / (2 * rank * prior_scale**2)
    return xs_NxD @ mean_D + baselines.ridge(symmetrised(xs_NxD), ys_N - xs_NxD @ mean_D, ridge_lambda)


@dataclass(frozen=True)
class LowRank(Prompts):
    Config = LowRankConfig
    reference = NUCLEAR_NORM_PSD

    def draw(self, key, batch_size: int) -> jax.Array:
        """vec W [B, D]: prior_scale B^T B, B [r, m] standard normal (Panwar et al.'s get_vec_low_rank_matrix)."""
        m = math.isqrt(self.cfg.n_dims)
        b_BxRxM = jax.random.normal(key, (batch_size, self.cfg.low_rank_rank, m))
        return self.cfg.prior_scale * jnp.einsum("bri,brj->bij", b_BxRxM, b_BxRxM).reshape(batch_size, -1)

    def label(self, ws_BxD, xs_BxNxD) -> jax.Array:
        return jnp.einsum("bnd,bd->bn", xs_BxNxD, ws_BxD)

    def baselines(self, xs, ys, noise_stds: tuple, pool=None) -> dict:
        c = self.cfg
        return _baselines(xs, ys, c.low_rank_rank, c.prior_scale, noise_stds[0])


@partial(jax.jit, static_argnums=(2, 3, 4))
def _baselines(xs, ys, rank: int, prior_scale: float, noise_std: float) -> dict:
    """The prior-free baselines, LMMSE and the nuclear-norm estimates over every matrix and over positive
    semi-definite ones: the fit exact when noiseless, else penalised at sigma^2 / prior_scale (the MAP of a
    density exp(-|W|_* / prior_scale) under Gaussian noise), the step prior_scale (W's scale; the splitting
    converges for any step)."""

    def nuclear_norm(psd: bool):
        penalty = noise_std**2 / prior_scale
        return lambda x, y: jnp.einsum("kd,kd->k", x, nuclear_norm_weights(x, y, penalty, prior_scale, psd))

    own = {"nuclear_norm": nuclear_norm(False), NUCLEAR_NORM_PSD: nuclear_norm(True)}
    own["lmmse"] = lambda x, y: lmmse(x, y, rank, prior_scale, noise_std)
    return baselines.on_prompts(baselines.PRIOR_FREE | own, xs, ys)
