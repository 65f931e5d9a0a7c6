"""Fourier-series regression (Panwar et al. 2024, mdrpanwar/icl-bayesian-prism src/tasks.py, FourierSeriesV2):
one scalar x per point, y = a_0 + sum_{n=1}^{F} a_n cos(n pi x / L) + b_n sin(n pi x / L), every coefficient
~ N(0, prior_scale^2), F = data.max_frequency, L = data.half_period.

Linear in its 2F + 1 Fourier features, so the Bayes-optimal predictor is ridge on those features (the reference
of the model's excess); least squares on them is Panwar et al.'s own baseline.
"""

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp

from icl_lr.fields import check
from icl_lr.records.schema import BAYES
from icl_lr.task import baselines
from icl_lr.task.sampling import Prompts


@dataclass(frozen=True)
class FourierSeriesConfig:
    """The task's keys under `data:` (conf/data/fourier_series.yaml documents them)."""

    max_frequency: int = 3
    half_period: float = 5.0

    def check(self) -> None:  # runs on the whole data section: the shared keys are there too
        check(self.n_dims == 1, f"data.task=fourier_series: data.n_dims must be 1, got {self.n_dims}")
        check(1 <= self.max_frequency <= 64, f"data.max_frequency must be in [1, 64], got {self.max_frequency}")
        check(self.half_period > 0, f"data.half_period must be > 0, got {self.half_period}")


def features(xs_NxD, max_frequency: int, half_period: float) -> jax.Array:
    """[1, cos(n pi x / L), sin(n pi x / L) for n = 1..F] of each point, [N, 2F + 1]."""
    angles_NxF = jnp.pi / half_period * xs_NxD[:, :1] * jnp.arange(1, max_frequency + 1)
    return jnp.concatenate([jnp.ones_like(xs_NxD[:, :1]), jnp.cos(angles_NxF), jnp.sin(angles_NxF)], axis=-1)


@dataclass(frozen=True)
class FourierSeries(Prompts):
    Config = FourierSeriesConfig

    def draw(self, key, batch_size: int) -> jax.Array:
        return self.cfg.prior_scale * jax.random.normal(key, (batch_size, 2 * self.cfg.max_frequency + 1))

    def label(self, coefficients_BxC, xs_BxNxD) -> jax.Array:
        phi = jax.vmap(lambda xs: features(xs, self.cfg.max_frequency, self.cfg.half_period))(xs_BxNxD)
        return jnp.einsum("bnc,bc->bn", phi, coefficients_BxC)

    def baselines(self, xs, ys, noise_stds: tuple, pool=None) -> dict:
        c = self.cfg
        return _fourier_baselines(xs, ys, c.max_frequency, c.half_period, c.prior_scale, noise_stds)


@partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _fourier_baselines(xs, ys, max_frequency: int, half_period: float, prior_scale: float, noise_stds: tuple) -> dict:
    on_features = lambda predict: lambda x, y: predict(features(x, max_frequency, half_period), y)
    own = {
        BAYES: on_features(lambda phi, y: baselines.bayes_optimal(phi, y, prior_scale, noise_stds)),
        "fourier_least_squares": on_features(baselines.least_squares),
    }
    return baselines.on_prompts(baselines.PRIOR_FREE | own, xs, ys)
