"""Linear self-attention: the trunk of the lsa family (icl_lr/model/icl_model.py), in the parametrisation
of Ahn et al. 2023 (chengxiang/LinearTransformer) and Zhang, Frei and Bartlett 2023, with von Oswald et
al. 2023's gradient-descent construction as an initialisation (google-research/self-organising-systems,
transformers_learn_icl_by_gd).

Each point is one token e_i = (y_i, x_i) (the paired encoding: y first, so the construction needs no d).
The prediction of y_k is a problem of its own: its k context tokens e_0..e_{k-1} and a query (0, x_k).
A layer updates every token h of a problem by
    h <- h + (1/k) sum_{j<k} (W_PV h_j) (h_j^T W_KQ h),
keys and values the problem's context tokens only; no softmax, no MLP, no LayerNorm. With model.init=gd
the read-in is the identity, W_KQ = [[0, 0], [0, I_d]], W_PV = -eta e_y e_y^T and the read-out -e_y
(e_y: the first coordinate): layer l turns each context token's y slot into its residual y_j - w_l^T x_j
and the query's into -w_l^T x_k, where w_l is l steps of gradient descent on (1/2k) sum_j (w^T x_j - y_j)^2
from w = 0 with learning rate eta = model.gd_learning_rate (tests/test_model.py checks it against them).
"""

from dataclasses import dataclass, field
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from icl_lr.fields import FREE, check
from icl_lr.model.config import HIDDEN, ModelConfig, check_counts
from icl_lr.model.gpt2 import GPT2_INIT

LSA_INIT = nn.initializers.normal(0.02)  # W_KQ and W_PV of a trained LSA start small (Ahn et al. init near 0)


Y = 0  # the y's coordinate in a paired token and, under the construction, in an embedding


def gd_read_in_init(key, shape, dtype=jnp.float32):
    """The construction's identity read-in [D + 1, E]: token (y, x) -> embedding (y, x, 0, ...)."""
    return jnp.eye(*shape, dtype=dtype)


def gd_read_out_init(key, shape, dtype=jnp.float32):
    """The construction's read-out [E, 1]: minus the y slot (which holds -w^T x_query)."""
    return jnp.zeros(shape, dtype).at[Y, 0].set(-1.0)


def _gd_kq(key, shape, dtype=jnp.float32):
    """W_KQ = [[0, 0], [0, I]]: a key-query product reads x_j^T x."""
    return jnp.eye(*shape, dtype=dtype).at[Y, Y].set(0.0)


@dataclass(frozen=True)
class LSAConfig:
    """The lsa family's keys (configs/model/lsa.yaml documents them)."""

    n_layer: int = 1
    init: str = "random"
    gd_learning_rate: float = field(default=1.0, metadata=FREE)  # acts at init only

    def check(self) -> None:
        check_counts(self, "n_layer")
        check(self.init in ("random", "gd"), f"model.init must be random or gd, got {self.init!r}")


class LSA(nn.Module):
    """Context and query embeddings [B, N, 2, E] (per point: the token with its y, the token with y = 0)
    -> the query's state [B, N, E] after n_layer layers, for every prefix problem k = 0..N-1 at once. The
    queries' states are sown (HIDDEN) before the first layer and after each."""

    Config = LSAConfig
    encodings = ("paired",)  # the only encoding it takes: one token per point

    @staticmethod
    def check_run(cfg) -> None:
        """The construction's identity read-in needs room for (y, x)."""
        m, d = cfg.model, cfg.data
        check(
            m.init != "gd" or m.n_embd >= d.n_dims + 1,
            f"model.init=gd needs model.n_embd >= data.n_dims + 1 ({d.n_dims + 1}) for its identity read-in: "
            f"{m.n_embd}",
        )

    @staticmethod
    def read_out_init(config):
        return gd_read_out_init if config.init == "gd" else GPT2_INIT

    config: ModelConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, embeddings_BxNx2xE, train: bool = False):
        cfg, e = self.config, self.config.n_embd
        gd = cfg.init == "gd"
        gd_pv = lambda key, shape, dtype=jnp.float32: jnp.zeros(shape, dtype).at[Y, Y].set(-cfg.gd_learning_rate)
        kq_init, pv_init = (_gd_kq, gd_pv) if gd else (LSA_INIT, LSA_INIT)
        n = embeddings_BxNx2xE.shape[1]
        # problem k: context tokens j < k (each a copy per problem: their states differ between problems)
        context_BxKxNxE = jnp.broadcast_to(embeddings_BxNx2xE[:, None, :, 0], (embeddings_BxNx2xE.shape[0], n, n, e))
        query_BxKxE = embeddings_BxNx2xE[:, :, 1]
        mask_KxN = jnp.arange(n)[None, :] < jnp.arange(n)[:, None]
        scale_K = 1.0 / jnp.maximum(jnp.arange(n), 1)
        context_BxKxNxE, query_BxKxE = context_BxKxNxE.astype(self.dtype), query_BxKxE.astype(self.dtype)
        self.sow(HIDDEN, "hidden", query_BxKxE)
        for i in range(cfg.n_layer):
            w_kq = self.param(f"w_kq_{i}", kq_init, (e, e))
            w_pv = self.param(f"w_pv_{i}", pv_init, (e, e))
            values_BxKxNxE = jnp.einsum("bkne,fe->bknf", context_BxKxNxE, w_pv.astype(self.dtype))
            keys_BxKxNxE = jnp.einsum("bkne,ef->bknf", context_BxKxNxE, w_kq.astype(self.dtype))
            keys_BxKxNxE = keys_BxKxNxE * mask_KxN[None, :, :, None]  # keys: the problem's context only
            to_context = jnp.einsum("bkje,bkie->bkij", keys_BxKxNxE, context_BxKxNxE)
            to_query = jnp.einsum("bkje,bke->bkj", keys_BxKxNxE, query_BxKxE)
            scale = scale_K[None, :, None]
            update_BxKxNxE = jnp.einsum("bkij,bkjf->bkif", to_context, values_BxKxNxE)
            context_BxKxNxE = context_BxKxNxE + scale[..., None] * update_BxKxNxE
            query_BxKxE = query_BxKxE + scale * jnp.einsum("bkj,bkjf->bkf", to_query, values_BxKxNxE)
            self.sow(HIDDEN, "hidden", query_BxKxE)
        return query_BxKxE.astype(jnp.float32)
