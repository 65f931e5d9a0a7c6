"""icl_lr/model/mamba.py: each selective scan against a step-by-step recurrence (numpy float64), the sequential
scan against the associative one (outputs and gradients, within a chunk, at its end and across chunks), the
block's parameters against the formula, model.init=park and model.norm=layernorm against Park et al.'s model in
PyTorch and their inits, init=flax's parameters as before those options; causality is every family's test
(tests/test_model.py), kill and resume and two devices the new families' (tests/test_families.py)."""

import jax
import numpy as np
import pytest

from helpers import data_config, encoding_of, model_config
from icl_lr.model.icl_model import ICLModel
from icl_lr.model.mamba import CHUNK, DT_MAX, DT_MIN, Mamba, MambaMixer, associative_scan, scan_kind, selective_scan

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
    configs = {scan: model_config(family="mamba", n_embd=16, n_layer=1, d_state=4, scan=scan) for scan in SCANS}
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
@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_the_parameters_are_the_formulas(norm):
    e, layers, s, k, expand = 32, 3, 8, 4, 2
    cfg = model_config(family="mamba", n_embd=e, n_layer=layers, d_state=s, d_conv=k, expand=expand, norm=norm)
    params = jax.eval_shape(Mamba(cfg).init, jax.random.PRNGKey(0), jax.numpy.ones((1, 5, e)))["params"]
    c, r, norm_size = expand * e, cfg.dt_rank, {"rmsnorm": e, "layernorm": 2 * e}[norm]  # scale, and a bias
    block = norm_size + e * 2 * c + (k * c + c) + c * (r + 2 * s) + (r * c + c) + c * s + c + c * e
    assert sum(v.size for v in jax.tree.leaves(params)) == layers * block + norm_size


# Each leaf of init=flax's parameters (n_embd 16, one block, d_state 4, n_dims 3, seed 0) dotted with
# cos(0, 1, 2, ...), as the code built them before model.init and model.norm came.
FLAX_INIT = {
    "read_in/bias": 0.0,
    "read_in/kernel": 0.0470518720746641,
    "read_out/bias": 0.0,
    "read_out/kernel": 0.0258685401158845,
    "transformer/ln_f/scale": 0.7153279970638451,
    "transformer/mixer_0/A_log": 0.3380865054767024,
    "transformer/mixer_0/D": 0.5875782044655253,
    "transformer/mixer_0/conv1d/bias": 0.0,
    "transformer/mixer_0/conv1d/kernel": 3.6762890151184213,
    "transformer/mixer_0/dt_proj/bias": -7.03766980806972,
    "transformer/mixer_0/dt_proj/kernel": 7.9862620616394295,
    "transformer/mixer_0/in_proj/kernel": 11.738225503332025,
    "transformer/mixer_0/out_proj/kernel": 0.6217440121584075,
    "transformer/mixer_0/x_proj/kernel": 3.6582190234234853,
    "transformer/norm_0/scale": 0.7153279970638451,
}


@pytest.mark.unit
def test_the_default_init_is_as_before():
    cfg = model_config(family="mamba", n_layer=1, n_embd=16, d_state=4, scan="associative")  # compiles faster
    inputs = jax.numpy.zeros((1, 8, 3))
    params = jax.jit(ICLModel(cfg, encoding_of(data_config(n_dims=3, n_points=4))).init)(jax.random.PRNGKey(0), inputs)
    leaves = jax.tree_util.tree_flatten_with_path(params["params"])[0]
    fingerprint = lambda v: float((np.asarray(v, np.float64).ravel() * np.cos(np.arange(v.size))).sum())
    got = {"/".join(k.key for k in path): fingerprint(v) for path, v in leaves}
    assert got == pytest.approx(FLAX_INIT, rel=1e-6, abs=1e-7)


@pytest.fixture(scope="module")
def park():
    """Park et al.'s model at a test's size (init=park, norm=layernorm): its config, encoding and parameters."""
    cfg = model_config(family="mamba", n_embd=32, n_layer=2, d_state=4, norm="layernorm", init="park")
    encoding = encoding_of(data_config(n_dims=3, n_points=5))
    params = jax.jit(ICLModel(cfg, encoding).init)(jax.random.PRNGKey(0), jax.numpy.zeros((1, 10, 3)))["params"]
    return cfg, encoding, params


def their_model(torch, cfg, n_dims: int):
    """Park et al.'s MambaMixerModel (krafton-ai/mambaformer-icl src/models.py) in plain PyTorch, its modules
    named as theirs: the read-in and read-out Linears around mamba_ssm's MixerModel, whose Blocks add the residual,
    then LayerNorm, then the mixer (mixer_seq_simple.py, mamba_simple.py's Block), a final add and LayerNorm; the
    mixer is Mamba's slow path (mamba_simple.py), its scan selective_scan_ref's loop in float64."""
    nn, functional = torch.nn, torch.nn.functional
    e, c, s, k, r = cfg.n_embd, cfg.expand * cfg.n_embd, cfg.d_state, cfg.d_conv, cfg.dt_rank

    class Mixer(nn.Module):
        def __init__(self):
            super().__init__()
            self.in_proj = nn.Linear(e, 2 * c, bias=False)
            self.conv1d = nn.Conv1d(c, c, k, groups=c, padding=k - 1)
            self.x_proj = nn.Linear(c, r + 2 * s, bias=False)
            self.dt_proj = nn.Linear(r, c)
            self.A_log, self.D = nn.Parameter(torch.zeros(c, s)), nn.Parameter(torch.zeros(c))
            self.out_proj = nn.Linear(c, e, bias=False)

        def forward(self, h_BxLxE):
            length = h_BxLxE.shape[1]
            x_BxCxL, z_BxCxL = self.in_proj(h_BxLxE).transpose(1, 2).chunk(2, dim=1)
            x_BxLxC = functional.silu(self.conv1d(x_BxCxL)[..., :length]).transpose(1, 2)
            dt_BxLxR, b_BxLxS, c_BxLxS = self.x_proj(x_BxLxC).split([r, s, s], dim=-1)
            dt_BxLxC = functional.softplus(dt_BxLxR @ self.dt_proj.weight.T + self.dt_proj.bias)
            u, dt, b, cc, a = (v.double() for v in (x_BxLxC, dt_BxLxC, b_BxLxS, c_BxLxS, -torch.exp(self.A_log)))
            state, ys = torch.zeros(len(u), c, s, dtype=torch.float64), []
            for t in range(length):
                state = torch.exp(dt[:, t, :, None] * a) * state + (dt[:, t] * u[:, t])[..., None] * b[:, t, None]
                ys.append(torch.einsum("bcs,bs->bc", state, cc[:, t]))
            y = (torch.stack(ys, 1) + u * self.D.double()) * functional.silu(z_BxCxL.transpose(1, 2).double())
            return self.out_proj(y.float())

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.mixer, self.norm = Mixer(), nn.LayerNorm(e, eps=1e-5)

        def forward(self, hidden, residual):
            residual = hidden if residual is None else hidden + residual
            return self.mixer(self.norm(residual)), residual

    class MixerModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(Block() for _ in range(cfg.n_layer))
            self.norm_f = nn.LayerNorm(e, eps=1e-5)

        def forward(self, hidden):
            residual = None
            for layer in self.layers:
                hidden, residual = layer(hidden, residual)
            return self.norm_f(hidden + residual)

    class MambaMixerModel(nn.Module):
        def __init__(self):
            super().__init__()
            self._read_in, self._backbone, self._read_out = nn.Linear(n_dims, e), MixerModel(), nn.Linear(e, 1)

        def forward(self, zs):
            return self._read_out(self._backbone(self._read_in(zs)))

    return MambaMixerModel()


def their_state_dict(torch, params, n_layer: int) -> dict:
    """The Flax parameters under their model's names (Linear weights [out, in], Conv1d's [C, 1, K])."""
    t = lambda v: torch.tensor(np.asarray(v))
    linear = lambda name, p: (
        {f"{name}.weight": t(p["kernel"].T)} | ({f"{name}.bias": t(p["bias"])} if "bias" in p else {})
    )
    norm = lambda name, p: {f"{name}.weight": t(p["scale"]), f"{name}.bias": t(p["bias"])}
    trunk = params["transformer"]
    state = linear("_read_in", params["read_in"]) | linear("_read_out", params["read_out"])
    state |= norm("_backbone.norm_f", trunk["ln_f"])
    for i in range(n_layer):
        block, mixer = f"_backbone.layers.{i}", trunk[f"mixer_{i}"]
        state |= norm(f"{block}.norm", trunk[f"norm_{i}"])
        for name in ("in_proj", "x_proj", "dt_proj", "out_proj"):
            state |= linear(f"{block}.mixer.{name}", mixer[name])
        state[f"{block}.mixer.conv1d.weight"] = t(mixer["conv1d"]["kernel"].transpose(2, 1, 0))
        state[f"{block}.mixer.conv1d.bias"] = t(mixer["conv1d"]["bias"])
        state[f"{block}.mixer.A_log"], state[f"{block}.mixer.D"] = t(mixer["A_log"]), t(mixer["D"])
    return state


@pytest.mark.unit
def test_park_is_their_pytorch_model(park):
    """The whole model, read-in to read-out, on a prompt's tokens: the same outputs from the same weights (each
    moved off its init, so that a LayerNorm bias or a swapped weight cannot hide)."""
    torch = pytest.importorskip("torch")
    cfg, encoding, params = park
    rng = np.random.default_rng(1)  # numpy's draws: nothing for XLA to compile
    params = jax.tree.map(lambda v: v + 0.1 * rng.standard_normal(v.shape, np.float32), params)
    xs, ys = rng.standard_normal((2, 5, 3), np.float32), rng.standard_normal((2, 5), np.float32)

    @jax.jit
    def tokens_and_outputs(params):
        inputs = encoding.encode(xs, ys)
        return inputs, ICLModel(cfg, encoding).apply({"params": params}, inputs)

    inputs, got = tokens_and_outputs(params)
    theirs = their_model(torch, cfg, n_dims=3)
    theirs.load_state_dict(their_state_dict(torch, params, cfg.n_layer))  # strict: every parameter of theirs
    with torch.no_grad():
        want = theirs(torch.tensor(np.asarray(inputs))).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.unit
def test_park_initialises_as_their_code(park):
    """Their inits: PyTorch's U(+-1/sqrt(fan_in)) for every Linear's and the convolution's weight, and for the
    convolution's, read-in's and read-out's biases; dt_proj's weight U(+-dt_rank^-1/2); out_proj's bound over
    sqrt(n_layer) (mamba_ssm's _init_weights); softplus(dt_proj's bias) log-uniform in [DT_MIN, DT_MAX]; A_log =
    log(1..S), D = 1, unit LayerNorms with zero biases."""
    cfg, _, params = park
    e, c, trunk = cfg.n_embd, cfg.expand * cfg.n_embd, params["transformer"]
    mixers = [trunk[f"mixer_{i}"] for i in range(cfg.n_layer)]
    every = lambda name, key: np.concatenate([np.ravel(m[name][key]) for m in mixers])
    uniform = {
        "read_in": (np.ravel(params["read_in"]["kernel"]), 3**-0.5),
        "read_in bias": (np.ravel(params["read_in"]["bias"]), 3**-0.5),
        "read_out": (np.ravel(params["read_out"]["kernel"]), e**-0.5),
        "read_out bias": (np.ravel(params["read_out"]["bias"]), e**-0.5),
        "in_proj": (every("in_proj", "kernel"), e**-0.5),
        "conv1d": (every("conv1d", "kernel"), cfg.d_conv**-0.5),
        "conv1d bias": (every("conv1d", "bias"), cfg.d_conv**-0.5),
        "x_proj": (every("x_proj", "kernel"), c**-0.5),
        "dt_proj": (every("dt_proj", "kernel"), cfg.dt_rank**-0.5),
        "out_proj": (every("out_proj", "kernel"), (c * cfg.n_layer) ** -0.5),
    }
    for name, (values, bound) in uniform.items():  # U(-b, b): |v| <= b, mean square b^2 / 3 (to about 3 sigma)
        assert np.abs(values).max() <= bound and np.all(values != 0), name
        assert np.mean(values**2) == pytest.approx(bound**2 / 3, rel=3 / values.size**0.5), name
    dt = np.log1p(np.exp(every("dt_proj", "bias").astype(np.float64)))
    assert DT_MIN * (1 - 1e-5) <= dt.min() < 2 * DT_MIN and DT_MAX / 2 < dt.max() <= DT_MAX * (1 + 1e-5)
    a_log = np.log(np.arange(1, cfg.d_state + 1))
    np.testing.assert_allclose(
        np.stack([m["A_log"] for m in mixers]), np.broadcast_to(a_log, (cfg.n_layer, c, cfg.d_state)), rtol=1e-6
    )
    norms = [trunk[f"norm_{i}"] for i in range(cfg.n_layer)] + [trunk["ln_f"]]
    assert all(np.all(n["scale"] == 1) and np.all(n["bias"] == 0) for n in norms)
    assert all(np.all(m["D"] == 1) for m in mixers)
