"""eval.attention: what each attention layer and head of a model looks at on the held-out prompts.

A trunk with softmax attention sows its weights (model.config.ATTENTION) at each call of an attention layer;
a looped trunk calls its layers once per loop, so its layers are (loop, layer) in call order. The weights are
averaged over the prompts ([layers, H, T, T], query by key) and summarised at each prediction position (the
token whose output predicts y_k) as the share on the x-tokens and on the y-tokens of the points before k;
the rest is on point k's own tokens. A point's tokens are its x-tokens, then its y-token, in every sequential
layout (continuous: x, y; tokens: x_0 .. x_{D-1}, y).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np

from icl_lr.model.config import ATTENTION
from icl_lr.records.schema import ATTENTION_SHARE, SHARE_KINDS


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
