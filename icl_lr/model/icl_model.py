"""The model of in-context regression: the encoding's read-in, a family's trunk, a linear read-out of the
encoding's outputs per token. Every parameter is one of its modules' (the read-in shares the model's scope,
so its parameters, `read_in` or `wte` and its companions, stand beside `transformer` and `read_out`, as in
every checkpoint written so far).

A family is a trunk (embeddings [B, T, E] -> hidden [B, T, E], a Flax module built from (its section,
dtype) and called on (embeddings, train)) with its `Config`, the keys it owns under `model:`; optional:
`encodings` (the only ones it takes), `length_key` (its key bounding the sequence), `check_run(cfg)`
(what its keys need of other sections), `read_out_init(config)` (its Config may also override
ModelConfig.linear_inits, the linear read-in's and read-out's initialisers), `trains_on_stack` (called with train=True
it returns [S, B, T, E]: S outputs the loss averages over, as a looped transformer's last loops), `sows_attention`
(it sows its softmax attention weights, ATTENTION, for eval.attention). FAMILIES names the built-ins
(icl_lr/components.py: a plugin registers under `icl_lr.families`, or is named by import path).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from icl_lr.components import Registry
from icl_lr.model.config import ModelConfig
from icl_lr.model.encoding import Encoding
from icl_lr.model.gpt2 import GPT2_INIT

FAMILIES = Registry(
    "model.family",
    "icl_lr.families",
    {
        "gpt2": "icl_lr.model.gpt2:Transformer",
        "lstm": "icl_lr.model.lstm:LSTM",
        "lsa": "icl_lr.model.lsa:LSA",
        "mamba": "icl_lr.model.mamba:Mamba",
        "gla": "icl_lr.model.gla:GLA",
        "hybrid": "icl_lr.model.hybrid:Hybrid",
        "encoder": "icl_lr.model.encoder:Encoder",
        "looped": "icl_lr.model.looped:Looped",
    },
    ("__call__",),
)


class ICLModel(nn.Module):
    config: ModelConfig
    encoding: Encoding
    dtype: Any = jnp.float32  # the trunk's compute type; read-in, final LayerNorm and read-out stay float32

    def setup(self):
        trunk = FAMILIES.resolve(self.config.family)
        self.embed = self.encoding.read_in(self.config)
        nn.share_scope(self, self.embed)
        self.trunk = trunk(self.config, self.dtype, name="transformer")  # saved under its first family's name
        read_out_init = trunk.read_out_init(self.config) if hasattr(trunk, "read_out_init") else GPT2_INIT
        inits = {"kernel_init": read_out_init} | self.config.linear_inits(self.config.n_embd)
        self.read_out = nn.Dense(self.encoding.n_outputs, **inits)

    @property
    def trains_on_stack(self) -> bool:
        """Whether the outputs of a call with train=True are [S, B, T, O], S outputs trained on."""
        return getattr(FAMILIES.resolve(self.config.family), "trains_on_stack", False)

    def __call__(self, inputs, train: bool = False):
        return self.read_out(self.trunk(self.embed(inputs), train))
