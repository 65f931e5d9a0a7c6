"""An LSTM in Flax Linen: the trunk of the lstm family (icl_lr/model/icl_model.py), the recurrent
baseline of in-context regression (Garg et al. 2022's LSTM comparison; Akyurek et al. 2024, berlino/seq_icl).

n_layer stacked LSTM layers of width n_embd over the encoding's embeddings (flax.linen's
OptimizedLSTMCell under nn.RNN), then a final LayerNorm as GPT-2's trunk ends with. No positions: the
recurrence orders the sequence. Causal by construction: the state at t has seen tokens up to t only.
"""

from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from icl_lr.model.config import HIDDEN, ModelConfig, check_counts


@dataclass(frozen=True)
class LSTMConfig:
    """The lstm family's keys (configs/model/lstm.yaml documents them)."""

    n_layer: int = 2

    def check(self) -> None:
        check_counts(self, "n_layer")


class LSTM(nn.Module):
    """Embeddings [B, T, E] -> hidden states [B, T, E]. `dtype`: the cells' compute type; parameters stay
    float32. The embeddings and each layer's states are sown (HIDDEN)."""

    Config = LSTMConfig

    config: ModelConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, embeddings_BxTxE, train: bool = False):
        h_BxTxE = embeddings_BxTxE.astype(self.dtype)
        self.sow(HIDDEN, "hidden", h_BxTxE)
        for i in range(self.config.n_layer):
            cell = nn.OptimizedLSTMCell(self.config.n_embd, dtype=self.dtype, name=f"cell_{i}")
            h_BxTxE = nn.RNN(cell, name=f"rnn_{i}")(h_BxTxE)
            self.sow(HIDDEN, "hidden", h_BxTxE)
        return nn.LayerNorm(1e-5, name="ln_f")(h_BxTxE.astype(jnp.float32))
