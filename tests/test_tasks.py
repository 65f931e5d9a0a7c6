"""The task zoo: each sampler's statistics, each baseline against scikit-learn or a numpy computation of its
closed form, the x covariance, and the one-line errors where a task and a key do not go together."""

import dataclasses
import itertools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal
from sklearn.linear_model import Lasso, LogisticRegression
from sklearn.tree import DecisionTreeRegressor

from helpers import compose_config, data_config, encoding_for, held_out, model_config, parts, run_config
from icl_lr.fields import ConfigError
from icl_lr.run.config import from_dictconfig
from icl_lr.task import baselines, classification, nonlinear, sampling, sparse
from icl_lr.task.linear import component_means
from icl_lr.task.registry import TASKS, task_of
from icl_lr.train import eval_sets
from icl_lr.train.config import EvalConfig

pytestmark = pytest.mark.unit
KEY = jax.random.PRNGKey(0)


def batch_of(n_prompts=4096, **data):
    task = task_of(data_config(**data))
    return task, *task.sample_prompts(KEY, n_prompts)


def test_sparse_w_has_exactly_s_nonzero_coordinates_on_uniform_supports():
    _, _, ws = batch_of(task="sparse_linear", n_dims=6, sparsity=2)
    nonzero = np.asarray(ws) != 0
    assert (nonzero.sum(1) == 2).all()
    np.testing.assert_allclose(nonzero.mean(0), 2 / 6, atol=0.03)  # each coordinate in a support equally often
    np.testing.assert_allclose(np.asarray(ws)[nonzero].std(), 1.0, atol=0.03)


def test_classification_labels_are_balanced_signs_of_a_linear_function():
    _, batch, ws = batch_of(task="linear_classification", n_dims=4)
    ys = np.asarray(batch.ys)
    assert set(np.unique(ys)) == {-1.0, 1.0}
    assert abs(ys.mean()) < 0.02
    np.testing.assert_array_equal(ys, np.sign(np.einsum("bnd,bd->bn", batch.xs, ws)))


@pytest.mark.parametrize("x_cov", ["skewed", "rotated_skewed"])
def test_x_covariance_is_the_skewed_spectrum_in_training_and_evaluation(x_cov):
    """E[x x^T] = t^T t with eigenvalues proportional to 1/i^2 and trace d; axis-aligned or in a fixed basis."""
    d = 4
    _, batch, _ = batch_of(n_prompts=20000, n_dims=d, x_cov=x_cov)
    empirical = np.cov(np.asarray(batch.xs).reshape(-1, d).T)
    spectrum = 1 / np.arange(1, d + 1) ** 2
    spectrum *= d / spectrum.sum()
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(empirical))[::-1], spectrum, rtol=0.03, atol=0.005)
    assert (np.abs(empirical - np.diag(np.diag(empirical))).max() < 0.02) == (x_cov == "skewed")
    eval_set = held_out(data_config(n_dims=d, x_cov=x_cov), EvalConfig(n_prompts=64))
    assert eval_set.baseline_curves["least_squares"][d + 1 :].max() < 1e-6  # the held-out set: the same task


def test_gaussian_mixture_prior_draws_each_component_about_its_mean():
    _, _, ws = batch_of(n_prompts=20000, n_dims=3, w_prior="gaussian_mixture", w_components=4, w_centre=5.0)
    means = np.asarray(component_means(3, 4, 5.0))
    np.testing.assert_array_equal(means, [[5, 0, 0], [-5, 0, 0], [0, 5, 0], [0, -5, 0]])
    nearest = np.argmin(((np.asarray(ws)[:, None] - means[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_allclose(np.bincount(nearest) / len(ws), 0.25, atol=0.015)
    np.testing.assert_allclose((np.asarray(ws) - means[nearest]).std(0), 1.0, atol=0.03)


def test_nonlinear_labels_follow_their_definitions():
    _, batch, w = batch_of(n_prompts=3, task="quadratic", n_dims=3)
    np.testing.assert_allclose(batch.ys, np.einsum("bnd,bd->bn", np.asarray(batch.xs) ** 2, w) / 3**0.5, rtol=1e-5)
    _, batch, (w1, w2) = batch_of(n_prompts=3, task="relu_2nn", n_dims=3, hidden_width=7)
    hidden = np.maximum(np.einsum("bnd,bdh->bnh", batch.xs, w1), 0)
    np.testing.assert_allclose(batch.ys, np.einsum("bnh,bh->bn", hidden, w2) * (2 / 7) ** 0.5, rtol=1e-4, atol=1e-5)
    _, batch, (features, values) = batch_of(n_prompts=3, task="decision_tree", n_dims=3, tree_depth=3)
    for p, n in itertools.product(range(3), range(batch.xs.shape[1])):
        node = 0
        for _ in range(3):  # Garg et al.'s traversal, one point at a time
            node = 2 * node + 1 + int(batch.xs[p, n, features[p, node]] > 0)
        assert batch.ys[p, n] == values[p, node]
    assert 7 <= node <= 14  # a leaf of the depth-3 tree


@pytest.mark.parametrize("alpha", [1e-4, 1e-3, 0.05])
def test_the_lasso_is_the_minimiser_of_scikit_learns_objective_on_every_prefix_of_single_prompts(alpha):
    """Against scikit-learn's coordinate descent at the same penalty (run far past its default tolerance) and the
    optimality conditions checked in numpy: noiseless 2-sparse prompts, where small penalties are hardest."""
    rng = np.random.default_rng(0)
    n_prompts, n, d = 12, 9, 5
    xs = rng.normal(size=(n_prompts, n, d)).astype(np.float32)
    ws = rng.normal(size=(n_prompts, d)) * (rng.permuted(np.tile([1, 1, 0, 0, 0], (n_prompts, 1)), axis=1))
    ys = np.einsum("pnd,pd->pn", xs, ws).astype(np.float32)
    predictions = sparse.lasso_predictions(xs, ys, [alpha])[0]
    np.testing.assert_array_equal(predictions[:, 0], 0)
    for p, k in itertools.product(range(n_prompts), range(1, n)):
        x, y = xs[p, :k].astype(np.float64), ys[p, :k].astype(np.float64)
        w = sparse.lasso_weights(x, y, [alpha])[0]
        gradient = x.T @ (y - x @ w) / k  # the KKT conditions, written out again
        assert np.all(np.abs(gradient) <= alpha + 1e-8), (p, k)
        np.testing.assert_allclose(gradient[w != 0], alpha * np.sign(w[w != 0]), atol=1e-8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its convergence warning: the objective is compared below
            theirs = Lasso(alpha=alpha, fit_intercept=False, tol=1e-12, max_iter=10**6).fit(x, y).coef_
        objective = [((x @ v - y) ** 2).sum() / (2 * k) + alpha * np.abs(v).sum() for v in (w, theirs)]
        assert objective[0] <= objective[1] + 1e-12, (p, k)
        assert predictions[p, k] == pytest.approx(xs[p, k].astype(np.float64) @ w, abs=1e-9)
        if sparse.lasso_kkt_violation(x, y, theirs, [alpha])[0] < 1e-10:  # where theirs converged: the same w
            np.testing.assert_allclose(w, theirs, atol=1e-6)


def test_the_sparse_posterior_mean_is_the_support_mixture_computed_in_numpy():
    rng = np.random.default_rng(1)
    d, s, sigma = 4, 2, 0.3
    xs = rng.normal(size=(7, d))
    ys = xs[:, [0, 2]] @ rng.normal(size=2) + sigma * rng.normal(size=7)
    every = sparse.supports(d, s)
    assert len(every) == 6
    got, log_evidence = sparse.support_bayes(jnp.asarray(xs, jnp.float32), jnp.asarray(ys, jnp.float32), every, 1.0,
                                             sigma)  # fmt: skip
    for k in range(1, 7):
        x, y = xs[:k], ys[:k]
        evidence = np.array([multivariate_normal(np.zeros(k), x[:, S] @ x[:, S].T + sigma**2 * np.eye(k)).pdf(y)
                             for S in every])  # fmt: skip
        means = [xs[k, S] @ np.linalg.solve(x[:, S].T @ x[:, S] + sigma**2 * np.eye(s), x[:, S].T @ y) for S in every]
        np.testing.assert_allclose(got[k], evidence @ means / evidence.sum(), rtol=1e-3, atol=1e-4)
        # the mixture's evidence, up to the Gaussian constant every prior shares: what a task mixture weighs
        np.testing.assert_allclose(log_evidence[k], np.log(evidence.mean()) + k / 2 * np.log(2 * np.pi), atol=1e-3)


def support_posterior_mean_float64(xs_NxD, ys_N, every, sigma):
    """The sparse prior's posterior mean of each y_k in float64 (numpy): support weights from each support's
    evidence N(y; 0, X_S X_S^T + sigma^2 I), written out from the definition."""
    xs, ys = xs_NxD.astype(np.float64), ys_N.astype(np.float64)
    means = np.zeros(len(ys))
    for k in range(1, len(ys)):
        log_evidence, predictions = [], []
        for support in every:
            x = xs[:k, support]
            covariance = x @ x.T + sigma**2 * np.eye(k)
            solved = np.linalg.solve(covariance, ys[:k])
            log_evidence.append(-0.5 * (ys[:k] @ solved + np.linalg.slogdet(covariance)[1]))
            predictions.append(xs[k, support] @ x.T @ solved)
        weights = np.exp(np.array(log_evidence) - max(log_evidence))
        means[k] = weights @ np.array(predictions) / weights.sum()
    return means


def test_the_noiseless_sparse_posterior_mean_is_exact_on_single_prompts():
    """Noiseless prompts, where each support's evidence is nearly singular: every prediction of 200 prompts against
    float64 at the noise floor it is computed at, and against the noiseless limit (sigma = 1e-6 in float64)."""
    task, batch, _ = batch_of(n_prompts=200, task="sparse_linear", n_dims=5, sparsity=2)
    every = sparse.supports(5, 2)
    got = np.asarray(task.baselines(batch.xs, batch.ys, (0.0,))["bayes"])
    xs, ys = np.asarray(batch.xs), np.asarray(batch.ys)
    at_floor = np.array(
        [support_posterior_mean_float64(x, y, every, baselines.EVIDENCE_MIN_STD) for x, y in zip(xs, ys, strict=True)]
    )
    limit = np.array([support_posterior_mean_float64(x, y, every, 1e-6) for x, y in zip(xs, ys, strict=True)])
    assert np.abs(got - at_floor).max() < 5e-4
    assert np.abs(got - limit).max() < 1e-2
    assert np.abs(got - ys)[:, 3:].max() < 1e-3  # exact once k > s: only the true support fits


def test_the_gaussian_mixture_posterior_mean_is_computed_in_numpy():
    rng = np.random.default_rng(2)
    d, sigma, means = 3, 0.5, np.asarray(component_means(3, 3, 2.0))
    xs, ys = rng.normal(size=(6, d)), rng.normal(size=6) * 2
    got, log_evidence = baselines.mixture_bayes(jnp.asarray(xs, jnp.float32), jnp.asarray(ys, jnp.float32),
                                     jnp.asarray(means), 1.0, sigma)  # fmt: skip
    for k in range(6):
        x, y = xs[:k], ys[:k]
        evidence = np.array([multivariate_normal(x @ m, x @ x.T + sigma**2 * np.eye(k)).pdf(y) if k else 1.0
                             for m in means])  # fmt: skip
        posterior_means = [m + np.linalg.solve(x.T @ x + sigma**2 * np.eye(d), x.T @ (y - x @ m)) for m in means]
        np.testing.assert_allclose(got[k], evidence @ np.array(posterior_means) @ xs[k] / evidence.sum(), rtol=1e-3,
                                   atol=1e-4)  # fmt: skip
        np.testing.assert_allclose(log_evidence[k], np.log(evidence.mean()) + k / 2 * np.log(2 * np.pi), atol=1e-3)


def test_newton_logistic_regression_is_scikit_learns():
    rng = np.random.default_rng(3)
    xs = rng.normal(size=(14, 4)).astype(np.float32)
    ys = np.sign(xs @ rng.normal(size=4)).astype(np.float32)
    weights = np.asarray(classification.logistic_weights(jnp.asarray(xs), jnp.asarray(ys)))
    for k in range(2, 14):
        if len(set(ys[:k])) < 2:
            continue
        theirs = LogisticRegression(C=1.0, fit_intercept=False, tol=1e-10, max_iter=10000).fit(xs[:k], ys[:k])
        np.testing.assert_allclose(weights[k], theirs.coef_[0], atol=1e-3)
    preds = classification.logistic_regression(jnp.asarray(xs), jnp.asarray(ys))
    np.testing.assert_allclose(preds, np.tanh(np.einsum("kd,kd->k", weights, xs) / 2), atol=1e-6)
    np.testing.assert_array_equal(classification.accuracy(jnp.asarray([0.3, -2.0, 0.0]), jnp.asarray([1, 1, -1])),
                                  [1, 0, 0])  # fmt: skip


def test_quadratic_bayes_is_exact_once_determined_and_the_trees_are_fitted_per_prefix():
    task, batch, _ = batch_of(n_prompts=8, task="quadratic", n_dims=3, n_points=8)
    preds = task.baselines(batch.xs, batch.ys, (0.0,))
    assert (
        np.abs(preds["bayes"] - batch.ys)[:, 4:].max() < 1e-3 < np.abs(preds["least_squares"] - batch.ys)[:, 4:].max()
    )
    xs, ys = np.asarray(batch.xs), np.asarray(batch.ys)
    trees = nonlinear.host_trees(xs[:2], ys[:2], depth=2)
    direct = DecisionTreeRegressor(max_depth=2, random_state=0).fit(xs[1, :5], ys[1, :5]).predict(xs[1, 5:6])[0]
    assert trees["greedy_tree"][1, 5] == pytest.approx(direct) and trees["xgboost"][:, 0].tolist() == [0, 0]


def test_the_network_baseline_fits_networks_of_its_class_better_than_averaging():
    task, batch, _ = batch_of(n_prompts=16, task="relu_2nn", n_dims=2, n_points=16, hidden_width=8)
    preds = task.baselines(batch.xs, batch.ys, (0.0,))
    error = {name: float(np.mean((np.asarray(p) - batch.ys)[:, 8:] ** 2)) for name, p in preds.items()}
    assert error["trained_network"] < 0.5 * error["averaging"], error


@pytest.mark.parametrize("task", TASKS.names())
def test_every_task_scores_its_baselines_and_reference(task):
    """The held-out set of each task (small): its reference among its curves, accuracy for classification."""
    mixture = ("linear_regression", "quadratic") if task == "mixture" else None
    data = data_config(task=task, n_dims=4, n_points=6, hidden_width=4, tree_depth=2, sparsity=1, task_mixture=mixture)
    eval_set = held_out(data, EvalConfig(n_prompts=8, ood=False))
    curves = eval_set.baseline_curves
    assert task_of(data).reference in curves and "least_squares" in curves
    assert ("accuracy/logistic_regression" in curves) == (task == "linear_classification")
    assert all(np.isfinite(v).all() for v in curves.values())


@pytest.mark.parametrize("mixture", [None, ("linear_regression", "sparse_linear")], ids=["sparse", "in a mixture"])
def test_sparse_past_its_support_bound_scores_without_bayes_its_excess_over_the_lasso(mixture):
    """C(16, 8) = 12,870 supports, past MAX_SUPPORTS: the posterior mean is left out, the Lasso is the reference
    (in a mixture, least squares: not every class has its Bayes)."""
    data = data_config(task="mixture" if mixture else "sparse_linear", task_mixture=mixture, n_dims=16, sparsity=8,
                      n_points=4)  # fmt: skip
    curves = held_out(data, EvalConfig(n_prompts=4, ood=False)).baseline_curves
    assert "bayes" not in curves and {"lasso", "ridge"} <= set(curves)
    assert task_of(data).reference == ("least_squares" if mixture else "lasso")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["data.task=quadratic", "data.encoding=tokens"],
            "data.encoding=tokens (binned y) is for data.task=linear_regr",
        ),
        (["data.w_prior=gaussian_mixture", "data.encoding=binned_y"], "not linear_regression under gaussian_mixture"),
        (["data.task=relu_2nn", "eval.probes=true"], "eval.probes reads a task's one weight vector"),
        (["data.task=quadratic", "eval.algorithms=true"], "eval.algorithms reads a task's one weight vector"),
        (["data.task=linear_classification", "data.noise_std=0.5"], "linear_classification has no label noise"),
        (["data.task=sparse_linear", "data.sparsity=9"], "data.sparsity must be in [1, data.n_dims=5], got 9"),
        (["data.task=quadratic", "data.w_prior=gaussian_mixture"], "data.w_prior is a key of data.task=linear_"),
        (["data.x_cov=diagonal"], "data.x_cov must be one of ('identity', 'skewed', 'rotated_skewed', 'wishart')"),
        (["data.task=quadratic", "data.noise_std_choices=[0.1,1]"], "noise_std_choices (a hierarchical noise prior)"),
    ],
)
def test_a_task_and_a_key_that_do_not_go_together_fail_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        run_config(*overrides)


def test_decision_trees_without_their_extra_name_it(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "xgboost" else find_spec(n, *a))
    with pytest.raises(ConfigError, match=r"decision_tree's baselines need xgboost: pip install 'icl-lr\[trees\]'"):
        from_dictconfig(compose_config("data.task=decision_tree"))


def _task_family_pairs(every: bool) -> list:
    """Every (task, family) pair, or a cover: each task and each family in at least one pair."""
    from icl_lr.model.icl_model import FAMILIES

    tasks, families = TASKS.names(), FAMILIES.names()
    if every:
        return list(itertools.product(tasks, families))
    n = max(len(tasks), len(families))
    return [(tasks[i % len(tasks)], families[i % len(families)]) for i in range(n)]


@pytest.mark.parametrize("every", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["cover", "product"])
def test_every_task_trains_with_every_family_on_its_encoding(every):
    """One train step per (task, family): the paired encoding for lsa, continuous for the others. The cover traces
    each step (every shape through sampling, model, loss and optimiser; compiling the twelve would take a minute),
    the product (slow) runs each."""
    from icl_lr.train import setup
    from icl_lr.train.config import RunConfig, TrainingConfig
    from icl_lr.train.optimizer import make_optimizer
    from icl_lr.train.parallel import data_mesh
    from icl_lr.train.step import init_state, make_dispatch

    for task, family in _task_family_pairs(every):
        mixture = ("sparse_linear", "relu_2nn") if task == "mixture" else None
        data = data_config(task=task, n_dims=4, n_points=5, hidden_width=4, tree_depth=2, sparsity=1,
                          task_mixture=mixture, encoding=encoding_for(family))  # fmt: skip
        training = TrainingConfig(steps=1, batch_size=4, steps_per_dispatch=1, warmup_steps=0)
        cfg = RunConfig(data=data, model=model_config(family=family, n_layer=1, n_embd=8, n_head=2), training=training)
        run, tx = setup.build(cfg), make_optimizer(cfg.training)
        dispatch = make_dispatch(run, tx, cfg, data_mesh())
        if not every:
            state = jax.eval_shape(lambda: init_state(run, tx, 0))  # noqa: B023 (called at once)
            _, metrics = jax.eval_shape(dispatch, state, 1)
            assert metrics["loss"].shape == (1,) and metrics["loss"].dtype == np.float32, (task, family)
            continue
        _, metrics = dispatch(init_state(run, tx, 0), 1)
        assert np.isfinite(np.asarray(metrics["loss"])).all(), (task, family)


def test_x_transform_is_identity_for_identity():
    assert sampling.x_transform(data_config()) is None
    t = np.asarray(sampling.x_transform(dataclasses.replace(data_config(n_dims=3), x_cov="skewed")))
    np.testing.assert_allclose(np.diag(t) ** 2, np.array([1, 1 / 4, 1 / 9]) * 3 / (1 + 1 / 4 + 1 / 9), rtol=1e-5)


MIXTURE = data_config(task="mixture", task_mixture=("linear_regression", "quadratic"), n_dims=3, n_points=7,
                     noise_std=0.2)  # fmt: skip


def test_a_mixture_labels_each_prompt_by_its_class_and_its_bayes_weighs_the_classes_evidence():
    task = task_of(MIXTURE)
    batch, (picked, (ws, qs)) = task.sample_prompts(KEY, 64)
    xs, ys, picked = np.asarray(batch.xs, np.float64), np.asarray(batch.ys, np.float64), np.asarray(picked)
    assert set(picked) == {0, 1}
    noise = ys - np.where(picked[:, None] == 0, np.einsum("bnd,bd->bn", xs, ws),
                          np.einsum("bnd,bd->bn", xs**2, qs) / 3**0.5)  # fmt: skip
    assert 0.15 < noise.std() < 0.25  # only the noise is left: each prompt labelled by its own class
    preds = task.baselines(batch.xs, batch.ys, (0.2,))
    assert {"bayes", "bayes_linear_regression", "bayes_quadratic", "least_squares"} <= set(preds)
    for p, k in itertools.product(range(4), range(1, 7)):
        weights, means = [], []
        for features in (xs[p], xs[p] ** 2 / 3**0.5):  # each class: w ~ N(0, I) on its features
            x, y = features[:k], ys[p, :k]
            weights.append(multivariate_normal(np.zeros(k), x @ x.T + 0.04 * np.eye(k)).pdf(y))
            means.append(features[k] @ np.linalg.solve(x.T @ x + 0.04 * np.eye(3), x.T @ y))
        np.testing.assert_allclose(preds["bayes"][p, k], np.dot(weights, means) / sum(weights), rtol=1e-3, atol=1e-4)
    assert task.reference == "bayes"
    with_classification = dataclasses.replace(MIXTURE, task_mixture=("linear_regression", "linear_classification"),
                                              noise_std=0.0)  # fmt: skip
    assert task_of(with_classification).reference == "least_squares"  # a class without an exact Bayes
    sets = eval_sets.class_sets(*parts(MIXTURE), EvalConfig(n_prompts=16))
    assert list(sets) == ["linear_regression", "quadratic"] and "bayes" in sets["quadratic"].baseline_curves


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.task=mixture"], "data.task_mixture must list two or more distinct tasks other than mixture, got None"),
        (["data.task_mixture=[linear_regression,quadratic]"], "data.task_mixture is a key of data.task=mixture, not"),
        (["data.task=mixture", "data.task_mixture=[quadratic]"], "must list two or more distinct tasks"),
        (["data.task=mixture", "data.task_mixture=[quadratic,cubic]"], "data.task_mixture must be one of ("),
        (["data.task=mixture", "data.task_mixture=[quadratic,linear_classification]", "data.noise_std=0.1"],
         "linear_classification has no label noise"),
    ],
)  # fmt: skip
def test_a_mixture_that_cannot_be_fails_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_config(*overrides)


@pytest.mark.parametrize("kind", ["scaled", pytest.param("flipped", marks=pytest.mark.slow)])
def test_outliers_corrupt_the_labels_the_model_sees_and_are_scored_on_the_clean_ones(kind):
    """data.outlier_fraction: the same prompts as without it, a fraction of their labels replaced (x10 or
    -y), the clean ones kept as targets; Huber beside least squares, the reference of the excess."""
    clean_cfg = data_config(n_dims=3, n_points=12, noise_std=0.1)
    cfg = data_config(n_dims=3, n_points=12, noise_std=0.1, outlier_fraction=0.2, outlier_kind=kind)
    key = jax.random.PRNGKey(4)
    clean, batch = (task_of(c).sample_batch(key, 256) for c in (clean_cfg, cfg))
    np.testing.assert_array_equal(batch.targets, clean.ys)
    hit = np.asarray(batch.ys != batch.targets)
    assert abs(hit.mean() - 0.2) < 0.02
    factor = -1.0 if kind == "flipped" else 10.0
    np.testing.assert_allclose(np.asarray(batch.ys)[hit], factor * np.asarray(clean.ys)[hit], rtol=1e-6)
    task = task_of(cfg)
    assert task.reference == "huber" and task_of(clean_cfg).reference == "bayes"
    curves = eval_sets.eval_set_of(*parts(cfg), batch).baseline_curves
    assert "bayes" not in curves and {"huber", "gaussian_ridge", "least_squares"} <= set(curves)
    assert curves["huber"][11] < 0.8 * curves["least_squares"][11]  # measured: 0.22 (scaled), 0.68 (flipped) of it
    # with the algorithms, the model is compared with them on the prompts it sees, scored on the clean labels
    held = eval_sets.held_out_set(*parts(cfg), EvalConfig(n_prompts=64, algorithms=True, algorithm_steps=(1,)))
    assert np.any(np.asarray(held.prompts.ys) != np.asarray(held.ys))
    np.testing.assert_array_equal(held.prompts.targets, held.ys)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.task=sparse_linear", "data.outlier_fraction=0.1"], "data.outlier_fraction is linear_regression's"),
        (["data.outlier_fraction=0.1", "data.encoding=tokens"], "scores the model against the clean labels"),
        (["data.outlier_fraction=0.5"], "data.outlier_fraction must be in [0, 0.5), got 0.5"),
        (["data.outlier_kind=huge"], "data.outlier_kind must be one of ('scaled', 'flipped')"),
    ],
)
def test_outliers_that_cannot_be_are_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        run_config(*overrides)
