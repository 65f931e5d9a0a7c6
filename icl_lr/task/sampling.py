"""Prompts sampled on device, the half of a task that every task shares: x's from the task's input
distribution (data.x_cov), one function per prompt from the task's prior (or the run's finite pool),
y_i = f(x_i) + eps_i with eps_i ~ N(0, sigma^2), sigma from the noise prior. A task (icl_lr/task/*.py)
subclasses Prompts with its prior (`draw`) and its functions (`label`).

Everything is a pure function of a PRNG key, so the train step samples inside `jit` and a resumed run sees
exactly the data it would have seen.
"""

import logging
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from icl_lr.records.schema import BAYES
from icl_lr.task.base import TRAIN_SET_STREAM, Batch, pool_key
from icl_lr.task.config import DataConfig

log = logging.getLogger("icl_lr")
X_BASIS_SEED = 2**31 - 3  # the fixed basis of data.x_cov=rotated_skewed: a key no run's data or eval set uses


def transformation(key, eigenvalues, normalize: bool = False) -> jax.Array:
    """U diag(eigenvalues) U^T for a random orthogonal U (U = I when `key` is None), [d, d]; `normalize`
    rescales it so x @ t keeps E|x|^2 = d (Garg et al.'s `sample_transformation`)."""
    d = len(eigenvalues)
    u = jnp.eye(d) if key is None else jnp.linalg.svd(jax.random.normal(key, (d, d)))[0]
    t = u @ jnp.diag(eigenvalues) @ u.T
    return t * jnp.sqrt(d / jnp.sum(eigenvalues**2)) if normalize else t


def skew(n_dims: int) -> jax.Array:
    """Garg et al.'s skewed spectrum: x's scale 1/i along the i-th direction (before normalising)."""
    return 1 / jnp.arange(1, n_dims + 1)


def x_transform(cfg: DataConfig) -> jax.Array | None:
    """x = z @ t with z ~ N(0, I): t for data.x_cov (None: identity). skewed: scales 1/i along the axes,
    rotated_skewed: the same along a fixed random basis, both with E|x|^2 = d."""
    if cfg.x_cov == "identity":
        return None
    basis_key = jax.random.PRNGKey(X_BASIS_SEED) if cfg.x_cov == "rotated_skewed" else None
    return transformation(basis_key, skew(cfg.n_dims), normalize=True)


def sample_xs(key, cfg: DataConfig, batch_size: int) -> jax.Array:
    """Inputs [B, N, D] from the task's x distribution."""
    xs = jax.random.normal(key, (batch_size, cfg.n_points, cfg.n_dims))
    t = x_transform(cfg)
    return xs if t is None else xs @ t


def curriculum_stage(cfg: DataConfig, step) -> tuple:
    """(active dims, active points) at `step`: Garg et al.'s schedule, or the full task when off."""
    cur = cfg.curriculum
    if not cur.enabled:
        return cfg.n_dims, cfg.n_points
    stage = step // cur.interval
    dims = jnp.minimum(cfg.n_dims, cur.dims_start + cur.dims_increment * stage)
    points = jnp.minimum(cfg.n_points, cur.points_start + cur.points_increment * stage)
    return dims, points


@dataclass(frozen=True)
class Prompts:
    """Sampling for the task interface (icl_lr/task/base.py). A subclass gives `draw` (functions from the
    prior) and `label` (their values); the pool, the training set, the curriculum and the noise are here."""

    cfg: DataConfig
    reference = BAYES  # the predictor the model's excess is measured against: Bayes where it is exact

    def draw(self, key, batch_size: int):
        """The parameters of `batch_size` functions from the task's prior (a pytree, leading axis B)."""
        raise NotImplementedError

    def label(self, functions, xs_BxNxD: jax.Array) -> jax.Array:
        """Each prompt's function at its points, without noise, [B, N]."""
        raise NotImplementedError

    def pool_functions(self, pool_key, ids):
        """Functions `ids` of the run's pool (leading axis len(ids)). Pool function j is always drawn from
        fold_in(pool_key, j), so the pool is fixed for the run without being stored: sampling costs O(batch)
        for any size."""
        one = lambda i: jax.tree.map(lambda a: a[0], self.draw(jax.random.fold_in(pool_key, i), 1))
        return jax.vmap(one)(ids)

    def functions(self, key, batch_size: int, pool_key=None):
        """Fresh functions from the prior or, given `pool_key`, from the run's pool of data.task_pool_size."""
        if pool_key is not None and self.cfg.task_pool_size is not None:
            return self.pool_functions(pool_key, jax.random.randint(key, (batch_size,), 0, self.cfg.task_pool_size))
        return self.draw(key, batch_size)

    def sample_prompts(self, key, batch_size: int, step=None, pool_key=None) -> tuple:
        """(a batch of prompts, the functions that label it). `step` selects the curriculum stage (None: the
        full task); `pool_key` draws the functions from the run's pool (None: from the prior)."""
        cfg = self.cfg
        f_key, x_key, sigma_key, eps_key = jax.random.split(key, 4)
        functions = self.functions(f_key, batch_size, pool_key)
        xs = sample_xs(x_key, cfg, batch_size)
        dims, points = (cfg.n_dims, cfg.n_points) if step is None else curriculum_stage(cfg, step)
        xs = xs * (jnp.arange(cfg.n_dims) < dims)  # truncated dims are zeroed, as in Garg et al.
        sigma = jax.random.choice(sigma_key, jnp.asarray(cfg.noise_stds, jnp.float32), (batch_size, 1))
        ys = self.label(functions, xs) + sigma * jax.random.normal(eps_key, (batch_size, cfg.n_points))
        point_mask = (jnp.arange(cfg.n_points) < points).astype(jnp.float32)
        return Batch(xs, ys, point_mask, jnp.ones(batch_size, jnp.float32)), functions

    def sample_batch(self, key, batch_size: int, step=None, pool_key=None) -> Batch:
        return self.sample_prompts(key, batch_size, step, pool_key)[0]

    def training_set_prompts(self, run_key, ids, step=None) -> Batch:
        """Prompts `ids` of the run's finite training set. Prompt j is sampled from its own key, fold_in(set
        key, j), so the set of data.train_size prompts is fixed for the run without being stored."""
        prompts_key = jax.random.fold_in(jax.random.fold_in(run_key, TRAIN_SET_STREAM), 0)
        one = lambda i: self.sample_batch(jax.random.fold_in(prompts_key, i), 1, step, pool_key(run_key))
        batch = jax.vmap(one)(ids)  # leaves [B, 1, ...]
        targets = None if batch.targets is None else batch.targets[:, 0]
        return Batch(batch.xs[:, 0], batch.ys[:, 0], batch.point_mask[0], jnp.ones(len(ids), jnp.float32), targets)

    def training_batch(self, run_key, step_key, batch_size: int, step, steps_per_epoch: int = 0) -> Batch:
        """The batch of `step`, a pure function of (run key, step). Without data.train_size: fresh prompts from
        `step_key`. With it: the epoch's shuffled order over the finite set, `batch_size` prompts per step;
        the epoch's last batch, when the set does not divide into batches, is topped up from the start of
        the order with `example_mask` 0."""
        cfg = self.cfg
        if cfg.train_size is None:
            return self.sample_batch(step_key, batch_size, step, pool_key(run_key))
        epoch, position = step // steps_per_epoch, step % steps_per_epoch
        order_key = jax.random.fold_in(jax.random.fold_in(run_key, TRAIN_SET_STREAM), 1)
        order = jax.random.permutation(jax.random.fold_in(order_key, epoch), cfg.train_size)
        slots = position * batch_size + jnp.arange(batch_size)
        batch = self.training_set_prompts(run_key, order[slots % cfg.train_size], step)
        return batch._replace(example_mask=(slots < cfg.train_size).astype(jnp.float32))

    def eval_pool(self, run_key):
        """The pool's functions for the baselines that need them (dMMSE): none unless the task has such."""
        return None

    def metrics(self, preds_BxN: jax.Array, ys_BxN: jax.Array) -> dict:
        """{metric: [B, N]} beside squared error / d, per point (classification's accuracy): none by default."""
        return {}

    def ood_conditions(self, key, n_prompts: int) -> dict:
        """Garg et al.'s OOD suite moves a linear regression's x's, w and noise: none for other tasks."""
        log.info("eval.ood: the OOD suite is linear regression's; data.task=%s has none", self.cfg.task)
        return {}
