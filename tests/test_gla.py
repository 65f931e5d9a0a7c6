"""icl_lr/model/gla.py: the mixer under each gate against a token-by-token recurrence (numpy float64), the chunked
computation's outputs and gradients against a token-by-token JAX recurrence (within a chunk, across chunks, a padded
tail), causality across chunks, the parameters against the formula; every family's causality is tests/test_model.py's,
kill and resume and every encoding tests/test_families.py's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import model_config
from icl_lr.model.config import HIDDEN
from icl_lr.model.gla import CHUNK, GATE_RANK, GATES, GLA, GatedLinearAttention, chunked_gla

LENGTH = 2 * CHUNK + 5  # two whole chunks and a padded one


def random_params(params, seed: int, std: float = 0.5):
    """Every parameter drawn afresh, N(0, std^2): large enough that the decays, the norm and the gate all matter."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(tree, [std * jax.random.normal(k, p.shape) for k, p in zip(keys, leaves, strict=True)])


def log_sigmoid(x):
    return -np.logaddexp(0, -x)


def recurrent_mixer(p: dict, h_TxE: np.ndarray, gate: str, n_head: int) -> np.ndarray:
    """One prompt through the mixer token by token in float64, as fla's naive_recurrent_gla and its layer compute:
    S_t = diag(alpha_t) S_{t-1} + k_t v_t^T per head, o_t = q_t S_t / sqrt(K), RMSNorm per head times swish of the
    gate projection, the output projection."""
    p = jax.tree.map(lambda v: np.asarray(v, np.float64), p)
    length = len(h_TxE)
    q, k, v = (h_TxE @ p[f"{n}_proj"]["kernel"] for n in "qkv")
    q, k, v = (x.reshape(length, n_head, -1) for x in (q, k, v))
    if gate == "data":
        logits = (h_TxE @ p["gk_proj_0"]["kernel"]) @ p["gk_proj_1"]["kernel"] + p["gk_proj_1"]["bias"]
        g = log_sigmoid(logits).reshape(k.shape) / 16
    elif gate == "fixed":
        g = np.broadcast_to(np.log(1 - 2.0 ** (-5 - np.arange(n_head)))[:, None], k.shape)
    else:
        g = np.zeros(k.shape)
    state, out = np.zeros((n_head, k.shape[-1], v.shape[-1])), []
    for t in range(length):
        state = np.exp(g[t])[..., None] * state + k[t][..., None] * v[t][:, None, :]
        o_HxV = np.einsum("hk,hkv->hv", q[t] / np.sqrt(k.shape[-1]), state)
        o_HxV = o_HxV / np.sqrt((o_HxV**2).mean(-1, keepdims=True) + 1e-5) * p["g_norm"]["scale"]
        gate_V = h_TxE[t] @ p["g_proj"]["kernel"]
        out.append((o_HxV.reshape(-1) * gate_V / (1 + np.exp(-gate_V))) @ p["o_proj"]["kernel"])
    return np.stack(out)


@pytest.mark.unit
@pytest.mark.parametrize("gate", GATES)
def test_the_mixer_equals_its_token_by_token_recurrence(gate):
    cfg = model_config(family="gla", n_embd=16, n_layer=1, n_head=2, gate=gate, expand_k=1.0, expand_v=1.0)
    mixer = GatedLinearAttention(cfg, jnp.float32)
    h = jax.random.normal(jax.random.PRNGKey(2), (2, LENGTH, 16))
    params = random_params(jax.jit(mixer.init)(jax.random.PRNGKey(3), h)["params"], seed=4)
    got = np.asarray(jax.jit(mixer.apply)({"params": params}, h))
    for b in range(2):
        want = recurrent_mixer(params, np.asarray(h[b], np.float64), gate, n_head=2)
        np.testing.assert_allclose(got[b], want, rtol=1e-4, atol=1e-5)


def recurrent_gla(q_BxTxHxK, k_BxTxHxK, v_BxTxHxV, g_BxTxHxK):
    """chunked_gla's definition token by token: a lax.scan over S_t = diag(exp g_t) S_{t-1} + k_t v_t^T."""

    def step(s_BxHxKxV, inputs):
        q, k, v, g = inputs
        s_BxHxKxV = jnp.exp(g)[..., None] * s_BxHxKxV + k[..., None] * v[..., None, :]
        return s_BxHxKxV, jnp.einsum("bhk,bhkv->bhv", q, s_BxHxKxV)

    batch, _, heads, keys = q_BxTxHxK.shape
    s = jnp.zeros((batch, heads, keys, v_BxTxHxV.shape[-1]))
    _, o_TxBxHxV = jax.lax.scan(step, s, [jnp.moveaxis(x, 1, 0) for x in (q_BxTxHxK, k_BxTxHxK, v_BxTxHxV, g_BxTxHxK)])
    return jnp.moveaxis(o_TxBxHxV, 0, 1)


@pytest.mark.unit
@pytest.mark.parametrize("length", [CHUNK, LENGTH])
def test_the_chunked_form_and_its_gradients_are_the_recurrence(length):
    """Data-dependent decays from 0.1 to 1 a token (strong enough that a chunk's cumulative decay spans e^-30):
    outputs and the gradients of a loss with respect to q, k, v and the log-decays."""
    keys = jax.random.split(jax.random.PRNGKey(5), 4)
    q, k = (jax.random.normal(key, (2, length, 2, 3)) for key in keys[:2])
    v = jax.random.normal(keys[2], (2, length, 2, 4))
    g = jax.nn.log_sigmoid(2 * jax.random.normal(keys[3], (2, length, 2, 3)) + 2)
    loss = lambda f, *args: jnp.sin(f(*args)).sum()
    both = jax.jit(
        lambda *args: [(f(*args), jax.grad(loss, range(1, 5))(f, *args)) for f in (chunked_gla, recurrent_gla)]
    )
    (o_c, grads_c), (o_r, grads_r) = both(q, k, v, g)
    np.testing.assert_allclose(o_c, o_r, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads_c, grads_r, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.unit
def test_changing_a_token_changes_no_output_before_it():
    """Token CHUNK + 3 (the second chunk) changed, under the data gate (whose decays the tokens set): the trunk's
    outputs and sown states before it are unchanged, at it they change; the states are sown before the first block
    and after each."""
    cfg = model_config(family="gla", n_embd=16, n_layer=2, gate="data")
    e = jax.random.normal(jax.random.PRNGKey(6), (2, LENGTH, 16))
    t = CHUNK + 3
    changed = e.at[:, t].set(jax.random.normal(jax.random.PRNGKey(7), (2, 16)))
    params = random_params(jax.jit(GLA(cfg).init)(jax.random.PRNGKey(8), e)["params"], seed=9, std=0.3)
    run = jax.jit(lambda x: GLA(cfg).apply({"params": params}, x, mutable=[HIDDEN]))
    (out, sown), (out_changed, sown_changed) = run(e), run(changed)
    assert len(sown[HIDDEN]["hidden"]) == 3
    for a, b in zip([out, *sown[HIDDEN]["hidden"]], [out_changed, *sown_changed[HIDDEN]["hidden"]], strict=True):
        np.testing.assert_allclose(a[:, :t], b[:, :t], atol=1e-6)
        assert not np.allclose(a[:, t], b[:, t])


@pytest.mark.unit
@pytest.mark.parametrize("gate", GATES)
def test_the_parameters_are_the_formula(gate):
    """Per block: two RMSNorms (E each); q and k (E K each), v and the output gate (E V each), the output projection
    (V E), the per-head output norm (V / H); under the data gate its rank-16 projection (E 16 + 16 K + K); the SwiGLU
    MLP (3 E floor(8E/3)). A final RMSNorm (E)."""
    n_embd, n_head, n_layer, key_dim, value_dim = 24, 3, 2, 12, 48
    cfg = model_config(family="gla", n_embd=n_embd, n_layer=n_layer, n_head=n_head, gate=gate, expand_k=0.5,
                       expand_v=2.0)  # fmt: skip
    params = jax.eval_shape(GLA(cfg).init, jax.random.PRNGKey(0), jnp.ones((1, 4, n_embd)))["params"]
    mixer = 2 * n_embd * key_dim + 3 * n_embd * value_dim + value_dim // n_head
    mixer += (n_embd * GATE_RANK + GATE_RANK * key_dim + key_dim) if gate == "data" else 0
    block = 2 * n_embd + mixer + 3 * n_embd * (8 * n_embd // 3)
    assert sum(p.size for p in jax.tree.leaves(params)) == n_layer * block + n_embd
