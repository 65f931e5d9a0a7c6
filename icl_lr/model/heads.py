"""The output side of an encoding: the read-out's width per token, and what its outputs at each point
mean: the prediction of y, the training loss, the eval metrics and the baselines' metrics beside them.
Every function here takes the outputs that predict each y_i, [B, N, O] (the encoding selects them).

scalar: one number out, the prediction itself, squared error (Garg et al.).
binned: logits over `vocab_size` bins of y / y_scale, a loss on the y's bin and on the decoded mean,
the expected bin centre as the prediction (the bar distribution of PFNs, Muller et al. 2022).
"""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax

from icl_lr.model.bins import Bins
from icl_lr.records.schema import MODEL
from icl_lr.task.base import Task
from icl_lr.task.config import DataConfig


def _error(preds_BxN, ys_BxN, n_dims: int) -> jax.Array:
    """Squared error / d, the metric every error curve holds."""
    return (preds_BxN - ys_BxN) ** 2 / n_dims


@dataclass(frozen=True)
class ScalarHead:
    cfg: DataConfig
    task: Task  # its metrics beside the squared error
    n_outputs = 1

    def predict(self, outs_BxNxO: jax.Array) -> jax.Array:
        """y predictions [B, N]."""
        return outs_BxNxO[..., 0]

    def point_losses(self, outs_BxNxO: jax.Array, ys_BxN: jax.Array) -> jax.Array:
        """The training loss of each predicted y [B, N]."""
        return (self.predict(outs_BxNxO) - ys_BxN) ** 2

    def eval_metrics(self, outs_BxNxO: jax.Array, ys_BxN: jax.Array) -> dict:
        """Per-point metrics [B, N], whose means over prompts are the eval curves (schema.is_error_curve): the
        squared error / d and the task's other metrics (`<metric>/model`)."""
        preds_BxN = self.predict(outs_BxNxO)
        others = self.task.metrics(preds_BxN, ys_BxN)
        return {MODEL: _error(preds_BxN, ys_BxN, self.cfg.n_dims)} | {f"{m}/{MODEL}": v for m, v in others.items()}

    def baseline_metrics(self, xs_BxNxD: jax.Array, ys_BxN: jax.Array) -> dict:
        """Per-point metrics [B, N] of the baselines this output side adds: none."""
        return {}


@dataclass(frozen=True)
class BinnedHead:
    cfg: DataConfig
    task: Task  # its Bayes predictive, the cross-entropy baselines' (bayes_predictive)

    @property
    def n_outputs(self) -> int:
        return self.cfg.vocab_size

    @property
    def bins(self) -> Bins:
        return Bins(self.cfg)

    def predict(self, logits_BxNxV):
        """The expected bin centre under the logits, in y's units."""
        return jax.nn.softmax(logits_BxNxV, axis=-1) @ self.bins.centres() * self.cfg.y_scale

    def point_losses(self, logits_BxNxV, ys_BxN):
        """ce_weight x the y bin's cross-entropy + mean_loss_weight x the squared error of the decoded mean,
        in units of y_scale (the Number Token Loss of Zausinger et al. 2025, here on the expected centre)."""
        cfg = self.cfg
        cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits_BxNxV, self.bins.y_targets(ys_BxN))
        mean_error = ((self.predict(logits_BxNxV) - ys_BxN) / cfg.y_scale) ** 2
        return cfg.ce_weight * cross_entropy + cfg.mean_loss_weight * mean_error

    def eval_metrics(self, logits_BxNxV, ys_BxN):
        """The mean's error and the median's, the y bin's cross-entropy, and the coverage of the histogram's
        central 50% and 90% intervals (a calibrated model covers about 50% and 90%)."""
        targets_BxN = self.bins.y_targets(ys_BxN)
        cdf_BxNxV = jnp.cumsum(jax.nn.softmax(logits_BxNxV, axis=-1), axis=-1)
        quantile_bin = lambda q: jnp.argmax(cdf_BxNxV >= q, axis=-1)  # the bin where the cdf reaches q
        median_BxN = self.bins.centres()[quantile_bin(0.5)] * self.cfg.y_scale
        coverage = lambda p: (quantile_bin((1 - p) / 2) <= targets_BxN) & (targets_BxN <= quantile_bin((1 + p) / 2))
        return {
            MODEL: _error(self.predict(logits_BxNxV), ys_BxN, self.cfg.n_dims),
            "model_median": _error(median_BxN, ys_BxN, self.cfg.n_dims),
            "ce/model": optax.softmax_cross_entropy_with_integer_labels(logits_BxNxV, targets_BxN),
            "coverage/50": coverage(0.5).astype(jnp.float32),
            "coverage/90": coverage(0.9).astype(jnp.float32),
        }

    def baseline_metrics(self, xs_BxNxD, ys_BxN):
        """Cross-entropy of the y bin under two Gaussian predictives integrated over the same bins, from the
        exact prompts: Bayes's posterior predictive N(x^T mu_post, s^2 + x^T Sigma_post x) (`ce/bayes`; the
        model's excess over it is the gap), and the prior predictive N(0, prior^2 |x|^2 + s^2), the best
        without context (`ce/marginal`). s^2 is the noise's variance plus the bins' resolution
        (`rounding_variance`, width^2 / 12 for uniform bins) in y's units, so that with no noise a known y
        is spread over its bin, not a point. One Gaussian noise std only: none for a hierarchical prior or
        non-Gaussian noise (data.noise_dist), whose predictive is not one Gaussian."""
        cfg = self.cfg
        if len(cfg.noise_stds) > 1 or not cfg.gaussian_noise:
            return {}
        noise_var = cfg.noise_std**2 + self.bins.rounding_variance * cfg.y_scale**2
        predictive = lambda x, y: self.task.bayes_predictive(x, y, noise_var)
        mean_BxN, var_BxN = jax.vmap(predictive)(xs_BxNxD, ys_BxN)
        prior_var_BxN = cfg.prior_scale**2 * jnp.sum(xs_BxNxD**2, axis=-1) + noise_var
        return {
            "ce/bayes": self.binned_cross_entropy(mean_BxN, var_BxN, ys_BxN),
            "ce/marginal": self.binned_cross_entropy(jnp.zeros_like(ys_BxN), prior_var_BxN, ys_BxN),
        }

    def binned_cross_entropy(self, mean_BxN, var_BxN, ys_BxN) -> jax.Array:
        """-log P(y's bin) under N(mean, var) in y's units; the end bins reach to infinity, as to_tokens's."""
        edges = self.bins.edges().at[0].set(-jnp.inf).at[-1].set(jnp.inf) * self.cfg.y_scale
        targets_BxN = self.bins.y_targets(ys_BxN)
        std_BxN = jnp.sqrt(jnp.maximum(var_BxN, 1e-12))
        cdf = lambda edge: jax.scipy.stats.norm.cdf((edge - mean_BxN) / std_BxN)
        mass_BxN = cdf(edges[targets_BxN + 1]) - cdf(edges[targets_BxN])
        return -jnp.log(jnp.maximum(mass_BxN, 1e-30))
