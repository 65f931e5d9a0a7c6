"""Bins of standardised values: how the tokens encoding reads its inputs and how a binned head reads out y."""

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from icl_lr.fields import check
from icl_lr.task.config import DataConfig

BIN_SCHEMES = ("uniform", "gaussian_quantiles")


@dataclass(frozen=True)
class BinsConfig:
    """The keys of an encoding that reads y out over bins (tokens, binned_y)."""

    vocab_size: int = 64
    bin_scheme: str = "uniform"
    bin_range: float = 3.0
    ce_weight: float = 1.0
    mean_loss_weight: float = 0.0

    def check(self) -> None:
        check(self.vocab_size >= 2, f"data.vocab_size must be >= 2, got {self.vocab_size}")
        check(self.bin_range > 0, f"data.bin_range must be > 0, got {self.bin_range}")
        check(self.bin_scheme in BIN_SCHEMES, f"data.bin_scheme must be one of {BIN_SCHEMES}, got {self.bin_scheme!r}")
        for key in ("ce_weight", "mean_loss_weight"):
            check(getattr(self, key) >= 0, f"data.{key} must be >= 0, got {getattr(self, key)}")
        check(self.ce_weight + self.mean_loss_weight > 0, "data.ce_weight and data.mean_loss_weight cannot both be 0")


@dataclass(frozen=True)
class Bins:
    """`vocab_size` bins of a value / its scale (`bin_scheme`: uniform on [-bin_range, bin_range], or
    N(0, 1)'s equal-probability bins); y is standardised by `y_scale`, x's are binned as they are."""

    cfg: DataConfig

    def edges(self) -> jax.Array:
        """[V + 1] edges in standardised units; the end bins also take the values beyond their outer edge."""
        cfg = self.cfg
        if cfg.bin_scheme == "gaussian_quantiles":
            return jax.scipy.stats.norm.ppf(jnp.linspace(0.0, 1.0, cfg.vocab_size + 1))  # -inf ... inf
        return jnp.linspace(-cfg.bin_range, cfg.bin_range, cfg.vocab_size + 1)

    def centres(self) -> jax.Array:
        """Uniform bins: midpoints. Quantile bins: N(0, 1)'s mean within each bin, V (pdf(a) - pdf(b))."""
        edges = self.edges()
        if self.cfg.bin_scheme == "gaussian_quantiles":
            return self.cfg.vocab_size * -jnp.diff(jax.scipy.stats.norm.pdf(edges))
        return (edges[:-1] + edges[1:]) / 2

    @property
    def rounding_variance(self) -> float:
        """E[(v - its bin's centre)^2] of a standardised value: width^2 / 12 for uniform bins (clipping
        aside); for quantile bins, whose centres are conditional means, 1 - mean(centre^2) exactly."""
        if self.cfg.bin_scheme == "gaussian_quantiles":
            return float(1 - jnp.mean(self.centres() ** 2))
        return (2 * self.cfg.bin_range / self.cfg.vocab_size) ** 2 / 12

    def to_tokens(self, values: jax.Array) -> jax.Array:
        """Bin ids of standardised values; outliers go to the end bins."""
        return jnp.searchsorted(self.edges()[1:-1], values, side="right").astype(jnp.int32)

    def y_targets(self, ys_BxN: jax.Array) -> jax.Array:
        """The bins of the y's."""
        return self.to_tokens(ys_BxN / self.cfg.y_scale)
