"""Attention and Mamba interleaved: the trunk of the hybrid family, Park et al. 2024's MambaFormer and standard hybrid
("Can Mamba learn how to learn?", krafton-ai/mambaformer-icl: src/models.py's MambaMixerModel, the `tf-mamba`
family, over mamba/mamba_ssm/models/mixer_seq_simple.py's MixerModel, whose `mixed_attn` is model.layout here).

Each block is pre-norm and residual with one token mixer and no MLP (mamba_simple.py's Block: h <- h +
mixer(LayerNorm(h))): GPT-2's causal softmax attention (icl_lr/model/gpt2.py's Attention: mamba_simple.py's
CausalSelfAttention has its c_attn and c_proj, biases included) or the mamba family's mixer (icl_lr/model/mamba.py's
MambaMixer). n_layer blocks alternate, attention first, as MixerModel's `i % 2 == 0`; `standard` adds learned
positions to the embeddings (MambaMixerModel's wpe), `mambaformer` has none and puts one more Mamba block before
the others, which orders the tokens in their place. A final LayerNorm; LayerNorms throughout (MixerModel's
default, rms_norm=False). Initialisation: the gpt2 family's for attention and positions, the mamba family's for
the mixers (docs/model_families.md). Causal: each mixer is.
"""

from dataclasses import dataclass, field
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from icl_lr.fields import FREE, check, section_class
from icl_lr.model.config import HIDDEN, ModelConfig
from icl_lr.model.gpt2 import Attention, GPT2Config, positions
from icl_lr.model.mamba import MambaConfig, MambaMixer

LAYOUTS = ("mambaformer", "standard")  # Park et al.'s mixed_attn values


@dataclass(frozen=True)
class HybridConfig:
    """The hybrid family's keys (configs/model/mambaformer.yaml documents them)."""

    n_layer: int = 12
    n_head: int = 8
    n_positions: int = 256
    layout: str = "mambaformer"
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    scan: str = field(default="auto", metadata=FREE)  # the same states to float32 rounding: a resume may change it

    def check(self) -> None:
        check(self.layout in LAYOUTS, f"model.layout must be one of {LAYOUTS}, got {self.layout!r}")
        for section in block_sections(self):  # the gpt2 and mamba families' checks of the keys they read
            section.check()

    @property
    def blocks(self) -> tuple[str, ...]:
        """Each block's mixer in order, as MixerModel's create_block calls pick them: `attention` or `mamba`."""
        interleaved = tuple("attention" if i % 2 == 0 else "mamba" for i in range(self.n_layer))
        return ("mamba",) * (self.layout == "mambaformer") + interleaved


def block_sections(cfg) -> tuple:
    """The gpt2 and mamba families' sections of the hybrid's keys, which their mixers read: GPT-2's attention
    (softmax, no dropout; learned positions under `standard`, none under `mambaformer`) and Mamba's mixer."""
    shared = {"n_embd": cfg.n_embd, "embedding_std": cfg.embedding_std, "n_layer": cfg.n_layer}
    attention = section_class(ModelConfig, (GPT2Config,))(
        family="gpt2", n_head=cfg.n_head, n_positions=cfg.n_positions,
        positions="learned" if cfg.layout == "standard" else "none", **shared,
    )  # fmt: skip
    mamba = section_class(ModelConfig, (MambaConfig,))(
        family="mamba", d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand, scan=cfg.scan, **shared
    )
    return attention, mamba


def length_key(config) -> str | None:
    """The key bounding the sequence: the standard layout's position table; MambaFormer takes any length."""
    return "n_positions" if config.layout == "standard" else None


class Hybrid(nn.Module):
    """Embeddings [B, T, E] -> hidden states [B, T, E]; `dtype`: the blocks' compute type (the scan stays float32).
    The stream is sown (HIDDEN) with the positions added and after each block, the attention weights (ATTENTION)
    by the attention blocks."""

    Config = HybridConfig
    length_key = staticmethod(length_key)
    sows_attention = True

    config: ModelConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, embeddings_BxTxE, train: bool = False):
        cfg = self.config
        attention_cfg, mamba_cfg = block_sections(cfg)
        h_BxTxE = (embeddings_BxTxE + positions(attention_cfg, embeddings_BxTxE.shape[1])).astype(self.dtype)
        self.sow(HIDDEN, "hidden", h_BxTxE)
        for i, kind in enumerate(cfg.blocks):
            normed = nn.LayerNorm(1e-5, dtype=self.dtype, name=f"norm_{i}")(h_BxTxE)
            if kind == "attention":
                h_BxTxE = h_BxTxE + Attention(attention_cfg, self.dtype, name=f"attn_{i}")(normed, train)
            else:
                h_BxTxE = h_BxTxE + MambaMixer(mamba_cfg, self.dtype, name=f"mamba_{i}")(normed)
            self.sow(HIDDEN, "hidden", h_BxTxE)
        return nn.LayerNorm(1e-5, name="ln_f")(h_BxTxE.astype(jnp.float32))  # the final norm, by every trunk's name
