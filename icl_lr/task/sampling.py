"""Prompts sampled on device, the half of a task that every task shares: x's from the task's input
distribution, one function per prompt from the task's prior (or the run's finite pool), y_i = f(x_i) +
sigma eps_i with sigma from the noise prior and eps_i of unit variance from data.noise_dist. A task
(icl_lr/task/*.py) subclasses Prompts with its prior (`draw`) and its functions (`label`); the x's and the
noise are hooks of its own too (`sample_xs`, `sample_noise`), which a plugin may override.

x's: each point's coordinates from data.x_dist, all scaled to mean 0 and E x x^T = I as N(0, I)'s, so that
ridge under the Gaussian prior stays comparable; then data.x_ar's AR(1) correlation along the prompt's
points, then data.x_cov's covariance (fixed, or Wishart per prompt).

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
    """x = z @ t for data.x_cov's fixed covariance (None: identity, or wishart's, drawn per prompt). skewed:
    scales 1/i along the axes, rotated_skewed: the same along a fixed random basis, both with E|x|^2 = d."""
    if cfg.x_cov in ("identity", "wishart"):
        return None
    basis_key = jax.random.PRNGKey(X_BASIS_SEED) if cfg.x_cov == "rotated_skewed" else None
    return transformation(basis_key, skew(cfg.n_dims), normalize=True)


def scaled_t(key, df: float, shape: tuple) -> jax.Array:
    """Student's t with `df` > 2 degrees of freedom scaled by sqrt((df - 2) / df): variance 1."""
    return jax.random.t(key, df, shape) * ((df - 2) / df) ** 0.5


def unit_xs(key, cfg: DataConfig, shape: tuple) -> jax.Array:
    """Points [..., D] from data.x_dist with mean 0 and E x x^T = I: N(0, I); uniform on [-sqrt(3), sqrt(3)]^d;
    Rademacher +-1; uniform on the sphere of radius sqrt(d); Student's t of data.x_df, scaled."""
    if cfg.x_dist == "uniform":
        return jax.random.uniform(key, shape, minval=-(3**0.5), maxval=3**0.5)
    if cfg.x_dist == "rademacher":
        return jax.random.rademacher(key, shape, jnp.float32)
    if cfg.x_dist == "sphere":
        zs = jax.random.normal(key, shape)
        return zs * (shape[-1] ** 0.5 / jnp.linalg.norm(zs, axis=-1, keepdims=True))
    if cfg.x_dist == "student_t":
        return scaled_t(key, cfg.x_df, shape)
    return jax.random.normal(key, shape)


def unit_noise(key, cfg: DataConfig, shape: tuple) -> jax.Array:
    """Noise of mean 0 and variance 1 from data.noise_dist: N(0, 1); Laplace of scale 1/sqrt(2); Student's t
    of data.noise_df, scaled."""
    if cfg.noise_dist == "laplace":
        return jax.random.laplace(key, shape) / 2**0.5
    if cfg.noise_dist == "student_t":
        return scaled_t(key, cfg.noise_df, shape)
    return jax.random.normal(key, shape)


def noise_log_density(cfg: DataConfig, r, sigma):
    """log p(r) of data.noise_dist's noise of std `sigma` (unit_noise's law, scaled): what a posterior under it
    weighs."""
    if cfg.noise_dist == "laplace":
        b = sigma / 2**0.5
        return -jnp.log(2 * b) - jnp.abs(r) / b
    if cfg.noise_dist == "student_t":
        df = cfg.noise_df
        scale = sigma * ((df - 2) / df) ** 0.5
        norm = jax.scipy.special.gammaln((df + 1) / 2) - jax.scipy.special.gammaln(df / 2) - 0.5 * jnp.log(df * jnp.pi)
        return norm - jnp.log(scale) - (df + 1) / 2 * jnp.log1p((r / scale) ** 2 / df)
    return -0.5 * jnp.log(2 * jnp.pi * sigma**2) - r**2 / (2 * sigma**2)


def ar1(zs_BxNxD: jax.Array, rho: float) -> jax.Array:
    """x_0 = z_0, x_i = rho x_{i-1} + sqrt(1 - rho^2) z_i along a prompt's points: each x as stationary and of
    unit variance as the z's, lag-k correlation rho^k (the linear recurrence as a parallel scan)."""
    innovations_BxNxD = zs_BxNxD.at[:, 1:].multiply((1 - rho**2) ** 0.5)
    combine = lambda a, b: (a[0] * b[0], b[0] * a[1] + b[1])  # (gain, offset) of x_i = gain x_j + offset
    return jax.lax.associative_scan(combine, (jnp.full_like(zs_BxNxD, rho), innovations_BxNxD), axis=1)[1]


def wishart_factors(key, df: int, batch_size: int, n_dims: int) -> jax.Array:
    """Per prompt the Cholesky factor L [B, D, D] of a Sigma ~ Wishart(df, I / df) (mean I), by Bartlett's
    decomposition: L = A / sqrt(df), A lower triangular, A_ii^2 ~ chi^2(df - i) (i from 0), A_ij ~ N(0, 1)
    below the diagonal. A covariance per context, as Bordelon et al. re-rotate per context."""
    diag_key, below_key = jax.random.split(key)
    chi2_BxD = 2 * jax.random.gamma(diag_key, (df - jnp.arange(n_dims)) / 2, (batch_size, n_dims))
    below_BxDxD = jnp.tril(jax.random.normal(below_key, (batch_size, n_dims, n_dims)), -1)
    return (below_BxDxD + jnp.sqrt(chi2_BxD)[..., None] * jnp.eye(n_dims)) / df**0.5


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

    def sample_xs(self, key, batch_size: int) -> jax.Array:
        """Inputs [B, N, D]: data.x_dist's points, data.x_ar's correlation along the prompt, data.x_cov's
        covariance (module docstring). A task or plugin with an input law of its own overrides it: training,
        every eval set and the OOD suite draw their x's here."""
        cfg = self.cfg
        if cfg.x_cov == "wishart":
            key, cov_key = jax.random.split(key)
        xs_BxNxD = unit_xs(key, cfg, (batch_size, cfg.n_points, cfg.n_dims))
        if cfg.x_ar:
            xs_BxNxD = ar1(xs_BxNxD, cfg.x_ar)
        if cfg.x_cov == "wishart":
            factors_BxDxD = wishart_factors(cov_key, cfg.x_cov_df or cfg.n_dims, batch_size, cfg.n_dims)
            return jnp.einsum("bnd,bed->bne", xs_BxNxD, factors_BxDxD)
        t = x_transform(cfg)
        return xs_BxNxD if t is None else xs_BxNxD @ t

    def inputs(self, functions, key, batch_size: int) -> jax.Array:
        """The inputs [B, N, D] of prompts of `functions`: sample_xs's, drawn apart from the functions; a task
        whose function picks its points (a table's rows) overrides it."""
        return self.sample_xs(key, batch_size)

    def sample_noise(self, key, shape: tuple) -> jax.Array:
        """The labels' noise before its std sigma: mean 0, variance 1, from data.noise_dist (a hook, as
        `sample_xs`)."""
        return unit_noise(key, self.cfg, shape)

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
        xs = self.inputs(functions, x_key, batch_size)
        dims, points = (cfg.n_dims, cfg.n_points) if step is None else curriculum_stage(cfg, step)
        xs = xs * (jnp.arange(cfg.n_dims) < dims)  # truncated dims are zeroed, as in Garg et al.
        sigma = jax.random.choice(sigma_key, jnp.asarray(cfg.noise_stds, jnp.float32), (batch_size, 1))
        ys = self.label(functions, xs) + sigma * self.sample_noise(eps_key, (batch_size, cfg.n_points))
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
