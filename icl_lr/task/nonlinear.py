"""Garg et al. 2022's nonlinear function classes (dtsip/in-context-learning src/tasks.py), each with its
best baseline beside the prior-free ones (least squares, averaging, 3-NN):

- `quadratic`: y = (x^2)^T w / sqrt(3), w ~ N(0, prior_scale^2 I) (their QuadraticRegression). Linear in
  the features x^2 / sqrt(3): Bayes is ridge on them.
- `relu_2nn`: y = sqrt(2 / h) relu(x^T W_1) W_2, W_1 [d, h] and W_2 [h] standard normal, h =
  data.hidden_width (their Relu2nnRegression, h = 100). Baseline: the same network trained on the context
  by Adam (their GDModel), the reference of its excess.
- `decision_tree`: a full tree of depth data.tree_depth, each node testing x_i > 0 on a uniform coordinate,
  leaves N(0, 1) (their DecisionTree, depth 4). Baselines on the host, as theirs: a greedy regression tree
  of that depth (scikit-learn) and gradient-boosted trees (XGBoost), the reference of its excess.
"""

import importlib.util
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from icl_lr.components import NoKeys
from icl_lr.fields import check
from icl_lr.records.schema import BAYES
from icl_lr.task import baselines
from icl_lr.task.sampling import Prompts

NN_STEPS = 300  # Adam steps of the network baseline, per prefix
NN_LEARNING_RATE = 5e-3  # as Garg et al.'s GDModel


@dataclass(frozen=True)
class Quadratic(Prompts):
    Config = NoKeys

    def draw(self, key, batch_size: int) -> jax.Array:
        return self.cfg.prior_scale * jax.random.normal(key, (batch_size, self.cfg.n_dims))

    def label(self, ws_BxD, xs_BxNxD) -> jax.Array:
        return jnp.einsum("bnd,bd->bn", xs_BxNxD**2, ws_BxD) / jnp.sqrt(3.0)

    def baselines(self, xs, ys, noise_stds: tuple, pool=None) -> dict:
        return _quadratic_baselines(xs, ys, self.cfg.prior_scale, noise_stds)

    def bayes_evidence(self, xs_NxD, ys_N, noise_std: float) -> tuple:
        return baselines.ridge_and_evidence(xs_NxD**2 / jnp.sqrt(3.0), ys_N, self.cfg.prior_scale, noise_std)


@partial(jax.jit, static_argnums=(2, 3))
def _quadratic_baselines(xs, ys, prior_scale: float, noise_stds: tuple) -> dict:
    bayes = lambda x, y: baselines.bayes_optimal(x**2 / jnp.sqrt(3.0), y, prior_scale, noise_stds)
    return baselines.on_prompts(baselines.PRIOR_FREE | {BAYES: bayes}, xs, ys)


def relu_network(params, xs_NxD):
    """sqrt(2 / h) relu(x^T W_1) W_2 of one network, [N]."""
    w1_DxH, w2_H = params
    return jax.nn.relu(xs_NxD @ w1_DxH) @ w2_H * jnp.sqrt(2.0 / w2_H.shape[0])


def trained_network(key, xs_NxD, ys_N, width: int):
    """Each prefix's prediction by a fresh network of `width` trained on the prefix by Adam (NN_STEPS full
    batches, NN_LEARNING_RATE): Garg et al.'s GDModel baseline. Prediction 0 predicts 0."""
    n, d = xs_NxD.shape
    masks_KxN = baselines.prefix_masks(n)
    tx = optax.adam(NN_LEARNING_RATE)

    def one_prefix(key, mask_N, query_D):
        k1, k2 = jax.random.split(key)
        params = (jax.random.normal(k1, (d, width)) / jnp.sqrt(d), jax.random.normal(k2, (width,)) / jnp.sqrt(width))
        loss = lambda p: jnp.sum(mask_N * (relu_network(p, xs_NxD) - ys_N) ** 2) / jnp.maximum(mask_N.sum(), 1)

        def step(carry, _):
            params, state = carry
            updates, state = tx.update(jax.grad(loss)(params), state)
            return (optax.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=NN_STEPS)
        return jnp.where(mask_N.sum() > 0, relu_network(params, query_D[None])[0], 0.0)

    return jax.vmap(one_prefix)(jax.random.split(key, n), masks_KxN, xs_NxD)


@dataclass(frozen=True)
class Relu2NNConfig:
    hidden_width: int = 100

    def check(self) -> None:
        check(1 <= self.hidden_width <= 4096, f"data.hidden_width must be in [1, 4096], got {self.hidden_width}")


@dataclass(frozen=True)
class Relu2NN(Prompts):
    Config = Relu2NNConfig
    reference = "trained_network"

    def draw(self, key, batch_size: int) -> tuple:
        k1, k2 = jax.random.split(key)
        d, h = self.cfg.n_dims, self.cfg.hidden_width
        return jax.random.normal(k1, (batch_size, d, h)), jax.random.normal(k2, (batch_size, h))

    def label(self, params, xs_BxNxD) -> jax.Array:
        return jax.vmap(relu_network)(params, xs_BxNxD)

    def baselines(self, xs, ys, noise_stds: tuple, pool=None) -> dict:
        return _relu_baselines(xs, ys, self.cfg.hidden_width)


@partial(jax.jit, static_argnums=2)
def _relu_baselines(xs, ys, width: int) -> dict:
    keys = jax.random.split(jax.random.PRNGKey(0), xs.shape[0])
    trained = jax.lax.map(lambda a: trained_network(a[0], a[1], a[2], width), (keys, xs, ys), batch_size=16)
    return baselines.on_prompts(baselines.PRIOR_FREE, xs, ys) | {"trained_network": trained}


@dataclass(frozen=True)
class DecisionTreeConfig:
    tree_depth: int = 4

    def check(self) -> None:
        check(1 <= self.tree_depth <= 10, f"data.tree_depth must be in [1, 10], got {self.tree_depth}")
        check_trees_extra("data.task=decision_tree's baselines")


def check_trees_extra(what: str) -> None:
    """Refuses in one line, naming `what` needs them, where the [trees] extra (scikit-learn, XGBoost) is missing."""
    missing = [m for m in ("sklearn", "xgboost") if importlib.util.find_spec(m) is None]
    check(not missing, f"{what} need {' and '.join(missing)}: pip install 'icl-lr[trees]'")


@dataclass(frozen=True)
class DecisionTree(Prompts):
    Config = DecisionTreeConfig
    reference = "xgboost"

    def draw(self, key, batch_size: int) -> tuple:
        nodes = 2 ** (self.cfg.tree_depth + 1) - 1  # the leaves are the last 2^depth
        k1, k2 = jax.random.split(key)
        features = jax.random.randint(k1, (batch_size, nodes), 0, self.cfg.n_dims)
        return features, jax.random.normal(k2, (batch_size, nodes))

    def label(self, tree, xs_BxNxD) -> jax.Array:
        features_BxT, values_BxT = tree
        node_BxN = jnp.zeros(xs_BxNxD.shape[:2], jnp.int32)
        for _ in range(self.cfg.tree_depth):  # node i's children are 2i + 1 (x_f <= 0) and 2i + 2 (x_f > 0)
            feature_BxN = jnp.take_along_axis(features_BxT, node_BxN, axis=1)
            right = jnp.take_along_axis(xs_BxNxD, feature_BxN[..., None], axis=2)[..., 0] > 0
            node_BxN = 2 * node_BxN + 1 + right
        return jnp.take_along_axis(values_BxT, node_BxN, axis=1)

    def baselines(self, xs, ys, noise_stds: tuple, pool=None) -> dict:
        fitted = host_trees(np.asarray(xs), np.asarray(ys), self.cfg.tree_depth)
        return _prior_free(xs, ys) | fitted


@jax.jit
def _prior_free(xs, ys) -> dict:
    return baselines.on_prompts(baselines.PRIOR_FREE, xs, ys)


def xgboost_regressor():
    """XGBoost's gradient-boosted trees at its defaults, one thread per fit (Garg et al.'s baseline)."""
    from xgboost import XGBRegressor

    return XGBRegressor(n_jobs=1, verbosity=0)


def host_fits(xs_PxNxD: np.ndarray, ys_PxN: np.ndarray, makers: dict) -> dict:
    """{name: each prefix's prediction [P, N]} by a fresh regressor of each of `makers` (scikit-learn's
    fit/predict), fitted on the host per prompt and k; 0 without context."""
    n_prompts, n = ys_PxN.shape
    predictions = {name: np.zeros((n_prompts, n), np.float32) for name in makers}
    for p in range(n_prompts):
        for k in range(1, n):
            for name, make in makers.items():
                model = make().fit(xs_PxNxD[p, :k], ys_PxN[p, :k])
                predictions[name][p, k] = model.predict(xs_PxNxD[p, k : k + 1])[0]
    return {name: jnp.asarray(v) for name, v in predictions.items()}


def host_trees(xs_PxNxD: np.ndarray, ys_PxN: np.ndarray, depth: int) -> dict:
    """Each prefix's prediction by a greedy regression tree of `depth` (scikit-learn's CART) and by XGBoost's
    gradient-boosted trees (its defaults), fitted on the host, as Garg et al.'s baselines; 0 without context."""
    from sklearn.tree import DecisionTreeRegressor

    makers = {
        "greedy_tree": lambda: DecisionTreeRegressor(max_depth=depth, random_state=0),
        "xgboost": xgboost_regressor,
    }
    return host_fits(xs_PxNxD, ys_PxN, makers)
