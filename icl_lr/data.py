"""In-context linear regression tasks, sampled on device.

Each sequence has its own weight vector w ~ N(0, prior_scale^2 I_d); points x_i ~ N(0, I_d) and
y_i = w^T x_i + eps_i with eps_i ~ N(0, sigma^2). Everything is a pure function of a PRNG key, so
the train step can sample inside `jit` and a resumed run sees exactly the data it would have seen.
"""

from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp


@dataclass(frozen=True)
class CurriculumConfig:
    enabled: bool = False
    dims_start: int = 5
    dims_increment: int = 1
    points_start: int = 11
    points_increment: int = 2
    interval: int = 2000


@dataclass(frozen=True)
class DataConfig:
    n_dims: int = 5
    n_points: int = 11
    prior_scale: float = 1.0
    noise_std: float = 0.0
    noise_std_choices: Optional[tuple] = None
    task_pool_size: Optional[int] = None
    encoding: str = "continuous"
    vocab_size: int = 64
    bin_range: float = 3.0
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)

    @property
    def noise_stds(self) -> tuple:
        """The support of the noise prior: one value, or the hierarchical prior's list."""
        return tuple(self.noise_std_choices) if self.noise_std_choices else (self.noise_std,)

    @property
    def y_scale(self) -> float:
        """Marginal std of y (largest noise), used to standardise y before binning into tokens."""
        return float((self.prior_scale**2 * self.n_dims + max(self.noise_stds) ** 2) ** 0.5)

    @property
    def tokens_per_point(self) -> int:
        return 2 if self.encoding == "continuous" else self.n_dims + 1

    @property
    def sequence_length(self) -> int:
        return self.n_points * self.tokens_per_point


class Batch(NamedTuple):
    xs: jax.Array  # [B, n, d]
    ys: jax.Array  # [B, n]
    point_mask: jax.Array  # [n] 1 for points inside the current curriculum length


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
    """Weight vectors, fresh from the Gaussian prior or, given `pool_key`, from a pool of M tasks.

    Pool task j is always generated from fold_in(pool_key, j), so the pool is fixed for the run
    without being stored: sampling costs O(batch * d) for any M.
    """
    if pool_key is not None and cfg.task_pool_size:
        ids = jax.random.randint(key, (batch_size,), 0, cfg.task_pool_size)
        draw = lambda i: jax.random.normal(jax.random.fold_in(pool_key, i), (cfg.n_dims,))
        return cfg.prior_scale * jax.vmap(draw)(ids)
    return cfg.prior_scale * jax.random.normal(key, (batch_size, cfg.n_dims))


def sample_batch(key, cfg: DataConfig, batch_size: int, step=None, pool_key=None) -> Batch:
    """One batch of regression sequences.

    `step` selects the curriculum stage (None: the full task); `pool_key` draws w from the run's
    finite task pool (None: fresh from the prior, as for evaluation).
    """
    w_key, x_key, sigma_key, eps_key = jax.random.split(key, 4)
    ws = sample_weights(w_key, cfg, batch_size, pool_key)
    xs = jax.random.normal(x_key, (batch_size, cfg.n_points, cfg.n_dims))
    dims, points = (cfg.n_dims, cfg.n_points) if step is None else curriculum_stage(cfg, step)
    xs = xs * (jnp.arange(cfg.n_dims) < dims)  # truncated dims are zeroed, as in Garg et al.
    sigma = jax.random.choice(sigma_key, jnp.asarray(cfg.noise_stds, jnp.float32), (batch_size, 1))
    ys = jnp.einsum("bnd,bd->bn", xs, ws) + sigma * jax.random.normal(eps_key, (batch_size, cfg.n_points))
    point_mask = (jnp.arange(cfg.n_points) < points).astype(jnp.float32)
    return Batch(xs, ys, point_mask)


def bin_centres(cfg: DataConfig) -> jax.Array:
    edges = jnp.linspace(-cfg.bin_range, cfg.bin_range, cfg.vocab_size + 1)
    return (edges[:-1] + edges[1:]) / 2


def to_tokens(cfg: DataConfig, values: jax.Array) -> jax.Array:
    """Uniform bins on [-bin_range, bin_range] of standardised values; outliers go to the end bins."""
    ids = jnp.floor((values + cfg.bin_range) / (2 * cfg.bin_range) * cfg.vocab_size)
    return jnp.clip(ids, 0, cfg.vocab_size - 1).astype(jnp.int32)


def encode(cfg: DataConfig, xs: jax.Array, ys: jax.Array) -> jax.Array:
    """Model inputs.

    continuous: [B, 2n, d], x-token then y-token (y in the first coordinate), as in Garg et al.
    tokens: [B, n(d+1)] ids of [x0_0 ... x0_{d-1}, y0, x1_0, ...], y standardised by `y_scale`.
    """
    if cfg.encoding == "continuous":
        y_tokens = jnp.zeros_like(xs).at[..., 0].set(ys)
        return jnp.stack([xs, y_tokens], axis=2).reshape(xs.shape[0], -1, xs.shape[-1])
    values = jnp.concatenate([xs, ys[..., None] / cfg.y_scale], axis=-1)
    return to_tokens(cfg, values).reshape(xs.shape[0], -1)


def y_target_tokens(cfg: DataConfig, ys: jax.Array) -> jax.Array:
    return to_tokens(cfg, ys / cfg.y_scale)


def prediction_outputs(cfg: DataConfig, outputs: jax.Array) -> jax.Array:
    """The model outputs that predict each y_i: [B, n, out] from [B, T, out].

    continuous: the output at x_i's token; tokens: the output at the last coordinate of x_i,
    whose next token is y_i.
    """
    per_point = outputs.reshape(outputs.shape[0], cfg.n_points, cfg.tokens_per_point, -1)
    return per_point[:, :, cfg.tokens_per_point - 2]


def decode_predictions(cfg: DataConfig, outputs: jax.Array) -> jax.Array:
    """y predictions [B, n]: the scalar read-out, or the expected bin centre under the logits."""
    preds = prediction_outputs(cfg, outputs)
    if cfg.encoding == "continuous":
        return preds[..., 0]
    return jax.nn.softmax(preds, axis=-1) @ bin_centres(cfg) * cfg.y_scale
