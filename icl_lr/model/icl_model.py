"""The model of in-context regression: the encoding's read-in, a family's trunk, a linear read-out of the
encoding's outputs per token. Every parameter is one of its modules' (the read-in shares the model's scope,
so its parameters, `read_in` or `wte` and its companions, stand beside `transformer` and `read_out`, as in
every checkpoint written so far).

Adding a family is one module with its trunk (embeddings [B, T, E] -> hidden [B, T, E], built from
(ModelConfig, dtype)), one model YAML and one FAMILIES line.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from icl_lr.model.config import ModelConfig
from icl_lr.model.encoding import Encoding
from icl_lr.model.gpt2 import GPT2_INIT, Transformer
from icl_lr.model.lsa import LSA, gd_read_out_init
from icl_lr.model.lstm import LSTM

FAMILIES = {"gpt2": Transformer, "lstm": LSTM, "lsa": LSA}  # model.family -> its trunk


class ICLModel(nn.Module):
    config: ModelConfig
    encoding: Encoding
    dtype: Any = jnp.float32  # the trunk's compute type; read-in, final LayerNorm and read-out stay float32

    def setup(self):
        self.embed = self.encoding.read_in(self.config)
        nn.share_scope(self, self.embed)
        self.transformer = FAMILIES[self.config.family](self.config, self.dtype)  # the trunk, by its saved name
        read_out_init = gd_read_out_init if self.config.init == "gd" else GPT2_INIT
        self.read_out = nn.Dense(self.encoding.n_outputs, kernel_init=read_out_init)

    def __call__(self, inputs, train: bool = False):
        return self.read_out(self.transformer(self.embed(inputs), train))
