"""GPT-2 in Flax Linen, with the read-in and read-out of in-context regression.

Parameter names and layouts follow Hugging Face's GPT2Model (wpe, h_i.ln_1, attn.c_attn, ...), so
its weights load one to one; tests/test_model.py checks the hidden states against it.
"""

from dataclasses import dataclass
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclass(frozen=True)
class ModelConfig:
    n_layer: int = 3
    n_embd: int = 64
    n_head: int = 2
    n_positions: int = 256
    dropout: float = 0.0


def _dense(features: int, name: str, n_layer: Optional[int] = None) -> nn.Dense:
    """GPT-2 init: N(0, 0.02); residual projections scaled by 1/sqrt(2 * n_layer)."""
    std = 0.02 if n_layer is None else 0.02 / (2 * n_layer) ** 0.5
    return nn.Dense(features, kernel_init=nn.initializers.normal(std), name=name)


class Attention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, h, train: bool):
        cfg = self.config
        batch, length, width = h.shape
        qkv = _dense(3 * width, "c_attn")(h).reshape(batch, length, 3, cfg.n_head, width // cfg.n_head)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(h.dtype)
        causal = jnp.tril(jnp.ones((length, length), bool))
        probs = jax.nn.softmax(jnp.where(causal, scores, jnp.finfo(scores.dtype).min), axis=-1)
        probs = nn.Dropout(cfg.dropout)(probs, deterministic=not train)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, length, width)
        return _dense(width, "c_proj", cfg.n_layer)(out)


class MLP(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, h):
        h = nn.gelu(_dense(4 * self.config.n_embd, "c_fc")(h), approximate=True)  # GPT-2's gelu_new
        return _dense(self.config.n_embd, "c_proj", self.config.n_layer)(h)


class Block(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, h, train: bool):
        drop = nn.Dropout(self.config.dropout, deterministic=not train)
        h = h + drop(Attention(self.config, name="attn")(nn.LayerNorm(1e-5, name="ln_1")(h), train))
        return h + drop(MLP(self.config, name="mlp")(nn.LayerNorm(1e-5, name="ln_2")(h)))


class Transformer(nn.Module):
    """GPT2Model on input embeddings: learned positions, pre-LN blocks, final LayerNorm."""

    config: ModelConfig

    @nn.compact
    def __call__(self, embeddings, train: bool = False):
        cfg = self.config
        wpe = nn.Embed(cfg.n_positions, cfg.n_embd, embedding_init=nn.initializers.normal(0.01), name="wpe")
        h = embeddings + wpe(jnp.arange(embeddings.shape[1]))
        h = nn.Dropout(cfg.dropout, deterministic=not train)(h)
        for i in range(cfg.n_layer):
            h = Block(cfg, name=f"h_{i}")(h, train)
        return nn.LayerNorm(1e-5, name="ln_f")(h)


class ICLModel(nn.Module):
    """Read-in, GPT-2 trunk, read-out.

    `vocab_size` None: continuous inputs [B, T, d], a linear read-in and one scalar out per token.
    Otherwise token ids [B, T] through an embedding table and logits over the vocabulary.
    """

    config: ModelConfig
    vocab_size: Optional[int] = None

    @nn.compact
    def __call__(self, inputs, train: bool = False):
        width = self.config.n_embd
        if self.vocab_size is None:
            embeddings = _dense(width, "read_in")(inputs)
        else:
            embeddings = nn.Embed(self.vocab_size, width, embedding_init=nn.initializers.normal(0.02), name="wte")(inputs)
        hidden = Transformer(self.config, name="transformer")(embeddings, train)
        return _dense(1 if self.vocab_size is None else self.vocab_size, "read_out")(hidden)
