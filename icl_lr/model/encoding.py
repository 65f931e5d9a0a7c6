"""An encoding: how prompts become model inputs and model outputs become predictions and a loss, the
composition of an input side (layout and read-in, icl_lr/model/read_in.py) and an output side (read-out
width, loss, decoding, metrics, icl_lr/model/heads.py), with `Config`, the keys it owns under `data:`.

Adding an encoding is one class here (a new input or output side: one class in its module) and one
ENCODINGS line, or a plugin's (icl_lr/components.py: the entry-point group `icl_lr.encodings`, or an
import path); config validation, the model, the train step and the eval read it from there.
"""

from dataclasses import dataclass
from typing import ClassVar

import flax.linen as nn
import jax

from icl_lr.components import NoKeys, Registry
from icl_lr.fields import check
from icl_lr.model.bins import BinsConfig
from icl_lr.model.config import ModelConfig
from icl_lr.model.heads import BinnedHead, ScalarHead
from icl_lr.model.read_in import ContinuousInputs, PairedInputs, TokenInputs, TokensConfig
from icl_lr.task.base import Task
from icl_lr.task.config import DataConfig


@dataclass(frozen=True)
class Encoding:
    """An input side and an output side; a subclass names them (`Inputs`, `Head`) and its `Config`."""

    inputs: ContinuousInputs | TokenInputs | PairedInputs
    head: ScalarHead | BinnedHead
    Config: ClassVar[type] = NoKeys
    families: ClassVar[tuple | None] = None  # the only families that take it (None: every one)

    @classmethod
    def build(cls, cfg: DataConfig, task: Task) -> "Encoding":
        """The encoding of this data section's prompts, scored by `task`'s metrics."""
        return cls(cls.Inputs(cfg), cls.Head(cfg, task))

    @classmethod
    def sequence_length_of(cls, cfg: DataConfig) -> int:
        return cfg.n_points * cls.Inputs(cfg).tokens_per_point

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

    def baseline_metrics(self, xs_BxNxD: jax.Array, ys_BxN: jax.Array) -> dict:
        """Per-point metrics [B, N] of the baselines this output side adds, from the prompts alone."""
        return self.head.baseline_metrics(xs_BxNxD, ys_BxN)


def check_binned_y(cfg) -> None:
    """A binned y's bins and cross-entropy baselines assume linear regression's Gaussian prior."""
    d = cfg.data
    check(
        d.task == "linear_regression" and d.w_prior == "gaussian",
        f"data.encoding={d.encoding} (binned y) is for data.task=linear_regression under data.w_prior=gaussian "
        f"(its bins and baselines assume them), not {d.task} under {getattr(d, 'w_prior', 'its own prior')}",
    )


class Continuous(Encoding):
    """Garg et al.'s: an x-token and a y-token per point, a linear read-in, a scalar read-out."""

    Inputs, Head = ContinuousInputs, ScalarHead


class Tokens(Encoding):
    """One token per value in, the y's bin out."""

    Inputs, Head, Config = TokenInputs, BinnedHead, TokensConfig
    check_run = staticmethod(check_binned_y)


class BinnedY(Encoding):
    """Continuous inputs, the y read out over bins."""

    Inputs, Head, Config = ContinuousInputs, BinnedHead, BinsConfig
    check_run = staticmethod(check_binned_y)


class Paired(Encoding):
    """One token (y_i, x_i) per point: the lsa and encoder families'."""

    Inputs, Head = PairedInputs, ScalarHead
    families = ("lsa", "encoder")


ENCODINGS = Registry(
    "data.encoding",
    "icl_lr.encodings",
    {
        "continuous": "icl_lr.model.encoding:Continuous",
        "tokens": "icl_lr.model.encoding:Tokens",
        "binned_y": "icl_lr.model.encoding:BinnedY",
        "paired": "icl_lr.model.encoding:Paired",
    },
    ("build", "sequence_length_of"),
)
