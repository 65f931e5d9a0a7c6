import jax
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from helpers import data_config
from icl_lr.task import baselines
from icl_lr.task.linear import LinearRegression

pytestmark = pytest.mark.unit  # the fast tier: no process started

CFG = data_config(n_dims=4, n_points=10, prior_scale=1.5, noise_std=0.5)
BATCH = LinearRegression(CFG).sample_batch(jax.random.PRNGKey(3), 3)


def prompts():
    return [
        (np.asarray(x, np.float64), np.asarray(y, np.float64))
        for x, y in zip(np.asarray(BATCH.xs), np.asarray(BATCH.ys), strict=True)
    ]


def check(jax_fn, numpy_fn, rtol=1e-3, atol=1e-4):
    got = np.asarray(jax.jit(jax.vmap(jax_fn))(BATCH.xs, BATCH.ys))
    want = np.array([[numpy_fn(x[:k], y[:k], x[k]) for k in range(len(y))] for x, y in prompts()])
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def test_least_squares_is_min_norm_pseudo_inverse():
    check(baselines.least_squares, lambda X, y, x: x @ np.linalg.pinv(X) @ y if len(y) else 0.0)


def test_bayes_with_one_sigma_is_ridge_in_closed_form():
    lam = 0.5**2 / 1.5**2
    check(
        lambda x, y: baselines.bayes_optimal(x, y, 1.5, (0.5,)),
        lambda X, y, x: x @ np.linalg.solve(X.T @ X + lam * np.eye(4), X.T @ y),
    )


def test_bayes_predictive_is_the_gaussian_posterior_predictive():
    """Mean and variance of y_k from points < k against the posterior N(mu, Sigma) of w in closed form,
    k < d (directions the context does not span) included."""

    def posterior(X, y):
        cov = np.linalg.inv(X.T @ X / 0.25 + np.eye(4) / 1.5**2)
        return cov @ X.T @ y / 0.25, cov

    check(lambda x, y: baselines.bayes_predictive(x, y, 1.5, 0.25)[0], lambda X, y, x: x @ posterior(X, y)[0])
    check(
        lambda x, y: baselines.bayes_predictive(x, y, 1.5, 0.25)[1],
        lambda X, y, x: 0.25 + x @ posterior(X, y)[1] @ x,
    )


def test_hierarchical_bayes_is_the_posterior_mixture():
    sigmas = (0.1, 0.5, 1.0)

    def mixture(X, y, x):
        log_ev = [
            multivariate_normal(np.zeros(len(y)), 1.5**2 * X @ X.T + s**2 * np.eye(len(y))).logpdf(y) if len(y) else 0.0
            for s in sigmas
        ]
        post = np.exp(np.array(log_ev) - max(log_ev))
        post /= post.sum()
        preds = [x @ np.linalg.solve(X.T @ X + (s / 1.5) ** 2 * np.eye(4), X.T @ y) for s in sigmas]
        return float(post @ np.array(preds))

    # the posterior weights amplify float32 rounding: 1.2e-3 relative on one element on an H200
    check(lambda x, y: baselines.bayes_optimal(x, y, 1.5, sigmas), mixture, rtol=2e-3)


def test_averaging():
    check(baselines.averaging, lambda X, y, x: x @ (X.T @ y) / len(y) if len(y) else 0.0)


def test_three_nearest_neighbours():
    def knn(X, y, x):
        if not len(y):
            return 0.0
        nearest = np.argsort(((X - x) ** 2).sum(1))[:3]
        return y[nearest].mean()

    check(baselines.nearest_neighbours, knn)


def test_bayes_beats_least_squares_on_noisy_data():
    cfg = data_config(n_dims=4, n_points=12, noise_std=0.5)
    batch = LinearRegression(cfg).sample_batch(jax.random.PRNGKey(0), 2000)
    preds = baselines.all_predictions(batch.xs, batch.ys, cfg.prior_scale, cfg.noise_stds)
    err = {k: np.mean((np.asarray(v) - np.asarray(batch.ys)) ** 2, axis=0) / 4 for k, v in preds.items()}
    assert err["bayes"][0] == pytest.approx((4 + 0.25) / 4, rel=0.15)  # k = 0: E[y^2] / d (y^2 is heavy-tailed)
    assert np.all(err["bayes"][1:] <= err["least_squares"][1:] + 1e-3)
    assert err["least_squares"][4] > 2 * err["bayes"][4]  # the interpolation peak at k = d
    assert err["bayes"][11] < 0.25 and err["averaging"][11] > err["bayes"][11]


def test_huber_is_the_penalised_huber_optimum_on_single_prompts():
    """baselines.huber (float32 reweighted least squares) against scipy's BFGS on the same objective in
    float64, prompt by prompt and prefix by prefix, on prompts with a fifth of their labels scaled x10."""
    import scipy.optimize

    rng = np.random.default_rng(1)
    d, n, sigma = 3, 12, 0.1
    delta, penalty = baselines.HUBER_DELTA * sigma, sigma**2
    for _ in range(20):
        xs = rng.normal(size=(n, d)).astype(np.float32)
        ys = xs @ rng.normal(size=d) + sigma * rng.normal(size=n)
        ys = np.where(rng.random(n) < 0.2, 10 * ys, ys).astype(np.float32)
        ours = np.asarray(baselines.huber(xs, ys, delta, penalty))
        x64, y64 = xs.astype(np.float64), ys.astype(np.float64)
        for k in range(1, n):
            x, y = x64[:k], y64[:k]
            loss = lambda w, x=x, y=y: (
                np.sum(
                    np.where(np.abs(y - x @ w) <= delta, (y - x @ w) ** 2 / 2, delta * (np.abs(y - x @ w) - delta / 2))
                )
                + penalty * w @ w / 2
            )
            grad = lambda w, x=x, y=y: -x.T @ np.clip(y - x @ w, -delta, delta) + penalty * w
            best = scipy.optimize.minimize(loss, np.zeros(d), jac=grad, method="BFGS", options={"gtol": 1e-12}).x
            assert abs(ours[k] - x64[k] @ best) < 1e-3 * (1 + abs(x64[k] @ best)), k  # measured: 6e-5
