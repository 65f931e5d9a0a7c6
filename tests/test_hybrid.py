"""icl_lr/model/hybrid.py: each layout's blocks in Park et al.'s order (krafton-ai/mambaformer-icl's MixerModel),
positions under the standard layout alone, the parameters against the formula, causality with its sown states and
attention weights; every family's causality and probes are tests/test_model.py's and tests/test_probes.py's,
every encoding tests/test_families.py's."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import model_config
from icl_lr.fields import ConfigError
from icl_lr.model.config import ATTENTION, HIDDEN
from icl_lr.model.hybrid import LAYOUTS, Hybrid

pytestmark = pytest.mark.unit

# mamba_ssm/models/mixer_seq_simple.py's MixerModel at their regression config's n_layer=4, the mixer create_block
# makes for each layer in order: mixed_attn=mambaformer adds a Mamba block first (layer_idx=-1), then attention
# where i % 2 == 0
PARK = {
    "mambaformer": ["mamba", "attention", "mamba", "attention", "mamba"],
    "standard": ["attention", "mamba", "attention", "mamba"],
}
MIXERS = {"attn": "attention", "mamba": "mamba"}


def init_params(cfg, length=6):
    return jax.eval_shape(Hybrid(cfg).init, jax.random.PRNGKey(0), jnp.ones((1, length, cfg.n_embd)))["params"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_blocks_are_parks_and_only_the_standard_layout_has_positions(layout):
    """The mixers read from the parameters, by block index: Park et al.'s order for the layout (so a switched
    layout fails); a position table under standard alone, MambaFormer's first block a Mamba block in its place."""
    cfg = model_config(family="hybrid", n_embd=16, n_layer=4, n_head=2, layout=layout)
    params = init_params(cfg)
    mixers = sorted(
        (int(i), MIXERS[kind]) for kind, _, i in (name.rpartition("_") for name in params) if kind in MIXERS
    )
    assert mixers == list(enumerate(PARK[layout])) and list(cfg.blocks) == PARK[layout]
    assert ("wpe" in params) == (layout == "standard")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_parameters_are_the_formula(layout):
    """Per block a LayerNorm (2 E) and its mixer: attention 4 E^2 + 4 E (c_attn, c_proj), Mamba the mamba family's
    (tests/test_mamba.py's formula); a final LayerNorm (2 E); under standard the position table (n_positions E)."""
    e, layers, s, k, expand, n_positions = 32, 3, 8, 4, 2, 20
    cfg = model_config(family="hybrid", n_embd=e, n_layer=layers, n_head=4, n_positions=n_positions, layout=layout,
                       d_state=s, d_conv=k, expand=expand)  # fmt: skip
    c, r = expand * e, math.ceil(e / 16)
    mixer = {
        "attention": 4 * e * e + 4 * e,
        "mamba": e * 2 * c + (k * c + c) + c * (r + 2 * s) + (r * c + c) + c * s + c + c * e,
    }
    expected = sum(2 * e + mixer[kind] for kind in PARK[layout][: layers + (layout == "mambaformer")]) + 2 * e
    expected += n_positions * e if layout == "standard" else 0
    assert sum(p.size for p in jax.tree.leaves(init_params(cfg))) == expected


def test_the_standard_layout_is_causal_and_sows_each_block_and_each_attention_map():
    """Token 5 changed: the outputs and sown states before it are unchanged, at it they change; one state with the
    positions added and one after each block; one [B, H, T, T] map per attention block, causal, each query's row
    summing to 1. (MambaFormer's causality is every family's test, tests/test_model.py.)"""
    cfg = model_config(family="hybrid", n_embd=16, n_layer=2, n_head=2, layout="standard")
    e = jax.random.normal(jax.random.PRNGKey(1), (2, 9, 16))
    changed = e.at[:, 5].set(jax.random.normal(jax.random.PRNGKey(2), (2, 16)))
    params = jax.jit(Hybrid(cfg).init)(jax.random.PRNGKey(3), e)["params"]
    run = jax.jit(lambda x: Hybrid(cfg).apply({"params": params}, x, mutable=[HIDDEN, ATTENTION]))
    (out, sown), (out_changed, sown_changed) = run(e), run(changed)
    hidden, hidden_changed = sown[HIDDEN]["hidden"], sown_changed[HIDDEN]["hidden"]
    assert len(hidden) == len(cfg.blocks) + 1
    for a, b in zip([out, *hidden], [out_changed, *hidden_changed], strict=True):
        np.testing.assert_allclose(a[:, :5], b[:, :5], atol=1e-6)
        assert not np.allclose(a[:, 5], b[:, 5])
    (weights,) = [w for block in sown[ATTENTION].values() for w in block["weights"]]  # one attention block of two
    assert weights.shape == (2, 2, 9, 9)
    np.testing.assert_allclose(jnp.triu(weights, 1), 0, atol=1e-7)
    np.testing.assert_allclose(weights.sum(-1), 1, rtol=1e-5)


def test_a_wrong_value_is_refused_in_one_line_naming_its_key():
    """The layout by the hybrid's check, the keys the blocks read by the gpt2 and mamba families' checks."""
    for key, value in {"layout": "interleaved", "n_head": 5, "n_positions": 0, "d_state": 0, "scan": "fast"}.items():
        with pytest.raises(ConfigError, match=f"model.{key}") as error:
            model_config(family="hybrid", n_embd=16, **{key: value})
        assert "\n" not in str(error.value)
