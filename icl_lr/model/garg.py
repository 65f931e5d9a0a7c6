"""Garg et al.'s released models (dtsip/in-context-learning src/models.py, TransformerModel) as the gpt2
family's params: their `_read_in` (a Linear of x- and y-tokens), `_backbone` (Hugging Face's GPT2Model,
whose parameter names gpt2.py follows) and `_read_out` (a Linear to one number). Their prompt layout,
x_i and (y_i, 0, ..., 0) interleaved with predictions read at the x positions, is the continuous
encoding's, so their models score on icl-lr's prompts unchanged.
"""

import re

import numpy as np

from icl_lr.fields import check

BLOCK = (("ln_1", "scale", "weight"), ("ln_1", "bias", "bias"), ("ln_2", "scale", "weight"), ("ln_2", "bias", "bias"))
LAYERS = (("attn", "c_attn"), ("attn", "c_proj"), ("mlp", "c_fc"), ("mlp", "c_proj"))  # Conv1D (in, out), as Dense
IGNORED = re.compile(r"\.attn\.(bias|masked_bias)$|\.wte\.weight$")  # the causal-mask buffers; the unused token table


def model_keys(garg_config: dict) -> tuple[dict, int]:
    """(icl-lr's `model:` keys, data.n_dims) of a Garg et al. run's config.yaml (its `model:` section): their
    backbone holds 2 n_positions tokens (an x- and a y-token per point)."""
    model = garg_config.get("model", garg_config)
    missing = [k for k in ("n_embd", "n_layer", "n_head", "n_dims", "n_positions") if k not in model]
    check(not missing, f"Garg et al.'s config.yaml lacks model.{', model.'.join(missing)}")
    check(
        model.get("family", "gpt2") == "gpt2",
        f"only Garg et al.'s gpt2 models map onto icl-lr's, got {model['family']}",
    )
    sizes = {"n_embd": model["n_embd"], "n_layer": model["n_layer"], "n_head": model["n_head"]}
    return {"family": "gpt2", **sizes, "n_positions": 2 * model["n_positions"], "dropout": 0.0}, model["n_dims"]


def params_from_state_dict(state: dict, n_layer: int, n_dims: int) -> dict:
    """icl-lr's params {read_in, transformer, read_out} of their `model_state_dict` (arrays by name); a key
    missing, left over or of the wrong shape is a ConfigError naming it."""
    state = {k: np.asarray(v, np.float32) for k, v in state.items() if not IGNORED.search(k)}
    used = set()

    def take(name: str, shape: tuple | None = None, transpose: bool = False) -> np.ndarray:
        check(name in state, f"Garg et al.'s state dict lacks {name}")
        check(shape is None or state[name].shape == shape, f"{name} has shape {state[name].shape}, expected {shape}")
        used.add(name)
        return state[name].T if transpose else state[name]

    n_embd = take("_read_in.weight").shape[0]
    backbone = {"wpe": {"embedding": take("_backbone.wpe.weight")}}
    for i in range(n_layer):
        prefix = f"_backbone.h.{i}."
        block = {"attn": {}, "mlp": {}, "ln_1": {}, "ln_2": {}}
        for norm, ours, theirs in BLOCK:
            block[norm][ours] = take(f"{prefix}{norm}.{theirs}", (n_embd,))
        for module, layer in LAYERS:
            block[module][layer] = {
                "kernel": take(f"{prefix}{module}.{layer}.weight"),
                "bias": take(f"{prefix}{module}.{layer}.bias"),
            }
        backbone[f"h_{i}"] = block
    backbone["ln_f"] = {
        "scale": take("_backbone.ln_f.weight", (n_embd,)),
        "bias": take("_backbone.ln_f.bias", (n_embd,)),
    }
    params = {
        "read_in": {"kernel": take("_read_in.weight", (n_embd, n_dims), transpose=True), "bias": take("_read_in.bias")},
        "transformer": backbone,
        "read_out": {
            "kernel": take("_read_out.weight", (1, n_embd), transpose=True),
            "bias": take("_read_out.bias", (1,)),
        },
    }
    left = sorted(set(state) - used)
    check(not left, f"Garg et al.'s state dict has keys icl-lr's gpt2 has no place for: {', '.join(left[:5])}")
    return params
