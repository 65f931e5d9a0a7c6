"""icl_lr/model/mamba.py: each selective scan against a step-by-step recurrence (numpy float64), the sequential
scan against the associative one (outputs and gradients, within a chunk, at its end and across chunks), the
block's parameters against the formula; causality is every family's test (tests/test_model.py), kill and
resume and two devices the new families' (tests/test_families.py)."""

import jax
import numpy as np
import pytest

from helpers import model_config
from icl_lr.model.mamba import CHUNK, Mamba, MambaMixer, associative_scan, scan_kind, selective_scan

SCANS = ["sequential", "associative"]


@pytest.mark.unit
def test_the_associative_scan_is_the_recurrence():
    a = jax.random.uniform(jax.random.PRNGKey(0), (2, 30, 3, 4))
    b = jax.random.normal(jax.random.PRNGKey(1), (2, 30, 3, 4))
    h, want = np.zeros((2, 3, 4)), []
    for t in range(30):
        h = np.asarray(a[:, t], np.float64) * h + np.asarray(b[:, t], np.float64)
        want.append(h)
    np.testing.assert_allclose(associative_scan(a, b), np.stack(want, axis=1), rtol=1e-5, atol=1e-5)


@pytest.mark.unit
@pytest.mark.parametrize("length", [1, CHUNK, 2 * CHUNK + 3])
def test_the_chunked_scan_is_the_associative_one(length):
    """The sequential scan's chunks (the last one padded) against the associative scan: y and the gradients of a
    loss with respect to every input."""
    keys = jax.random.split(jax.random.PRNGKey(8), 4)
    dt = jax.nn.softplus(jax.random.normal(keys[0], (2, length, 3)))
    x, b, c = (jax.random.normal(k, (2, length, n)) for k, n in zip(keys[1:], (3, 5, 5), strict=True))
    a = -jax.numpy.arange(1.0, 16.0).reshape(3, 5) / 4
    loss = lambda scan, *args: jax.numpy.sin(selective_scan(*args, scan)).sum()
    # one compiled program per scan (op by op, each primitive would be compiled on its own)
    y_and_grads = lambda s: jax.jit(lambda *args: (selective_scan(*args, s), jax.grad(loss, range(1, 6))(s, *args)))
    (y_s, y_a), (g_s, g_a) = zip(*(y_and_grads(s)(dt, x, a, b, c) for s in SCANS), strict=True)
    np.testing.assert_allclose(y_s, y_a, rtol=1e-5, atol=1e-5)
    for got, want in zip(g_s, g_a, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


def silu(x):
    return x / (1 + np.exp(-x))


def recurrent_mixer(p: dict, h_TxE: np.ndarray, d_conv: int, d_state: int, dt_rank: int) -> np.ndarray:
    """One prompt through the mixer token by token in float64: the convolution over the last d_conv
    inputs, the state carried from each step to the next (Gu and Dao 2023, Algorithm 2)."""
    p = jax.tree.map(lambda v: np.asarray(v, np.float64), p)
    xz = h_TxE @ p["in_proj"]["kernel"]
    channels = xz.shape[-1] // 2
    x_TxC, z_TxC = xz[:, :channels], xz[:, channels:]
    kernel_KxC = p["conv1d"]["kernel"][:, 0, :]
    a_CxS = -np.exp(p["A_log"])
    state, out = np.zeros((channels, d_state)), []
    for t in range(len(h_TxE)):
        window = x_TxC[max(0, t - d_conv + 1) : t + 1]
        x_C = silu((kernel_KxC[d_conv - len(window) :] * window).sum(0) + p["conv1d"]["bias"])
        proj = x_C @ p["x_proj"]["kernel"]
        dt_C = softplus(proj[:dt_rank] @ p["dt_proj"]["kernel"] + p["dt_proj"]["bias"])
        b_S, c_S = proj[dt_rank : dt_rank + d_state], proj[dt_rank + d_state :]
        state = np.exp(dt_C[:, None] * a_CxS) * state + (dt_C * x_C)[:, None] * b_S[None]
        y_C = (state @ c_S + p["D"] * x_C) * silu(z_TxC[t])
        out.append(y_C @ p["out_proj"]["kernel"])
    return np.stack(out)


@pytest.mark.unit
@pytest.mark.parametrize("scan", SCANS)
def test_the_mixer_equals_its_step_by_step_recurrence(scan):
    cfg = model_config(family="mamba", n_embd=16, n_layer=1, d_state=4, d_conv=3, expand=2, scan=scan)
    h = jax.random.normal(jax.random.PRNGKey(2), (2, 12, 16))
    params = jax.jit(MambaMixer(cfg, jax.numpy.float32).init)(jax.random.PRNGKey(3), h)["params"]
    params = jax.tree.map(lambda v: v + 0.1 * jax.random.normal(jax.random.PRNGKey(4), v.shape), params)
    got = jax.jit(MambaMixer(cfg, jax.numpy.float32).apply)({"params": params}, h)
    for i in range(2):
        want = recurrent_mixer(params, np.asarray(h[i], np.float64), 3, 4, cfg.dt_rank)
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-5)


@pytest.mark.unit
def test_the_sequential_scan_is_the_associative_one():
    """The same outputs and gradients of a loss, to float32 rounding, on a small random model."""
    inputs = jax.random.normal(jax.random.PRNGKey(5), (3, 20, 16))
    configs = {scan: model_config(family="mamba", n_embd=16, n_layer=2, d_state=4, scan=scan) for scan in SCANS}
    params = jax.jit(Mamba(configs["associative"]).init)(jax.random.PRNGKey(6), inputs)["params"]
    params = jax.tree.map(lambda v: v + 0.1 * jax.random.normal(jax.random.PRNGKey(7), v.shape), params)
    loss = lambda p, cfg: (Mamba(cfg).apply({"params": p}, inputs) ** 2).mean()
    out_and_grads = lambda cfg: jax.jit(lambda p: (Mamba(cfg).apply({"params": p}, inputs), jax.grad(loss)(p, cfg)))
    (out_s, grads_s), (out_a, grads_a) = (out_and_grads(cfg)(params) for cfg in configs.values())
    np.testing.assert_allclose(out_s, out_a, rtol=1e-5, atol=1e-5)
    close = lambda path, g_s, g_a: np.testing.assert_allclose(g_s, g_a, 1e-5, 1e-5, err_msg=jax.tree_util.keystr(path))
    jax.tree_util.tree_map_with_path(close, grads_s, grads_a)


@pytest.mark.unit
def test_auto_is_sequential_on_a_cpu_and_associative_on_an_accelerator(monkeypatch):
    assert scan_kind("auto") == "sequential"  # the tests run on a CPU
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert (scan_kind("auto"), scan_kind("sequential")) == ("associative", "sequential")


@pytest.mark.unit
def test_the_parameters_are_the_formulas():
    e, layers, s, k, expand = 32, 3, 8, 4, 2
    cfg = model_config(family="mamba", n_embd=e, n_layer=layers, d_state=s, d_conv=k, expand=expand)
    params = jax.eval_shape(Mamba(cfg).init, jax.random.PRNGKey(0), jax.numpy.ones((1, 5, e)))["params"]
    c, r = expand * e, cfg.dt_rank
    block = e + e * 2 * c + (k * c + c) + c * (r + 2 * s) + (r * c + c) + c * s + c + c * e
    assert sum(v.size for v in jax.tree.leaves(params)) == layers * block + e
