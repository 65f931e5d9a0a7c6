"""icl_lr/model/encoder.py: Bai et al.'s encoder against their model (allenbai01/transformers-as-statisticians,
src/models.py, EncoderTransformer, written out below in PyTorch float64 with the same weights) on each prompt cut
after point k, as their eval runs it; softmax attention and several heads against the same model with them; the
parameters against the formula; its every-k problems causal (tests/test_model.py), its PyTorch-style init."""

import jax
import numpy as np
import pytest

from helpers import data_config, encoding_of, model_config
from icl_lr.model.icl_model import ICLModel

D, N, E = 3, 6, 8


def theirs(torch, params, xs, ys, n_head: int, attention: str):
    """EncoderTransformer.forward on (xs, ys), its last token's prediction [B]: tokens (x_i, y_i), the last y zeroed,
    per layer H <- LN(H + attn(H)), H <- LN(H + mlp(H)), attn = act(q k^T) V / T (relu), or softmax per head over
    q k^T / sqrt(A) (no 1/T); their one head is n_head=1."""
    t = lambda a: torch.tensor(np.asarray(a, np.float64))
    zs = torch.cat([t(xs), t(ys)[..., None]], dim=2)
    zs[:, -1, -1] = 0.0
    read_in = params["read_in"]["kernel"]  # rows (y, x_1..x_d): theirs is (x_1..x_d, y)
    h = zs @ torch.cat([t(read_in[1:]), t(read_in[:1])]) + t(params["read_in"]["bias"])
    batch, length, width = h.shape
    layer_norm = lambda x, p: torch.nn.functional.layer_norm(x, (width,), t(p["scale"]), t(p["bias"]), 1e-5)
    for i in range(len([k for k in params["transformer"] if k.startswith("h_")])):
        p = params["transformer"][f"h_{i}"]
        q, k, v = (h @ t(p[n]["kernel"]) for n in ("query", "key", "value"))
        q, k, v = (x.reshape(batch, length, n_head, -1).transpose(1, 2) for x in (q, k, v))
        scores = q @ k.transpose(-1, -2)
        if attention == "relu":
            weights = torch.relu(scores) / length
        else:
            weights = torch.softmax(scores / q.shape[-1] ** 0.5, dim=-1)
        h = layer_norm(h + (weights @ v).transpose(1, 2).reshape(batch, length, width), p["ln_1"])
        mlp = torch.relu(h @ t(p["mlp_in"]["kernel"]) + t(p["mlp_in"]["bias"]))
        h = layer_norm(h + mlp @ t(p["mlp_out"]["kernel"]) + t(p["mlp_out"]["bias"]), p["ln_2"])
    return (h[:, -1] @ t(params["read_out"]["kernel"]) + t(params["read_out"]["bias"]))[:, 0].numpy()


@pytest.mark.parametrize(("n_head", "attention"), [(1, "relu"), (2, "softmax")])
def test_each_prediction_is_their_model_on_the_prompt_cut_after_its_point(n_head, attention):
    torch = pytest.importorskip("torch")
    encoding = encoding_of(data_config(n_dims=D, n_points=N, encoding="paired"))
    model = ICLModel(model_config(family="encoder", n_layer=2, n_embd=E, n_head=n_head, attention=attention), encoding)
    xs, ys = jax.random.normal(jax.random.PRNGKey(0), (4, N, D)), jax.random.normal(jax.random.PRNGKey(1), (4, N))
    inputs = encoding.encode(xs, ys)
    params = jax.jit(model.init)(jax.random.PRNGKey(2), inputs)["params"]
    ours = np.asarray(jax.jit(lambda p: encoding.predict(model.apply({"params": p}, inputs)))(params))
    for k in range(N):  # problem k: k context points and the query x_k
        want = theirs(torch, params, xs[:, : k + 1], ys[:, : k + 1], n_head, attention)
        np.testing.assert_allclose(ours[:, k], want, rtol=1e-4, atol=1e-5, err_msg=f"k={k}")


def test_the_parameters_are_the_formula_and_start_as_pytorchs():
    """L (5 E^2 + 6 E) in the trunk (the preset's 12 layers of 64: 250,368); each block's weights
    U(-1/sqrt(E), 1/sqrt(E))."""
    encoding = encoding_of(data_config(n_dims=D, n_points=N, encoding="paired"))
    model = ICLModel(model_config(family="encoder", n_layer=2, n_embd=64), encoding)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), encoding.encode(np.zeros((1, N, D)), np.zeros((1, N))))
    trunk = params["params"]["transformer"]
    assert sum(p.size for p in jax.tree.leaves(trunk)) == 2 * (5 * 64**2 + 6 * 64)
    weights = np.concatenate(
        [np.ravel(trunk[f"h_{i}"][n]["kernel"]) for i in range(2) for n in "query key value".split()]
    )
    assert np.abs(weights).max() <= 64**-0.5 and np.std(weights) == pytest.approx(64**-0.5 / 3**0.5, rel=0.02)
