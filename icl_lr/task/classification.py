"""Linear classification, the `linear_classification` task (Garg et al. 2022's LinearClassification,
dtsip/in-context-learning src/tasks.py): y_i = sign(w^T x_i), w ~ N(0, prior_scale^2 I_d), no noise.

The model is trained on the squared error of the +-1 labels, as on every task; its records add accuracy
(`accuracy/<predictor>`: a prediction's sign against y, a prediction of 0 counted wrong, as Garg et al.'s).
Its best baseline, the reference of its excess, is L2-penalised logistic regression fitted by Newton's method
on the context.
"""

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from icl_lr.fields import check
from icl_lr.task import baselines
from icl_lr.task.linear import LinearRegression, LinearRegressionConfig, check_gaussian_prior
from icl_lr.task.sampling import Prompts

LOGISTIC_C = 1.0  # logistic regression's inverse L2 penalty (scikit-learn's C, its default)
NEWTON_STEPS = 25  # Newton iterations from w = 0 (the penalised loss is strictly convex)


def logistic_weights(xs_NxD, ys_N, c: float = LOGISTIC_C, steps: int = NEWTON_STEPS):
    """Each prefix's w [K, D] minimising sum_{j<k} log(1 + exp(-y_j w^T x_j)) + |w|^2 / (2c) (scikit-learn's
    LogisticRegression(C=c, fit_intercept=False)), by Newton's method from w = 0."""
    masks_KxN = baselines.prefix_masks(xs_NxD.shape[0])
    eye = jnp.eye(xs_NxD.shape[1])

    def step(w_KxD, _):
        margins_KxN = ys_N[None] * jnp.einsum("nd,kd->kn", xs_NxD, w_KxD)
        pull_KxN = masks_KxN * jax.nn.sigmoid(-margins_KxN)  # each point's share of the gradient
        gradient_KxD = w_KxD / c - jnp.einsum("kn,n,nd->kd", pull_KxN, ys_N, xs_NxD)
        curvature_KxN = masks_KxN * jax.nn.sigmoid(margins_KxN) * jax.nn.sigmoid(-margins_KxN)
        hessian_KxDxD = eye / c + jnp.einsum("kn,nd,ne->kde", curvature_KxN, xs_NxD, xs_NxD)
        return w_KxD - jnp.linalg.solve(hessian_KxDxD, gradient_KxD[..., None])[..., 0], None

    return jax.lax.scan(step, jnp.zeros_like(xs_NxD), None, length=steps)[0]


def logistic_regression(xs_NxD, ys_N):
    """E[y_k] under the fitted model, 2 sigmoid(w^T x_k) - 1 = tanh(w^T x_k / 2): its squared error and its
    sign's accuracy."""
    return jnp.tanh(jnp.einsum("kd,kd->k", xs_NxD, logistic_weights(xs_NxD, ys_N)) / 2)


def accuracy(preds_BxN, ys_BxN) -> jax.Array:
    """1 where the prediction's sign is y's, else 0 (a prediction of 0 is wrong): Garg et al.'s rule
    (dtsip/in-context-learning src/tasks.py, `ys == ys_pred.sign()`)."""
    return (jnp.sign(preds_BxN) == ys_BxN).astype(jnp.float32)


@dataclass(frozen=True)
class LinearClassificationConfig(LinearRegressionConfig):
    def check(self) -> None:
        LinearRegressionConfig.check(self)  # its inherited keys' checks (outliers: linear_regression's)
        check_gaussian_prior(self)
        check(
            self.noise_stds == (0.0,),
            f"data.task=linear_classification has no label noise: data.noise_std must be 0, got {self.noise_stds}",
        )


@dataclass(frozen=True)
class LinearClassification(LinearRegression):
    """The task interface of linear classification: linear regression's prompts through a sign."""

    Config = LinearClassificationConfig
    reference = "logistic_regression"
    hierarchical_noise = False
    non_gaussian_noise = False

    def label(self, ws_BxD, xs_BxNxD) -> jax.Array:
        return jnp.sign(LinearRegression.label(self, ws_BxD, xs_BxNxD))

    def baselines(self, xs, ys, noise_stds: tuple, pool=None) -> dict:
        return _baselines(xs, ys)

    def metrics(self, preds_BxN, ys_BxN) -> dict:
        return {"accuracy": accuracy(preds_BxN, ys_BxN)}

    ood_conditions = Prompts.ood_conditions  # the suite's conditions move a regression's labels
    eval_pool = Prompts.eval_pool  # dMMSE's likelihood is a regression's


@jax.jit
def _baselines(xs, ys) -> dict:
    return baselines.on_prompts({"logistic_regression": logistic_regression, **baselines.PRIOR_FREE}, xs, ys)
