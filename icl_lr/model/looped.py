"""The looped transformer: the trunk of the looped family (Yang et al. 2024, Leiay/looped_transformer's
TransformerModelLooped, scripts/models.py): `model.n_layer` GPT-2 blocks (icl_lr/model/gpt2.py, with its
options) applied `model.n_loops` times with input injection, z <- f(z + e) from z = 0, where e is the read-in's
embeddings and f the blocks with positions added before them and the final norm after, as their GPT2Model
does on every call. Trained on the outputs of the last `model.loss_loops` loops (their truncated loss, the
earlier loops run without gradient: scripts/train.py's n_loop_window); scored at other loop counts by
`eval.n_loops`, the same parameters looped more or fewer times.
"""

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from icl_lr.fields import check
from icl_lr.model.config import HIDDEN, check_counts
from icl_lr.model.gpt2 import Block, GPT2Config, Transformer, norm, positions


@dataclass(frozen=True)
class LoopedConfig(GPT2Config):
    """The looped family's keys: the gpt2 family's, and its loops (configs/model/looped.yaml documents them)."""

    n_layer: int = 1
    n_loops: int = 12
    loss_loops: int = 6

    def check(self) -> None:
        GPT2Config.check(self)
        check_counts(self, "n_loops", "loss_loops")
        check(
            self.loss_loops <= self.n_loops,
            f"model.loss_loops ({self.loss_loops}) must not exceed model.n_loops ({self.n_loops})",
        )


class Looped(Transformer):
    """Embeddings [B, T, E] -> the last loop's output [B, T, E]; with train=True, the outputs of the last
    `loss_loops` loops [S, B, T, E] (`trains_on_stack`), the loss their mean. The stream is sown (HIDDEN)
    as the blocks first see it (embeddings and positions) and after each loop. The transformer's fields, its
    positions' bound and its attention's weights (sows_attention) are the gpt2 trunk's."""

    Config = LoopedConfig
    trains_on_stack = True

    @nn.compact
    def __call__(self, embeddings_BxTxE, train: bool = False):
        cfg = self.config
        blocks = [Block(cfg, self.dtype, name=f"h_{i}") for i in range(cfg.n_layer)]
        final_norm = norm(cfg, jnp.float32, "ln_f")
        positions_TxE = positions(cfg, embeddings_BxTxE.shape[1])
        self.sow(HIDDEN, "hidden", (embeddings_BxTxE + positions_TxE).astype(self.dtype))

        def loop(z_BxTxE):
            h_BxTxE = (z_BxTxE + embeddings_BxTxE + positions_TxE).astype(self.dtype)
            h_BxTxE = nn.Dropout(cfg.dropout, deterministic=not train)(h_BxTxE)
            for block in blocks:
                h_BxTxE = block(h_BxTxE, train)
            self.sow(HIDDEN, "hidden", h_BxTxE)
            return final_norm(h_BxTxE.astype(jnp.float32))

        z_BxTxE, outputs = jnp.zeros_like(embeddings_BxTxE, jnp.float32), []
        for i in range(cfg.n_loops):
            z_BxTxE = loop(z_BxTxE)
            if train and i == cfg.n_loops - cfg.loss_loops - 1:
                z_BxTxE = jax.lax.stop_gradient(z_BxTxE)  # the loops before the loss's run without gradient
            outputs.append(z_BxTxE)
        return jnp.stack(outputs[-cfg.loss_loops :]) if train else z_BxTxE
