"""How prompts become model inputs, and model outputs become predictions and a loss.

continuous (Garg et al.): an x-token and a y-token per point, a linear read-in, one scalar out, MSE.
tokens: every value binned into `vocab_size` ids, an embedding table, logits, cross-entropy.
"""

import jax
import jax.numpy as jnp
import optax

from icl_lr.config import DataConfig


def bin_centres(cfg: DataConfig) -> jax.Array:
    edges = jnp.linspace(-cfg.bin_range, cfg.bin_range, cfg.vocab_size + 1)
    return (edges[:-1] + edges[1:]) / 2


def to_tokens(cfg: DataConfig, values: jax.Array) -> jax.Array:
    """Uniform bins on [-bin_range, bin_range] of standardised values; outliers go to the end bins."""
    ids = jnp.floor((values + cfg.bin_range) / (2 * cfg.bin_range) * cfg.vocab_size)
    return jnp.clip(ids, 0, cfg.vocab_size - 1).astype(jnp.int32)


def encode(cfg: DataConfig, xs_BxNxD: jax.Array, ys_BxN: jax.Array) -> jax.Array:
    """Model inputs.

    continuous: [B, 2N, D], x-token then y-token (y in the first coordinate), as in Garg et al.
    tokens: [B, N(D+1)] ids of [x0_0 ... x0_{D-1}, y0, x1_0, ...], y standardised by `y_scale`.
    """
    batch = xs_BxNxD.shape[0]
    if cfg.encoding == "continuous":
        y_tokens_BxNxD = jnp.zeros_like(xs_BxNxD).at[..., 0].set(ys_BxN)
        return jnp.stack([xs_BxNxD, y_tokens_BxNxD], axis=2).reshape(batch, -1, xs_BxNxD.shape[-1])
    values_BxNxD1 = jnp.concatenate([xs_BxNxD, ys_BxN[..., None] / cfg.y_scale], axis=-1)
    return to_tokens(cfg, values_BxNxD1).reshape(batch, -1)


def y_target_tokens(cfg: DataConfig, ys_BxN: jax.Array) -> jax.Array:
    return to_tokens(cfg, ys_BxN / cfg.y_scale)


def prediction_outputs(cfg: DataConfig, outputs_BxTxO: jax.Array) -> jax.Array:
    """The model outputs that predict each y_i: [B, N, O] from [B, T, O].

    continuous: the output at x_i's token; tokens: the output at the last coordinate of x_i,
    whose next token is y_i.
    """
    per_point = outputs_BxTxO.reshape(outputs_BxTxO.shape[0], cfg.n_points, cfg.tokens_per_point, -1)
    return per_point[:, :, cfg.tokens_per_point - 2]


def decode_predictions(cfg: DataConfig, outputs_BxTxO: jax.Array) -> jax.Array:
    """y predictions [B, N]: the scalar read-out, or the expected bin centre under the logits."""
    preds_BxNxO = prediction_outputs(cfg, outputs_BxTxO)
    if cfg.encoding == "continuous":
        return preds_BxNxO[..., 0]
    return jax.nn.softmax(preds_BxNxO, axis=-1) @ bin_centres(cfg) * cfg.y_scale


def point_losses(cfg: DataConfig, outputs_BxTxO: jax.Array, ys_BxN: jax.Array) -> jax.Array:
    """Loss per predicted y [B, N]: squared error (continuous) or the y token's cross-entropy (tokens)."""
    if cfg.encoding == "continuous":
        return (decode_predictions(cfg, outputs_BxTxO) - ys_BxN) ** 2
    logits_BxNxV = prediction_outputs(cfg, outputs_BxTxO)
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxNxV, y_target_tokens(cfg, ys_BxN))
