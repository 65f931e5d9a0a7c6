"""Sparse parities, the `sparse_parity` task (Bhattamishra et al. 2024's in-context Boolean functions): x uniform
on {-1, 1}^d, drawn by the task itself (so it takes no data.x_dist, x_ar or x_cov), y = prod_{j in S} x_j for a
secret support S of data.parity_k coordinates, uniform over the C(d, k) supports per prompt; no noise.

Bayes is exact: under the uniform prior over supports, y_k's posterior mean is the mean of x_k's parity over
the supports that agree with every label before it. Its records add accuracy (the sign of a prediction against
y, a prediction of 0 counted wrong), as linear_classification's.
"""

import math
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp

from icl_lr.fields import check
from icl_lr.records.schema import BAYES
from icl_lr.task import baselines
from icl_lr.task.classification import accuracy
from icl_lr.task.sampling import Prompts
from icl_lr.task.sparse import supports

MAX_SUPPORTS = 2**15  # the exact learner's cost grows with C(d, k)
SUPPORT_CHUNK = 2**22  # context points x supports per batch of the exact learner: bounds its memory


@dataclass(frozen=True)
class SparseParityConfig:
    """sparse_parity's keys (configs/data/linear_regression.yaml documents them)."""

    parity_k: int = 2

    def check(self) -> None:
        d, k = self.n_dims, self.parity_k
        check(1 <= k <= d, f"data.parity_k must be in [1, data.n_dims={d}], got {k}")
        count = math.comb(d, k)
        check(
            count <= MAX_SUPPORTS,
            f"data.parity_k: C({d}, {k}) = {count:,} supports, past the exact learner's {MAX_SUPPORTS:,}",
        )
        check(self.task == "sparse_parity", "data.task_mixture: sparse_parity draws its own x's, not a mixture's")
        for key, default in (("x_dist", ("gaussian", "rademacher")), ("x_cov", ("identity",)), ("x_ar", (0.0,))):
            value = getattr(self, key)
            check(value in default, f"data.{key}={value}: data.task=sparse_parity draws its own x's, uniform on +-1")
        check(
            self.noise_stds == (0.0,),
            f"data.task=sparse_parity has no label noise: data.noise_std must be 0, got {self.noise_stds}",
        )
        check(not self.curriculum.enabled, "data.curriculum zeroes coordinates, which zeroes sparse_parity's labels")


def parities(xs_NxD, masks_CxD) -> jax.Array:
    """Each support's parity at each point [N, C]: (-1) to the number of the support's coordinates at -1."""
    negatives_NxC = (xs_NxD < 0).astype(jnp.float32) @ masks_CxD.T.astype(jnp.float32)
    return 1 - 2 * jnp.mod(negatives_NxC, 2)


def exact_learner(xs_NxD, ys_N, masks_CxD) -> jax.Array:
    """Each y_k's posterior mean [N] under the uniform prior over the supports `masks_CxD`: the mean of x_k's
    parity over the supports that agree with every label before it (0 where none does)."""
    parities_NxC = parities(xs_NxD, masks_CxD)
    wrong_NxC = (parities_NxC != ys_N[:, None]).astype(jnp.int32)
    agree_NxC = (jnp.cumsum(wrong_NxC, axis=0) - wrong_NxC) == 0
    return jnp.sum(agree_NxC * parities_NxC, axis=1) / jnp.maximum(jnp.sum(agree_NxC, axis=1), 1)


@dataclass(frozen=True)
class SparseParity(Prompts):
    Config = SparseParityConfig

    @property
    def support_masks(self) -> jax.Array:
        """Every support as a 0/1 mask [C(d, k), d]."""
        rows = supports(self.cfg.n_dims, self.cfg.parity_k)
        return jax.nn.one_hot(jnp.asarray(rows), self.cfg.n_dims).sum(axis=1)

    def sample_xs(self, key, batch_size: int) -> jax.Array:
        return jax.random.rademacher(key, (batch_size, self.cfg.n_points, self.cfg.n_dims), jnp.float32)

    def draw(self, key, batch_size: int) -> jax.Array:
        """The support's mask [B, D]: k coordinates uniformly without replacement (as sparse_linear's)."""
        kept = jax.lax.top_k(jax.random.uniform(key, (batch_size, self.cfg.n_dims)), self.cfg.parity_k)[1]
        return jax.nn.one_hot(kept, self.cfg.n_dims).sum(axis=1)

    def label(self, masks_BxD, xs_BxNxD) -> jax.Array:
        return jnp.prod(jnp.where(masks_BxD[:, None] > 0, xs_BxNxD, 1.0), axis=-1)

    def baselines(self, xs, ys, noise_stds: tuple, pool=None) -> dict:
        masks = self.support_masks
        return _baselines(xs, ys, masks, max(1, SUPPORT_CHUNK // (xs.shape[1] * masks.shape[0])))

    def metrics(self, preds_BxN, ys_BxN) -> dict:
        return {"accuracy": accuracy(preds_BxN, ys_BxN)}


@partial(jax.jit, static_argnums=(3,))
def _baselines(xs, ys, masks_CxD, chunk: int) -> dict:
    """The prior-free baselines, the zero predictor and Bayes (the exact learner, `chunk` prompts at a time)."""
    predictions = baselines.on_prompts(baselines.PRIOR_FREE | {"zero": lambda x, y: jnp.zeros_like(y)}, xs, ys)
    predictions[BAYES] = jax.lax.map(lambda xy: exact_learner(*xy, masks_CxD), (xs, ys), batch_size=chunk)
    return predictions
