"""In-context linear regression, sampled on device: the `linear_regression` task.

Each sequence has its own weight vector w ~ N(0, prior_scale^2 I_d) (or one of the run's finite pool);
points x_i ~ N(0, I_d) and y_i = w^T x_i + eps_i with eps_i ~ N(0, sigma^2), sigma from the noise prior.
Everything is a pure function of a PRNG key, so the train step can sample inside `jit` and a resumed run
sees exactly the data it would have seen.
"""

import logging
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from icl_lr.task import algorithms, baselines, ood
from icl_lr.task.base import TRAIN_SET_STREAM, Batch, pool_key
from icl_lr.task.config import DataConfig

log = logging.getLogger("icl_lr")
TUNING_SEED = 2**31 - 1  # the algorithms' tuning prompts: a key no run's data or eval set uses


def curriculum_stage(cfg: DataConfig, step) -> tuple:
    """(active dims, active points) at `step`: Garg et al.'s schedule, or the full task when off."""
    cur = cfg.curriculum
    if not cur.enabled:
        return cfg.n_dims, cfg.n_points
    stage = step // cur.interval
    dims = jnp.minimum(cfg.n_dims, cur.dims_start + cur.dims_increment * stage)
    points = jnp.minimum(cfg.n_points, cur.points_start + cur.points_increment * stage)
    return dims, points


def sample_weights(key, cfg: DataConfig, batch_size: int, pool_key=None) -> jax.Array:
    """Weight vectors [B, d], fresh from the Gaussian prior or, given `pool_key`, from a pool of M tasks.

    Pool task j is always generated from fold_in(pool_key, j), so the pool is fixed for the run
    without being stored: sampling costs O(batch * d) for any M.
    """
    if pool_key is not None and cfg.task_pool_size:
        return pool_tasks(pool_key, cfg, jax.random.randint(key, (batch_size,), 0, cfg.task_pool_size))
    return cfg.prior_scale * jax.random.normal(key, (batch_size, cfg.n_dims))


def pool_tasks(pool_key, cfg: DataConfig, ids) -> jax.Array:
    """Tasks `ids` of the run's pool, [len(ids), d]; `ids` = arange(task_pool_size) is the whole pool."""
    draw = lambda i: jax.random.normal(jax.random.fold_in(pool_key, i), (cfg.n_dims,))
    return cfg.prior_scale * jax.vmap(draw)(ids)


def sample_batch(key, cfg: DataConfig, batch_size: int, step=None, pool_key=None) -> Batch:
    """One batch of regression sequences.

    `step` selects the curriculum stage (None: the full task); `pool_key` draws w from the run's
    finite task pool (None: fresh from the prior, as for evaluation).
    """
    return sample_prompts(key, cfg, batch_size, step, pool_key)[0]


def sample_prompts(key, cfg: DataConfig, batch_size: int, step=None, pool_key=None) -> tuple[Batch, jax.Array]:
    """sample_batch's batch and the weights [B, D] that label it."""
    w_key, x_key, sigma_key, eps_key = jax.random.split(key, 4)
    ws = sample_weights(w_key, cfg, batch_size, pool_key)
    xs = jax.random.normal(x_key, (batch_size, cfg.n_points, cfg.n_dims))
    dims, points = (cfg.n_dims, cfg.n_points) if step is None else curriculum_stage(cfg, step)
    xs = xs * (jnp.arange(cfg.n_dims) < dims)  # truncated dims are zeroed, as in Garg et al.
    sigma = jax.random.choice(sigma_key, jnp.asarray(cfg.noise_stds, jnp.float32), (batch_size, 1))
    ys = jnp.einsum("bnd,bd->bn", xs, ws) + sigma * jax.random.normal(eps_key, (batch_size, cfg.n_points))
    point_mask = (jnp.arange(cfg.n_points) < points).astype(jnp.float32)
    return Batch(xs, ys, point_mask, jnp.ones(batch_size, jnp.float32)), ws


def probe_targets(xs_PxNxD, ys_PxN, ws_PxD) -> dict:
    """{target: [P, N, M]}: what a model may hold while it predicts y_k (Akyurek et al. 2022's probes): the
    task's w, X^T y of the points before k, least squares' w on them, and two predictions of y_k, one GD
    step's from w = 0 (x_k^T X^T y: its rate only scales it) and least squares'."""
    xy_PxNxD = jnp.cumsum(ys_PxN[..., None] * xs_PxNxD, axis=1) - ys_PxN[..., None] * xs_PxNxD
    ls_w_PxNxD = jax.vmap(baselines.least_squares_weights)(xs_PxNxD, ys_PxN)
    along = lambda w_PxNxD: jnp.sum(xs_PxNxD * w_PxNxD, axis=-1, keepdims=True)
    return {
        "w": jnp.broadcast_to(ws_PxD[:, None], xs_PxNxD.shape),
        "xty": xy_PxNxD,
        "ls_w": ls_w_PxNxD,
        "gd_prediction": along(xy_PxNxD),
        "ls_prediction": along(ls_w_PxNxD),
    }


def training_set_prompts(run_key, cfg: DataConfig, ids, step=None) -> Batch:
    """Prompts `ids` of the run's finite training set.

    Prompt j is sampled from its own key, fold_in(set key, j), so the set of `data.train_size`
    prompts is fixed for the run without being stored.
    """
    prompts_key = jax.random.fold_in(jax.random.fold_in(run_key, TRAIN_SET_STREAM), 0)
    one = lambda i: sample_batch(jax.random.fold_in(prompts_key, i), cfg, 1, step, pool_key(run_key))
    batch = jax.vmap(one)(ids)  # leaves [B, 1, ...]
    return Batch(batch.xs[:, 0], batch.ys[:, 0], batch.point_mask[0], jnp.ones(len(ids), jnp.float32))


def training_batch(run_key, step_key, cfg: DataConfig, batch_size: int, step, steps_per_epoch: int = 0) -> Batch:
    """The batch of `step`, a pure function of (run key, step), so resumed runs see the same data.

    Without `data.train_size`: fresh prompts from `step_key`. With it: the epoch's shuffled order
    over the finite set, `batch_size` prompts per step; the epoch's last batch, when the set does
    not divide into batches, is topped up from the start of the order with `example_mask` 0.
    """
    if cfg.train_size is None:
        return sample_batch(step_key, cfg, batch_size, step, pool_key(run_key))
    epoch, position = step // steps_per_epoch, step % steps_per_epoch
    order_key = jax.random.fold_in(jax.random.fold_in(run_key, TRAIN_SET_STREAM), 1)
    order = jax.random.permutation(jax.random.fold_in(order_key, epoch), cfg.train_size)
    slots = position * batch_size + jnp.arange(batch_size)
    batch = training_set_prompts(run_key, cfg, order[slots % cfg.train_size], step)
    return batch._replace(example_mask=(slots < cfg.train_size).astype(jnp.float32))


@dataclass(frozen=True)
class LinearRegression:
    """The task interface (icl_lr/task/base.py) of in-context linear regression."""

    cfg: DataConfig

    def sample_batch(self, key, batch_size: int, step=None, pool_key=None) -> Batch:
        return sample_batch(key, self.cfg, batch_size, step, pool_key)

    def probe_set(self, key, n_prompts: int) -> tuple[Batch, dict]:
        batch, ws = sample_prompts(key, self.cfg, n_prompts)
        return batch, probe_targets(batch.xs, batch.ys, ws)

    def training_batch(self, run_key, step_key, batch_size: int, step, steps_per_epoch: int = 0) -> Batch:
        return training_batch(run_key, step_key, self.cfg, batch_size, step, steps_per_epoch)

    def training_set_prompts(self, run_key, ids, step=None) -> Batch:
        return training_set_prompts(run_key, self.cfg, ids, step)

    def eval_pool(self, run_key):
        """The pool's tasks [M, D] for dMMSE, up to its memory bound (past it, none: a log line)."""
        size = self.cfg.task_pool_size
        if size and size > baselines.DMMSE_MAX_POOL:
            log.info("dMMSE left out: a pool of %d tasks is past its bound of %d", size, baselines.DMMSE_MAX_POOL)
        if not size or size > baselines.DMMSE_MAX_POOL:
            return None
        return pool_tasks(pool_key(run_key), self.cfg, jnp.arange(size))

    def baselines(self, xs, ys, noise_stds: tuple, pool=None) -> dict:
        return baselines.all_predictions(xs, ys, self.cfg.prior_scale, noise_stds, pool)

    def algorithms(self, steps: tuple) -> tuple[dict, dict]:
        tuning = self.sample_batch(jax.random.PRNGKey(TUNING_SEED), algorithms.TUNING_PROMPTS)
        rates = algorithms.tuned_rates(steps, (tuning.xs, tuning.ys))
        return algorithms.predictors(steps, rates), rates

    def bayes_predictive(self, xs, ys, noise_var: float) -> tuple:
        return baselines.bayes_predictive(xs, ys, self.cfg.prior_scale, noise_var)

    def ood_conditions(self, key, n_prompts: int) -> dict:
        return ood.conditions(key, self.cfg, n_prompts)
