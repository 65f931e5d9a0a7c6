"""Sparse linear regression, the `sparse_linear` task (Garg et al. 2022's SparseLinearRegression,
dtsip/in-context-learning src/tasks.py): w ~ N(0, prior_scale^2 I_d) with all but data.sparsity of its
coordinates, a uniformly random support, set to 0; y_i = w^T x_i + eps_i.

Its baselines beside linear regression's: the Lasso (exact, on the host in float64, its penalty tuned on
prompts of its own) and the exact posterior mean, a mixture over the C(d, s) supports of each support's ridge.
"""

import functools
import logging
import math
import time
import warnings
from dataclasses import dataclass
from functools import partial
from itertools import combinations

import jax
import jax.numpy as jnp
import numpy as np

from icl_lr.fields import check
from icl_lr.records.schema import BAYES
from icl_lr.task import baselines
from icl_lr.task.linear import TUNING_SEED, LinearRegression, LinearRegressionConfig, check_gaussian_prior

log = logging.getLogger("icl_lr")
LASSO_ALPHAS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)  # the penalties tuned over, Garg et al.'s among them
LASSO_KKT_TOL = 1e-9  # the Lasso's optimality: no coordinate's subgradient condition off by more (float64)
PROGRESS_EVERY = 10.0  # seconds between the host Lasso's progress lines
MAX_SUPPORTS = 5000  # past this many supports the exact posterior is left out (a log line)


def lasso_weights(xs_KxD, ys_K, alphas) -> np.ndarray:
    """The Lasso's w [A, D] on k points for each penalty of `alphas`: the exact minimiser of
    (1/2k) |X w - y|^2 + alpha |w|_1 (scikit-learn's Lasso objective), in float64. The LARS-Lasso homotopy
    (Efron et al. 2004, scikit-learn's lars_path) gives every alpha's w from one path; where a degenerate step
    of the path leaves the KKT conditions off by more than LASSO_KKT_TOL, coordinate descent polishes it."""
    import sklearn
    from sklearn.linear_model import Lasso, lars_path

    xs, ys, alphas = np.asarray(xs_KxD, np.float64), np.asarray(ys_K, np.float64), np.asarray(alphas, np.float64)
    with warnings.catch_warnings(), sklearn.config_context(skip_parameter_validation=True):
        warnings.simplefilter("ignore")  # lars_path's notes on degenerate steps: the KKT check below decides
        knots, _, path_DxT = lars_path(xs, ys, method="lasso", alpha_min=float(alphas.min()))
        ws_AxD = np.stack([np.interp(alphas, knots[::-1], c[::-1]) for c in path_DxT], axis=1)
        for a in np.flatnonzero(lasso_kkt_violation(xs, ys, ws_AxD, alphas) > LASSO_KKT_TOL):
            polish = Lasso(alpha=alphas[a], fit_intercept=False, warm_start=True, tol=1e-14, max_iter=10**6)
            polish.coef_ = ws_AxD[a].copy()
            ws_AxD[a] = polish.fit(xs, ys).coef_
    return ws_AxD


def lasso_kkt_violation(xs_KxD, ys_K, ws_AxD, alphas) -> np.ndarray:
    """How far each w is from the Lasso's optimality conditions at its alpha [A]: g = X^T (y - X w) / k must
    equal alpha sign(w_j) where w_j != 0 and lie in [-alpha, alpha] elsewhere; the largest violation."""
    ws_AxD, alphas_A1 = np.atleast_2d(ws_AxD), np.reshape(alphas, (-1, 1))
    g_AxD = (ys_K[None] - ws_AxD @ xs_KxD.T) @ xs_KxD / len(ys_K)
    off = np.where(ws_AxD != 0, np.abs(g_AxD - alphas_A1 * np.sign(ws_AxD)), np.maximum(np.abs(g_AxD) - alphas_A1, 0))
    return off.max(axis=1, initial=0.0)


def lasso_predictions(xs_PxNxD, ys_PxN, alphas) -> np.ndarray:
    """[A, P, N]: each penalty's Lasso prediction of y_k from the points before it (0 at k = 0), on the host."""
    xs, ys = np.asarray(xs_PxNxD, np.float64), np.asarray(ys_PxN, np.float64)
    n_prompts, n_points, _ = xs.shape
    predictions = np.zeros((len(alphas), n_prompts, n_points))
    started = last = time.monotonic()
    for p in range(n_prompts):
        if time.monotonic() - last > PROGRESS_EVERY:
            last = time.monotonic()
            log.info("the Lasso on %d prompts: %d done (%.0fs)", n_prompts, p, last - started)
        for k in range(1, n_points):
            predictions[:, p, k] = lasso_weights(xs[p, :k], ys[p, :k], alphas) @ xs[p, k]
    return predictions


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
class SparseLinearConfig(LinearRegressionConfig):
    sparsity: int = 2

    def check(self) -> None:
        LinearRegressionConfig.check(self)  # its inherited keys' checks (outliers: linear_regression's)
        check_gaussian_prior(self)
        n, s = self.n_dims, self.sparsity
        check(1 <= s <= n, f"data.sparsity must be in [1, data.n_dims={n}], got {s}")


@dataclass(frozen=True)
class SparseLinear(LinearRegression):
    """The task interface of sparse linear regression; linear regression's but for its prior and baselines."""

    Config = SparseLinearConfig
    hierarchical_noise = False
    non_gaussian_noise = False

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
        predictions["lasso"] = jnp.asarray(lasso_predictions(xs, ys, [lasso_alpha(self)])[0], jnp.float32)
        if self.reference != BAYES:
            log.info("the sparse prior's posterior mean left out: past %d supports", MAX_SUPPORTS)
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
    errors_A = np.mean((lasso_predictions(tuning.xs, tuning.ys, LASSO_ALPHAS) - np.asarray(tuning.ys))[:, :, 1:] ** 2,
                       axis=(1, 2))  # fmt: skip
    alpha = LASSO_ALPHAS[int(np.argmin(errors_A))]
    log.info("sparse_linear: the Lasso's penalty, tuned on prompts of its own: %g", alpha)
    return alpha


@partial(jax.jit, static_argnums=(3, 4))
def _support_bayes(xs, ys, every, prior_scale, noise_std):
    return jax.vmap(lambda x, y: support_bayes(x, y, every, prior_scale, noise_std)[0])(xs, ys)
