"""GPT-2 in Flax Linen: the trunk of the gpt2 family, between the read-in and read-out of in-context
regression (icl_lr/model/icl_model.py).

Parameter names and layouts follow Hugging Face's GPT2Model (wpe, h_i.ln_1, attn.c_attn, ...), so
its weights load one to one; tests/test_model.py checks the hidden states against it.
Shape suffixes as declared in icl_lr/__init__.py.

Initialisation, and which reference each follows:
- the blocks' weight matrices N(0, 0.02), their projections into the residual stream
  N(0, 0.02 / sqrt(2 n_layer)), zero biases, unit LayerNorms: GPT-2 (OpenAI's gpt-2 model.py, Hugging
  Face's GPT2PreTrainedModel._init_weights), as in Garg et al.'s GPT2Model backbone;
- the read-out: N(0, 0.02), GPT-2's (its output layer is the tied 0.02 token table);
- what enters the residual stream, the read-in's embedding (continuous), the token table and the
  tokens encoding's slot, point and value embeddings, and the learned positions: std
  `model.embedding_std` (0.2) per coordinate, content and position at one scale; the read-in's kernel
  is N(0, embedding_std^2 / fan_in), so unit-variance inputs give that std. This follows no
  reference: a small embedding is drowned by the blocks' outputs, which Adam grows by about lr per
  weight from the first step (the model then stays on the predict-zero plateau), and one much larger
  than the positions hides them. The measurements behind it: docs/initialisation.md.
"""

import math
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from icl_lr.fields import check
from icl_lr.model.config import ATTENTION, HIDDEN, ModelConfig, check_counts

GPT2_INIT = nn.initializers.normal(0.02)  # GPT-2's init of every weight matrix


def residual_init(n_layer: int) -> nn.initializers.Initializer:
    """GPT-2's init of the projections into the residual stream: N(0, 0.02 / sqrt(2 n_layer)),
    so the stream's variance does not grow with depth (two such projections per block)."""
    return nn.initializers.normal(0.02 / (2 * n_layer) ** 0.5)


NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope", "alibi", "none")
MLPS = ("gelu", "swiglu")
ATTENTIONS = ("softmax", "relu")
ROPE_BASE = 10000.0  # RoFormer's and Llama's


def rotary(x_BxTxHxA: jax.Array) -> jax.Array:
    """Rotary position embedding (Su et al. 2021, RoFormer; GPT-NeoX's halves layout): each pair (x_i,
    x_{i + A/2}) of a head's coordinates rotated by t * ROPE_BASE^(-2i/A) at position t, so a query-key
    product depends on their positions only through their offset."""
    length, half = x_BxTxHxA.shape[1], x_BxTxHxA.shape[-1] // 2
    angles_TxI = jnp.arange(length)[:, None] * ROPE_BASE ** (-jnp.arange(half) / half)
    cos, sin = (f(angles_TxI)[None, :, None, :].astype(x_BxTxHxA.dtype) for f in (jnp.cos, jnp.sin))
    first, second = x_BxTxHxA[..., :half], x_BxTxHxA[..., half:]
    return jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)


def alibi_slopes(n_head: int) -> list[float]:
    """ALiBi's slope per head (Press et al. 2022; ofirpress/attention_with_linear_biases,
    fairseq/models/transformer.py, get_slopes): 2^(-8h/H) for h = 1..H when H is a power of 2; otherwise the
    slopes of the power of 2 below H, then every other slope of twice that power, as many as H lacks."""
    geometric = lambda n: [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]
    below = 2 ** math.floor(math.log2(n_head))
    return geometric(below) + geometric(2 * below)[0::2][: n_head - below]


def alibi_bias(n_head: int, length: int) -> jax.Array:
    """ALiBi's bias [H, T, T] on head h's attention logits: -m_h (i - j) for query i and key j (the keys after the
    query are masked anyway). Its value at a pair depends on their offset alone, so it takes any length."""
    offsets_TxT = np.arange(length)[None, :] - np.arange(length)[:, None]
    return jnp.asarray(np.asarray(alibi_slopes(n_head))[:, None, None] * offsets_TxT, jnp.float32)


def positions(cfg, length: int):
    """GPT-2's learned positions [T, E] (the table `wpe`, std model.embedding_std), or 0 for rotary, ALiBi or no
    positions; made inside a trunk's compact call, as its submodule."""
    if cfg.positions != "learned":
        return 0.0
    init = nn.initializers.normal(cfg.embedding_std)
    return nn.Embed(cfg.n_positions, cfg.n_embd, embedding_init=init, name="wpe")(jnp.arange(length))


def norm(cfg, dtype, name: str) -> nn.Module:
    """GPT-2's LayerNorm, or Llama's RMSNorm (model.norm); statistics in float32 either way."""
    return (nn.RMSNorm if cfg.norm == "rmsnorm" else nn.LayerNorm)(1e-5, dtype=dtype, name=name)


def attention_weights(attention: str, q_BxTxHxA, k_BxTxHxA, bias_HxTxT=None, attends=None) -> jax.Array:
    """Attention's weights [B, H, T, T], query by key, over the pairs `attends` allows (broadcast to [B, H, T, T];
    causal where None): softmax(q.k / sqrt(A) + bias) (GPT-2), or relu(q.k + bias) over the number of keys the
    query attends (model.attention=relu: Bai et al. 2023, allenbai01/transformers-as-statisticians, src/models.py,
    EncoderTransformer: relu(q.k) unscaled, over their sequence's length; causal, query i attends i + 1 keys, so its
    output does not depend on the tokens after it, their number included)."""
    length = q_BxTxHxA.shape[1]
    scores_BxHxTxT = jnp.einsum("bqhk,bshk->bhqs", q_BxTxHxA, k_BxTxHxA, preferred_element_type=jnp.float32)
    if attention == "softmax":
        scores_BxHxTxT = scores_BxHxTxT / jnp.sqrt(q_BxTxHxA.shape[-1])
    if bias_HxTxT is not None:
        scores_BxHxTxT = scores_BxHxTxT + bias_HxTxT
    attends = jnp.tril(jnp.ones((length, length), bool)) if attends is None else attends
    if attention == "relu":
        return jnp.where(attends, nn.relu(scores_BxHxTxT), 0.0) / jnp.maximum(attends.sum(-1, keepdims=True), 1)
    return jax.nn.softmax(jnp.where(attends, scores_BxHxTxT, jnp.finfo(jnp.float32).min), axis=-1)


class Attention(nn.Module):
    config: ModelConfig
    dtype: Any

    @nn.compact
    def __call__(self, h_BxTxE, train: bool):
        cfg = self.config
        batch, length, width = h_BxTxE.shape
        qkv = nn.Dense(3 * width, kernel_init=GPT2_INIT, dtype=self.dtype, name="c_attn")(h_BxTxE)
        qkv_BxTx3xHxA = qkv.reshape(batch, length, 3, cfg.n_head, width // cfg.n_head)
        q_BxTxHxA, k_BxTxHxA, v_BxTxHxA = (qkv_BxTx3xHxA[:, :, i] for i in range(3))
        if cfg.positions == "rope":
            q_BxTxHxA, k_BxTxHxA = rotary(q_BxTxHxA), rotary(k_BxTxHxA)
        bias_HxTxT = alibi_bias(cfg.n_head, length) if cfg.positions == "alibi" else None
        if cfg.attention == "relu" or (train and cfg.dropout > 0) or self.is_mutable_collection(ATTENTION):
            probs_BxHxTxT = attention_weights(cfg.attention, q_BxTxHxA, k_BxTxHxA, bias_HxTxT)  # spelled out
            self.sow(ATTENTION, "weights", probs_BxHxTxT)  # eval.attention's
            probs_BxHxTxT = nn.Dropout(cfg.dropout)(probs_BxHxTxT, deterministic=not train)
            out_BxTxHxA = jnp.einsum("bhqs,bshk->bqhk", probs_BxHxTxT.astype(self.dtype), v_BxTxHxA)
        else:  # JAX's fused attention: cuDNN's flash attention on a GPU where it applies, XLA's elsewhere
            bias = None if bias_HxTxT is None else bias_HxTxT[None].astype(q_BxTxHxA.dtype)
            out_BxTxHxA = jax.nn.dot_product_attention(q_BxTxHxA, k_BxTxHxA, v_BxTxHxA, bias, is_causal=True)
        out_BxTxE = out_BxTxHxA.reshape(batch, length, width)
        return nn.Dense(width, kernel_init=residual_init(cfg.n_layer), dtype=self.dtype, name="c_proj")(out_BxTxE)


def swiglu(cfg, dtype, h_BxTxE):
    """Llama's MLP: silu(x W_gate) * (x W_up) W_down, hidden 8E/3 (GELU's 8E^2 weights), no biases; made inside a
    module's compact call, as its submodules c_fc (W_gate and W_up side by side) and c_proj."""
    hidden = 8 * cfg.n_embd // 3
    gate, up = jnp.split(nn.Dense(2 * hidden, use_bias=False, kernel_init=GPT2_INIT, dtype=dtype,
                                  name="c_fc")(h_BxTxE), 2, axis=-1)  # fmt: skip
    return nn.Dense(cfg.n_embd, use_bias=False, kernel_init=residual_init(cfg.n_layer), dtype=dtype,
                    name="c_proj")(nn.silu(gate) * up)  # fmt: skip


class MLP(nn.Module):
    config: ModelConfig
    dtype: Any

    @nn.compact
    def __call__(self, h_BxTxE):
        cfg = self.config
        if cfg.mlp == "swiglu":
            return swiglu(cfg, self.dtype, h_BxTxE)
        h_BxTx4E = nn.gelu(
            nn.Dense(4 * cfg.n_embd, kernel_init=GPT2_INIT, dtype=self.dtype, name="c_fc")(h_BxTxE), approximate=True
        )  # gelu_new
        return nn.Dense(cfg.n_embd, kernel_init=residual_init(cfg.n_layer), dtype=self.dtype, name="c_proj")(h_BxTx4E)


class Block(nn.Module):
    config: ModelConfig
    dtype: Any

    @nn.compact
    def __call__(self, h_BxTxE, train: bool):
        cfg = self.config
        drop = nn.Dropout(cfg.dropout, deterministic=not train)
        h_BxTxE = h_BxTxE + drop(Attention(cfg, self.dtype, name="attn")(norm(cfg, self.dtype, "ln_1")(h_BxTxE), train))
        return h_BxTxE + drop(MLP(cfg, self.dtype, name="mlp")(norm(cfg, self.dtype, "ln_2")(h_BxTxE)))


@dataclass(frozen=True)
class GPT2Config:
    """The gpt2 family's keys (configs/model/gpt2_tiny.yaml documents them)."""

    n_layer: int = 6
    n_head: int = 2
    n_positions: int = 256
    dropout: float = 0.0
    norm: str = "layernorm"
    positions: str = "learned"
    mlp: str = "gelu"
    attention: str = "softmax"

    def check(self) -> None:
        check_counts(self, "n_layer", "n_head", "n_positions")
        check(
            self.n_embd % self.n_head == 0,
            f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})",
        )
        check(0 <= self.dropout < 1, f"model.dropout must be in [0, 1), got {self.dropout}")
        for key, choices in (("norm", NORMS), ("positions", POSITIONS), ("mlp", MLPS), ("attention", ATTENTIONS)):
            check(getattr(self, key) in choices, f"model.{key} must be one of {choices}, got {getattr(self, key)!r}")
        check(
            self.positions != "rope" or (self.n_embd // self.n_head) % 2 == 0,
            f"model.positions=rope rotates pairs: a head's width, n_embd / n_head = {self.n_embd // self.n_head}, "
            "must be even",
        )


def length_key(config) -> str | None:
    """The key bounding the sequence: learned positions' table; rotary, ALiBi or no positions take any length."""
    return "n_positions" if config.positions == "learned" else None


class Transformer(nn.Module):
    """GPT2Model on input embeddings: learned positions, pre-LN blocks, final LayerNorm; or, as options, a
    Llama-style block (model.norm=rmsnorm, model.positions=rope or none, model.mlp=swiglu), ALiBi
    (model.positions=alibi) and ReLU attention (model.attention=relu). `dtype` is the
    blocks' compute type (bfloat16 under training.precision=bf16); parameters stay float32. The residual
    stream is sown (HIDDEN) with the positions added and after each block."""

    Config = GPT2Config
    length_key = staticmethod(length_key)
    sows_attention = True

    config: ModelConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, embeddings_BxTxE, train: bool = False):
        cfg = self.config
        h_BxTxE = (embeddings_BxTxE + positions(cfg, embeddings_BxTxE.shape[1])).astype(self.dtype)
        self.sow(HIDDEN, "hidden", h_BxTxE)
        h_BxTxE = nn.Dropout(cfg.dropout, deterministic=not train)(h_BxTxE)
        for i in range(cfg.n_layer):
            h_BxTxE = Block(cfg, self.dtype, name=f"h_{i}")(h_BxTxE, train)
            self.sow(HIDDEN, "hidden", h_BxTxE)
        return norm(cfg, jnp.float32, "ln_f")(h_BxTxE.astype(jnp.float32))
