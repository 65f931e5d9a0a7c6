"""Polynomial and Gaussian-process regression, sparse parities and low-rank matrix sensing: each Bayes or
reference against an independent float64 computation on single prompts (numpy's ridge on the features,
scikit-learn's GP, brute force over the parity supports, a numpy splitting loop for the nuclear norm), each
sampler's law (feature moments and y's variance; the functions' covariance against the kernel; the parity's
uniform supports; W's rank and moments), and their keys' one-line refusals."""

import itertools
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
from icl_lr.task import gp, low_rank, polynomial
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


def brute_force_parity(xs_NxD, ys_N, k) -> np.ndarray:
    """Each y_i's posterior mean written out: over every support of k coordinates, those whose parity matches
    every label before i, their mean parity at x_i (float32's quotient of the exact sum and count)."""
    every = list(itertools.combinations(range(xs_NxD.shape[1]), k))
    preds = np.zeros(len(ys_N), np.float32)
    for i in range(len(ys_N)):
        agree = [s for s in every if all(np.prod(xs_NxD[j, list(s)]) == ys_N[j] for j in range(i))]
        preds[i] = np.float32(sum(np.prod(xs_NxD[i, list(s)]) for s in agree)) / np.float32(len(agree))
    return preds


def test_the_parity_exact_learner_is_brute_force_over_supports_on_single_prompts():
    task, batch, _ = sampled(4, task="sparse_parity", n_dims=6, parity_k=3, n_points=14)
    preds = task.baselines(batch.xs, batch.ys, (0.0,))
    xs, ys = np.asarray(batch.xs), np.asarray(batch.ys)
    expected = np.stack([brute_force_parity(xs[p], ys[p], 3) for p in range(len(xs))])
    np.testing.assert_array_equal(np.asarray(preds["bayes"]), expected)
    assert np.abs(expected[:, -1]).min() == 1  # 13 labelled points leave one support on these prompts
    assert task.reference == "bayes" and not np.asarray(preds["zero"]).any()
    accuracy = task.metrics(preds["bayes"], batch.ys)["accuracy"]
    np.testing.assert_array_equal(np.asarray(accuracy), np.sign(expected) == ys)


def test_parity_prompts_have_uniform_signs_uniform_supports_and_parity_labels():
    """20,000 prompts at d = 5, k = 2: the C(5, 2) = 10 supports' counts against uniform by Pearson's
    chi-square (9 degrees of freedom; 27.9 is its 0.999 quantile), x's exactly +-1 with mean 0, y the parity."""
    n, d, k = 20_000, 5, 2
    _, batch, masks = sampled(n, task="sparse_parity", n_dims=d, parity_k=k, n_points=4)
    xs, ys, masks = np.asarray(batch.xs), np.asarray(batch.ys), np.asarray(masks)
    assert set(np.unique(xs)) == {-1.0, 1.0} and np.abs(xs.mean(axis=(0, 1))).max() < 0.02
    assert (masks.sum(axis=1) == k).all()
    np.testing.assert_array_equal(ys, np.prod(np.where(masks[:, None] > 0, xs, 1), axis=-1))
    counts = np.array([np.all(masks == np.isin(np.arange(d), s), axis=1).sum()
                       for s in itertools.combinations(range(d), k)])  # fmt: skip
    chi_square = np.sum((counts - n / len(counts)) ** 2 / (n / len(counts)))
    assert counts.sum() == n and chi_square < 27.9, (counts, chi_square)


def numpy_nuclear_norm(xs_NxD, ys_N, psd: bool, step=1.0, tolerance=1e-10, max_steps=20_000) -> np.ndarray:
    """Each prefix's min |W|_* subject to X w = y (over positive semi-definite W where `psd`) [N, D] in float64,
    written apart from the task's: Douglas-Rachford between numpy's SVD (or eigh) thresholding and the
    pseudo-inverse's projection, its own step, until no iterate moves more than `tolerance`."""
    n, d = xs_NxD.shape
    m = math.isqrt(d)
    designs_KxNxD = np.tril(np.ones((n, n)), -1)[:, :, None] * xs_NxD[None]
    pinv_KxDxN, targets_KxN = np.linalg.pinv(designs_KxNxD), np.tril(np.ones((n, n)), -1) * ys_N[None]
    project = lambda v: v - np.einsum("kdn,kn->kd", pinv_KxDxN, np.einsum("knd,kd->kn", designs_KxNxD, v) - targets_KxN)

    def threshold(v_KxD):
        ms = v_KxD.reshape(n, m, m)
        if psd:
            lam, vecs = np.linalg.eigh((ms + ms.transpose(0, 2, 1)) / 2)
            return np.einsum("kij,kj,klj->kil", vecs, np.maximum(lam - step, 0), vecs).reshape(n, d)
        u, s, vt = np.linalg.svd(ms)
        return np.einsum("kij,kj,kjl->kil", u, np.maximum(s - step, 0), vt).reshape(n, d)

    z = np.zeros((n, d))
    for _ in range(max_steps):
        w = project(z)
        moved = threshold(2 * w - z) - w
        z = z + moved
        if np.abs(moved).max() < tolerance:
            break
    return project(z)


@pytest.mark.parametrize("psd", [False, True], ids=["every matrix", "psd"])
def test_low_rank_nuclear_norm_of_one_measurement_is_the_svd_construction(psd):
    """One measurement <A, W> = y has its minimiser in closed form, from A's SVD: y / s_1(A) u_1 v_1^T over every
    matrix (|W|_* = |y| / s_1, the dual norm's bound); over positive semi-definite W, y / lambda v v^T with
    lambda, v the eigenpair of sym(A) = (A + A^T) / 2 at its largest eigenvalue (y > 0) or smallest (y < 0).
    numpy's float64 splitting (the next test's reference) reaches it; so does the task's over every matrix. The
    task's over the cone, 300 float32 steps, can stop short where that eigenvalue is small (docs/tasks.md)."""
    task, batch, _ = sampled(6, task="low_rank", n_dims=9, n_points=4, low_rank_rank=1, prior_scale=1.5)
    weights = jax.jit(jax.vmap(lambda x, y: low_rank.nuclear_norm_weights(x, y, 0.0, 1.5, psd)))(batch.xs, batch.ys)
    checked = 0
    for p, (x, y) in enumerate(zip(np.asarray(batch.xs, np.float64), np.asarray(batch.ys, np.float64), strict=True)):
        a, target = x[0].reshape(3, 3), y[0]
        if psd:
            lam, vecs = np.linalg.eigh((a + a.T) / 2)
            top = -1 if target > 0 else 0
            if lam[top] * target <= 0:  # no positive semi-definite W fits: not this construction's case
                continue
            expected = target / lam[top] * np.outer(vecs[:, top], vecs[:, top])
        else:
            u, sv, vt = np.linalg.svd(a)
            expected = target / sv[0] * np.outer(u[:, 0], vt[0])
        scale = np.abs(expected).max()
        np.testing.assert_allclose(numpy_nuclear_norm(x, y, psd)[1].reshape(3, 3), expected, atol=1e-6 * scale)
        if not psd:
            found = np.asarray(weights[p, 1], np.float64).reshape(3, 3)
            np.testing.assert_allclose(found, expected, atol=2e-3 * scale, err_msg=f"prompt {p}")
        checked += 1
    assert checked >= 4


@pytest.mark.parametrize("psd", [False, True], ids=["every matrix", "psd"])
def test_low_rank_nuclear_norm_is_numpys_float64_minimiser_and_exact_once_determined(psd):
    """On two noiseless prompts at d = 9: below k = d each prefix's prediction within 1e-4 of max |y| of numpy's
    float64 minimiser (measured 1e-6 or less on these prompts), its nuclear norm never above the true W's (which
    fits the context too); from k = d the labels themselves (X w = y has one solution, W)."""
    task, batch, ws = sampled(2, task="low_rank", n_dims=9, n_points=12, low_rank_rank=1, prior_scale=1.5)
    name = "nuclear_norm_psd" if psd else "nuclear_norm"
    preds = np.asarray(task.baselines(batch.xs, batch.ys, (0.0,))[name], np.float64)
    weights = jax.jit(jax.vmap(lambda x, y: low_rank.nuclear_norm_weights(x, y, 0.0, 1.5, psd)))(batch.xs, batch.ys)
    xs, ys, ws = (np.asarray(a, np.float64) for a in (batch.xs, batch.ys, ws))
    nuclear = lambda w: np.linalg.svd(w.reshape(3, 3), compute_uv=False).sum()
    for p in range(len(xs)):
        scale = np.abs(ys[p]).max()
        expected = np.einsum("kd,kd->k", xs[p], numpy_nuclear_norm(xs[p], ys[p], psd))
        error = np.abs(preds[p, 1:9] - expected[1:9]).max() / scale
        print(f"{name}: max error below k = d against numpy's float64, over max |y|: {error:.1e}")
        assert error < 1e-4
        for k in range(1, 9):
            assert nuclear(np.asarray(weights[p, k], np.float64)) <= nuclear(ws[p]) * (1 + 1e-4), (p, k)
        np.testing.assert_allclose(preds[p, 9:], ys[p, 9:], atol=1e-4 * scale)
    assert task.reference == "nuclear_norm_psd"


def test_low_rank_lmmse_is_the_affine_estimate_under_the_priors_two_moments():
    """numpy's float64 mu + Sigma A^T (A Sigma A^T + sigma^2 I)^-1 (y - A mu) with Sigma = prior_scale^2 r (I + K)
    built from the commutation matrix K, on single noisy prompts, to 1e-4 of max |y|."""
    sigma, prior_scale, rank = 0.3, 1.5, 2
    task, batch, _ = sampled(3, task="low_rank", n_dims=9, n_points=14, low_rank_rank=rank, noise_std=sigma,
                             prior_scale=prior_scale)  # fmt: skip
    preds = np.asarray(task.baselines(batch.xs, batch.ys, (sigma,))["lmmse"], np.float64)
    commutation = np.eye(9)[[3 * (i % 3) + i // 3 for i in range(9)]]
    cov, mean = prior_scale**2 * rank * (np.eye(9) + commutation), prior_scale * rank * np.eye(3).ravel()
    xs, ys = np.asarray(batch.xs, np.float64), np.asarray(batch.ys, np.float64)
    for p in range(len(xs)):
        for k in range(14):
            a = xs[p, :k]
            gain = cov @ a.T @ np.linalg.inv(a @ cov @ a.T + sigma**2 * np.eye(k))
            expected = xs[p, k] @ (mean + gain @ (ys[p, :k] - a @ mean))
            assert abs(preds[p, k] - expected) < 1e-4 * np.abs(ys[p]).max(), (p, k, preds[p, k], expected)


def test_low_rank_matrices_have_their_rank_and_the_priors_two_moments():
    """40,000 draws at m = 3, r = 2: W symmetric with m - r zero eigenvalues, E vec W = prior_scale r vec I and
    Cov vec W = prior_scale^2 r (I + K) (what LMMSE assumes; entries 2 r prior_scale^2 = 9 on the symmetric
    diagonal, r prior_scale^2 = 4.5 off it), y = <x, vec W>."""
    n, prior_scale, rank = 40_000, 1.5, 2
    task, batch, ws = sampled(n, task="low_rank", n_dims=9, n_points=3, low_rank_rank=rank, prior_scale=prior_scale)
    ws = np.asarray(ws, np.float64)
    mats = ws.reshape(n, 3, 3)
    np.testing.assert_array_equal(mats, mats.transpose(0, 2, 1))
    eigenvalues = np.linalg.eigvalsh(mats)
    assert np.abs(eigenvalues[:, 0]).max() < 1e-4 * eigenvalues[:, -1].max() and eigenvalues[:, 1].min() > -1e-4
    commutation = np.eye(9)[[3 * (i % 3) + i // 3 for i in range(9)]]
    np.testing.assert_allclose(ws.mean(axis=0), prior_scale * rank * np.eye(3).ravel(), atol=0.1)
    np.testing.assert_allclose(np.cov(ws.T), prior_scale**2 * rank * (np.eye(9) + commutation), atol=0.4)
    np.testing.assert_allclose(np.asarray(batch.ys), np.einsum("bnd,bd->bn", np.asarray(batch.xs), ws), rtol=1e-4,
                               atol=1e-4)  # fmt: skip


def test_the_new_tasks_refuse_the_binned_encodings_in_one_line():
    from helpers import run_config

    for task in ("sparse_parity", "low_rank", "polynomial", "gp_regression", "tabular"):
        with pytest.raises(ConfigError) as error:
            run_config(f"data.task={task}", "data.n_dims=4", "data.encoding=binned_y")
        assert str(error.value).startswith("data.encoding=binned_y (binned y) is for data.task=linear_regression")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"task": "polynomial", "poly_degree": 0}, "data.poly_degree must be in [1, 10], got 0"),
        ({"task": "polynomial", "poly_basis": "legendre"}, "data.poly_basis must be one of"),
        ({"task": "polynomial", "poly_basis": "chebyshev"}, "data.poly_basis=chebyshev takes data.x_dist=uniform"),
        ({"task": "gp_regression", "gp_length_scale": -1}, "data.gp_length_scale must be > 0 and finite, got -1"),
        ({"task": "gp_regression", "gp_kernel": "cosine"}, "data.gp_kernel must be one of"),
        ({"task": "gp_regression", "task_pool_size": 8}, "data.task_pool_size is for functions drawn apart"),
        ({"task": "sparse_parity", "n_dims": 4, "parity_k": 5}, "data.parity_k must be in [1, data.n_dims=4], got 5"),
        ({"task": "sparse_parity", "n_dims": 40, "parity_k": 20}, "data.parity_k: C(40, 20) = 137,846,528,820"),
        ({"task": "sparse_parity", "x_dist": "uniform"}, "data.x_dist=uniform: data.task=sparse_parity draws its own"),
        ({"task": "sparse_parity", "noise_std": 0.1}, "data.task=sparse_parity has no label noise"),
        ({"task": "mixture", "task_mixture": ("sparse_parity", "linear_regression")}, "data.task_mixture: sparse_par"),
        ({"task": "low_rank", "n_dims": 8}, "data.n_dims must be a square m^2 for the m x m matrix W, got 8"),
        (
            {"task": "low_rank", "n_dims": 9, "low_rank_rank": 4},
            "data.low_rank_rank must be in [1, sqrt(data.n_dims)=3]",
        ),
    ],
)
def test_bad_values_are_refused_in_one_line_naming_the_key(values, message):
    with pytest.raises(ConfigError) as error:
        data_config(**values)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
