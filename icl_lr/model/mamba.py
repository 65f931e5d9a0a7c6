"""Mamba in Flax Linen: the trunk of the mamba family, the selective state-space model that Park et al. 2024
("Can Mamba learn how to learn?", krafton-ai/mambaformer-icl) compare with attention on in-context regression.

Each of n_layer residual blocks (Gu and Dao 2023, state-spaces/mamba mamba_simple.py): RMSNorm, then x and a
gate z from one projection (width expand E); x through a short causal depthwise convolution (d_conv) and SiLU;
an input-dependent step Delta, B and C from x; the selective scan h_t = exp(Delta_t A) h_{t-1} + Delta_t B_t x_t,
y_t = C_t h_t + D x_t (A diagonal, negative, per channel and state); y gated by SiLU(z) and projected back. A
final RMSNorm. The scan is jax.lax.associative_scan over time, in training and eval alike: no custom kernels,
so it runs on CPU, GPU and TPU, at the cost of [B, T, expand E, d_state] per layer (docs/model_families.md).
Causal by construction: the convolution and the scan see tokens up to t only.
"""

import math
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from icl_lr.model.config import HIDDEN, ModelConfig, check_counts

DT_MIN, DT_MAX = 1e-3, 1e-1  # the step's initial range (log-uniform), as mamba_simple.py's


@dataclass(frozen=True)
class MambaConfig:
    """The mamba family's keys (configs/model/mamba.yaml documents them)."""

    n_layer: int = 4
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2

    def check(self) -> None:
        check_counts(self, "n_layer", "d_state", "d_conv", "expand")

    @property
    def dt_rank(self) -> int:
        return math.ceil(self.n_embd / 16)


def selective_scan(a_BxTxCxS, b_BxTxCxS) -> jax.Array:
    """h_t = a_t * h_{t-1} + b_t from h_{-1} = 0, every t at once: the associative scan of (a, b) pairs."""
    combine = lambda first, second: (first[0] * second[0], second[0] * first[1] + second[1])
    return jax.lax.associative_scan(combine, (a_BxTxCxS, b_BxTxCxS), axis=1)[1]


def dt_bias_init(key, shape, dtype=jnp.float32):
    """softplus(bias) log-uniform in [DT_MIN, DT_MAX]: the inverse softplus of such steps."""
    dt = jnp.exp(jax.random.uniform(key, shape, dtype) * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN))
    return dt + jnp.log(-jnp.expm1(-dt))


class MambaMixer(nn.Module):
    config: ModelConfig
    dtype: Any

    @nn.compact
    def __call__(self, h_BxTxE):
        cfg = self.config
        channels, states = cfg.expand * cfg.n_embd, cfg.d_state
        x_BxTxC, z_BxTxC = jnp.split(
            nn.Dense(2 * channels, use_bias=False, dtype=self.dtype, name="in_proj")(h_BxTxE), 2, -1
        )
        conv = nn.Conv(channels, (cfg.d_conv,), padding=[(cfg.d_conv - 1, 0)], feature_group_count=channels,
                       dtype=self.dtype, name="conv1d")  # fmt: skip
        x_BxTxC = nn.silu(conv(x_BxTxC))
        projected = nn.Dense(cfg.dt_rank + 2 * states, use_bias=False, dtype=self.dtype, name="x_proj")(x_BxTxC)
        dt_BxTxR, b_BxTxS, c_BxTxS = jnp.split(projected, [cfg.dt_rank, cfg.dt_rank + states], axis=-1)
        dt_BxTxC = nn.softplus(nn.Dense(channels, bias_init=dt_bias_init, dtype=self.dtype, name="dt_proj")(dt_BxTxR))
        a_log = self.param(
            "A_log", lambda _, s: jnp.log(jnp.broadcast_to(jnp.arange(1, s[1] + 1.0), s)), (channels, states)
        )
        d_C = self.param("D", nn.initializers.ones, (channels,))
        dt, x = dt_BxTxC.astype(jnp.float32), x_BxTxC.astype(jnp.float32)  # the scan in float32 under bf16 too
        a_BxTxCxS = jnp.exp(dt[..., None] * -jnp.exp(a_log))
        b_BxTxCxS = (dt * x)[..., None] * b_BxTxS.astype(jnp.float32)[:, :, None, :]
        h_BxTxCxS = selective_scan(a_BxTxCxS, b_BxTxCxS)
        y_BxTxC = jnp.einsum("btcs,bts->btc", h_BxTxCxS, c_BxTxS.astype(jnp.float32)) + d_C * x
        y_BxTxC = (y_BxTxC * nn.silu(z_BxTxC.astype(jnp.float32))).astype(self.dtype)
        return nn.Dense(cfg.n_embd, use_bias=False, dtype=self.dtype, name="out_proj")(y_BxTxC)


class Mamba(nn.Module):
    """Embeddings [B, T, E] -> hidden states [B, T, E]; each block's residual stream is sown (HIDDEN)."""

    Config = MambaConfig

    config: ModelConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, embeddings_BxTxE, train: bool = False):
        h_BxTxE = embeddings_BxTxE.astype(self.dtype)
        self.sow(HIDDEN, "hidden", h_BxTxE)
        for i in range(self.config.n_layer):
            normed = nn.RMSNorm(1e-5, dtype=self.dtype, name=f"norm_{i}")(h_BxTxE)
            h_BxTxE = h_BxTxE + MambaMixer(self.config, self.dtype, name=f"mixer_{i}")(normed)
            self.sow(HIDDEN, "hidden", h_BxTxE)
        return nn.RMSNorm(1e-5, name="ln_f")(h_BxTxE.astype(jnp.float32))  # the final norm, by every trunk's name
