"""Mamba in Flax Linen: the trunk of the mamba family, the selective state-space model that Park et al. 2024
("Can Mamba learn how to learn?", krafton-ai/mambaformer-icl) compare with attention on in-context regression.

Each of n_layer residual blocks (Gu and Dao 2023, state-spaces/mamba mamba_simple.py): RMSNorm, then x and a
gate z from one projection (width expand E); x through a short causal depthwise convolution (d_conv) and SiLU;
an input-dependent step Delta, B and C from x; the selective scan h_t = exp(Delta_t A) h_{t-1} + Delta_t B_t x_t,
y_t = C_t h_t + D x_t (A diagonal, negative, per channel and state); y gated by SiLU(z) and projected back. A
final RMSNorm. No custom kernels, so it runs on CPU, GPU and TPU; the scan (model.scan) is sequential (token by
token, CHUNK tokens unrolled in each step of a jax.lax.scan over chunks, each step's terms built from [B, C] and
[B, S] slices and recomputed in the backward pass: no [B, T, C, S] tensor, one [B, C, S] state kept per chunk)
or a jax.lax.associative_scan over [B, T, C, S] terms (associative: log T steps deep, which suits a GPU); `auto`
picks by backend (docs/model_families.md). The convolution is written as shifted products with nn.Conv's
parameters (CausalConv). Causal by construction: the convolution and the scan see tokens up to t only.
"""

import math
from dataclasses import dataclass, field
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from icl_lr.fields import FREE, check
from icl_lr.model.config import HIDDEN, ModelConfig, check_counts

DT_MIN, DT_MAX = 1e-3, 1e-1  # the step's initial range (log-uniform), as mamba_simple.py's
SCANS = ("auto", "sequential", "associative")
CHUNK = 8  # tokens per step of the sequential scan: 4 to 16 timed alike at the mamba preset (docs/benchmark.md)


@dataclass(frozen=True)
class MambaConfig:
    """The mamba family's keys (configs/model/mamba.yaml documents them)."""

    n_layer: int = 4
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    scan: str = field(default="auto", metadata=FREE)  # the same states to float32 rounding: a resume may change it

    def check(self) -> None:
        check_counts(self, "n_layer", "d_state", "d_conv", "expand")
        check(self.scan in SCANS, f"model.scan must be one of {SCANS}, got {self.scan!r}")

    @property
    def dt_rank(self) -> int:
        return math.ceil(self.n_embd / 16)


def scan_kind(scan: str) -> str:
    """model.scan with `auto` resolved by backend: sequential on a CPU (the faster there at the mamba preset's
    shapes, docs/benchmark.md), associative on a GPU or TPU (log T steps deep instead of T)."""
    if scan != "auto":
        return scan
    return "sequential" if jax.default_backend() == "cpu" else "associative"


def associative_scan(a_BxTxCxS, b_BxTxCxS) -> jax.Array:
    """h_t = a_t * h_{t-1} + b_t from h_{-1} = 0, every t at once: the associative scan of (a, b) pairs."""
    combine = lambda first, second: (first[0] * second[0], second[0] * first[1] + second[1])
    return jax.lax.associative_scan(combine, (a_BxTxCxS, b_BxTxCxS), axis=1)[1]


def selective_scan(dt_BxTxC, x_BxTxC, a_CxS, b_BxTxS, c_BxTxS, scan: str) -> jax.Array:
    """y_t = C_t h_t with h_t = exp(Delta_t A) h_{t-1} + Delta_t B_t x_t from h_{-1} = 0, [B, T, C]; `scan`:
    model.scan resolved (scan_kind)."""
    if scan == "associative":
        a_BxTxCxS = jnp.exp(dt_BxTxC[..., None] * a_CxS)
        b_BxTxCxS = (dt_BxTxC * x_BxTxC)[..., None] * b_BxTxS[:, :, None, :]
        return jnp.einsum("btcs,bts->btc", associative_scan(a_BxTxCxS, b_BxTxCxS), c_BxTxS)
    return sequential_scan(dt_BxTxC, x_BxTxC, a_CxS, b_BxTxS, c_BxTxS)


def sequential_scan(dt_BxTxC, x_BxTxC, a_CxS, b_BxTxS, c_BxTxS) -> jax.Array:
    """selective_scan's `sequential`: token by token, CHUNK tokens unrolled in each step of a jax.lax.scan over
    chunks; each step's [B, C, S] terms built from [B, C] and [B, S] slices and y_t taken inside, so only y and
    one [B, C, S] state per chunk are kept for the backward pass (jax.checkpoint recomputes a chunk's states)."""
    batch, length, channels = dt_BxTxC.shape
    chunks = -(-length // CHUNK)

    def split(v_BxTxF):  # [chunks, CHUNK, B, F], the tail padded with zeros: Delta = 0 keeps the state
        padded = jnp.pad(v_BxTxF, [(0, 0), (0, chunks * CHUNK - length), (0, 0)])
        return jnp.moveaxis(padded.reshape(batch, chunks, CHUNK, -1), 0, 2)

    @jax.checkpoint
    def chunk(h_BxCxS, inputs):
        y_LxBxC = []
        for dt_BxC, x_BxC, b_BxS, c_BxS in zip(*inputs, strict=True):
            h_BxCxS = jnp.exp(dt_BxC[..., None] * a_CxS) * h_BxCxS + (dt_BxC * x_BxC)[..., None] * b_BxS[:, None, :]
            y_LxBxC.append(jnp.einsum("bcs,bs->bc", h_BxCxS, c_BxS))
        return h_BxCxS, jnp.stack(y_LxBxC)

    h_BxCxS = jnp.zeros((batch, channels, a_CxS.shape[1]), dt_BxTxC.dtype)
    _, y_NxLxBxC = jax.lax.scan(chunk, h_BxCxS, [split(v) for v in (dt_BxTxC, x_BxTxC, b_BxTxS, c_BxTxS)])
    return jnp.swapaxes(y_NxLxBxC.reshape(chunks * CHUNK, batch, channels)[:length], 0, 1)


class CausalConv(nn.Module):
    """The causal depthwise convolution, nn.Conv(channels, (width,), padding=[(width - 1, 0)],
    feature_group_count=channels)'s parameters (kernel [width, 1, C], bias [C]) and outputs, as `width` shifted
    products: XLA's CPU grouped convolution took 3 to 4x as long, forward and backward."""

    width: int
    dtype: Any

    @nn.compact
    def __call__(self, x_BxTxC):
        length, channels = x_BxTxC.shape[1:]
        kernel_Kx1xC = self.param("kernel", nn.initializers.lecun_normal(), (self.width, 1, channels))
        bias_C = self.param("bias", nn.initializers.zeros_init(), (channels,))
        x_BxTxC, kernel_Kx1xC, bias_C = nn.dtypes.promote_dtype(x_BxTxC, kernel_Kx1xC, bias_C, dtype=self.dtype)
        padded = jnp.pad(x_BxTxC, [(0, 0), (self.width - 1, 0), (0, 0)])
        return sum(padded[:, k : k + length] * kernel_Kx1xC[k, 0] for k in range(self.width)) + bias_C


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
        x_BxTxC = nn.silu(CausalConv(cfg.d_conv, self.dtype, name="conv1d")(x_BxTxC))
        projected = nn.Dense(cfg.dt_rank + 2 * states, use_bias=False, dtype=self.dtype, name="x_proj")(x_BxTxC)
        dt_BxTxR, b_BxTxS, c_BxTxS = jnp.split(projected, [cfg.dt_rank, cfg.dt_rank + states], axis=-1)
        dt_BxTxC = nn.softplus(nn.Dense(channels, bias_init=dt_bias_init, dtype=self.dtype, name="dt_proj")(dt_BxTxR))
        a_log = self.param(
            "A_log", lambda _, s: jnp.log(jnp.broadcast_to(jnp.arange(1, s[1] + 1.0), s)), (channels, states)
        )
        d_C = self.param("D", nn.initializers.ones, (channels,))
        dt, x = dt_BxTxC.astype(jnp.float32), x_BxTxC.astype(jnp.float32)  # the scan in float32 under bf16 too
        b_BxTxS, c_BxTxS = b_BxTxS.astype(jnp.float32), c_BxTxS.astype(jnp.float32)
        y_BxTxC = selective_scan(dt, x, -jnp.exp(a_log), b_BxTxS, c_BxTxS, scan_kind(cfg.scan)) + d_C * x
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
