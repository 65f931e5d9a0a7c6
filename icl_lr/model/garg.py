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


# their training.task: (icl-lr's data.task, {their task_kwargs key: (icl-lr's data key, their default)}), the
# defaults of their src/tasks.py; a key icl-lr has no place for (None) maps only at its default
TASKS = {
    "linear_regression": ("linear_regression", {"scale": ("prior_scale", 1.0)}),
    "sparse_linear_regression": ("sparse_linear", {"scale": ("prior_scale", 1.0), "sparsity": ("sparsity", 3)}),
    "noisy_linear_regression": (
        "linear_regression",
        {"scale": ("prior_scale", 1.0), "noise_std": ("noise_std", 0.0), "renormalize_ys": (None, False)},
    ),
    "linear_classification": ("linear_classification", {"scale": ("prior_scale", 1.0)}),
    "quadratic_regression": ("quadratic", {"scale": ("prior_scale", 1.0)}),
    "relu_2nn_regression": ("relu_2nn", {"scale": (None, 1), "hidden_layer_size": ("hidden_width", 100)}),
    "decision_tree": ("decision_tree", {"depth": ("tree_depth", 4)}),
}


def _get(config: dict, dotted: str):
    """config.yaml's value at a dotted key; a missing one is a ConfigError naming it."""
    value = config
    for part in dotted.split("."):
        check(isinstance(value, dict) and part in value, f"lacks {dotted}")
        value = value[part]
    return value


def model_keys(garg_config: dict) -> tuple[dict, int]:
    """(icl-lr's `model:` keys, data.n_dims) of a Garg et al. run's config.yaml (its `model:` section): their
    backbone holds 2 n_positions tokens (an x- and a y-token per point)."""
    model = {k: _get(garg_config, f"model.{k}") for k in ("n_embd", "n_layer", "n_head", "n_dims", "n_positions")}
    family = garg_config["model"].get("family", "gpt2")
    check(family == "gpt2", f"model.family={family}: only Garg et al.'s gpt2 models map onto icl-lr's")
    sizes = {"n_embd": model["n_embd"], "n_layer": model["n_layer"], "n_head": model["n_head"]}
    return {"family": "gpt2", **sizes, "n_positions": 2 * model["n_positions"], "dropout": 0.0}, model["n_dims"]


def run_record(garg_config: dict) -> dict:
    """The dotted training record (run_config.json's keys) of a Garg et al. run's config.yaml: the model, its
    task and task_kwargs as icl-lr's data keys, and the context it was trained to (their curriculum's
    `points.end`, what their eval scores at; `dims.end` must be model.n_dims). What icl-lr's prompts cannot
    reproduce is a ConfigError naming it."""
    model, n_dims = model_keys(garg_config)
    task = _get(garg_config, "training.task")
    check(task in TASKS, f"training.task={task} has no icl-lr task (known: {', '.join(TASKS)})")
    kwargs = _get(garg_config, "training.task_kwargs") or {}
    check(isinstance(kwargs, dict), f"training.task_kwargs={kwargs} is not a mapping")
    name, keys = TASKS[task]
    unknown = sorted(set(kwargs) - set(keys))
    check(not unknown, f"training.task_kwargs {', '.join(unknown)} of {task}: icl-lr's {name} has no such key")
    data = {"data.task": name}
    for theirs, (ours, default) in keys.items():
        value = kwargs.get(theirs, default)
        if ours is None:
            check(value == default, f"training.task_kwargs {theirs}={value} of {task}: icl-lr's {name} has no such key")
        else:
            data[f"data.{ours}"] = value
    sampler = garg_config["training"].get("data", "gaussian")
    check(sampler == "gaussian", f"training.data={sampler}: icl-lr's x's are gaussian")
    dims, points = (
        _get(garg_config, "training.curriculum.dims.end"),
        _get(garg_config, "training.curriculum.points.end"),
    )
    check(
        dims == n_dims,
        f"training.curriculum.dims.end={dims} but model.n_dims={n_dims}: icl-lr's prompts fill every coordinate "
        "the model reads, as their training did only where the two are equal",
    )
    check(
        1 <= points <= model["n_positions"] // 2,
        f"training.curriculum.points.end={points} is outside 1..model.n_positions={model['n_positions'] // 2}",
    )
    return {f"model.{k}": v for k, v in model.items()} | data | {"data.n_dims": n_dims, "data.n_points": points}


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
