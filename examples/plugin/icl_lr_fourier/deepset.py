"""A causal DeepSets trunk (Zaheer et al. 2017, as a permutation-invariant baseline of in-context learning):
each layer adds to every token an MLP of (the token, the mean of the tokens up to it). No attention and no
positions; causal by construction, as the mean at t sees tokens up to t only.
"""

from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from icl_lr.model.config import HIDDEN, ModelConfig, check_counts


@dataclass(frozen=True)
class DeepSetConfig:
    """The family's keys under `model:` (conf/model/deepset.yaml documents them)."""

    n_layer: int = 2
    mlp_ratio: int = 4

    def check(self) -> None:
        check_counts(self, "n_layer", "mlp_ratio")


class DeepSet(nn.Module):
    """Embeddings [B, T, E] -> hidden states [B, T, E]; each layer's states are sown (HIDDEN) for the probes."""

    Config = DeepSetConfig

    config: ModelConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, embeddings_BxTxE, train: bool = False):
        c = self.config
        h_BxTxE = embeddings_BxTxE.astype(self.dtype)
        self.sow(HIDDEN, "hidden", h_BxTxE)
        counts_T = jnp.arange(1, h_BxTxE.shape[1] + 1, dtype=self.dtype)
        for i in range(c.n_layer):
            x = nn.LayerNorm(1e-5, dtype=self.dtype, name=f"ln_{i}")(h_BxTxE)
            pooled = jnp.cumsum(x, axis=1) / counts_T[:, None]  # the mean of the tokens up to each one
            m = nn.Dense(c.mlp_ratio * c.n_embd, dtype=self.dtype, name=f"fc_{i}")(jnp.concatenate([x, pooled], -1))
            h_BxTxE = h_BxTxE + nn.Dense(c.n_embd, dtype=self.dtype, name=f"proj_{i}")(nn.gelu(m))
            self.sow(HIDDEN, "hidden", h_BxTxE)
        return nn.LayerNorm(1e-5, name="ln_f")(h_BxTxE.astype(jnp.float32))
