"""Polynomial and Gaussian-process regression: each Bayes against an independent float64 computation on single
prompts (numpy's ridge on the features, scikit-learn's GP), each sampler's law (feature moments and y's
variance; the functions' covariance against the kernel), and their keys' one-line refusals."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.polynomial.chebyshev import chebvander
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, Matern

from helpers import data_config
from icl_lr.fields import ConfigError
from icl_lr.task import gp, polynomial
from icl_lr.task.registry import task_of

pytestmark = pytest.mark.unit
KEY = jax.random.PRNGKey(0)


def sampled(n_prompts, **data):
    """(task, batch, functions) of `n_prompts` prompts, sampled under jit."""
    task = task_of(data_config(**data))
    return task, *jax.jit(lambda key: task.sample_prompts(key, n_prompts))(KEY)


def numpy_features(xs_NxD, degree, basis):
    """phi in float64, written apart from the task's: numpy's Chebyshev Vandermonde or plain powers, divided by
    the documented root second moments."""
    q = np.arange(1, degree + 1)
    if basis == "chebyshev":
        per_coordinate = [chebvander(x / np.sqrt(3), degree)[:, 1:] for x in xs_NxD.T]
        moments = (1 - 1 / (4 * q**2 - 1)) / 2
    else:
        per_coordinate = [x[:, None] ** q for x in xs_NxD.T]
        moments = np.array([math.prod(range(1, 2 * k, 2)) for k in q], float)
    columns = [c / np.sqrt(moments) for c in per_coordinate]
    return np.concatenate([np.ones((len(xs_NxD), 1)), *columns], axis=1)


def max_relative_error(preds, reference) -> float:
    """max |preds - reference| / max |reference| (predictions near 0 make the elementwise ratio noise)."""
    return float(np.max(np.abs(preds - reference)) / np.max(np.abs(reference)))


def test_chebyshev_features_are_numpys_vandermonde_and_monomials_are_powers():
    xs = np.asarray(jax.random.uniform(KEY, (7, 3), minval=-(3**0.5), maxval=3**0.5))
    raw = np.asarray(jax.jit(lambda x: polynomial.raw_features(x, 5, "chebyshev"))(xs))
    expected = np.concatenate([np.ones((7, 1))] + [chebvander(x / np.sqrt(3), 5)[:, 1:] for x in xs.T], axis=1)
    np.testing.assert_allclose(raw, expected, rtol=1e-5, atol=1e-6)
    for basis in ("monomial", "chebyshev"):
        phi = np.asarray(jax.jit(lambda x, b=basis: polynomial.features(x, 5, b))(xs))
        np.testing.assert_allclose(phi, numpy_features(xs.astype(np.float64), 5, basis), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("basis", ["monomial", "chebyshev"])
def test_polynomial_bayes_is_numpys_float64_ridge_on_the_features(basis):
    sigma, prior_scale, degree = 0.3, 1.5, 3
    x_dist = "uniform" if basis == "chebyshev" else "gaussian"
    task, batch, _ = sampled(3, task="polynomial", n_dims=2, n_points=12, poly_degree=degree, poly_basis=basis,
                             x_dist=x_dist, noise_std=sigma, prior_scale=prior_scale)  # fmt: skip
    preds = np.asarray(task.baselines(batch.xs, batch.ys, (sigma,))["bayes"])
    xs, ys = np.asarray(batch.xs, np.float64), np.asarray(batch.ys, np.float64)
    ridge_lambda = sigma**2 * polynomial.n_features(2, degree) / prior_scale**2
    expected = np.zeros_like(ys)
    for p in range(len(xs)):
        phi = numpy_features(xs[p], degree, basis)
        for k in range(1, xs.shape[1]):
            gram = phi[:k].T @ phi[:k] + ridge_lambda * np.eye(phi.shape[1])
            expected[p, k] = phi[k] @ np.linalg.solve(gram, phi[:k].T @ ys[p, :k])
    error = max_relative_error(preds, expected)
    print(f"polynomial {basis}: max relative error against numpy's ridge {error:.2e}")
    assert error < 1e-4


@pytest.mark.parametrize("basis", ["monomial", "chebyshev"])
def test_polynomial_features_have_unit_second_moments_and_y_the_documented_variance(basis):
    sigma, prior_scale = 0.5, 2.0
    x_dist = "uniform" if basis == "chebyshev" else "gaussian"
    task, batch, _ = sampled(20_000, task="polynomial", n_dims=2, n_points=8, poly_degree=3, poly_basis=basis,
                             x_dist=x_dist, noise_std=sigma, prior_scale=prior_scale)  # fmt: skip
    xs = np.asarray(batch.xs, np.float64).reshape(-1, 2)
    moments = np.mean(numpy_features(xs, 3, basis) ** 2, axis=0)
    np.testing.assert_allclose(moments, 1.0, atol=0.05)
    assert np.mean(np.asarray(batch.ys, np.float64) ** 2) == pytest.approx(prior_scale**2 + sigma**2, rel=0.05)


def test_polynomial_names_its_reference_for_the_noise():
    """Under Laplace noise ridge on phi is the best linear predictor, not Bayes: lmmse_ridge, as linear's."""
    task, batch, _ = sampled(2, task="polynomial", n_dims=2, n_points=6, noise_std=0.1, noise_dist="laplace")
    assert task.reference == "lmmse_ridge"
    assert {"lmmse_ridge", "poly_least_squares", "least_squares"} <= set(task.baselines(batch.xs, batch.ys, (0.1,)))
    assert task_of(data_config(task="polynomial", noise_std=0.1)).reference == "bayes"


def sklearn_kernel(name, length_scale, prior_scale):
    nu = {"matern12": 0.5, "matern32": 1.5, "matern52": 2.5}.get(name)
    shape = RBF(length_scale, "fixed") if nu is None else Matern(length_scale, "fixed", nu=nu)
    return ConstantKernel(prior_scale**2, "fixed") * shape


@pytest.mark.parametrize("kernel", gp.GP_KERNELS)
def test_gp_bayes_is_scikit_learns_posterior_mean_on_single_prompts(kernel):
    sigma, prior_scale, length_scale = 0.2, 1.5, 1.3
    task, batch, _ = sampled(3, task="gp_regression", n_dims=2, n_points=12, gp_kernel=kernel,
                             gp_length_scale=length_scale, noise_std=sigma, prior_scale=prior_scale)  # fmt: skip
    preds = np.asarray(task.baselines(batch.xs, batch.ys, (sigma,))["bayes"])
    xs, ys = np.asarray(batch.xs, np.float64), np.asarray(batch.ys, np.float64)
    alpha = sigma**2 + prior_scale**2 * gp.JITTER  # the noise and the prior's nugget
    expected = np.zeros_like(ys)
    for p in range(len(xs)):
        for k in range(1, xs.shape[1]):
            model = GaussianProcessRegressor(sklearn_kernel(kernel, length_scale, prior_scale), alpha=alpha,
                                             optimizer=None).fit(xs[p, :k], ys[p, :k])  # fmt: skip
            expected[p, k] = model.predict(xs[p, k : k + 1])[0]
    error = max_relative_error(preds, expected)
    print(f"gp {kernel}: max relative error against scikit-learn {error:.2e}")
    assert error < 1e-4


def test_gp_functions_have_the_kernels_covariance():
    """f at four fixed points over 160,000 prompts: its empirical covariance is the kernel's, and not another
    kernel's nor another length scale's (each at least twice the tolerance away; the nearest pair of these
    candidates, matern32 and matern52, differ by 0.047 in one entry)."""
    points = np.array([[0.0, 0.0], [0.5, 0.0], [1.0, 0.3], [2.0, -0.5]])
    n, prior_scale, tolerance = 160_000, 1.5, 0.015
    covariances = {
        (name, scale): prior_scale**2 * (sklearn_kernel(name, scale, 1.0)(points) + gp.JITTER * np.eye(4))
        for name in gp.GP_KERNELS
        for scale in (1.0, 1.5)
    }
    xs = jnp.broadcast_to(jnp.asarray(points, jnp.float32), (n, 4, 2))
    for name in gp.GP_KERNELS:
        task = task_of(data_config(task="gp_regression", n_dims=2, n_points=4, gp_kernel=name, gp_length_scale=1.0,
                                   prior_scale=prior_scale))  # fmt: skip
        fs = np.asarray(jax.jit(lambda key, t=task: t.label(t.draw(key, n), xs))(KEY), np.float64)
        empirical = fs.T @ fs / n / prior_scale**2
        for key, cov in covariances.items():
            distance = np.max(np.abs(empirical - cov / prior_scale**2))
            assert distance < tolerance if key == (name, 1.0) else distance > 2 * tolerance, (name, key, distance)


def test_polynomial_and_gp_in_a_mixture_have_the_mixtures_bayes():
    task, batch, _ = sampled(4, task="mixture", task_mixture=("polynomial", "gp_regression"), n_dims=2, n_points=6,
                             noise_std=0.1)  # fmt: skip
    preds = task.baselines(batch.xs, batch.ys, (0.1,))
    assert {"bayes", "bayes_polynomial", "bayes_gp_regression"} <= set(preds)
    assert all(np.isfinite(np.asarray(v)).all() for v in preds.values())


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"task": "polynomial", "poly_degree": 0}, "data.poly_degree must be in [1, 10], got 0"),
        ({"task": "polynomial", "poly_basis": "legendre"}, "data.poly_basis must be one of"),
        ({"task": "polynomial", "poly_basis": "chebyshev"}, "data.poly_basis=chebyshev takes data.x_dist=uniform"),
        ({"task": "gp_regression", "gp_length_scale": -1}, "data.gp_length_scale must be > 0 and finite, got -1"),
        ({"task": "gp_regression", "gp_kernel": "cosine"}, "data.gp_kernel must be one of"),
        ({"task": "gp_regression", "task_pool_size": 8}, "data.task_pool_size is for functions drawn apart"),
    ],
)
def test_bad_values_are_refused_in_one_line_naming_the_key(values, message):
    with pytest.raises(ConfigError) as error:
        data_config(**values)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
