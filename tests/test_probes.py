"""The per-layer probes: their targets against direct computations, the ridge probe's R² where it is known
(1 for a linear function of the features, about 0 for features independent of the target), and the
constructed linear self-attention, whose layer computes one GD step's prediction and nothing else."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import data_config, encoding_for, encoding_of, model_config
from icl_lr.model.icl_model import FAMILIES, ICLModel
from icl_lr.task.linear import LinearRegression
from icl_lr.train.analyses import probes

pytestmark = pytest.mark.unit

DATA = data_config(n_dims=4, n_points=9)


def test_probe_targets_are_w_xty_least_squares_and_the_predictions():
    batch, targets = LinearRegression(DATA).probe_set(jax.random.PRNGKey(3), 16)
    xs, ys = np.asarray(batch.xs, np.float64), np.asarray(batch.ys, np.float64)
    w = np.asarray(targets["w"])[:, 0]
    np.testing.assert_allclose(np.einsum("pnd,pd->pn", xs, w), ys, atol=1e-5)  # the w behind the prompts
    for k in range(DATA.n_points):
        xty = np.einsum("pn,pnd->pd", ys[:, :k], xs[:, :k])
        np.testing.assert_allclose(targets["xty"][:, k], xty, atol=1e-4)
        np.testing.assert_allclose(targets["gd_prediction"][:, k, 0], np.einsum("pd,pd->p", xs[:, k], xty), atol=1e-3)
        if k >= DATA.n_dims:  # determined: least squares recovers w
            np.testing.assert_allclose(targets["ls_w"][:, k], w, atol=1e-3)
            np.testing.assert_allclose(targets["ls_prediction"][:, k, 0], ys[:, k], atol=1e-3)
    np.testing.assert_allclose(targets["ls_w"][:, 0], 0, atol=1e-6)


class Fixed:
    """A probe set whose 'model' hands back given features [P, N, E] (one layer), for the probe alone."""

    def __init__(self, features_PxNxE):
        self.features = features_PxNxE

    def __call__(self, params, inputs):
        return jnp.asarray(self.features[np.asarray(inputs)])[None]  # inputs: the prompts' indices


def probe_set(targets_PxNxM):
    p = targets_PxNxM.shape[0]
    return probes.ProbeSet(jnp.arange(p), targets_PxNxM, {"t": slice(0, targets_PxNxM.shape[-1])})


def test_a_linear_function_of_the_features_gives_r2_one_and_independent_features_r2_near_zero():
    rng = np.random.default_rng(0)
    p, n, e, m = 2000, 3, 16, 2
    features = rng.normal(size=(2 * p, n, e))
    linear = features @ rng.normal(size=(e, m)) + 0.5  # with an intercept
    fixed = Fixed(features)
    train, test = probe_set(linear[:p]), probe_set(linear[p:])
    test = test._replace(inputs=jnp.arange(p, 2 * p))
    (r2,) = probes.r2_curves(fixed, None, train, test, chunk=256).values()
    np.testing.assert_allclose(r2, 1, atol=1e-6)
    independent = rng.normal(size=(2 * p, n, m))
    train, test = probe_set(independent[:p]), probe_set(independent[p:])._replace(inputs=jnp.arange(p, 2 * p))
    (r2,) = probes.r2_curves(fixed, None, train, test, chunk=256).values()
    assert np.all(np.abs(r2) < 0.03), r2  # held out: about -e/p, the fit's noise


def test_the_constructed_lsa_layer_holds_one_gd_step_and_random_features_hold_nothing():
    """Under model.init=gd the query's state after layer 1 carries -eta x_k^T X^T y / k: a probe reads one GD
    step's prediction at R² = 1 from it, at every k, and not from the layer's input (R² about 0); nor does a
    random LSA (layer 0 or 1) hold w."""
    data = data_config(n_dims=5, n_points=11, encoding="paired")
    task, encoding = LinearRegression(data), encoding_of(data)
    train, test = (probes.probe_set_of(task, encoding, jax.random.PRNGKey(s), 1024) for s in (1, 2))
    curves = {}
    for init in ("gd", "random"):
        config = model_config(family="lsa", n_layer=1, n_embd=6, n_head=1, init=init, gd_learning_rate=0.625)
        model = ICLModel(config, encoding)
        params = model.init(jax.random.PRNGKey(0), train.inputs[:2])["params"]
        curves[init] = probes.r2_curves(probes.make_hidden_states_fn(model), params, train, test, chunk=256)
    np.testing.assert_allclose(curves["gd"]["probe_r2/gd_prediction/layer_1"][1:], 1, atol=1e-6)
    assert np.abs(curves["gd"]["probe_r2/gd_prediction/layer_0"][1:]).max() < 0.05
    assert np.isnan(curves["gd"]["probe_r2/gd_prediction/layer_1"][0])  # no context: no prediction to read
    for layer in (0, 1):
        assert np.abs(curves["random"][f"probe_r2/w/layer_{layer}"]).max() < 0.05


@pytest.mark.parametrize("family", FAMILIES.names())
def test_every_family_sows_its_input_and_each_layer(family):
    """[n_layer + 1, prompts, N, E] states at the prediction positions (a looped trunk: n_loops + 1, a state
    per loop; a hybrid: one per block, MambaFormer's first Mamba block too); the last one is what the trunk returns
    (the LSTM and GPT-2 before their final LayerNorm), and sowing changes nothing the model outputs."""
    data = data_config(n_dims=3, n_points=5, encoding=encoding_for(family))
    config = model_config(family=family, n_layer=3, n_embd=8, n_head=2)
    model = ICLModel(config, encoding_of(data))
    batch = LinearRegression(data).sample_batch(jax.random.PRNGKey(0), 4)
    inputs = model.encoding.encode(batch.xs, batch.ys)
    params = model.init(jax.random.PRNGKey(1), inputs)["params"]
    states = probes.make_hidden_states_fn(model)(params, inputs)
    layers = config.n_loops if family == "looped" else len(config.blocks) if family == "hybrid" else 3
    assert states.shape == (layers + 1, 4, 5, 8)
    trunk = model.bind({"params": params}).trunk
    out = trunk(model.bind({"params": params}).embed(inputs))
    if "ln_f" not in params["transformer"]:  # lsa and the encoder: no final norm
        np.testing.assert_allclose(states[-1], out, atol=1e-6)
    else:  # the final norm of the last state: a LayerNorm (GPT-2, the LSTM) or an RMSNorm (Mamba: no centring)
        last, final = model.encoding.prediction_outputs(out), params["transformer"]["ln_f"]
        centred = states[-1] - states[-1].mean(-1, keepdims=True) if "bias" in final else states[-1]
        normed = centred / jnp.sqrt((centred**2).mean(-1, keepdims=True) + 1e-5)
        np.testing.assert_allclose(normed * final["scale"] + final.get("bias", 0.0), last, atol=1e-5)
    assert not np.allclose(states[0], states[1])
