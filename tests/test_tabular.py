"""The tabular task: its tables against scikit-learn's StandardScaler (and read with no network), its prompts as
distinct rows of the standardised table through distinct columns, its baselines against scikit-learn's
regressors on single prompts, its ridge penalty against a numpy search, and its keys' one-line refusals."""

import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import datasets
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.neighbors import KNeighborsRegressor
from sklearn.preprocessing import StandardScaler
from xgboost import XGBRegressor

from helpers import data_config, run_config
from icl_lr.fields import ConfigError
from icl_lr.task import tabular
from icl_lr.task.registry import task_of

pytestmark = pytest.mark.unit
SHAPES = {"diabetes": (442, 10), "breast_cancer": (569, 30)}


def sampled(key, n_prompts, **data):
    """(task, batch, (rows, columns)) of `n_prompts` prompts, sampled under jit."""
    task = task_of(data_config(task="tabular", **data))
    return task, *jax.jit(lambda k: task.sample_prompts(k, n_prompts))(key)


@pytest.mark.parametrize("name", tabular.TABLES)
def test_tables_are_scikit_learns_standardised_and_read_with_no_network(name, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("no network in this test")

    monkeypatch.setattr(socket, "socket", refuse)
    tabular.table.cache_clear()
    got = tabular.table(name)
    features, target = getattr(datasets, f"load_{name}")(return_X_y=True)
    assert got.features.shape == SHAPES[name] and got.target.shape == SHAPES[name][:1]
    np.testing.assert_allclose(got.features, StandardScaler().fit_transform(features), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got.target, StandardScaler().fit_transform(target[:, None])[:, 0], rtol=1e-6, atol=1e-6)
    for column in (got.features.astype(np.float64), got.target.astype(np.float64)):
        np.testing.assert_allclose(column.mean(axis=0), 0.0, atol=1e-6)
        np.testing.assert_allclose(column.std(axis=0), 1.0, atol=1e-6)
    if name == "breast_cancer":  # the 0/1 label standardised: two values, its sign the class
        np.testing.assert_array_equal(np.sign(got.target), 2 * target - 1)
        benign = target.mean()  # (label - p) / sqrt(p (1 - p)), p the share of benign rows (357 of 569)
        expected = (np.array([0, 1]) - benign) / np.sqrt(benign * (1 - benign))
        np.testing.assert_allclose(sorted(set(got.target)), expected, rtol=1e-6)


@pytest.mark.parametrize(("name", "n_dims"), [("diabetes", 5), ("diabetes", 10), ("breast_cancer", 7)])
def test_prompts_are_distinct_rows_of_the_standardised_table_through_distinct_columns(name, n_dims):
    key = jax.random.PRNGKey(0)
    _, batch, (rows, columns) = sampled(key, 512, table=name, n_dims=n_dims, n_points=12)
    rows, columns, xs, ys = map(np.asarray, (rows, columns, batch.xs, batch.ys))
    assert rows.shape == (512, 12) and columns.shape == (512, n_dims)
    assert all(len(set(r)) == 12 for r in rows) and all(len(set(c)) == n_dims for c in columns)
    assert rows.min() >= 0 and rows.max() < SHAPES[name][0] and columns.max() < SHAPES[name][1]
    table = tabular.table(name)
    np.testing.assert_array_equal(xs, np.stack([table.features[r][:, c] for r, c in zip(rows, columns, strict=True)]))
    np.testing.assert_array_equal(ys, table.target[rows])
    share = np.bincount(columns.ravel(), minlength=SHAPES[name][1]) / 512  # each column in a prompt equally often
    np.testing.assert_allclose(share, n_dims / SHAPES[name][1], atol=0.1)
    assert len(np.unique(columns[:, 0])) > 1  # the order too: the first column is not always the same
    again = sampled(key, 512, table=name, n_dims=n_dims, n_points=12)[1]
    other = sampled(jax.random.PRNGKey(1), 512, table=name, n_dims=n_dims, n_points=12)[1]
    np.testing.assert_array_equal(again.xs, xs)  # a pure function of the key
    assert not np.array_equal(other.xs, xs)


def max_relative_error(preds, reference) -> float:
    return float(np.max(np.abs(preds - reference)) / np.max(np.abs(reference)))


def test_baselines_are_scikit_learns_and_xgboosts_on_single_prompts():
    task, batch, _ = sampled(jax.random.PRNGKey(2), 2, table="breast_cancer", n_dims=4, n_points=9)
    preds = {k: np.asarray(v, np.float64) for k, v in task.baselines(batch.xs, batch.ys, (0.0,)).items()}
    assert task.reference == "ridge" and {"least_squares", "ridge", "3nn", "xgboost", "averaging"} <= set(preds)
    lam = tabular.ridge_lambda(task)
    makers = {
        "least_squares": lambda k: LinearRegression(fit_intercept=False),
        "ridge": lambda k: Ridge(alpha=lam, fit_intercept=False),
        "3nn": lambda k: KNeighborsRegressor(n_neighbors=min(3, k)),
        "xgboost": lambda k: XGBRegressor(n_jobs=1, verbosity=0),
    }
    xs, ys = np.asarray(batch.xs, np.float64), np.asarray(batch.ys, np.float64)
    for baseline, make in makers.items():
        expected = np.zeros_like(ys)
        for p in range(len(xs)):
            for k in range(1, xs.shape[1]):
                expected[p, k] = make(k).fit(xs[p, :k], ys[p, :k]).predict(xs[p, k : k + 1])[0]
        error = max_relative_error(preds[baseline], expected)
        print(f"{baseline}: max relative error against scikit-learn {error:.2e}")
        assert error < 1e-4, baseline


def test_ridges_penalty_is_the_grids_least_error_on_its_tuning_prompts():
    task = task_of(data_config(task="tabular", table="breast_cancer", n_dims=5, n_points=8))
    tuning = task.sample_batch(jax.random.PRNGKey(tabular.TUNING_SEED), tabular.TUNING_PROMPTS)
    xs, ys = np.asarray(tuning.xs, np.float64), np.asarray(tuning.ys, np.float64)
    errors = []
    for lam in tabular.RIDGE_LAMBDAS:
        squared = [(xs[p, k] @ np.linalg.solve(xs[p, :k].T @ xs[p, :k] + lam * np.eye(5), xs[p, :k].T @ ys[p, :k])
                    - ys[p, k]) ** 2 for p in range(len(xs)) for k in range(1, 8)]  # fmt: skip
        errors.append(np.mean(squared))
    assert tabular.ridge_lambda(task) == tabular.RIDGE_LAMBDAS[int(np.argmin(errors))]
    assert sorted(errors)[1] > 1.01 * min(errors)  # a clear winner, so float32 does not pick another


def test_breast_cancer_records_accuracy_of_the_sign_and_diabetes_none():
    labelled = task_of(data_config(task="tabular", table="breast_cancer"))
    ys = jnp.asarray([[0.77, -1.3, 0.77, -1.3]])
    np.testing.assert_array_equal(
        labelled.metrics(jnp.asarray([[0.2, -0.1, 0.0, 0.5]]), ys)["accuracy"], [[1, 1, 0, 0]]
    )
    assert task_of(data_config(task="tabular", table="diabetes")).metrics(ys, ys) == {}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.table=iris"], "data.table must be one of ('diabetes', 'breast_cancer'), got 'iris'"),
        (["data.n_dims=11"], "data.n_dims=11 exceeds data.table=diabetes's 10 columns"),
        (["data.table=breast_cancer", "data.n_dims=31"], "data.n_dims=31 exceeds data.table=breast_cancer's 30 col"),
        (["data.n_points=443"], "data.n_points=443 exceeds data.table=diabetes's 442 rows"),
        (["data.x_dist=uniform"], "data.x_dist=uniform moves drawn x's: data.task=tabular's are its table's rows"),
        (["data.noise_std_choices=[0.1,1]"], "data.noise_std_choices (a hierarchical noise prior) is for a task"),
    ],
)
def test_what_a_table_cannot_give_is_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as error:
        run_config("data.task=tabular", *overrides)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_table_is_not_a_class_of_a_mixture():
    with pytest.raises(ConfigError, match="data.task=tabular draws its x's from its table's rows: it cannot be a"):
        data_config(task="mixture", task_mixture=("linear_regression", "tabular"))
