"""Mamba in Flax Linen: the trunk of the mamba family, the selective state-space model that Park et al. 2024
("Can Mamba learn how to learn?", krafton-ai/mambaformer-icl) compare with attention on in-context regression.

Each of n_layer residual blocks (Gu and Dao 2023, state-spaces/mamba mamba_simple.py): a norm (model.norm: RMSNorm
or LayerNorm), then x and a gate z from one projection (width expand E); x through a short causal depthwise
convolution (d_conv) and SiLU; an input-dependent step Delta, B and C from x; the selective scan
h_t = exp(Delta_t A) h_{t-1} + Delta_t B_t x_t, y_t = C_t h_t + D x_t (A diagonal, negative, per channel and state);
y gated by SiLU(z) and projected back. A final norm. model.init: Flax's default inits where Mamba sets none
(`flax`), or every one as Park et al.'s PyTorch code makes it, the read-in and read-out included (`park`;
docs/model_families.md). No custom kernels, so it runs on CPU, GPU and TPU; the scan (model.scan) is sequential
(token by token, CHUNK tokens unrolled in each step of a jax.lax.scan over chunks, each step's terms built from
[B, C] and [B, S] slices; its backward pass the reverse recurrence written by hand, each chunk's states
recomputed: no [B, T, C, S] tensor, one [B, S, C] state kept per chunk) or a jax.lax.associative_scan over
[B, T, C, S] terms (associative: log T steps deep, which suits a GPU); `auto` picks by backend
(docs/model_families.md). The convolution is written as shifted products with nn.Conv's parameters (CausalConv).
Causal by construction: the convolution and the scan see tokens up to t only.
"""

import math
from dataclasses import dataclass, field
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from icl_lr.fields import FREE, check
from icl_lr.model.config import HIDDEN, ModelConfig, check_counts, torch_init
from icl_lr.model.gpt2 import NORMS, norm

DT_MIN, DT_MAX = 1e-3, 1e-1  # the step's initial range (log-uniform), as mamba_simple.py's
SCANS = ("auto", "sequential", "associative")
INITS = ("flax", "park")
CHUNK = 4  # tokens per step of the sequential scan's loops: 4 timed faster than 8 and 16 (docs/benchmark.md)


@dataclass(frozen=True)
class MambaConfig:
    """The mamba family's keys (configs/model/mamba.yaml documents them)."""

    n_layer: int = 4
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    norm: str = "rmsnorm"
    init: str = "flax"
    scan: str = field(default="auto", metadata=FREE)  # the same states to float32 rounding: a resume may change it

    def check(self) -> None:
        check_counts(self, "n_layer", "d_state", "d_conv", "expand")
        for key, choices in (("norm", NORMS), ("init", INITS), ("scan", SCANS)):
            check(getattr(self, key) in choices, f"model.{key} must be one of {choices}, got {getattr(self, key)!r}")

    def linear_inits(self, fan_in: int) -> dict:
        """The read-in's and read-out's initialisers (ModelConfig.linear_inits): under init=park, PyTorch's
        nn.Linear default, as Park et al.'s `_read_in` and `_read_out`."""
        return park_inits(self, fan_in, bias=True)

    @property
    def dt_rank(self) -> int:
        return math.ceil(self.n_embd / 16)


def park_inits(cfg, fan_in: int, scale: float = 1.0, bias: bool = False) -> dict:
    """A layer's initialisers under model.init=park: torch_init for its weight, and for its bias where PyTorch
    keeps the default (`bias`); under init=flax none, so the layer keeps its own (lecun normal, zero bias)."""
    if cfg.init != "park":
        return {}
    return {"kernel_init": torch_init(fan_in, scale)} | ({"bias_init": torch_init(fan_in)} if bias else {})


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


@jax.custom_vjp
def sequential_scan(dt_BxTxC, x_BxTxC, a_CxS, b_BxTxS, c_BxTxS) -> jax.Array:
    """selective_scan's `sequential`: token by token, CHUNK tokens unrolled in each step of a jax.lax.scan over
    chunks, the state [B, S, C] (channels innermost: XLA's CPU loops vectorise over them) built from [B, C] and
    [B, S] slices. Its backward pass is written by hand (_backward): only y and one state per chunk are kept."""
    return _forward(dt_BxTxC, x_BxTxC, a_CxS, b_BxTxS, c_BxTxS)[0]


def _chunks(v_BxTxF, chunks: int) -> jax.Array:
    """[B, T, F] -> [chunks, CHUNK, B, F], the tail padded with zeros: Delta = 0 keeps the state."""
    batch, length = v_BxTxF.shape[:2]
    padded = jnp.pad(v_BxTxF, [(0, 0), (0, chunks * CHUNK - length), (0, 0)])
    return jnp.moveaxis(padded.reshape(batch, chunks, CHUNK, -1), 0, 2)


def _tokens(v_NxLxBxF, length: int) -> jax.Array:
    """_chunks' inverse: [chunks, CHUNK, B, F] -> [B, T, F]."""
    chunks, _, batch = v_NxLxBxF.shape[:3]
    return jnp.swapaxes(v_NxLxBxF.reshape(chunks * CHUNK, batch, -1)[:length], 0, 1)


def _step(h_BxSxC, a_SxC, dt_BxC, dtx_BxC, b_BxS):
    """h_t = exp(Delta_t A) h_{t-1} + Delta_t x_t B_t, and exp(Delta_t A)."""
    decay_BxSxC = jnp.exp(dt_BxC[:, None] * a_SxC)
    return decay_BxSxC * h_BxSxC + dtx_BxC[:, None] * b_BxS[..., None], decay_BxSxC


def _forward(dt_BxTxC, x_BxTxC, a_CxS, b_BxTxS, c_BxTxS):
    """y [B, T, C] and what _backward reads: the inputs and the state at each chunk's start."""
    batch, length, channels = dt_BxTxC.shape
    chunks = -(-length // CHUNK)
    a_SxC = a_CxS.T

    def chunk(h_BxSxC, inputs):
        start_BxSxC, y_LxBxC = h_BxSxC, []
        for dt_BxC, x_BxC, b_BxS, c_BxS in zip(*inputs, strict=True):
            h_BxSxC = _step(h_BxSxC, a_SxC, dt_BxC, dt_BxC * x_BxC, b_BxS)[0]
            y_LxBxC.append(jnp.einsum("bsc,bs->bc", h_BxSxC, c_BxS))  # a dot: XLA's CPU reduce over S is slower
        return h_BxSxC, (jnp.stack(y_LxBxC), start_BxSxC)

    h_BxSxC = jnp.zeros((batch, *a_SxC.shape), dt_BxTxC.dtype)
    inputs = [_chunks(v, chunks) for v in (dt_BxTxC, x_BxTxC, b_BxTxS, c_BxTxS)]
    _, (y_NxLxBxC, start_NxBxSxC) = jax.lax.scan(chunk, h_BxSxC, inputs)
    return _tokens(y_NxLxBxC, length), (dt_BxTxC, x_BxTxC, a_CxS, b_BxTxS, c_BxTxS, start_NxBxSxC)


def _backward(residuals, dy_BxTxC):
    """The reverse recurrence, chunk by chunk from the last, each chunk's states recomputed from its start: with
    g_t = dL/dh_t = dy_t C_t + exp(Delta_{t+1} A) g_{t+1} and q_t = g_t (h_t - Delta_t x_t B_t) (dL/d of the
    log-decay Delta_t A): dC_t = sum_c dy_t h_t, d(Delta_t x_t) = sum_s g_t B_t, dB_t = sum_c g_t Delta_t x_t,
    dDelta_t = sum_s q_t A + x_t d(Delta_t x_t), dA = sum over batch and tokens of q_t Delta_t. The states, decays
    and g_t are materialised once (optimization_barrier): XLA's CPU fusion would recompute them in each user."""
    dt_BxTxC, x_BxTxC, a_CxS, b_BxTxS, c_BxTxS, start_NxBxSxC = residuals
    batch, length, channels = dt_BxTxC.shape
    chunks = start_NxBxSxC.shape[0]
    a_SxC, keep = a_CxS.T, jax.lax.optimization_barrier
    ones_BxS = jnp.ones((batch, a_CxS.shape[1]), dt_BxTxC.dtype)  # Sum over S as a dot

    def chunk(carry, inputs):
        g_BxSxC, da_BxSxC = carry  # g: dL/dh at the chunk's last token from the tokens after it
        h_BxSxC, dt_LxBxC, x_LxBxC, b_LxBxS, c_LxBxS, dy_LxBxC = inputs
        dtx_LxBxC = dt_LxBxC * x_LxBxC
        states, decays = [], []
        for t in range(CHUNK):
            h_BxSxC, decay_BxSxC = keep(_step(h_BxSxC, a_SxC, dt_LxBxC[t], dtx_LxBxC[t], b_LxBxS[t]))
            states.append(h_BxSxC)
            decays.append(decay_BxSxC)
        grads = []
        for t in reversed(range(CHUNK)):
            g_BxSxC = keep(g_BxSxC + dy_LxBxC[t][:, None] * c_LxBxS[t][..., None])
            q_BxSxC = g_BxSxC * (states[t] - dtx_LxBxC[t][:, None] * b_LxBxS[t][..., None])
            ddtx_BxC = jnp.einsum("bsc,bs->bc", g_BxSxC, b_LxBxS[t])
            ddt_BxC = jnp.einsum("bsc,bs->bc", q_BxSxC * a_SxC, ones_BxS) + ddtx_BxC * x_LxBxC[t]
            db_BxS = jnp.einsum("bsc,bc->bs", g_BxSxC, dtx_LxBxC[t])
            dc_BxS = jnp.einsum("bsc,bc->bs", states[t], dy_LxBxC[t])
            da_BxSxC = da_BxSxC + q_BxSxC * dt_LxBxC[t][:, None]
            g_BxSxC = g_BxSxC * decays[t]
            grads.append((ddt_BxC, ddtx_BxC * dt_LxBxC[t], db_BxS, dc_BxS))
        return (g_BxSxC, da_BxSxC), [jnp.stack(g[::-1]) for g in zip(*grads, strict=True)]

    zeros_BxSxC = jnp.zeros((batch, *a_SxC.shape), dt_BxTxC.dtype)
    inputs = [start_NxBxSxC] + [_chunks(v, chunks) for v in (dt_BxTxC, x_BxTxC, b_BxTxS, c_BxTxS, dy_BxTxC)]
    (_, da_BxSxC), grads = jax.lax.scan(chunk, (zeros_BxSxC, zeros_BxSxC), inputs, reverse=True)
    ddt_BxTxC, dx_BxTxC, db_BxTxS, dc_BxTxS = (_tokens(g, length) for g in grads)
    return ddt_BxTxC, dx_BxTxC, da_BxSxC.sum(0).T, db_BxTxS, dc_BxTxS


sequential_scan.defvjp(_forward, _backward)


class CausalConv(nn.Module):
    """The causal depthwise convolution, nn.Conv(channels, (width,), padding=[(width - 1, 0)],
    feature_group_count=channels)'s parameters (kernel [width, 1, C], bias [C]) and outputs, as `width` shifted
    products: XLA's CPU grouped convolution took 3 to 4x as long, forward and backward."""

    width: int
    dtype: Any
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x_BxTxC):
        length, channels = x_BxTxC.shape[1:]
        kernel_Kx1xC = self.param("kernel", self.kernel_init, (self.width, 1, channels))
        bias_C = self.param("bias", self.bias_init, (channels,))
        x_BxTxC, kernel_Kx1xC, bias_C = nn.dtypes.promote_dtype(x_BxTxC, kernel_Kx1xC, bias_C, dtype=self.dtype)
        padded = jnp.pad(x_BxTxC, [(0, 0), (self.width - 1, 0), (0, 0)])
        return sum(padded[:, k : k + length] * kernel_Kx1xC[k, 0] for k in range(self.width)) + bias_C


def dt_bias_init(key, shape, dtype=jnp.float32):
    """softplus(bias) log-uniform in [DT_MIN, DT_MAX]: the inverse softplus of such steps."""
    dt = jnp.exp(jax.random.uniform(key, shape, dtype) * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN))
    return dt + jnp.log(-jnp.expm1(-dt))


class MambaMixer(nn.Module):
    """Under model.init=park, mamba_simple.py's Mamba as mamba_ssm's MixerModel initialises it: in_proj, x_proj and
    the convolution (its bias too) at PyTorch's defaults, dt_proj's weight U(+-dt_rank^-1/2) (dt_init=random), and
    out_proj's PyTorch default over sqrt(n_layer) (_init_weights, rescale_prenorm_residual)."""

    config: ModelConfig
    dtype: Any

    @nn.compact
    def __call__(self, h_BxTxE):
        cfg = self.config
        channels, states = cfg.expand * cfg.n_embd, cfg.d_state
        dense = lambda features, fan_in, name, scale=1.0, **kw: nn.Dense(
            features, dtype=self.dtype, name=name, **kw, **park_inits(cfg, fan_in, scale)
        )
        x_BxTxC, z_BxTxC = jnp.split(dense(2 * channels, cfg.n_embd, "in_proj", use_bias=False)(h_BxTxE), 2, -1)
        conv = CausalConv(cfg.d_conv, self.dtype, name="conv1d", **park_inits(cfg, cfg.d_conv, bias=True))
        x_BxTxC = nn.silu(conv(x_BxTxC))
        projected = dense(cfg.dt_rank + 2 * states, channels, "x_proj", use_bias=False)(x_BxTxC)
        dt_BxTxR, b_BxTxS, c_BxTxS = jnp.split(projected, [cfg.dt_rank, cfg.dt_rank + states], axis=-1)
        dt_BxTxC = nn.softplus(dense(channels, cfg.dt_rank, "dt_proj", bias_init=dt_bias_init)(dt_BxTxR))
        a_log = self.param(
            "A_log", lambda _, s: jnp.log(jnp.broadcast_to(jnp.arange(1, s[1] + 1.0), s)), (channels, states)
        )
        d_C = self.param("D", nn.initializers.ones, (channels,))
        dt, x = dt_BxTxC.astype(jnp.float32), x_BxTxC.astype(jnp.float32)  # the scan in float32 under bf16 too
        b_BxTxS, c_BxTxS = b_BxTxS.astype(jnp.float32), c_BxTxS.astype(jnp.float32)
        y_BxTxC = selective_scan(dt, x, -jnp.exp(a_log), b_BxTxS, c_BxTxS, scan_kind(cfg.scan)) + d_C * x
        y_BxTxC = (y_BxTxC * nn.silu(z_BxTxC.astype(jnp.float32))).astype(self.dtype)
        return dense(cfg.n_embd, channels, "out_proj", cfg.n_layer**-0.5, use_bias=False)(y_BxTxC)


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
            normed = norm(self.config, self.dtype, f"norm_{i}")(h_BxTxE)
            h_BxTxE = h_BxTxE + MambaMixer(self.config, self.dtype, name=f"mixer_{i}")(normed)
            self.sow(HIDDEN, "hidden", h_BxTxE)
        return norm(self.config, jnp.float32, "ln_f")(h_BxTxE.astype(jnp.float32))  # ln_f: every trunk's final norm
