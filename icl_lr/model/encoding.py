"""How prompts become model inputs, and model outputs become predictions and a loss: one Encoding per format.

continuous (Garg et al.): an x-token and a y-token per point, a linear read-in, one scalar out, MSE.
tokens: every value binned into `vocab_size` ids, an embedding table, logits over
the bins, a loss on the y's bin and on the decoded mean.
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

from icl_lr.model.config import ModelConfig
from icl_lr.model.gpt2 import read_in_init
from icl_lr.task import baselines
from icl_lr.task.config import DataConfig


@dataclass(frozen=True)
class Encoding:
    """A format's layout, read-in, loss and decoding (O = `n_outputs`, the read-out's width per token)."""

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

    def eval_metrics(self, outputs_BxTxO: jax.Array, ys_BxN: jax.Array) -> dict:
        """Per-point metrics [B, N] of the model's outputs; their means over prompts are the eval curves.
        Error curves are named by predictor, other metrics metric/predictor (tracking.is_error_curve)."""
        return {"model": (self.predict(outputs_BxTxO) - ys_BxN) ** 2 / self.cfg.n_dims}

    def seen_values(self, xs_BxNxD: jax.Array, ys_BxN: jax.Array) -> tuple | None:
        """(xs, ys, the noise variance rounding adds to each y) as the model sees them, decoded, when the
        encoding quantises its inputs; else None."""
        return None

    def yardsticks(self, xs_BxNxD: jax.Array, ys_BxN: jax.Array) -> dict:
        """Per-point metrics [B, N] of reference predictors that depend only on the prompts."""
        return {}


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
    """A y predicted as a distribution over `vocab_size` bins of y / y_scale (`bin_scheme`: uniform on
    [-bin_range, bin_range], or N(0, 1)'s equal-probability bins): logits [.., V] per token, a loss on
    the y's bin and on the decoded mean, the expected bin centre as the prediction."""

    cfg: DataConfig

    @property
    def n_outputs(self) -> int:
        return self.cfg.vocab_size

    def bin_edges(self) -> jax.Array:
        """[V + 1] edges in standardised units; the end bins also take the values beyond their outer edge."""
        cfg = self.cfg
        if cfg.bin_scheme == "gaussian_quantiles":
            return jax.scipy.stats.norm.ppf(jnp.linspace(0.0, 1.0, cfg.vocab_size + 1))  # -inf ... inf
        return jnp.linspace(-cfg.bin_range, cfg.bin_range, cfg.vocab_size + 1)

    def bin_centres(self) -> jax.Array:
        """Uniform bins: midpoints. Quantile bins: N(0, 1)'s mean within each bin, V (pdf(a) - pdf(b))."""
        edges = self.bin_edges()
        if self.cfg.bin_scheme == "gaussian_quantiles":
            return self.cfg.vocab_size * -jnp.diff(jax.scipy.stats.norm.pdf(edges))
        return (edges[:-1] + edges[1:]) / 2

    @property
    def rounding_variance(self) -> float:
        """E[(v - its bin's centre)^2] of a standardised value: width^2 / 12 for uniform bins (clipping
        aside); for quantile bins, whose centres are conditional means, 1 - mean(centre^2) exactly."""
        if self.cfg.bin_scheme == "gaussian_quantiles":
            return float(1 - jnp.mean(self.bin_centres() ** 2))
        return (2 * self.cfg.bin_range / self.cfg.vocab_size) ** 2 / 12

    def to_tokens(self, values: jax.Array) -> jax.Array:
        """Bin ids of standardised values; outliers go to the end bins."""
        return jnp.searchsorted(self.bin_edges()[1:-1], values, side="right").astype(jnp.int32)

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

    def eval_metrics(self, outputs_BxTxV, ys_BxN):
        """Beside the mean's error: the median's, the y bin's cross-entropy, and the coverage of the
        histogram's central 50% and 90% intervals (a calibrated model covers about 50% and 90%)."""
        logits_BxNxV = self.prediction_outputs(outputs_BxTxV)
        targets_BxN = self.y_targets(ys_BxN)
        cdf_BxNxV = jnp.cumsum(jax.nn.softmax(logits_BxNxV, axis=-1), axis=-1)
        quantile_bin = lambda q: jnp.argmax(cdf_BxNxV >= q, axis=-1)  # the bin where the cdf reaches q
        median_BxN = self.bin_centres()[quantile_bin(0.5)] * self.cfg.y_scale
        coverage = lambda p: (quantile_bin((1 - p) / 2) <= targets_BxN) & (targets_BxN <= quantile_bin((1 + p) / 2))
        return super().eval_metrics(outputs_BxTxV, ys_BxN) | {
            "model_median": (median_BxN - ys_BxN) ** 2 / self.cfg.n_dims,
            "ce/model": optax.softmax_cross_entropy_with_integer_labels(logits_BxNxV, targets_BxN),
            "coverage/50": coverage(0.5).astype(jnp.float32),
            "coverage/90": coverage(0.9).astype(jnp.float32),
        }

    def yardsticks(self, xs_BxNxD, ys_BxN):
        """Cross-entropy of the y bin under two Gaussian predictives integrated over the same bins, from the
        exact prompts: Bayes's posterior predictive N(x^T mu_post, s^2 + x^T Sigma_post x) (`ce/bayes`; the
        model's excess over it is the gap), and the prior predictive N(0, prior^2 |x|^2 + s^2), the best
        without context (`ce/marginal`). s^2 is the noise's variance plus the bins' resolution
        (`rounding_variance`, width^2 / 12 for uniform bins) in y's units, so that with no noise a known y
        is spread over its bin, not a point. One noise std only: none for a hierarchical prior, whose
        predictive is not one Gaussian."""
        cfg = self.cfg
        if len(cfg.noise_stds) > 1:
            return {}
        noise_var = cfg.noise_std**2 + self.rounding_variance * cfg.y_scale**2
        predictive = lambda x, y: baselines.bayes_predictive(x, y, cfg.prior_scale, noise_var)
        mean_BxN, var_BxN = jax.vmap(predictive)(xs_BxNxD, ys_BxN)
        prior_var_BxN = cfg.prior_scale**2 * jnp.sum(xs_BxNxD**2, axis=-1) + noise_var
        return {
            "ce/bayes": self.binned_cross_entropy(mean_BxN, var_BxN, ys_BxN),
            "ce/marginal": self.binned_cross_entropy(jnp.zeros_like(ys_BxN), prior_var_BxN, ys_BxN),
        }

    def binned_cross_entropy(self, mean_BxN, var_BxN, ys_BxN) -> jax.Array:
        """-log P(y's bin) under N(mean, var) in y's units; the end bins reach to infinity, as to_tokens's."""
        edges = self.bin_edges().at[0].set(-jnp.inf).at[-1].set(jnp.inf) * self.cfg.y_scale
        targets_BxN = self.y_targets(ys_BxN)
        std_BxN = jnp.sqrt(jnp.maximum(var_BxN, 1e-12))
        cdf = lambda edge: jax.scipy.stats.norm.cdf((edge - mean_BxN) / std_BxN)
        mass_BxN = cdf(edges[targets_BxN + 1]) - cdf(edges[targets_BxN])
        return -jnp.log(jnp.maximum(mass_BxN, 1e-30))


class Tokens(BinnedOutput, Encoding):
    """One token per value: ids [B, N(D+1)] of [x0_0 ... x0_{D-1}, y0, x1_0, ...], every value binned (x as is,
    y standardised by `y_scale`), an embedding table; the logits at x_i's last coordinate predict y_i."""

    @property
    def tokens_per_point(self) -> int:
        return self.cfg.n_dims + 1

    def encode(self, xs_BxNxD, ys_BxN):
        values_BxNxD1 = jnp.concatenate([xs_BxNxD, ys_BxN[..., None] / self.cfg.y_scale], axis=-1)
        return self.to_tokens(values_BxNxD1).reshape(xs_BxNxD.shape[0], -1)

    def seen_values(self, xs_BxNxD, ys_BxN):
        """The bin centres, and the variance rounding adds to each y: rounding x moves w^T x by w^T u,
        variance prior^2 d r on average over w (r = `rounding_variance`); rounding y adds y_scale^2 r."""
        cfg = self.cfg
        centres = self.bin_centres()
        ids_BxNxD1 = self.encode(xs_BxNxD, ys_BxN).reshape(*ys_BxN.shape, self.tokens_per_point)
        added_var = (cfg.prior_scale**2 * cfg.n_dims + cfg.y_scale**2) * self.rounding_variance
        return centres[ids_BxNxD1[..., :-1]], centres[ids_BxNxD1[..., -1]] * cfg.y_scale, added_var

    def read_in(self, ids_BxT, model_cfg):
        """The token table's row, plus, each behind its switch (README, "Encodings"): an embedding of the
        token's slot in its point (x_0 .. x_{D-1}, y), of the point it belongs to, and its bin centre times
        a learned direction per slot (the continuous read-in's x_c W_c, one coordinate per token); then a
        causal short convolution, e_t + sum_o kernel_o * e_{t-o} over o = 0..D, that gathers a point into
        one position (H3's short convolution, Fu et al. 2023)."""
        cfg, width = self.cfg, model_cfg.n_embd
        init = nn.initializers.normal(model_cfg.embedding_std)  # one-hot inputs: a row is the embedding
        embeddings_BxTxE = nn.Embed(cfg.vocab_size, width, embedding_init=init, name="wte")(ids_BxT)
        slot_T = jnp.arange(ids_BxT.shape[1]) % self.tokens_per_point
        point_T = jnp.arange(ids_BxT.shape[1]) // self.tokens_per_point
        if cfg.token_slot_embedding:
            embeddings_BxTxE += nn.Embed(self.tokens_per_point, width, embedding_init=init, name="wse")(slot_T)
        if cfg.token_point_embedding:
            embeddings_BxTxE += nn.Embed(cfg.n_points, width, embedding_init=init, name="wpte")(point_T)
        if cfg.token_value_embedding:
            direction_TxE = nn.Embed(self.tokens_per_point, width, embedding_init=init, name="wve")(slot_T)
            embeddings_BxTxE += self.bin_centres()[ids_BxT][..., None] * direction_TxE
        if cfg.token_short_conv:  # shifted copies summed: XLA's grouped convolution is slow on a CPU
            offsets = jnp.arange(self.tokens_per_point)  # the kernel [D + 1, width], held as an Embed's table
            kernel_WxE = nn.Embed(self.tokens_per_point, width, embedding_init=init, name="short_conv")(offsets)
            shifted = lambda o: jnp.pad(embeddings_BxTxE, ((0, 0), (o, 0), (0, 0)))[:, : ids_BxT.shape[1]]
            embeddings_BxTxE += sum(kernel_WxE[o] * shifted(o) for o in range(self.tokens_per_point))
        return embeddings_BxTxE


class BinnedY(BinnedOutput, Continuous):
    """Continuous inputs as Garg et al.'s, the y read out over bins (the bar distribution of PFNs, Muller
    et al. 2022): separates the cost of a discrete output from that of discretised inputs."""


ENCODINGS = {"continuous": Continuous, "tokens": Tokens, "binned_y": BinnedY}  # data.encoding -> its class


def encoding_of(cfg: DataConfig) -> Encoding:
    return ENCODINGS[cfg.encoding](cfg)
