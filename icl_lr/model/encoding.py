"""An encoding: how prompts become model inputs and model outputs become predictions and a loss, the
composition of an input side (layout and read-in, icl_lr/model/read_in.py) and an output side (read-out
width, loss, decoding, metrics, icl_lr/model/heads.py).

Adding an encoding is one entry in ENCODINGS (a new input or output side: one class in its module);
config validation, the model, the train step and the eval read it from here.
"""

from dataclasses import dataclass

import flax.linen as nn
import jax

from icl_lr.model.config import ModelConfig
from icl_lr.model.heads import BinnedHead, ScalarHead
from icl_lr.model.read_in import ContinuousInputs, PairedInputs, TokenInputs
from icl_lr.task.config import DataConfig

ENCODINGS = {  # data.encoding -> (its input side, its output side)
    "continuous": (ContinuousInputs, ScalarHead),  # Garg et al.
    "tokens": (TokenInputs, BinnedHead),  # one token per value in and out
    "binned_y": (ContinuousInputs, BinnedHead),  # continuous inputs, the y read out over bins
    "paired": (PairedInputs, ScalarHead),  # one token (y_i, x_i) per point: the lsa family's
}


@dataclass(frozen=True)
class Encoding:
    inputs: ContinuousInputs | TokenInputs | PairedInputs
    head: ScalarHead | BinnedHead

    @property
    def sequence_length(self) -> int:
        return self.inputs.cfg.n_points * self.inputs.tokens_per_point

    @property
    def n_outputs(self) -> int:
        """The read-out's width per token."""
        return self.head.n_outputs

    def encode(self, xs_BxNxD: jax.Array, ys_BxN: jax.Array) -> jax.Array:
        """The model's inputs for these prompts."""
        return self.inputs.encode(xs_BxNxD, ys_BxN)

    def read_in(self, model_cfg: ModelConfig) -> nn.Module:
        """The read-in module: inputs -> embeddings [B, T, E] of std `model_cfg.embedding_std`."""
        return self.inputs.read_in(model_cfg)

    def prediction_outputs(self, outputs_BxTxO: jax.Array) -> jax.Array:
        """The outputs that predict each y_i [B, N, O]: those of the token just before y_i."""
        per_point = self.inputs.tokens_per_point
        outs = outputs_BxTxO.reshape(outputs_BxTxO.shape[0], self.inputs.cfg.n_points, per_point, -1)
        return outs[:, :, per_point - 2]

    def predict(self, outputs_BxTxO: jax.Array) -> jax.Array:
        """y predictions [B, N] from the model's outputs."""
        return self.head.predict(self.prediction_outputs(outputs_BxTxO))

    def point_losses(self, outputs_BxTxO: jax.Array, ys_BxN: jax.Array) -> jax.Array:
        """The training loss of each predicted y [B, N]."""
        return self.head.point_losses(self.prediction_outputs(outputs_BxTxO), ys_BxN)

    def eval_metrics(self, outputs_BxTxO: jax.Array, ys_BxN: jax.Array) -> dict:
        """Per-point metrics [B, N] of the model's outputs; their means over prompts are the eval curves."""
        return self.head.eval_metrics(self.prediction_outputs(outputs_BxTxO), ys_BxN)

    def seen_values(self, xs_BxNxD: jax.Array, ys_BxN: jax.Array) -> tuple | None:
        """(xs, ys, the noise variance rounding adds to each y) as the model sees them, decoded, when the
        inputs are quantised; else None."""
        return self.inputs.seen_values(xs_BxNxD, ys_BxN)

    def yardsticks(self, xs_BxNxD: jax.Array, ys_BxN: jax.Array) -> dict:
        """Per-point metrics [B, N] of reference predictors that depend only on the prompts."""
        return self.head.yardsticks(xs_BxNxD, ys_BxN)


def encoding_of(cfg: DataConfig) -> Encoding:
    inputs, head = ENCODINGS[cfg.encoding]
    return Encoding(inputs(cfg), head(cfg))
