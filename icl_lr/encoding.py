"""How prompts become model inputs, and model outputs become predictions and a loss: one Encoding per format.

continuous (Garg et al.): an x-token and a y-token per point, a linear read-in, one scalar out, MSE.
tokens (the project's seed): every value binned into `vocab_size` ids, an embedding table, logits over
the bins, cross-entropy on the y tokens.
binned_y: continuous inputs, the y's bin predicted as tokens predict it.

An Encoding owns everything that depends on the format: the sequence layout, the model's read-in and
read-out width, the loss and the decoded predictions. Adding an encoding is one class and one entry
in ENCODINGS; config validation, the model, the train step and the eval read it from here.
"""

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from icl_lr.config import DataConfig, ModelConfig
from icl_lr.model import read_in_init


@dataclass(frozen=True)
class Encoding:
    """A format's layout, read-in, loss and decoding. Shapes: B prompts, N points, D = n_dims, T tokens,
    O outputs per token (`n_outputs`)."""

    cfg: DataConfig

    tokens_per_point = 2
    n_outputs = 1  # the read-out's width

    @property
    def sequence_length(self) -> int:
        return self.cfg.n_points * self.tokens_per_point

    def encode(self, xs_BxNxD: jax.Array, ys_BxN: jax.Array) -> jax.Array:
        """The model's inputs for these prompts."""
        raise NotImplementedError

    def read_in(self, inputs: jax.Array, model_cfg: ModelConfig) -> jax.Array:
        """Embeddings [B, T, n_embd] of std `model_cfg.embedding_std`; called inside the model, so its
        parameters are the model's."""
        raise NotImplementedError

    def predict(self, outputs_BxTxO: jax.Array) -> jax.Array:
        """y predictions [B, N] from the model's outputs."""
        raise NotImplementedError

    def point_losses(self, outputs_BxTxO: jax.Array, ys_BxN: jax.Array) -> jax.Array:
        """The training loss of each predicted y [B, N]."""
        raise NotImplementedError

    def prediction_outputs(self, outputs_BxTxO: jax.Array) -> jax.Array:
        """The outputs that predict each y_i [B, N, O]: those of the token just before y_i."""
        per_point = outputs_BxTxO.reshape(outputs_BxTxO.shape[0], self.cfg.n_points, self.tokens_per_point, -1)
        return per_point[:, :, self.tokens_per_point - 2]


class Continuous(Encoding):
    """Garg et al.'s layout: [x_0, (y_0, 0, ..., 0), x_1, ...], [B, 2N, D]; the scalar out at x_i predicts y_i."""

    def encode(self, xs_BxNxD, ys_BxN):
        y_tokens_BxNxD = jnp.zeros_like(xs_BxNxD).at[..., 0].set(ys_BxN)
        return jnp.stack([xs_BxNxD, y_tokens_BxNxD], axis=2).reshape(xs_BxNxD.shape[0], -1, xs_BxNxD.shape[-1])

    def read_in(self, inputs_BxTxD, model_cfg):
        kernel_init = read_in_init(inputs_BxTxD.shape[-1], model_cfg.embedding_std)
        return nn.Dense(model_cfg.n_embd, kernel_init=kernel_init, name="read_in")(inputs_BxTxD)

    def predict(self, outputs_BxTxO):
        return self.prediction_outputs(outputs_BxTxO)[..., 0]

    def point_losses(self, outputs_BxTxO, ys_BxN):
        return (self.predict(outputs_BxTxO) - ys_BxN) ** 2


class BinnedOutput:
    """A y predicted as a distribution over `vocab_size` uniform bins on [-bin_range, bin_range] of y / y_scale:
    logits [.., V] per token, a loss on the y's bin and on the decoded mean, the expected bin centre as the
    prediction."""

    cfg: DataConfig

    @property
    def n_outputs(self) -> int:
        return self.cfg.vocab_size

    def bin_centres(self) -> jax.Array:
        edges = jnp.linspace(-self.cfg.bin_range, self.cfg.bin_range, self.cfg.vocab_size + 1)
        return (edges[:-1] + edges[1:]) / 2

    def to_tokens(self, values: jax.Array) -> jax.Array:
        """Bin ids of standardised values; outliers go to the end bins."""
        cfg = self.cfg
        ids = jnp.floor((values + cfg.bin_range) / (2 * cfg.bin_range) * cfg.vocab_size)
        return jnp.clip(ids, 0, cfg.vocab_size - 1).astype(jnp.int32)

    def y_targets(self, ys_BxN: jax.Array) -> jax.Array:
        return self.to_tokens(ys_BxN / self.cfg.y_scale)

    def predict(self, outputs_BxTxV):
        """The expected bin centre under the logits, in y's units."""
        probs_BxNxV = jax.nn.softmax(self.prediction_outputs(outputs_BxTxV), axis=-1)
        return probs_BxNxV @ self.bin_centres() * self.cfg.y_scale

    def point_losses(self, outputs_BxTxV, ys_BxN):
        """ce_weight x the y bin's cross-entropy + mean_loss_weight x the squared error of the decoded mean,
        in units of y_scale (the Number Token Loss of Zausinger et al. 2025, here on the expected centre)."""
        cfg = self.cfg
        logits_BxNxV = self.prediction_outputs(outputs_BxTxV)
        cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits_BxNxV, self.y_targets(ys_BxN))
        mean_error = ((self.predict(outputs_BxTxV) - ys_BxN) / cfg.y_scale) ** 2
        return cfg.ce_weight * cross_entropy + cfg.mean_loss_weight * mean_error


class Tokens(BinnedOutput, Encoding):
    """The seed's layout: ids [B, N(D+1)] of [x0_0 ... x0_{D-1}, y0, x1_0, ...], every value binned (x as is,
    y standardised by `y_scale`), an embedding table; the logits at x_i's last coordinate predict y_i."""

    @property
    def tokens_per_point(self) -> int:
        return self.cfg.n_dims + 1

    def encode(self, xs_BxNxD, ys_BxN):
        values_BxNxD1 = jnp.concatenate([xs_BxNxD, ys_BxN[..., None] / self.cfg.y_scale], axis=-1)
        return self.to_tokens(values_BxNxD1).reshape(xs_BxNxD.shape[0], -1)

    def read_in(self, ids_BxT, model_cfg):
        rows_init = nn.initializers.normal(model_cfg.embedding_std)  # one-hot inputs: a row is the embedding
        return nn.Embed(self.cfg.vocab_size, model_cfg.n_embd, embedding_init=rows_init, name="wte")(ids_BxT)


class BinnedY(BinnedOutput, Continuous):
    """Continuous inputs as Garg et al.'s, the y read out over bins (the bar distribution of PFNs, Muller
    et al. 2022): separates the cost of a discrete output from that of discretised inputs."""


ENCODINGS = {"continuous": Continuous, "tokens": Tokens, "binned_y": BinnedY}  # data.encoding -> its class


def encoding_of(cfg: DataConfig) -> Encoding:
    return ENCODINGS[cfg.encoding](cfg)
