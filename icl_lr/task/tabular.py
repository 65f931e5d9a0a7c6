"""Real tables, the `tabular` task: each prompt is data.n_points rows of a table scikit-learn ships (no
download), drawn at random without replacement, seen through a random ordered choice of data.n_dims of its
columns (all of them, shuffled, when d is the table's column count); y is the row's target.

Tables (data.table): `diabetes` (442 rows, 10 columns; the target a disease progression score) and
`breast_cancer` (569 rows, 30 columns; the target scikit-learn's 0/1 label, 1 benign, as a regression target).
Every column, the target's too, is standardised with the whole table's mean and std (ddof 0), as Yang et al.
standardise each OpenML table before they split it (Leiay/looped_transformer scripts/gen_openml_data.py; their
scripts/train_openml.py draws a batch's rows without replacement): breast_cancer's y is then -1.30 (malignant)
or +0.77 (benign), its sign the class, and its records add accuracy (the sign's, as linear_classification's).

There is no prior, so no Bayes: the reference is ridge, its lambda tuned on prompts of the table's own, the
best of the baselines measured (docs/tasks.md); beside it least squares, averaging, 3-NN and XGBoost (on the
host, as decision_tree's).
"""

import functools
import logging
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from icl_lr.fields import check
from icl_lr.task import baselines
from icl_lr.task.classification import accuracy
from icl_lr.task.linear import TUNING_SEED
from icl_lr.task.nonlinear import check_trees_extra, host_fits, xgboost_regressor
from icl_lr.task.sampling import Prompts

log = logging.getLogger("icl_lr")
TABLES = ("diabetes", "breast_cancer")
LABELLED = ("breast_cancer",)  # tables whose target is a class: accuracy beside squared error
RIDGE_LAMBDAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)  # ridge's penalties tuned over
TUNING_PROMPTS = 256
REFERENCE = "ridge"


class Table(NamedTuple):
    features: np.ndarray  # [R, C] float32, each column of mean 0 and std 1 over the table
    target: np.ndarray  # [R] float32, of mean 0 and std 1


@functools.cache
def table(name: str) -> Table:
    """scikit-learn's table `name`, every column and the target standardised (ddof 0) in float64, as float32."""
    from sklearn import datasets

    features, target = getattr(datasets, f"load_{name}")(return_X_y=True)
    standard = lambda a: ((a - a.mean(axis=0)) / a.std(axis=0)).astype(np.float32)
    return Table(standard(features.astype(np.float64)), standard(target.astype(np.float64)))


@dataclass(frozen=True)
class TabularConfig:
    """tabular's keys (configs/data/linear_regression.yaml documents them)."""

    table: str = "diabetes"

    def check(self) -> None:
        check_trees_extra("data.task=tabular's table and baselines")
        check(self.table in TABLES, f"data.table must be one of {TABLES}, got {self.table!r}")
        rows, columns = table(self.table).features.shape
        check(
            self.n_dims <= columns,
            f"data.n_dims={self.n_dims} exceeds data.table={self.table}'s {columns} columns",
        )
        check(self.n_points <= rows, f"data.n_points={self.n_points} exceeds data.table={self.table}'s {rows} rows")
        drawn = {"x_dist": "gaussian", "x_cov": "identity", "x_ar": 0.0}
        for key, default in drawn.items():
            value = getattr(self, key)
            check(value == default, f"data.{key}={value} moves drawn x's: data.task=tabular's are its table's rows")
        check(
            getattr(self, "task_mixture", None) is None,
            "data.task=tabular draws its x's from its table's rows: it cannot be a class of data.task=mixture",
        )


@dataclass(frozen=True)
class Tabular(Prompts):
    Config = TabularConfig
    reference = REFERENCE

    def draw(self, key, batch_size: int) -> tuple:
        """(rows [B, N], columns [B, D]): each prompt's distinct rows and distinct columns, uniformly at random."""
        rows, columns = table(self.cfg.table).features.shape
        row_key, column_key = jax.random.split(key)
        pick = lambda k, n, m: jax.random.choice(k, n, (m,), replace=False)
        rows_BxN = jax.vmap(lambda k: pick(k, rows, self.cfg.n_points))(jax.random.split(row_key, batch_size))
        columns_BxD = jax.vmap(lambda k: pick(k, columns, self.cfg.n_dims))(jax.random.split(column_key, batch_size))
        return rows_BxN, columns_BxD

    def inputs(self, functions, key, batch_size: int) -> jax.Array:
        rows_BxN, columns_BxD = functions
        return jnp.asarray(table(self.cfg.table).features)[rows_BxN[:, :, None], columns_BxD[:, None, :]]

    def label(self, functions, xs_BxNxD) -> jax.Array:
        return jnp.asarray(table(self.cfg.table).target)[functions[0]]

    def baselines(self, xs, ys, noise_stds: tuple, pool=None) -> dict:
        fitted = host_fits(np.asarray(xs), np.asarray(ys), {"xgboost": xgboost_regressor})
        return _baselines(xs, ys, ridge_lambda(self)) | fitted

    def metrics(self, preds_BxN, ys_BxN) -> dict:
        """breast_cancer's accuracy: the prediction's sign against the class's (y's sign)."""
        return {"accuracy": accuracy(preds_BxN, jnp.sign(ys_BxN))} if self.cfg.table in LABELLED else {}


@partial(jax.jit, static_argnums=2)
def _baselines(xs, ys, ridge_lambda: float) -> dict:
    ridge = lambda x, y: baselines.ridge(x, y, ridge_lambda)
    return baselines.on_prompts(baselines.PRIOR_FREE | {REFERENCE: ridge}, xs, ys)


@jax.jit
def _ridge_errors(xs, ys) -> jax.Array:
    """Each of RIDGE_LAMBDAS' mean squared error over prompts and k >= 1, [L]."""
    on = lambda lam: jnp.mean((jax.vmap(lambda x, y: baselines.ridge(x, y, lam))(xs, ys) - ys)[:, 1:] ** 2)
    return jax.vmap(on)(jnp.asarray(RIDGE_LAMBDAS))


@functools.cache
def ridge_lambda(task: Tabular) -> float:
    """The penalty of RIDGE_LAMBDAS with the least error on TUNING_PROMPTS prompts of its own, once per task."""
    tuning = task.sample_batch(jax.random.PRNGKey(TUNING_SEED), TUNING_PROMPTS)
    lam = RIDGE_LAMBDAS[int(jnp.argmin(_ridge_errors(tuning.xs, tuning.ys)))]
    log.info("tabular: ridge's penalty, tuned on prompts of its own: %g", lam)
    return lam
