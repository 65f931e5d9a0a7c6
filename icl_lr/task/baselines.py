"""Baseline predictors of y_k from the first k points of a prompt, for every k = 0..n-1, in JAX.

Each function maps one prompt (xs [n, d], ys [n]) to predictions [n]; prediction k sees points < k.
Least squares and ridge share one SVD per prefix: on the prefix's (zero-padded) design matrix
X = U S V^T, the min-norm solution is V S^+ U^T y and ridge is V S/(S^2 + lambda) U^T y.
"""

import jax
import jax.numpy as jnp

from icl_lr.records.schema import BAYES

NEIGHBOURS = 3
DMMSE_MIN_STD = 1e-3  # times prior_scale: the noise std dMMSE's posterior over its pool assumes for noiseless prompts
EVIDENCE_MIN_STD = 1e-4  # times prior_scale: the noise std at which a noiseless prompt's evidence is computed (the
# limit sigma -> 0: float32 reaches float64's value at this sigma to 1e-4, which is within 5e-3 of the limit on single
# predictions of the sparse posterior at d = 5; 1e-3 was 0.2 away)


MC_SAMPLES = 4096  # the numerical posterior mean's importance samples per prefix (2,048 antithetic pairs)
MC_DF = 4.0  # their Student-t proposal's degrees of freedom: tails heavier than the posteriors' it stands in for
MC_SPREAD = 1.5  # the proposal's scale over the Gaussian posterior's
MC_SEED = 2**31 - 5  # the samples' key: one set of nodes for every prompt, so a prompt's estimate is a function of it


def prefix_masks(n: int) -> jax.Array:
    """[k, i] = 1 where point i is in the context of prediction k (i < k)."""
    return jnp.tril(jnp.ones((n, n)), -1)


def _prefix_svd(xs, ys):
    """Each prefix's singular values [K, R], V^T [K, R, D], U^T y [K, R] and |y - U U^T y|^2 [K]: the residual
    computed from its own vector, not as |y|^2 - |U^T y|^2 (that float32 difference of near-equal sums is
    noise of order eps |y|^2, which a noiseless prompt's evidence divides by sigma^2)."""
    masks = prefix_masks(xs.shape[0])
    designs = masks[:, :, None] * xs[None]  # [k, n, d], rows >= k zeroed
    u, s, vt = jnp.linalg.svd(designs, full_matrices=False)
    targets = masks * ys[None]  # [k, n]
    projections = jnp.einsum("knr,kn->kr", u, targets)  # U^T y per prefix
    residuals = jnp.sum((targets - jnp.einsum("knr,kr->kn", u, projections)) ** 2, axis=1)
    return s, vt, projections, residuals


def _weights_from_svd(xs, s, vt, projections, ridge_lambda):
    """Each prefix's w_k = V f(S) U^T y [K, D], f(S) = S/(S^2 + lambda), cut at numerical rank."""
    cutoff = jnp.finfo(s.dtype).eps * max(xs.shape) * s[:, :1]
    gain = jnp.where(s > cutoff, s / (s**2 + ridge_lambda), 0.0)
    return jnp.einsum("krd,kr->kd", vt, gain * projections)


def _predict_from_svd(xs, s, vt, projections, ridge_lambda):
    """x_k^T w_k, w_k from _weights_from_svd."""
    return jnp.einsum("kd,kd->k", xs, _weights_from_svd(xs, s, vt, projections, ridge_lambda))


def ridge(xs, ys, ridge_lambda: float):
    s, vt, projections, _ = _prefix_svd(xs, ys)
    return _predict_from_svd(xs, s, vt, projections, ridge_lambda)


def least_squares_weights(xs, ys):
    """Each prefix's minimum-norm least-squares w [N, D] (row k from the points before k; row 0 is 0)."""
    s, vt, projections, _ = _prefix_svd(xs, ys)
    return _weights_from_svd(xs, s, vt, projections, 0.0)


def least_squares(xs, ys):
    """Minimum-norm least squares (the pseudo-inverse), the noiseless Bayes estimator."""
    return ridge(xs, ys, 0.0)


def bayes_optimal(xs, ys, prior_scale: float, noise_stds: tuple):
    """Posterior-mean prediction under w ~ N(0, prior_scale^2 I) and the noise prior.

    One noise std: ridge with lambda = sigma^2 / prior_scale^2. Several (a uniform hierarchical
    prior): the ridge predictions mixed by each sigma's posterior weight, from the evidence
    log N(y; 0, prior_scale^2 X X^T + sigma^2 I) computed on the same SVD.
    """
    s, vt, projections, residuals = _prefix_svd(xs, ys)
    sigmas = jnp.asarray(noise_stds, jnp.float32)
    lambdas = sigmas**2 / prior_scale**2
    preds = jax.vmap(lambda lam: _predict_from_svd(xs, s, vt, projections, lam))(lambdas)  # [m, k]
    if len(noise_stds) == 1:
        return preds[0]
    log_evidence = jax.vmap(lambda sigma: _log_evidence(s, projections, residuals, prior_scale, sigma))(sigmas)
    return jnp.sum(jax.nn.softmax(log_evidence, axis=0) * preds, axis=0)


def _log_evidence(s, projections, residuals, prior_scale: float, sigma):
    """Each prefix's log N(y; 0, prior_scale^2 X X^T + sigma^2 I), up to a constant, on its SVD."""
    context_size = jnp.arange(residuals.shape[0])
    eig = prior_scale**2 * s**2 + sigma**2  # covariance eigenvalues along U; sigma^2 elsewhere
    quad = jnp.sum(projections**2 / eig, axis=1) + residuals / sigma**2
    logdet = jnp.sum(jnp.log(eig), axis=1) + (context_size - s.shape[1]) * jnp.log(sigma**2)
    return -0.5 * (quad + logdet)


def mixture_bayes(xs, ys, means_CxD, prior_scale: float, noise_std: float):
    """(Posterior-mean prediction, log evidence) under w ~ (1/C) sum_c N(mu_c, prior_scale^2 I) (Panwar et
    al. 2024's Gaussian-mixture prior): each component's ridge about its mean, mixed by its posterior weight
    from the evidence of y - X mu_c (ridge_and_evidence, its noise floor included)."""

    def component(mean_D):
        preds_K, log_evidence_K = ridge_and_evidence(xs, ys - xs @ mean_D, prior_scale, noise_std)
        return preds_K + xs @ mean_D, log_evidence_K

    return posterior_mixture(*jax.vmap(component)(means_CxD))


def posterior_mixture(preds_CxK, log_evidence_CxK):
    """Under a uniform mixture of C priors, each prefix's posterior-mean prediction [K] (each component's,
    weighted by its posterior probability) and the mixture's log evidence [K] (up to the components' common
    constant): what a mixture of mixtures weighs in turn."""
    posterior_CxK = jax.nn.softmax(log_evidence_CxK, axis=0)
    log_evidence_K = jax.nn.logsumexp(log_evidence_CxK, axis=0) - jnp.log(log_evidence_CxK.shape[0])
    return jnp.sum(posterior_CxK * preds_CxK, axis=0), log_evidence_K


def ridge_and_evidence(xs, ys, prior_scale: float, noise_std: float):
    """Each prefix's posterior-mean prediction under w ~ N(0, prior_scale^2 I) and noise std sigma (ridge,
    lambda = sigma^2 / prior_scale^2) and its log evidence: what a mixture of such priors weighs. A noiseless
    prompt is scored at sigma = EVIDENCE_MIN_STD * prior_scale (the limit sigma -> 0, where the evidence past
    k = d is otherwise singular)."""
    sigma = max(noise_std, EVIDENCE_MIN_STD * prior_scale)
    s, vt, projections, residuals = _prefix_svd(xs, ys)
    preds_K = _predict_from_svd(xs, s, vt, projections, sigma**2 / prior_scale**2)
    return preds_K, _log_evidence(s, projections, residuals, prior_scale, sigma)


def bayes_predictive(xs, ys, prior_scale: float, noise_var: float):
    """Posterior predictive N(mean, var) of each y_k from points < k, under w ~ N(0, prior_scale^2 I)
    and Gaussian noise of variance `noise_var` > 0: mean = ridge's prediction (lambda = noise_var /
    prior_scale^2) and var = noise_var (1 + x^T (X^T X + lambda I)^-1 x), the inverse taken on the
    prefix's SVD, with 1/lambda along directions its rows do not span."""
    s, vt, projections, _ = _prefix_svd(xs, ys)
    ridge_lambda = noise_var / prior_scale**2
    mean = _predict_from_svd(xs, s, vt, projections, ridge_lambda)
    along_KxR = jnp.einsum("krd,kd->kr", vt, xs)  # the query's coordinates along each prefix's V
    spanned = jnp.sum(along_KxR**2 / (s**2 + ridge_lambda), axis=1)
    unspanned = (jnp.sum(xs**2, axis=1) - jnp.sum(along_KxR**2, axis=1)) / ridge_lambda
    return mean, noise_var * (1 + spanned + jnp.maximum(unspanned, 0.0))


def posterior_mean_mc(xs, ys, log_noise, noise_stds: tuple, prior_scale: float):
    """Each prefix's posterior-mean prediction under w ~ N(0, prior_scale^2 I) and noise of log density
    log_noise(r, sigma), by self-normalised importance sampling: a multivariate Student-t proposal (MC_DF) about
    the Gaussian posterior at the noise prior's mean variance, MC_SPREAD times its scale, in antithetic pairs (a
    prefix without points predicts 0, as the prior's mean). Several noise stds: the likelihood averaged over them.
    Exact where the noise is Gaussian but sampled: the reference where no closed form is."""
    n, d = xs.shape
    masks_KxN = prefix_masks(n)
    var = sum(s**2 for s in noise_stds) / len(noise_stds)
    precision_KxDxD = jnp.einsum("kn,nd,ne->kde", masks_KxN, xs, xs) / var + jnp.eye(d) / prior_scale**2
    cov_KxDxD = jnp.linalg.inv(precision_KxDxD)
    mean_KxD = jnp.einsum("kde,kn,ne,n->kd", cov_KxDxD, masks_KxN, xs, ys) / var
    chol_KxDxD = MC_SPREAD * jnp.linalg.cholesky(cov_KxDxD)
    z_key, u_key = jax.random.split(jax.random.PRNGKey(MC_SEED))
    z_HxD = jax.random.normal(z_key, (MC_SAMPLES // 2, d))
    u_H = 2 * jax.random.gamma(u_key, MC_DF / 2, (MC_SAMPLES // 2,)) / MC_DF  # chi^2 / df
    t_MxD = jnp.concatenate([z_HxD, -z_HxD]) / jnp.sqrt(jnp.concatenate([u_H, u_H]))[:, None]
    ws_KxMxD = mean_KxD[:, None] + jnp.einsum("kde,me->kmd", chol_KxDxD, t_MxD)
    log_det_K = jnp.sum(jnp.log(jnp.diagonal(chol_KxDxD, axis1=1, axis2=2)), axis=-1)
    log_q_KxM = -log_det_K[:, None] - (MC_DF + d) / 2 * jnp.log1p(jnp.sum(t_MxD**2, -1) / MC_DF)[None]
    log_prior_KxM = -jnp.sum(ws_KxMxD**2, -1) / (2 * prior_scale**2)
    residuals_KxMxN = ys - jnp.einsum("kmd,nd->kmn", ws_KxMxD, xs)
    sigmas = jnp.asarray(noise_stds, jnp.float32)
    log_lik_SxKxM = jnp.einsum("kn,skmn->skm", masks_KxN, log_noise(residuals_KxMxN, sigmas[:, None, None, None]))
    log_lik_KxM = jax.scipy.special.logsumexp(log_lik_SxKxM, axis=0) - jnp.log(len(noise_stds))
    weights_KxM = jax.nn.softmax(log_prior_KxM + log_lik_KxM - log_q_KxM, axis=1)
    return jnp.sum(jnp.einsum("km,kmd->kd", weights_KxM, ws_KxMxD) * xs, axis=-1)


HUBER_DELTA = 1.345  # Huber's threshold in noise stds (95% efficiency under Gaussian noise)
HUBER_MIN_STD = 0.05  # times prior_scale: the noise std Huber's threshold and penalty assume for noiseless prompts
HUBER_STEPS = 800  # reweighted least-squares steps from least squares: 200 left predictions 6e-2 off, 800 6e-5


def huber(xs, ys, delta: float, ridge_lambda: float):
    """Each prefix's Huber regression with a ridge penalty: w minimising sum_i rho(y_i - w^T x_i) +
    ridge_lambda |w|^2 / 2, rho squared within `delta` and absolute beyond (a Huber likelihood's MAP under
    the Gaussian prior: without the penalty a few points leave the absolute part's optimum a flat valley),
    by iteratively reweighted least squares from least squares. Robust to outlier labels."""
    n, d = xs.shape

    def one(mask_N, query_D, start_D):
        def step(w_D, _):
            r_N = jnp.abs(ys - xs @ w_D)
            weights_N = mask_N * jnp.where(r_N <= delta, 1.0, delta / jnp.maximum(r_N, 1e-12))
            gram_DxD = xs.T @ (weights_N[:, None] * xs) + ridge_lambda * jnp.eye(d)
            return jnp.linalg.solve(gram_DxD, xs.T @ (weights_N * ys)), None

        w_D, _ = jax.lax.scan(step, start_D, None, length=HUBER_STEPS)
        return query_D @ w_D

    return jax.vmap(one)(prefix_masks(n), xs, least_squares_weights(xs, ys))


def averaging(xs, ys):
    """w_k = mean of y_i x_i over the context (Akyurek et al.'s / Garg et al.'s averaging)."""
    masks = prefix_masks(xs.shape[0])
    weights = jnp.einsum("ki,i,id->kd", masks, ys, xs) / jnp.maximum(masks.sum(1, keepdims=True), 1)
    return jnp.einsum("kd,kd->k", xs, weights)


def nearest_neighbours(xs, ys):
    """Mean y of the 3 nearest context points (all of them while fewer than 3); 0 with none."""
    masks = prefix_masks(xs.shape[0])
    dist = jnp.sum((xs[:, None] - xs[None]) ** 2, axis=-1)
    neg_dist, idx = jax.lax.top_k(jnp.where(masks > 0, -dist, -jnp.inf), min(NEIGHBOURS, xs.shape[0]))
    valid = jnp.isfinite(neg_dist)
    return jnp.sum(jnp.where(valid, ys[idx], 0.0), axis=1) / jnp.maximum(valid.sum(1), 1)


def discrete_mmse(xs, ys, pool_MxD, prior_scale: float, noise_stds: tuple):
    """Raventos et al.'s dMMSE: the posterior mean of w over the run's finite pool of M tasks (uniform prior
    on the pool, and on the noise prior's sigmas), as their `icl/models.py` DiscreteMMSE. At k = 0 it predicts
    with the pool's mean w."""
    sigmas = jnp.maximum(jnp.asarray(noise_stds, jnp.float32), DMMSE_MIN_STD * prior_scale)
    preds_NxM = jnp.einsum("nd,md->nm", xs, pool_MxD, precision=jax.lax.Precision.HIGHEST)
    residuals_NxM = (ys[:, None] - preds_NxM) ** 2
    seen_NxM = jnp.cumsum(residuals_NxM, axis=0) - residuals_NxM  # sum over the context i < k
    context_size_N = jnp.arange(xs.shape[0])[:, None, None]
    log_likelihood_NxMxS = -seen_NxM[..., None] / (2 * sigmas**2) - context_size_N * jnp.log(sigmas)
    posterior_NxM = (
        jax.nn.softmax(log_likelihood_NxMxS.reshape(xs.shape[0], -1), axis=1)
        .reshape(log_likelihood_NxMxS.shape)
        .sum(axis=2)
    )
    return jnp.sum(posterior_NxM * preds_NxM, axis=1)


def on_prompts(named: dict, xs, ys) -> dict:
    """{name: predictions [B, N]} of each one-prompt predictor of `named` on a batch of prompts."""
    return {name: jax.vmap(fn)(xs, ys) for name, fn in named.items()}


PRIOR_FREE = {"least_squares": least_squares, "averaging": averaging, "3nn": nearest_neighbours}  # any task's


DMMSE_CHUNK = 2**22  # context points x pool tasks per dMMSE batch: bounds its memory for pools up to 2^20
DMMSE_MAX_POOL = 2**20  # past this many tasks dMMSE is left out: the pool would not fit its memory bound


def all_predictions(xs, ys, prior_scale: float, noise_stds: tuple, pool_MxD=None) -> dict:
    """{baseline name: predictions [B, n]} for a batch of prompts. Under a hierarchical noise prior, ridge at
    each sigma's lambda too (`ridge_sigma_<sigma>`, Bai et al.'s fixed-lambda algorithms); given the run's
    task pool [M, d], dMMSE."""
    per_prompt = {
        "least_squares": least_squares,
        BAYES: lambda x, y: bayes_optimal(x, y, prior_scale, noise_stds),
        "averaging": averaging,
        "3nn": nearest_neighbours,
    }
    if len(noise_stds) > 1:
        for sigma in noise_stds:
            per_prompt[f"ridge_sigma_{sigma:g}"] = lambda x, y, lam=sigma**2 / prior_scale**2: ridge(x, y, lam)
    predictions = on_prompts(per_prompt, xs, ys)
    if pool_MxD is not None:
        dmmse = lambda xy: discrete_mmse(*xy, pool_MxD, prior_scale, noise_stds)
        chunk = max(1, DMMSE_CHUNK // (xs.shape[1] * pool_MxD.shape[0]))
        predictions["dmmse"] = jax.lax.map(dmmse, (xs, ys), batch_size=chunk)
    return predictions
