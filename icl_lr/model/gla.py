"""Gated linear attention in Flax Linen: the trunk of the gla family, one token mixer whose state decay
(model.gate) makes it linear attention (`none`: S_t = S_{t-1} + k_t v_t^T), RetNet (`fixed`: a decay per head,
gamma_h = 1 - 2^(-5 - h); Sun et al. 2023) or GLA (`data`: a decay per key dimension from the token, alpha_t =
sigmoid(x_t W_1 W_2 + b)^(1/16); Yang et al. 2024), the recurrent models berlino/seq_icl compares on in-context
learning.

Each of n_layer pre-norm residual blocks: RMSNorm, the mixer, RMSNorm, a SwiGLU MLP (gpt2.swiglu: what fla's GLA
and RetNet blocks have, GatedMLP, at the gpt2 family's 8E/3 hidden width). The mixer follows fla-org/
flash-linear-attention's fla/layers/gla.py (GatedLinearAttention: q, k, v projections without bias, key width
expand_k E, value width expand_v E, split into n_head heads; the gate's rank-16 projection gk_proj, its
logsigmoid / 16; an RMSNorm per head of the output times swish of a projection g_proj, FusedRMSNormGated; o_proj)
and, for `fixed`, fla/layers/multiscale_retention.py's decays (fla/ops/retention/chunk.py's g_gamma; fla's
RetNet also rotates q and k, which this family leaves out, so the three gates differ in the decay alone). Per head,
S_t = diag(alpha_t) S_{t-1} + k_t v_t^T and o_t = q_t S_t / sqrt(head's key width), as fla/ops/gla/naive.py's
naive_recurrent_gla computes it token by token. Here it is computed in chunks (chunked_gla; the intra-chunk
form of fla/ops/simple_gla/naive.py's naive_chunk_simple_gla with a decay per key dimension). A final RMSNorm.
Causal by construction: o_t reads S_t, which has seen tokens up to t only.
"""

import math
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from icl_lr.fields import check
from icl_lr.model.config import HIDDEN, ModelConfig, check_counts
from icl_lr.model.gpt2 import GPT2_INIT, residual_init, swiglu

GATES = ("none", "fixed", "data")
CHUNK = 16  # tokens per chunk: within one, masked products; across chunks, a lax.scan over the state
GATE_RANK = 16  # the data gate's low-rank projection, fla's gate_low_rank_dim
GATE_NORMALIZER = 16  # log alpha = logsigmoid(.) / GATE_NORMALIZER, fla's gate_logit_normalizer


@dataclass(frozen=True)
class GLAConfig:
    """The gla family's keys (configs/model/gla.yaml documents them)."""

    n_layer: int = 6
    n_head: int = 2
    gate: str = "data"
    expand_k: float = 0.5
    expand_v: float = 1.0

    def check(self) -> None:
        check_counts(self, "n_layer", "n_head")
        check(self.gate in GATES, f"model.gate must be one of {GATES}, got {self.gate!r}")
        for key in ("expand_k", "expand_v"):
            width = self.n_embd * getattr(self, key)
            check(
                width >= self.n_head and width == int(width) and int(width) % self.n_head == 0,
                f"model.{key} ({getattr(self, key)}) times model.n_embd ({self.n_embd}) must be a whole multiple of "
                f"model.n_head ({self.n_head})",
            )

    @property
    def key_dim(self) -> int:
        return int(self.n_embd * self.expand_k)

    @property
    def value_dim(self) -> int:
        return int(self.n_embd * self.expand_v)


def chunked_gla(q_BxTxHxK, k_BxTxHxK, v_BxTxHxV, g_BxTxHxK) -> jax.Array:
    """o_t = q_t S_t with S_t = diag(exp g_t) S_{t-1} + k_t v_t^T from S_{-1} = 0, per head: [B, T, H, V]; g_t <= 0,
    the log-decays. In chunks of CHUNK tokens, with b_i the cumulative log-decay from a chunk's start to its token i:
    within a chunk o_i = sum_{j <= i} (q_i * exp(b_i - b_j)) . k_j v_j, one masked product whose exponents are <= 0;
    from the chunks before, (q_i * exp(b_i)) S, with S, [B, H, K, V], carried across chunks by a lax.scan."""
    batch, length, heads, _ = q_BxTxHxK.shape
    chunks = -(-length // CHUNK)

    def split(x_BxTxHxF):  # [B, N, C, H, F], the tail padded with zeros: tokens after the last change no output
        padded = jnp.pad(x_BxTxHxF, [(0, 0), (0, chunks * CHUNK - length), (0, 0), (0, 0)])
        return padded.reshape(batch, chunks, CHUNK, heads, -1)

    q, k, v, g = (split(x) for x in (q_BxTxHxK, k_BxTxHxK, v_BxTxHxV, g_BxTxHxK))
    b_BxNxCxHxK = jnp.cumsum(g, axis=2)
    causal_CxC = jnp.tril(jnp.ones((CHUNK, CHUNK), bool))[:, :, None, None]
    relative = b_BxNxCxHxK[:, :, :, None] - b_BxNxCxHxK[:, :, None, :]  # b_i - b_j: [B, N, C, C, H, K]
    decay_BxNxCxCxHxK = jnp.exp(jnp.where(causal_CxC, relative, -jnp.inf))
    scores_BxNxHxCxC = jnp.einsum("bnihk,bnjhk,bnijhk->bnhij", q, k, decay_BxNxCxCxHxK)
    within_BxNxCxHxV = jnp.einsum("bnhij,bnjhv->bnihv", scores_BxNxHxCxC, v)
    last_BxNxHxK = b_BxNxCxHxK[:, :, -1]  # the whole chunk's log-decay
    added_BxNxHxKxV = jnp.einsum("bnjhk,bnjhv->bnhkv", k * jnp.exp(last_BxNxHxK[:, :, None] - b_BxNxCxHxK), v)

    def step(s_BxHxKxV, inputs):  # the state before a chunk -> after it; out: the state before it
        last, added = inputs
        return jnp.exp(last)[..., None] * s_BxHxKxV + added, s_BxHxKxV

    s_BxHxKxV = jnp.zeros((batch, heads, k.shape[-1], v.shape[-1]), v.dtype)
    _, before_NxBxHxKxV = jax.lax.scan(
        step, s_BxHxKxV, (jnp.moveaxis(last_BxNxHxK, 1, 0), jnp.moveaxis(added_BxNxHxKxV, 1, 0))
    )
    across_BxNxCxHxV = jnp.einsum("bnihk,nbhkv->bnihv", q * jnp.exp(b_BxNxCxHxK), before_NxBxHxKxV)
    return (within_BxNxCxHxV + across_BxNxCxHxV).reshape(batch, chunks * CHUNK, heads, -1)[:, :length]


def fixed_log_decays(n_head: int) -> jax.Array:
    """RetNet's log gamma_h = log(1 - 2^(-5 - h)) for heads h = 0 .. n_head - 1 (fla's g_gamma): [H]."""
    return jnp.log1p(-(2.0 ** (-5.0 - jnp.arange(n_head))))


class GatedLinearAttention(nn.Module):
    config: ModelConfig
    dtype: Any

    @nn.compact
    def __call__(self, h_BxTxE):
        cfg = self.config
        batch, length, _ = h_BxTxE.shape
        heads, key_dim, value_dim = cfg.n_head, cfg.key_dim, cfg.value_dim

        def project(width, name, x=h_BxTxE, init=GPT2_INIT, bias=False):
            return nn.Dense(width, use_bias=bias, kernel_init=init, dtype=self.dtype, name=name)(x)

        q_BxTxHxK, k_BxTxHxK = (project(key_dim, n).reshape(batch, length, heads, -1) for n in ("q_proj", "k_proj"))
        v_BxTxHxV = project(value_dim, "v_proj").reshape(batch, length, heads, -1)
        if cfg.gate == "data":  # log alpha_t, per key dimension
            logits = project(key_dim, "gk_proj_1", project(GATE_RANK, "gk_proj_0"), bias=True)
            g_BxTxHxK = jax.nn.log_sigmoid(logits.astype(jnp.float32)).reshape(q_BxTxHxK.shape) / GATE_NORMALIZER
        elif cfg.gate == "fixed":
            g_BxTxHxK = jnp.broadcast_to(fixed_log_decays(heads)[:, None], q_BxTxHxK.shape)
        else:
            g_BxTxHxK = jnp.zeros(q_BxTxHxK.shape)
        scale = 1 / math.sqrt(key_dim // heads)
        q, k, v = (x.astype(jnp.float32) for x in (q_BxTxHxK * scale, k_BxTxHxK, v_BxTxHxV))  # float32 under bf16 too
        o_BxTxHxV = nn.RMSNorm(1e-5, dtype=self.dtype, name="g_norm")(chunked_gla(q, k, v, g_BxTxHxK))
        o_BxTxV = o_BxTxHxV.reshape(batch, length, value_dim) * nn.silu(project(value_dim, "g_proj"))
        return project(cfg.n_embd, "o_proj", o_BxTxV, residual_init(cfg.n_layer))


class SwiGLU(nn.Module):
    config: ModelConfig
    dtype: Any

    @nn.compact
    def __call__(self, h_BxTxE):
        return swiglu(self.config, self.dtype, h_BxTxE)


class GLA(nn.Module):
    """Embeddings [B, T, E] -> hidden states [B, T, E]; `dtype`: the blocks' compute type (the state's recurrence
    stays float32); the embeddings and each block's residual stream are sown (HIDDEN)."""

    Config = GLAConfig

    config: ModelConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, embeddings_BxTxE, train: bool = False):
        h_BxTxE = embeddings_BxTxE.astype(self.dtype)
        self.sow(HIDDEN, "hidden", h_BxTxE)
        for i in range(self.config.n_layer):
            normed = nn.RMSNorm(1e-5, dtype=self.dtype, name=f"attn_norm_{i}")(h_BxTxE)
            h_BxTxE = h_BxTxE + GatedLinearAttention(self.config, self.dtype, name=f"attn_{i}")(normed)
            normed = nn.RMSNorm(1e-5, dtype=self.dtype, name=f"mlp_norm_{i}")(h_BxTxE)
            h_BxTxE = h_BxTxE + SwiGLU(self.config, self.dtype, name=f"mlp_{i}")(normed)
            self.sow(HIDDEN, "hidden", h_BxTxE)
        return nn.RMSNorm(1e-5, name="ln_f")(h_BxTxE.astype(jnp.float32))  # the final norm, by every trunk's name
