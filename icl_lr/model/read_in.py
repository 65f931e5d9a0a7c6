"""The input side of an encoding: how prompts are laid out as the model's inputs, and the read-in module
that embeds them (a module of the model, whose parameters are the model's).

continuous (Garg et al.): an x-token and a y-token per point, a linear read-in.
tokens: every value binned into `vocab_size` ids, an embedding table and its optional companions.
"""

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from icl_lr.model.bins import Bins, BinsConfig
from icl_lr.model.config import ModelConfig
from icl_lr.model.lsa import gd_read_in_init
from icl_lr.task.config import DataConfig


def read_in_init(fan_in: int, embedding_std: float) -> nn.initializers.Initializer:
    """A linear read-in of unit-variance inputs whose embeddings have std `embedding_std`."""
    return nn.initializers.normal(embedding_std / fan_in**0.5)


class LinearReadIn(nn.Module):
    """x- and y-tokens [B, T, D] -> embeddings [B, T, E] of std `embedding_std` (parameters `read_in`), or as the
    family's keys initialise it (ModelConfig.linear_inits)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, inputs_BxTxD):
        fan_in = inputs_BxTxD.shape[-1]
        inits = {"kernel_init": read_in_init(fan_in, self.config.embedding_std)} | self.config.linear_inits(fan_in)
        return nn.Dense(self.config.n_embd, name="read_in", **inits)(inputs_BxTxD)


@dataclass(frozen=True)
class ContinuousInputs:
    """Garg et al.'s layout: [x_0, (y_0, 0, ..., 0), x_1, ...], [B, 2N, D]; the out at x_i predicts y_i."""

    cfg: DataConfig
    tokens_per_point = 2

    def encode(self, xs_BxNxD: jax.Array, ys_BxN: jax.Array) -> jax.Array:
        y_tokens_BxNxD = jnp.zeros_like(xs_BxNxD).at[..., 0].set(ys_BxN)
        return jnp.stack([xs_BxNxD, y_tokens_BxNxD], axis=2).reshape(xs_BxNxD.shape[0], -1, xs_BxNxD.shape[-1])

    def read_in(self, model_cfg: ModelConfig) -> nn.Module:
        return LinearReadIn(model_cfg)

    def seen_values(self, xs_BxNxD: jax.Array, ys_BxN: jax.Array) -> tuple | None:
        """The prompts as the model sees them: exactly (None: nothing is quantised)."""
        return None


class PairedReadIn(nn.Module):
    """Paired tokens [B, N, 2, D + 1] -> embeddings [B, N, 2, E] (parameters `read_in`): a linear read-in, or
    under model.init=gd the construction's identity."""

    config: ModelConfig

    @nn.compact
    def __call__(self, inputs_BxNx2xD1):
        gd = getattr(self.config, "init", None) == "gd"  # lsa's construction (the encoder has no model.init)
        kernel_init = gd_read_in_init if gd else read_in_init(inputs_BxNx2xD1.shape[-1], self.config.embedding_std)
        return nn.Dense(self.config.n_embd, kernel_init=kernel_init, name="read_in")(inputs_BxNx2xD1)


@dataclass(frozen=True)
class PairedInputs:
    """One token per point, e_i = (y_i, x_i), for the lsa and encoder families: [B, N, 2, D + 1], each point
    twice, with its y (a context token of the later points) and with y = 0 (the query that predicts y_i)."""

    cfg: DataConfig
    tokens_per_point = 1

    def encode(self, xs_BxNxD: jax.Array, ys_BxN: jax.Array) -> jax.Array:
        with_y_BxNxD1 = jnp.concatenate([ys_BxN[..., None], xs_BxNxD], axis=-1)
        return jnp.stack([with_y_BxNxD1, with_y_BxNxD1.at[..., 0].set(0.0)], axis=2)

    def read_in(self, model_cfg: ModelConfig) -> nn.Module:
        return PairedReadIn(model_cfg)

    def seen_values(self, xs_BxNxD: jax.Array, ys_BxN: jax.Array) -> tuple | None:
        """The prompts as the model sees them: exactly (None: nothing is quantised)."""
        return None


@dataclass(frozen=True)
class TokensConfig(BinsConfig):
    """The tokens encoding's keys: its bins' and the read-in's switches (docs/tokens.md)."""

    token_slot_embedding: bool = False
    token_value_embedding: bool = False
    token_point_embedding: bool = False
    token_short_conv: bool = False


class TokenReadIn(nn.Module):
    """Token ids [B, T] -> embeddings [B, T, E]: the token table's row, plus, each behind its switch
    (docs/tokens.md): an embedding of the token's slot in its point (x_0 .. x_{D-1}, y), of the point it belongs
    to, and its bin centre times a learned direction per slot (the continuous read-in's x_c W_c, one
    coordinate per token); then a causal short convolution, e_t + sum_o kernel_o * e_{t-o} over o = 0..D,
    that gathers a point into one position (H3's short convolution, Fu et al. 2023)."""

    data: DataConfig
    config: ModelConfig

    @nn.compact
    def __call__(self, ids_BxT):
        cfg, width, per_point = self.data, self.config.n_embd, self.data.n_dims + 1
        init = nn.initializers.normal(self.config.embedding_std)  # one-hot inputs: a row is the embedding
        embeddings_BxTxE = nn.Embed(cfg.vocab_size, width, embedding_init=init, name="wte")(ids_BxT)
        slot_T = jnp.arange(ids_BxT.shape[1]) % per_point
        point_T = jnp.arange(ids_BxT.shape[1]) // per_point
        if cfg.token_slot_embedding:
            embeddings_BxTxE += nn.Embed(per_point, width, embedding_init=init, name="wse")(slot_T)
        if cfg.token_point_embedding:
            embeddings_BxTxE += nn.Embed(cfg.n_points, width, embedding_init=init, name="wpte")(point_T)
        if cfg.token_value_embedding:
            direction_TxE = nn.Embed(per_point, width, embedding_init=init, name="wve")(slot_T)
            embeddings_BxTxE += Bins(cfg).centres()[ids_BxT][..., None] * direction_TxE
        if cfg.token_short_conv:  # shifted copies summed: XLA's grouped convolution is slow on a CPU
            offsets = jnp.arange(per_point)  # the kernel [W, E], held as an Embed's table
            kernel_WxE = nn.Embed(per_point, width, embedding_init=init, name="short_conv")(offsets)
            shifted = lambda o: jnp.pad(embeddings_BxTxE, ((0, 0), (o, 0), (0, 0)))[:, : ids_BxT.shape[1]]
            embeddings_BxTxE += sum(kernel_WxE[o] * shifted(o) for o in range(per_point))
        return embeddings_BxTxE


@dataclass(frozen=True)
class TokenInputs:
    """One token per value: ids [B, N(D+1)] of [x0_0 ... x0_{D-1}, y0, x1_0, ...], every value binned (x as
    is, y standardised by `y_scale`); the outputs at x_i's last coordinate predict y_i."""

    cfg: DataConfig

    @property
    def tokens_per_point(self) -> int:
        return self.cfg.n_dims + 1

    @property
    def bins(self) -> Bins:
        return Bins(self.cfg)

    def encode(self, xs_BxNxD, ys_BxN):
        values_BxNxD1 = jnp.concatenate([xs_BxNxD, ys_BxN[..., None] / self.cfg.y_scale], axis=-1)
        return self.bins.to_tokens(values_BxNxD1).reshape(xs_BxNxD.shape[0], -1)

    def read_in(self, model_cfg: ModelConfig) -> nn.Module:
        return TokenReadIn(self.cfg, model_cfg)

    def seen_values(self, xs_BxNxD, ys_BxN):
        """The bin centres, and the variance rounding adds to each y: rounding x moves w^T x by w^T u,
        variance prior^2 d r on average over w (r = `rounding_variance`); rounding y adds y_scale^2 r."""
        cfg, bins = self.cfg, self.bins
        centres = bins.centres()
        ids_BxNxD1 = self.encode(xs_BxNxD, ys_BxN).reshape(*ys_BxN.shape, self.tokens_per_point)
        added_var = (cfg.prior_scale**2 * cfg.n_dims + cfg.y_scale**2) * bins.rounding_variance
        return centres[ids_BxNxD1[..., :-1]], centres[ids_BxNxD1[..., -1]] * cfg.y_scale, added_var
