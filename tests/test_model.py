import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import data_config, encoding_for, encoding_of, model_config
from icl_lr.model.bins import Bins
from icl_lr.model.config import ATTENTION
from icl_lr.model.gpt2 import Attention, Transformer, alibi_slopes
from icl_lr.model.icl_model import FAMILIES, ICLModel
from icl_lr.model.read_in import TokenReadIn

pytestmark = pytest.mark.unit  # the fast tier: no process started

CFG = model_config(n_layer=2, n_embd=48, n_head=4, n_positions=32)


def init_transformer(seed=0, length=20):
    embeddings = jax.random.normal(jax.random.PRNGKey(seed), (2, length, CFG.n_embd))
    params = Transformer(CFG).init(jax.random.PRNGKey(1), embeddings)["params"]
    # Non-trivial LayerNorm and bias values, so a mis-mapped parameter cannot hide.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    params = jax.tree.unflatten(
        tree, [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    )
    return embeddings, params


def test_matches_huggingface_gpt2():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    embeddings, params = init_transformer()
    hf_config = transformers.GPT2Config(
        n_embd=CFG.n_embd,
        n_layer=CFG.n_layer,
        n_head=CFG.n_head,
        n_positions=CFG.n_positions,
        vocab_size=8,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
    )
    hf_config._attn_implementation = "eager"
    hf = transformers.GPT2Model(hf_config).eval()
    t = lambda a: torch.tensor(np.asarray(a))
    state = {"wpe.weight": t(params["wpe"]["embedding"]), "wte.weight": hf.wte.weight.detach()}
    for i in range(CFG.n_layer):
        block = params[f"h_{i}"]
        for ln in ("ln_1", "ln_2"):
            state[f"h.{i}.{ln}.weight"], state[f"h.{i}.{ln}.bias"] = t(block[ln]["scale"]), t(block[ln]["bias"])
        for module, layer in (("attn", "c_attn"), ("attn", "c_proj"), ("mlp", "c_fc"), ("mlp", "c_proj")):
            state[f"h.{i}.{module}.{layer}.weight"] = t(block[module][layer]["kernel"])  # Conv1D is (in, out), as Dense
            state[f"h.{i}.{module}.{layer}.bias"] = t(block[module][layer]["bias"])
    state["ln_f.weight"], state["ln_f.bias"] = t(params["ln_f"]["scale"]), t(params["ln_f"]["bias"])
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and not [k for k in missing if not k.endswith("attn.bias") and "masked_bias" not in k]
    with torch.no_grad():
        want = hf(inputs_embeds=t(embeddings)).last_hidden_state.numpy()
    got = np.asarray(Transformer(CFG).apply({"params": params}, embeddings))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_causal_outputs_ignore_the_future():
    embeddings, params = init_transformer()
    changed = embeddings.at[:, 12:].set(jax.random.normal(jax.random.PRNGKey(9), embeddings[:, 12:].shape))
    out, out_changed = (Transformer(CFG).apply({"params": params}, e) for e in (embeddings, changed))
    np.testing.assert_allclose(out[:, :12], out_changed[:, :12], atol=1e-6)
    assert not np.allclose(out[:, 12:], out_changed[:, 12:])


@pytest.mark.parametrize("family", FAMILIES.names())
def test_every_family_is_causal_and_counts_its_parameters(family):
    """Prediction k does not change when the points after k change, for every family's whole model."""
    data = data_config(n_dims=3, n_points=8, encoding=encoding_for(family))
    sizes = {"n_head": CFG.n_head, "n_positions": CFG.n_positions} if family == "gpt2" else {}
    model_cfg = model_config(family=family, n_layer=2, n_embd=CFG.n_embd, **sizes)
    encoding = encoding_of(data)
    model = ICLModel(model_cfg, encoding)
    xs = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 3))
    ys = jax.random.normal(jax.random.PRNGKey(1), (2, 8))
    later_xs = xs.at[:, 6:].set(jax.random.normal(jax.random.PRNGKey(3), (2, 2, 3)))
    later_ys = ys.at[:, 5:].set(jax.random.normal(jax.random.PRNGKey(4), (2, 3)))  # y_5 on, x_6 on
    inputs, later = encoding.encode(xs, ys), encoding.encode(later_xs, later_ys)
    params = model.init(jax.random.PRNGKey(2), inputs)["params"]
    out, changed = (encoding.predict(model.apply({"params": params}, i)) for i in (inputs, later))
    np.testing.assert_allclose(out[:, :6], changed[:, :6], atol=1e-6)  # y_k's prediction: points before k, x_k
    assert not np.allclose(out[:, 6:], changed[:, 6:])
    n_params = sum(p.size for p in jax.tree.leaves(params))
    assert n_params > 0 and set(params) >= {"transformer", "read_out"}


def test_read_in_and_read_out_shapes_and_dropout():
    dropout_cfg = model_config(n_layer=1, n_embd=16, n_head=2, n_positions=16, dropout=0.5)
    continuous = ICLModel(dropout_cfg, encoding_of(data_config(n_dims=5, n_points=5)))
    x = jnp.ones((2, 10, 5))
    params = continuous.init(jax.random.PRNGKey(0), x)["params"]
    assert continuous.apply({"params": params}, x).shape == (2, 10, 1)
    train_a, train_b = (
        continuous.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(s)}) for s in (1, 2)
    )
    assert not np.allclose(train_a, train_b)  # dropout is active in training...
    np.testing.assert_array_equal(
        continuous.apply({"params": params}, x), continuous.apply({"params": params}, x)
    )  # ...not in eval
    tokens = ICLModel(dropout_cfg, encoding_of(data_config(n_dims=2, n_points=4, encoding="tokens", vocab_size=11)))
    ids = jnp.zeros((2, 12), jnp.int32)
    token_params = tokens.init(jax.random.PRNGKey(0), ids)["params"]
    assert tokens.apply({"params": token_params}, ids).shape == (2, 12, 11)


@pytest.mark.parametrize("n_dims", [5, 20])
def test_embeddings_enter_the_stream_at_one_scale(n_dims):
    """Read-in embeddings of unit-variance x, token rows and positions all start at std model.embedding_std
    (docs/initialisation.md: GPT-2's 0.02 read-in beside 0.01 positions stalls under constant-lr Adam)."""
    cfg = model_config(n_layer=1, n_embd=256, n_head=2, n_positions=128)
    switches = dict(token_slot_embedding=True, token_point_embedding=True, token_value_embedding=True)
    data_cfg = data_config(n_dims=n_dims, n_points=5, encoding="tokens", vocab_size=64, **switches)
    xs = jax.random.normal(jax.random.PRNGKey(0), (64, 10, n_dims))
    continuous_cfg = dataclasses.replace(data_cfg, encoding="continuous", **dict.fromkeys(switches, False))
    continuous = ICLModel(cfg, encoding_of(continuous_cfg)).init(jax.random.PRNGKey(1), xs)["params"]
    embeddings = xs @ continuous["read_in"]["kernel"]
    tokens = ICLModel(cfg, encoding_of(data_cfg)).init(jax.random.PRNGKey(1), jnp.zeros((1, 8), jnp.int32))["params"]
    for name, values in [
        ("read-in embeddings", embeddings),
        ("positions", continuous["transformer"]["wpe"]["embedding"]),
        ("token rows", tokens["wte"]["embedding"]),
        ("token slots", tokens["wse"]["embedding"]),
        ("token points", tokens["wpte"]["embedding"]),
        ("token value directions", tokens["wve"]["embedding"]),  # times unit-variance bin centres
    ]:
        assert float(jnp.std(values)) == pytest.approx(cfg.embedding_std, rel=0.1), name


def test_token_read_in_adds_slot_point_and_value_embeddings_then_mixes_a_point():
    """With the switches on, a token's embedding e_t is its table row + its slot's + its point's + its bin
    centre times its slot's direction (data.token_*_embedding), and the short convolution adds
    sum over o = 0..d of kernel_o * e_{t-o} (data.token_short_conv); each is missing when its switch is off."""
    switches = dict(
        token_slot_embedding=True, token_point_embedding=True, token_value_embedding=True, token_short_conv=True
    )
    data_cfg = data_config(n_dims=2, n_points=3, encoding="tokens", vocab_size=8, **switches)
    cfg = model_config(n_layer=1, n_embd=16, n_head=2, n_positions=16)
    ids = jax.random.randint(jax.random.PRNGKey(0), (2, 9), 0, 8)
    read_in = TokenReadIn(data_cfg, cfg)
    params = read_in.init(jax.random.PRNGKey(1), ids)["params"]
    embeddings = read_in.apply({"params": params}, ids)
    table = {name: np.asarray(params[name]["embedding"]) for name in ("wte", "wse", "wpte", "wve")}
    slot, point = np.arange(9) % 3, np.arange(9) // 3
    centres = np.asarray(Bins(data_cfg).centres())[np.asarray(ids)]
    summed = table["wte"][ids] + table["wse"][slot] + table["wpte"][point] + centres[..., None] * table["wve"][slot]
    kernel = np.asarray(params["short_conv"]["embedding"])  # [d + 1, width]: one weight per offset and channel
    shifted = lambda o: np.pad(summed, ((0, 0), (o, 0), (0, 0)))[:, :9]  # e_{t-o}, 0 before the sequence
    want = summed + sum(kernel[o] * shifted(o) for o in range(3))
    np.testing.assert_allclose(embeddings, want, rtol=1e-5, atol=1e-6)
    plain = data_config(n_dims=2, n_points=3, encoding="tokens", vocab_size=8)
    assert set(TokenReadIn(plain, cfg).init(jax.random.PRNGKey(1), ids)["params"]) == {"wte"}


def gd_steps(xs_NxD, ys_N, k: int, steps: int, lr: float) -> float:
    """The prediction at x_k of `steps` gradient-descent steps from w = 0 on (1/2k) sum_{j<k} (w.x_j - y_j)^2."""
    w = np.zeros(xs_NxD.shape[1])
    for _ in range(steps):
        w = w + lr * (ys_N[:k] - xs_NxD[:k] @ w) @ xs_NxD[:k] / max(k, 1)
    return float(w @ xs_NxD[k])


@pytest.mark.parametrize("n_layer", [1, 3])
def test_the_gd_construction_of_lsa_is_gradient_descent(n_layer):
    """von Oswald et al.'s construction: L layers of linear self-attention predict as L GD steps from w = 0
    with the construction's learning rate, at every context length k (k = 0: no context, w = 0)."""
    data = data_config(n_dims=4, n_points=9, encoding="paired")
    cfg = model_config(family="lsa", n_layer=n_layer, n_embd=7, n_head=1, init="gd", gd_learning_rate=0.3)
    encoding = encoding_of(data)
    model = ICLModel(cfg, encoding)
    xs = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (3, 9, 4)), dtype=np.float64)
    ys = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (3, 9)), dtype=np.float64)
    inputs = encoding.encode(jnp.asarray(xs, jnp.float32), jnp.asarray(ys, jnp.float32))
    params = model.init(jax.random.PRNGKey(2), inputs)["params"]
    preds = np.asarray(encoding.predict(model.apply({"params": params}, inputs)))
    want = np.array([[gd_steps(x, y, k, n_layer, 0.3) for k in range(9)] for x, y in zip(xs, ys, strict=True)])
    np.testing.assert_allclose(preds, want, rtol=1e-4, atol=1e-5)
    assert np.abs(want).max() > 0.1  # not all zeros
    if n_layer == 1:  # one step: (lr / k) sum_j y_j x_j . x_k
        k = 6
        one_step = 0.3 * (ys[0, :k] @ xs[0, :k]) @ xs[0, k] / k
        assert preds[0, k] == pytest.approx(one_step, rel=1e-4)


LLAMA = {"norm": "rmsnorm", "positions": "rope", "mlp": "swiglu"}


ALIBI_RELU = {"positions": "alibi", "attention": "relu"}
OPTIONS = [{}, LLAMA, {"positions": "none"}, {"norm": "rmsnorm"}, {"mlp": "swiglu"}, {"positions": "alibi"}, ALIBI_RELU]


@pytest.mark.parametrize("option", OPTIONS)
def test_the_transformer_options_are_causal_and_count_their_parameters(option):
    """model.norm, model.positions, model.mlp, model.attention: each variant causal, its parameters as the formula
    says (rmsnorm: no biases; rope, alibi and none: no position table; swiglu: 3 E (8E/3) weights, no biases;
    relu attention: softmax's)."""
    cfg = model_config(n_layer=2, n_embd=48, n_head=4, n_positions=32, **option)
    embeddings = jax.random.normal(jax.random.PRNGKey(0), (2, 20, 48))
    changed = embeddings.at[:, 12:].set(jax.random.normal(jax.random.PRNGKey(9), (2, 8, 48)))
    params = Transformer(cfg).init(jax.random.PRNGKey(1), embeddings)["params"]
    out, out_changed = (Transformer(cfg).apply({"params": params}, e) for e in (embeddings, changed))
    np.testing.assert_allclose(out[:, :12], out_changed[:, :12], atol=1e-5)
    assert not np.allclose(out[:, 12:], out_changed[:, 12:])
    e, hidden = 48, 8 * 48 // 3
    norms = (1 if cfg.norm == "rmsnorm" else 2) * e
    mlp = 3 * e * hidden if cfg.mlp == "swiglu" else 2 * 4 * e * e + 4 * e + e
    block = 2 * norms + (3 * e * e + 3 * e) + (e * e + e) + mlp
    expected = 2 * block + norms + (32 * e if cfg.positions == "learned" else 0)
    assert sum(p.size for p in jax.tree.leaves(params)) == expected


def test_rotary_scores_depend_only_on_the_offset():
    """RoPE: q_m . k_n is a function of m - n: shifting every position by s leaves the scores as they were."""
    from icl_lr.model.gpt2 import rotary

    q, k = (jax.random.normal(jax.random.PRNGKey(i), (1, 1, 1, 8)) for i in (0, 1))
    at = lambda x, t: rotary(jnp.broadcast_to(x, (1, t + 1, 1, 8)))[0, t, 0]  # x rotated at position t
    for m, n, s in ((5, 2, 7), (3, 3, 11), (0, 4, 20)):
        np.testing.assert_allclose(at(q, m) @ at(k, n), at(q, m + s) @ at(k, n + s), rtol=1e-5, atol=1e-5)
    assert not np.isclose(at(q, 5) @ at(k, 2), at(q, 6) @ at(k, 2))


def reference_slopes(n):
    """ALiBi's slopes as ofirpress/attention_with_linear_biases (fairseq/models/transformer.py) computes them."""
    if np.log2(n).is_integer():
        start = 2 ** (-(2 ** -(np.log2(n) - 3)))
        return [start * start**i for i in range(n)]
    closest = 2 ** int(np.floor(np.log2(n)))
    return reference_slopes(closest) + reference_slopes(2 * closest)[0::2][: n - closest]


def numpy_attention(params, h_BxTxE, n_head, attention, slopes=None):
    """GPT-2's attention layer in float64: (weights [B, H, T, T], output [B, T, E]); softmax(q.k / sqrt(A) + bias)
    or relu(q.k + bias) / (i + 1), bias -m_h (i - j), causal."""
    f64 = lambda a: np.asarray(a, np.float64)
    h = f64(h_BxTxE)
    batch, length, width = h.shape
    qkv = h @ f64(params["c_attn"]["kernel"]) + f64(params["c_attn"]["bias"])
    q, k, v = (qkv[..., i * width : (i + 1) * width].reshape(batch, length, n_head, -1) for i in range(3))
    scores = np.einsum("bqhk,bshk->bhqs", q, k)
    i, j = np.arange(length)[:, None], np.arange(length)[None, :]
    bias = 0.0 if slopes is None else -np.asarray(slopes)[:, None, None] * (i - j)
    if attention == "relu":
        weights = np.where(j <= i, np.maximum(scores + bias, 0.0), 0.0) / (i + 1)
    else:
        logits = np.where(j <= i, scores / np.sqrt(q.shape[-1]) + bias, -np.inf)
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhqs,bshk->bqhk", weights, v).reshape(batch, length, width)
    return weights, out @ f64(params["c_proj"]["kernel"]) + f64(params["c_proj"]["bias"])


@pytest.mark.parametrize("n_head", [1, 2, 3, 4, 6, 8, 12])
def test_alibi_slopes_are_the_reference_implementations(n_head):
    """2^(-8h/H) for H a power of 2, the reference's interleaving otherwise (3 heads: 2^-4, 2^-8, 2^-2)."""
    np.testing.assert_allclose(alibi_slopes(n_head), reference_slopes(n_head), rtol=1e-12)
    if n_head == 3:
        assert alibi_slopes(3) == [2.0**-4, 2.0**-8, 2.0**-2]


@pytest.mark.parametrize(("attention", "positions"), [(a, p) for a in ("softmax", "relu") for p in ("none", "alibi")])
def test_the_attention_layer_matches_numpy_in_float64(attention, positions):
    """model.attention and model.positions=alibi on one attention layer of 3 heads (ALiBi's interleaved slopes):
    the sown weights and the output equal numpy's, the fused path (no weights sown) the spelled-out one."""
    cfg = model_config(n_layer=1, n_embd=12, n_head=3, positions=positions, attention=attention)
    h_BxTxE = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 12))
    layer = Attention(cfg, jnp.float32)
    params = layer.init(jax.random.PRNGKey(1), h_BxTxE, False)["params"]
    leaves, tree = jax.tree.flatten(params)  # weights large enough that relu cuts and ALiBi's bias matters
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    params = jax.tree.unflatten(tree, [0.5 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)])
    slopes = reference_slopes(3) if positions == "alibi" else None
    want_weights, want = numpy_attention(params, h_BxTxE, 3, attention, slopes)
    fused = jax.jit(lambda p, h: layer.apply({"params": p}, h, False))(params, h_BxTxE)
    spelled, sown = jax.jit(lambda p, h: layer.apply({"params": p}, h, False, mutable=[ATTENTION]))(params, h_BxTxE)
    np.testing.assert_allclose(sown[ATTENTION]["weights"][0], want_weights, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(spelled, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fused, want, rtol=1e-4, atol=1e-4)
    causal = np.tril(np.ones((7, 7), bool))
    if attention == "relu":  # relu both cuts and passes some of the causal weights
        assert (want_weights[..., causal] == 0).any() and (want_weights[..., causal] > 0).any()


@pytest.mark.parametrize("option", [{"positions": "alibi"}, ALIBI_RELU])
def test_alibi_runs_past_the_trained_length_and_a_prefix_predicts_as_alone(option):
    """Parameters made on prompts of 8 points predict on prompts of 24: the first 8 predictions equal those of the
    8-point prompt alone (no position table; relu's weights divided by the keys attended, not the length)."""
    cfg = model_config(n_layer=2, n_embd=16, n_head=2, n_positions=16, **option)
    models = [ICLModel(cfg, encoding_of(data_config(n_dims=3, n_points=n))) for n in (8, 24)]
    xs, ys = jax.random.normal(jax.random.PRNGKey(0), (2, 24, 3)), jax.random.normal(jax.random.PRNGKey(1), (2, 24))
    short, long = models[0].encoding.encode(xs[:, :8], ys[:, :8]), models[1].encoding.encode(xs, ys)
    params = models[0].init(jax.random.PRNGKey(2), short)["params"]
    predict = lambda m, i: m.encoding.predict(jax.jit(m.apply)({"params": params}, i))
    out_short, out_long = predict(models[0], short), predict(models[1], long)
    assert out_long.shape == (2, 24) and np.isfinite(out_long).all()
    np.testing.assert_allclose(out_long[:, :8], out_short, rtol=1e-5, atol=1e-6)


def test_rotary_alibi_and_no_positions_take_a_longer_context_than_the_table():
    """Learned positions bound the prompt (model.n_positions), in training and at eval; rope, alibi and none do
    not, and eval.py scores an alibi model at a context past its n_positions."""
    from helpers import run_config
    from icl_lr.fields import ConfigError
    from icl_lr.records.run_dir import config_record
    from icl_lr.run.evaluation import eval_config

    with pytest.raises(ConfigError, match=r"model.n_positions \(256\) is too small"):
        run_config("data.n_points=200")
    with pytest.raises(ConfigError, match=r"^model.n_positions \(256\) is too small[^\n]*$"):
        eval_config(config_record(run_config()), ["data.n_points=200"])
    for positions in ("rope", "alibi", "none"):
        assert run_config("data.n_points=200", f"model.positions={positions}").data.n_points == 200
    trained = config_record(run_config("model.positions=alibi", "model.attention=relu"))
    assert eval_config(trained, ["data.n_points=200"]).data.n_points == 200
