"""The input and noise distributions (data.x_dist, data.x_cov=wishart, data.x_ar, data.noise_dist): each
sampler's moments and law against its definition, the default path's draws unchanged bit for bit, the
reference under non-Gaussian noise (the posterior mean by importance sampling, against quadrature) and LMMSE
beside it, a plugin's own x's, and a run end to end."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.stats import kurtosis

from helpers import data_config, parts, run_config, train_cli
from icl_lr.fields import ConfigError
from icl_lr.task import baselines, ood, sampling
from icl_lr.task.linear import LinearRegression

KEY = jax.random.PRNGKey(0)
D = 4


def draws(n_prompts=25_000, **data) -> np.ndarray:
    """The x's of a linear-regression task, [P, N, D], 10 points of d = 4 per prompt (1e6 numbers)."""
    task = LinearRegression(data_config(n_dims=D, n_points=10, **data))
    return np.asarray(task.sample_xs(KEY, n_prompts), np.float64)


def assert_isotropic(xs_PxNxD, tol=0.01):
    """Mean 0 and E x x^T = I within sampling error."""
    points = xs_PxNxD.reshape(-1, xs_PxNxD.shape[-1])
    np.testing.assert_allclose(points.mean(0), 0, atol=tol)
    np.testing.assert_allclose(points.T @ points / len(points), np.eye(points.shape[1]), atol=2 * tol)


@pytest.mark.unit
def test_the_default_path_draws_what_it_drew_before():
    """x_dist=gaussian, x_ar=0, gaussian noise: the same PRNG calls as the module-level sampler it replaced,
    so the default run's numbers do not move (its code written out here)."""
    for x_cov in ("identity", "skewed", "rotated_skewed"):
        cfg = data_config(n_dims=D, n_points=7, x_cov=x_cov, noise_std=0.5)
        task = LinearRegression(cfg)
        before = jax.random.normal(KEY, (3, 7, D))
        t = sampling.x_transform(cfg)
        before = before if t is None else before @ t
        np.testing.assert_array_equal(task.sample_xs(KEY, 3), before)
        f_key, x_key, sigma_key, eps_key = jax.random.split(KEY, 4)
        xs = jax.random.normal(x_key, (3, 7, D))
        xs = xs if t is None else xs @ t
        sigma = jax.random.choice(sigma_key, jnp.asarray(cfg.noise_stds, jnp.float32), (3, 1))
        ys = task.label(task.draw(f_key, 3), xs) + sigma * jax.random.normal(eps_key, (3, 7))
        batch = task.sample_batch(KEY, 3)
        np.testing.assert_array_equal(batch.xs, xs)
        np.testing.assert_array_equal(batch.ys, ys)


@pytest.mark.unit
def test_gaussian_x_have_identity_covariance_and_gaussian_kurtosis():
    xs = draws()
    assert_isotropic(xs)
    assert kurtosis(xs.ravel(), fisher=False) == pytest.approx(3.0, abs=0.03)


@pytest.mark.unit
def test_uniform_x_fill_their_box_with_kurtosis_1_8():
    xs = draws(x_dist="uniform")
    assert_isotropic(xs)
    assert np.abs(xs).max() <= 3**0.5 and np.abs(xs).max() > 3**0.5 - 1e-3  # the support is [-sqrt(3), sqrt(3)]
    assert kurtosis(xs.ravel(), fisher=False) == pytest.approx(1.8, abs=0.01)


@pytest.mark.unit
def test_rademacher_x_are_exactly_signs():
    xs = draws(x_dist="rademacher")
    assert_isotropic(xs)
    assert set(np.unique(xs)) == {-1.0, 1.0}


@pytest.mark.unit
def test_sphere_x_have_norm_sqrt_d_and_the_spheres_kurtosis():
    xs = draws(x_dist="sphere")
    assert_isotropic(xs)
    np.testing.assert_allclose(np.linalg.norm(xs, axis=-1), D**0.5, rtol=1e-6)
    # a coordinate of a uniform point on the sphere of radius sqrt(d): E x^4 = 3d / (d + 2), 2 at d = 4
    assert kurtosis(xs.ravel(), fisher=False) == pytest.approx(3 * D / (D + 2), abs=0.02)


@pytest.mark.unit
def test_student_t_x_have_unit_variance_and_t_kurtosis():
    xs = draws(x_dist="student_t", x_df=10.0)
    assert_isotropic(xs, tol=0.015)
    assert kurtosis(xs.ravel(), fisher=False) == pytest.approx(3 + 6 / (10 - 4), abs=0.25)  # sd of it here: 0.05


@pytest.mark.unit
def test_ar1_x_are_stationary_with_lag_correlation_rho_and_keep_x_cov():
    rho = 0.6
    xs = draws(x_ar=rho, x_dist="uniform")
    assert_isotropic(xs)
    np.testing.assert_allclose((xs**2).mean(axis=(0, 2)), 1.0, atol=0.02)  # unit variance at every position
    for lag in (1, 2):
        assert np.mean(xs[:, lag:] * xs[:, :-lag]) == pytest.approx(rho**lag, abs=0.01)
    assert np.mean(xs[:, 1:, 0] * xs[:, :-1, 1]) == pytest.approx(0, abs=0.01)  # along each coordinate only
    skewed = draws(x_ar=rho, x_cov="skewed")
    t = np.asarray(sampling.x_transform(data_config(n_dims=D, x_cov="skewed")))
    covariance = skewed.reshape(-1, D).T @ skewed.reshape(-1, D) / skewed[..., 0].size
    np.testing.assert_allclose(covariance, t.T @ t, atol=0.02)


@pytest.mark.unit
@pytest.mark.parametrize("df", [4, 12])
def test_wishart_factors_are_the_cholesky_factors_of_wisharts_law(df):
    """Sigma = L L^T ~ Wishart(df, I / df): mean I, Var(Sigma_ii) = 2 / df, Var(Sigma_ij) = 1 / df."""
    factors = np.asarray(sampling.wishart_factors(KEY, df, 40_000, D), np.float64)
    assert np.all(np.triu(factors, 1) == 0) and np.all(np.diagonal(factors, axis1=1, axis2=2) > 0)
    sigmas = factors @ factors.transpose(0, 2, 1)
    np.testing.assert_allclose(sigmas.mean(0), np.eye(D), atol=0.02)
    expected_var = (1 + np.eye(D)) / df
    np.testing.assert_allclose(sigmas.var(0), expected_var, rtol=0.06)


@pytest.mark.unit
def test_wishart_x_have_a_covariance_per_prompt_of_mean_identity():
    df, n_points = 8, 2000
    task = LinearRegression(data_config(n_dims=D, n_points=n_points, x_cov="wishart", x_cov_df=df))
    xs = np.asarray(task.sample_xs(KEY, 400), np.float64)
    per_prompt = np.einsum("pnd,pne->pde", xs, xs) / n_points
    np.testing.assert_allclose(per_prompt.mean(0), np.eye(D), atol=0.05)
    spread = per_prompt[:, 0, 0].var()  # Wishart's 2 / df, plus the estimate's own 2 / n_points
    assert spread == pytest.approx(2 / df + 2 / n_points, rel=0.25)
    assert LinearRegression(data_config(n_dims=D, x_cov="wishart")).cfg.x_cov_df is None  # null: df = d


@pytest.mark.unit
@pytest.mark.parametrize(("noise_dist", "expected_kurtosis"), [("laplace", 6.0), ("student_t", 3 + 6 / (10 - 4))])
def test_noise_has_std_noise_std_and_its_laws_kurtosis(noise_dist, expected_kurtosis):
    cfg = data_config(n_dims=D, n_points=40, noise_std=0.5, noise_dist=noise_dist, noise_df=10.0)
    batch, ws = LinearRegression(cfg).sample_prompts(KEY, 25_000)
    noise = np.asarray(batch.ys, np.float64) - np.einsum("bnd,bd->bn", batch.xs, ws)
    assert noise.mean() == pytest.approx(0, abs=0.002) and noise.std() == pytest.approx(0.5, rel=0.005)
    assert kurtosis(noise.ravel(), fisher=False) == pytest.approx(expected_kurtosis, abs=0.15)


@pytest.mark.unit
def test_non_gaussian_noise_is_scored_over_the_sampled_posterior_mean_with_lmmse_ridge_beside_it():
    """Bayes has no closed form here: the reference is the posterior mean by importance sampling, named so;
    ridge at the noise's variance, the linear MMSE predictor, beside it; with no noise Bayes is exact again; a
    hierarchical prior's LMMSE is ridge at the mean variance."""
    gaussian = data_config(n_dims=D, n_points=9, noise_std=0.5)
    laplace = dataclasses.replace(gaussian, noise_dist="laplace")
    batch = LinearRegression(laplace).sample_batch(KEY, 64)
    ours, theirs = (LinearRegression(c).baselines(batch.xs, batch.ys, c.noise_stds) for c in (laplace, gaussian))
    assert LinearRegression(laplace).reference == "posterior_mean_mc" and "bayes" not in ours
    assert {"posterior_mean_mc", "lmmse_ridge"} <= set(ours)
    np.testing.assert_allclose(ours["lmmse_ridge"], theirs["bayes"], rtol=1e-5, atol=1e-6)
    assert LinearRegression(dataclasses.replace(laplace, noise_std=0.0)).reference == "bayes"
    hierarchical = dataclasses.replace(laplace, noise_std_choices=(0.1, 1.0))
    preds = LinearRegression(hierarchical).baselines(batch.xs, batch.ys, hierarchical.noise_stds)["lmmse_ridge"]
    ridge = jax.vmap(lambda x, y: baselines.ridge(x, y, (0.01 + 1.0) / 2))(batch.xs, batch.ys)
    np.testing.assert_allclose(preds, ridge, rtol=1e-5, atol=1e-6)
    condition = ood.conditions(KEY, LinearRegression(laplace), 8)["noisy_labels"]  # the suite's labels: its law
    assert condition.task.reference == "posterior_mean_mc"


def numpy_log_density(law: str, r, sigma: float, df: float = 5.0):
    """scipy.stats' log density of noise of std sigma: Laplace of scale sigma / sqrt(2), Student's t scaled."""
    if law == "laplace":
        return stats.laplace.logpdf(r, scale=sigma / np.sqrt(2))
    return stats.t.logpdf(r, df, scale=sigma * np.sqrt((df - 2) / df))


def quadrature_posterior_mean(xs, ys, law: str, sigma: float, prior_scale: float) -> np.ndarray:
    """Each prefix's posterior-mean prediction in float64 on a grid over w (d = 1 or 2) out to 8 prior stds."""
    d = xs.shape[1]
    axis = np.linspace(-8 * prior_scale, 8 * prior_scale, 4001 if d == 1 else 601)
    grid = np.stack(np.meshgrid(*[axis] * d, indexing="ij"), -1).reshape(-1, d)
    found = []
    for k in range(len(ys)):
        log_p = -np.sum(grid**2, -1) / (2 * prior_scale**2)
        log_p += sum(numpy_log_density(law, ys[i] - grid @ xs[i], sigma) for i in range(k))
        weights = np.exp(log_p - log_p.max())
        found.append(xs[k] @ (weights @ grid) / weights.sum())
    return np.array(found)


@pytest.mark.unit
@pytest.mark.parametrize("law", ["laplace", "student_t"])
def test_the_sampled_posterior_mean_is_quadratures_on_single_prompts_and_beats_lmmse(law):
    """Its noise law's log density is scipy's; on single prompts at d = 1 and 2 its predictions are a float64
    quadrature's within the sampling error (seen: up to 1.1% of a prediction, 0.022 of 2.07); at d = 5 its error
    is below ridge's (the best linear predictor), as Bayes's is."""
    r = np.linspace(-4, 4, 17)
    cfg = data_config(n_dims=1, n_points=8, noise_dist=law, noise_std=0.5)
    np.testing.assert_allclose(sampling.noise_log_density(cfg, r, 0.5), numpy_log_density(law, r, 0.5), rtol=1e-5)
    rng = np.random.default_rng(0)
    for d in (1, 2):
        cfg = data_config(n_dims=d, n_points=8, noise_dist=law, noise_std=0.5)
        log_noise = lambda res, sigma, c=cfg: sampling.noise_log_density(c, res, sigma)
        mean = jax.jit(lambda x, y, f=log_noise: baselines.posterior_mean_mc(x, y, f, (0.5,), 1.0))
        for _ in range(3):
            xs = rng.normal(size=(8, d))
            noise = rng.laplace(size=8) / np.sqrt(2) if law == "laplace" else rng.standard_t(5, size=8) * np.sqrt(0.6)
            ys = xs @ rng.normal(size=d) + 0.5 * noise
            ours = np.asarray(mean(jnp.float32(xs), jnp.float32(ys)), np.float64)
            np.testing.assert_allclose(ours, quadrature_posterior_mean(xs, ys, law, 0.5, 1.0), rtol=0.02, atol=0.01)
    cfg = data_config(noise_dist=law, noise_std=1.0)
    batch = LinearRegression(cfg).sample_batch(KEY, 512)
    preds = LinearRegression(cfg).baselines(batch.xs, batch.ys, cfg.noise_stds)
    error = {name: np.mean((np.asarray(preds[name]) - np.asarray(batch.ys))[:, 1:] ** 2) for name in preds}
    assert error["posterior_mean_mc"] < error["lmmse_ridge"]


@dataclasses.dataclass(frozen=True)
class OnAGrid(LinearRegression):
    """A plugin's own input law: x's on the integer grid {-1, 0, 1}^d."""

    def sample_xs(self, key, batch_size: int):
        return jax.random.randint(key, (batch_size, self.cfg.n_points, self.cfg.n_dims), -1, 2).astype(jnp.float32)


@pytest.mark.unit
def test_a_task_overriding_sample_xs_is_sampled_from_it_in_training_and_the_ood_suite():
    task = OnAGrid(data_config(n_dims=D, n_points=6))
    batch, ws = task.sample_prompts(KEY, 256)
    assert set(np.unique(batch.xs)) == {-1.0, 0.0, 1.0}
    np.testing.assert_allclose(batch.ys, np.einsum("bnd,bd->bn", batch.xs, ws), atol=1e-6)
    training = task.training_batch(KEY, jax.random.PRNGKey(1), 16, step=0)
    assert set(np.unique(training.xs)) == {-1.0, 0.0, 1.0}
    (xs, _), *_ = ood.conditions(KEY, task, 16)["scale_y_2"].sets
    assert set(np.unique(xs)) == {-1.0, 0.0, 1.0}


@pytest.mark.unit
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.x_dist=cauchy"], "data.x_dist must be one of ('gaussian', 'uniform', 'rademacher', 'sphere', "),
        (["data.x_df=2"], "data.x_df must be > 2 and finite"),
        (["data.noise_df=inf"], "data.noise_df must be > 2 and finite"),
        (["data.x_ar=1"], "data.x_ar must be in (-1, 1), got 1"),
        (["data.x_cov=wishart", "data.x_cov_df=4"], "data.x_cov_df must be null or >= data.n_dims=5, got 4"),
        (["data.noise_dist=cauchy"], "data.noise_dist must be one of ('gaussian', 'laplace', 'student_t')"),
        (["data.noise_dist=laplace", "data.task=sparse_linear"], "data.noise_dist=laplace is for a task whose"),
        (["data.noise_dist=laplace", "data.w_prior=gaussian_mixture"], "data.noise_dist=laplace takes data.w_prior"),
    ],
)
def test_distributions_that_cannot_be_are_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_config(*overrides)


@pytest.mark.unit
def test_the_binned_heads_leave_out_their_gaussian_predictive_under_non_gaussian_noise():
    cfg = data_config(n_dims=3, n_points=6, encoding="binned_y", noise_std=0.3, noise_dist="laplace")
    _, encoding = parts(cfg)
    batch = LinearRegression(cfg).sample_batch(KEY, 4)
    assert encoding.baseline_metrics(batch.xs, batch.ys) == {}


def test_a_run_with_student_t_x_and_laplace_noise_names_its_sampled_posterior_mean_reference(tmp_path):
    overrides = ["data.x_dist=student_t", "data.noise_dist=laplace", "data.noise_std=0.5"]
    train_cli(tmp_path, *overrides)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["excess_over"] == "posterior_mean_mc" and np.isfinite(summary["eval/excess/mean"])
