"""eval.attention: what each attention layer and head of a model looks at on the held-out prompts.

A trunk with softmax attention sows its weights (model.config.ATTENTION) at each call of an attention layer;
a looped trunk calls its layers once per loop, so its layers are (loop, layer) in call order. The weights are
averaged over the prompts ([layers, H, T, T], query by key) and summarised at each prediction position (the
token whose output predicts y_k) as the share on the x-tokens and on the y-tokens of the points before k;
the rest is on point k's own tokens. A point's tokens are its x-tokens, then its y-token, in every sequential
layout (continuous: x, y; tokens: x_0 .. x_{D-1}, y). The weights and shares go to attention/step_<n>.npz
(schema.ATTENTION_DIR) and to W&B as an image and a table.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np

from icl_lr.components import NoKeys
from icl_lr.fields import check
from icl_lr.model.config import ATTENTION
from icl_lr.records.schema import ATTENTION_SHARE, SHARE_KINDS
from icl_lr.records.tracking import Image, Table
from icl_lr.train.analyses import Result
from icl_lr.train.eval_sets import EvalSet


def _in_call_order(sown: dict) -> list:
    """The sown weights [B, H, T, T], by call and then by module path (h_2 before h_10)."""
    natural = lambda path: [tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)) for name in path]
    entries = []

    def walk(tree, path):
        for name, value in tree.items():
            if isinstance(value, dict):
                walk(value, (*path, name))
            else:  # one entry per call of the layer
                entries.extend((call, natural(path), weights) for call, weights in enumerate(value))

    walk(sown, ())
    return [weights for _, _, weights in sorted(entries, key=lambda entry: entry[:2])]


def make_attention_fn(model):
    """jitted params, inputs [C, ...] -> the attention weights summed over the C prompts, [layers, H, T, T]."""

    @jax.jit
    def summed_weights(params, inputs):
        _, sown = model.apply({"params": params}, inputs, mutable=[ATTENTION])
        return jnp.stack([w.astype(jnp.float32).sum(0) for w in _in_call_order(sown[ATTENTION])])

    return summed_weights


def mean_weights(summed_weights, params, inputs, chunk: int) -> np.ndarray:
    """The weights' mean over every prompt of `inputs`, [layers, H, T, T], in chunks of `chunk` prompts."""
    starts = range(0, inputs.shape[0], chunk)
    return sum(np.asarray(summed_weights(params, inputs[s : s + chunk]), np.float64) for s in starts) / inputs.shape[0]


def shares(weights_LxHxTxT: np.ndarray, tokens_per_point: int) -> np.ndarray:
    """[kind (SHARE_KINDS), layers, H, N]: each prediction position's weight on the earlier points' x-tokens
    and y-tokens."""
    n_tokens, per = weights_LxHxTxT.shape[-1], tokens_per_point
    points = np.arange(n_tokens // per)
    point_T, y_token_T = np.arange(n_tokens) // per, np.arange(n_tokens) % per == per - 1
    rows_LxHxNxT = weights_LxHxTxT[:, :, points * per + per - 2]
    earlier_NxT = point_T[None, :] < points[:, None]
    return np.stack([(rows_LxHxNxT * (earlier_NxT & (y_token_T == is_y))).sum(-1) for is_y in (False, True)])


def share_curves(shares_KxLxHxN: np.ndarray) -> dict:
    """{`attention_share/<kind>/layer_<l>/head_<h>`: share [N]}."""
    return {
        f"{ATTENTION_SHARE}/{kind}/layer_{layer}/head_{head}": shares_KxLxHxN[k, layer, head]
        for k, kind in enumerate(SHARE_KINDS)
        for layer in range(shares_KxLxHxN.shape[1])
        for head in range(shares_KxLxHxN.shape[2])
    }


def attention_image(weights_LxHxTxT: np.ndarray, cell: int = 3, gap: int = 4) -> np.ndarray:
    """The maps tiled as one grey image [rows, columns] uint8: a map per layer (row) and head (column), each
    weight a `cell`-pixel square, 255 * (1 - sqrt(weight)), maps `gap` white pixels apart."""
    layers, heads, tokens, _ = weights_LxHxTxT.shape
    side = tokens * cell
    image = np.full((layers * (side + gap) - gap, heads * (side + gap) - gap), 255, np.uint8)
    for layer in range(layers):
        for head in range(heads):
            shade = 255 * (1 - np.sqrt(np.clip(weights_LxHxTxT[layer, head], 0, 1)))
            top, left = layer * (side + gap), head * (side + gap)
            image[top : top + side, left : left + side] = np.kron(shade, np.ones((cell, cell))).round()
    return image


def shares_table(shares_KxLxHxN: np.ndarray) -> Table:
    """A row per (layer, head, k) with each kind's share."""
    _, layers, heads, n = shares_KxLxHxN.shape
    rows = [
        [layer, head, k, *(float(shares_KxLxHxN[i, layer, head, k]) for i in range(len(SHARE_KINDS)))]
        for layer in range(layers)
        for head in range(heads)
        for k in range(n)
    ]
    return Table(["layer", "head", "k", *(f"{kind}_share" for kind in SHARE_KINDS)], rows)


class Attention:
    """The share curves `attention_share/<kind>/layer_<l>/head_<h>`; the arrays `weights` [layers, heads, T, T]
    and `shares` [kind, layers, heads, N]; the figures eval/attention (a row per layer, a column per head,
    query down, key across; darker is more weight, on a square-root scale) and eval/attention_shares (the
    table of the shares)."""

    Config = NoKeys

    @staticmethod
    def wanted(eval_cfg) -> bool:
        return eval_cfg.attention

    @staticmethod
    def check(cfg, task, family) -> None:
        check(
            getattr(family, "sows_attention", False),
            f"eval.attention reads the causal attention maps a family sows: model.family={cfg.model.family} sows none",
        )

    def __init__(self, setup, cfg, mesh):
        self.summed_weights, self.chunk = make_attention_fn(setup.model), cfg.eval.batch_size
        self.tokens_per_point = setup.encoding.inputs.tokens_per_point

    def __call__(self, params, held_out: EvalSet, step: int) -> Result:
        weights = mean_weights(self.summed_weights, params, held_out.inputs, self.chunk)
        kinds = shares(weights, self.tokens_per_point)
        caption = f"attention, mean over the held-out prompts (step {step}): a row per layer, a column per head"
        return Result(
            curves=share_curves(kinds),
            arrays={"weights": weights.astype(np.float32), "shares": kinds.astype(np.float32)},
            figures={
                "eval/attention": Image(attention_image(weights), caption),
                "eval/attention_shares": shares_table(kinds),
            },
        )
