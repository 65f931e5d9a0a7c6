"""Bai et al.'s encoder: the trunk of the encoder family, a transformer whose tokens attend both ways over a
problem's context and query (Bai et al. 2023, "Transformers as statisticians"; allenbai01/
transformers-as-statisticians, src/models.py, EncoderTransformer, which this follows layer for layer).

Each point is one token (y_i, x_i) (the paired encoding; theirs is (x_i, y_i), the same model up to the order of
the read-in's rows). The prediction of y_k is a problem of its own, as theirs is a forward pass on the prompt cut
after point k with y_k zeroed: its k context tokens and the query (0, x_k), every token attending every token of
its problem, the problems k = 0..N-1 of a prompt side by side in one call. Each of n_layer post-norm blocks:
h <- LayerNorm(h + attention(h)), h <- LayerNorm(h + W_2 relu(W_1 h)); the attention has query, key and value
maps without biases and no output map, its weights relu(q.k) over the problem's k + 1 tokens (model.attention=relu,
theirs) or softmax(q.k / sqrt(A)); their one head is model.n_head=1 (their config's n_head is unused in their
code). No positions: a set of points. The blocks' weights start as PyTorch's nn.Linear does, theirs; the read-in
and read-out as every family's (docs/initialisation.md).
"""

from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from icl_lr.fields import check
from icl_lr.model.config import HIDDEN, ModelConfig, check_counts, torch_init
from icl_lr.model.gpt2 import ATTENTIONS, attention_weights


@dataclass(frozen=True)
class EncoderConfig:
    """The encoder family's keys (configs/model/encoder.yaml documents them)."""

    n_layer: int = 12
    n_head: int = 1
    attention: str = "relu"

    def check(self) -> None:
        check_counts(self, "n_layer", "n_head")
        check(
            self.n_embd % self.n_head == 0,
            f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})",
        )
        check(self.attention in ATTENTIONS, f"model.attention must be one of {ATTENTIONS}, got {self.attention!r}")


def torch_linear(features: int, fan_in: int, dtype, name: str, use_bias: bool = True) -> nn.Dense:
    """nn.Dense initialised as PyTorch's nn.Linear: kernel and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    init = torch_init(fan_in)
    return nn.Dense(features, use_bias=use_bias, kernel_init=init, bias_init=init, dtype=dtype, name=name)


class EncoderBlock(nn.Module):
    """One post-norm block over tokens [B, T, E], each attending the keys `attends` [B, 1, 1, T] allows."""

    config: ModelConfig
    dtype: Any

    @nn.compact
    def __call__(self, h_BxTxE, attends_Bx1x1xT):
        cfg, (batch, length, width) = self.config, h_BxTxE.shape
        heads = lambda name: torch_linear(width, width, self.dtype, name, use_bias=False)(h_BxTxE).reshape(
            batch, length, cfg.n_head, width // cfg.n_head
        )
        q_BxTxHxA, k_BxTxHxA, v_BxTxHxA = heads("query"), heads("key"), heads("value")
        weights_BxHxTxT = attention_weights(cfg.attention, q_BxTxHxA, k_BxTxHxA, attends=attends_Bx1x1xT)
        out_BxTxE = jnp.einsum("bhqs,bshk->bqhk", weights_BxHxTxT.astype(self.dtype), v_BxTxHxA).reshape(h_BxTxE.shape)
        h_BxTxE = nn.LayerNorm(1e-5, dtype=self.dtype, name="ln_1")(h_BxTxE + out_BxTxE)
        hidden_BxTxE = nn.relu(torch_linear(width, width, self.dtype, "mlp_in")(h_BxTxE))
        return nn.LayerNorm(1e-5, dtype=self.dtype, name="ln_2")(
            h_BxTxE + torch_linear(width, width, self.dtype, "mlp_out")(hidden_BxTxE)
        )


class Encoder(nn.Module):
    """Context and query embeddings [B, N, 2, E] (per point: the token with its y, the token with y = 0) -> the
    query's state [B, N, E] after n_layer blocks, for every problem k = 0..N-1 at once (N + 1 tokens each: the N
    context tokens, of which the first k are attended, and the query). The queries' states are sown (HIDDEN)
    before the first block and after each."""

    Config = EncoderConfig
    encodings = ("paired",)  # the only encoding it takes: one token per point

    config: ModelConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, embeddings_BxNx2xE, train: bool = False):
        batch, n, _, width = embeddings_BxNx2xE.shape
        context_BxKxNxE = jnp.broadcast_to(embeddings_BxNx2xE[:, None, :, 0], (batch, n, n, width))
        h_BxKxTxE = jnp.concatenate([context_BxKxNxE, embeddings_BxNx2xE[:, :, 1, None]], axis=2).astype(self.dtype)
        attended_KxT = jnp.concatenate([jnp.arange(n)[None, :] < jnp.arange(n)[:, None], jnp.ones((n, 1), bool)], 1)
        attends_Bx1x1xT = jnp.tile(attended_KxT[:, None, None, :], (batch, 1, 1, 1))  # row b n + k: problem k's keys
        h_BxTxE = h_BxKxTxE.reshape(batch * n, n + 1, width)  # one problem per row
        self.sow(HIDDEN, "hidden", h_BxTxE[:, -1].reshape(batch, n, width))
        for i in range(self.config.n_layer):
            h_BxTxE = EncoderBlock(self.config, self.dtype, name=f"h_{i}")(h_BxTxE, attends_Bx1x1xT)
            self.sow(HIDDEN, "hidden", h_BxTxE[:, -1].reshape(batch, n, width))
        return h_BxTxE[:, -1].reshape(batch, n, width).astype(jnp.float32)
