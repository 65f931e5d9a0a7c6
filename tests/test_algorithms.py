"""The iterative algorithm baselines against closed forms: many GD steps at a small rate reach least
squares, Newton-Schulz's residual squares each step, one preconditioned step is one GD step at the optimal
rate and reaches the one-step optimum's error, online GD is the sequential loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import data_config, encoding_of, held_out, model_config
from icl_lr.task import algorithms, baselines
from icl_lr.task.linear import TUNING_SEED, LinearRegression
from icl_lr.train import eval_sets, phases
from icl_lr.train.analyses import algorithms as similarity
from icl_lr.train.config import EvalConfig

pytestmark = pytest.mark.unit


def prompt(seed: int, n: int = 14, d: int = 4):
    xs = jax.random.normal(jax.random.PRNGKey(seed), (n, d))
    return xs, xs @ jax.random.normal(jax.random.PRNGKey(seed + 100), (d,))


def test_many_small_gd_steps_reach_least_squares():
    """GD from w = 0 stays in the rows' span: its limit is the min-norm least squares, for every prefix."""
    xs, ys = prompt(0)
    got = algorithms.gradient_descent(xs, ys, steps=20000, lr=0.05)
    want = baselines.least_squares(xs, ys)
    well_posed = [k for k in range(14) if k != 4]  # k = d: a square design, its smallest direction converges slowest
    np.testing.assert_allclose(np.asarray(got)[well_posed], np.asarray(want)[well_posed], atol=2e-3)
    few = algorithms.gradient_descent(xs, ys, steps=2, lr=0.05)
    assert np.abs(np.asarray(few - want)[8:]).max() > 0.1  # two steps are not there yet


def test_newton_schulz_residual_squares_each_step():
    x = jax.random.normal(jax.random.PRNGKey(1), (12, 4))
    s = (x.T @ x)[None]
    residuals = [
        float(jnp.linalg.norm(jnp.eye(4) - algorithms.newton_schulz_inverse(s, t)[0] @ s[0], ord=2)) for t in range(8)
    ]
    for before, after in zip(residuals, residuals[1:], strict=False):
        assert after == pytest.approx(before**2, rel=1e-3, abs=1e-6)
    assert residuals[0] < 1 and residuals[-1] < 1e-3
    xs, ys = prompt(2)
    np.testing.assert_allclose(algorithms.newton(xs, ys, 30)[6:], baselines.least_squares(xs, ys)[6:], atol=1e-3)


def test_one_preconditioned_step_is_gd_at_the_optimal_rate_and_reaches_its_error():
    xs, ys = prompt(3)
    got = algorithms.preconditioned_gd(xs, ys)
    for k in (1, 5, 13):
        one_step = algorithms.gradient_descent(xs, ys, steps=1, lr=k / (k + 4 + 1))[k]
        assert float(got[k]) == pytest.approx(float(one_step), rel=1e-5)
    # the expected error at n = 10, d = 5 (x, w ~ N(0, I), no noise): d (d + 1) / (n + d + 1), per d 0.375
    keys = jax.random.split(jax.random.PRNGKey(4), 2)
    xs_b = jax.random.normal(keys[0], (20000, 11, 5))
    ys_b = jnp.einsum("bnd,bd->bn", xs_b, jax.random.normal(keys[1], (20000, 5)))
    preds = jax.vmap(algorithms.preconditioned_gd)(xs_b, ys_b)
    assert float(jnp.mean((preds[:, 10] - ys_b[:, 10]) ** 2)) / 5 == pytest.approx(6 / 16, rel=0.03)


def test_online_gd_is_one_sequential_pass():
    xs, ys = prompt(5)
    w, want = np.zeros(4), []
    for x, y in zip(np.asarray(xs), np.asarray(ys), strict=True):
        want.append(w @ x)
        w = w + 0.1 * (y - w @ x) * x
    np.testing.assert_allclose(algorithms.online_gd(xs, ys, 0.1), want, rtol=1e-5, atol=1e-6)


def test_the_tuned_rate_is_the_best_of_the_grid_and_the_eval_set_shows_the_algorithms():
    task = LinearRegression(data_config(n_dims=3, n_points=8))
    batch = task.sample_batch(jax.random.PRNGKey(6), 64)
    predictors, rates = task.algorithms((1, 5))
    assert set(predictors) == {"gd_1", "gd_5", "preconditioned_gd", "newton_1", "newton_5", "online_gd"}
    online = jax.vmap(predictors["online_gd"])(batch.xs, batch.ys)
    np.testing.assert_array_equal(
        online, jax.vmap(algorithms.online_gd, (0, 0, None))(batch.xs, batch.ys, rates["online_gd"])
    )
    assert set(rates) == {"gd_1", "gd_5", "online_gd"}
    tuning = task.sample_batch(jax.random.PRNGKey(TUNING_SEED), algorithms.TUNING_PROMPTS)
    losses = [
        float(
            jnp.mean((jax.vmap(algorithms.online_gd, (0, 0, None))(tuning.xs, tuning.ys, lr) - tuning.ys)[:, 1:] ** 2)
        )
        for lr in algorithms.LEARNING_RATES
    ]
    assert rates["online_gd"] == pytest.approx(float(algorithms.LEARNING_RATES[int(np.nanargmin(losses))]))
    with_them = held_out(data_config(n_dims=3, n_points=8), EvalConfig(n_prompts=64, algorithms=True))
    assert {"gd_1", "gd_3", "gd_10", "newton_10", "preconditioned_gd", "online_gd"} <= set(with_them.baseline_curves)
    # the baselines are compared with the model too, by their predictions (a phase can be any of them)
    assert {"bayes", "least_squares", "averaging"} <= set(with_them.references)
    assert with_them.references["bayes"][1] is None and with_them.references["gd_1"][1].shape == (64, 8, 3)
    plain = held_out(data_config(n_dims=3, n_points=8), EvalConfig(n_prompts=64))
    assert "gd_10" not in plain.baseline_curves


def test_a_model_that_is_an_algorithm_is_found_identical_to_it():
    """The LSA construction at rate 0.3 against GD with one step at 0.3: predictions equal, residuals and
    query gradients parallel; against 3 steps they differ."""
    from icl_lr.model.icl_model import ICLModel

    data = data_config(n_dims=4, n_points=9, encoding="paired")
    model = ICLModel(model_config(family="lsa", n_layer=1, n_embd=5, n_head=1, init="gd", gd_learning_rate=0.3),
                     encoding_of(data))  # fmt: skip
    batch = LinearRegression(data).sample_batch(jax.random.PRNGKey(7), 128)
    params = model.init(jax.random.PRNGKey(0), model.encoding.encode(batch.xs, batch.ys))["params"]
    model_preds, model_grads = similarity.make_model_gradients_fn(model)(params, batch.xs, batch.ys)

    def reference(steps):
        predict = lambda xs, ys: jax.vmap(algorithms.gradient_descent, (0, 0, None, None))(xs, ys, steps, 0.3)
        preds, grads = eval_sets.predictions_and_query_gradients(predict, batch.xs, batch.ys)
        np.testing.assert_allclose(preds, predict(batch.xs, batch.ys), rtol=1e-6, atol=1e-6)  # the pass's values
        return preds, grads

    least_squares = jax.vmap(baselines.least_squares)(batch.xs, batch.ys)
    references = {"gd_1": reference(1), "gd_3": reference(3), "least_squares": (least_squares, None)}
    held_out = eval_sets.EvalSet(None, batch.ys, {}, batch.xs, references)
    curves = similarity.similarity_curves(model_preds, model_grads, held_out, 4)
    apart = np.mean((np.asarray(model_preds) - np.asarray(least_squares)) ** 2, 0) / 4
    np.testing.assert_allclose(curves["similarity_mse/least_squares"], apart, rtol=1e-5)
    assert "similarity_grad_cos/least_squares" not in curves  # a baseline's gradients are not kept
    found = phases.closest(curves, step=1)
    assert (found.closest, found.measure) == ("gd_1", phases.SIMILARITY) and found.runner_up in (
        "gd_3",
        "least_squares",
    )
    np.testing.assert_allclose(curves["similarity_mse/gd_1"], 0, atol=1e-9)
    np.testing.assert_allclose(curves["similarity_residual_cos/gd_1"][1:], 1, atol=1e-5)
    np.testing.assert_allclose(curves["similarity_grad_cos/gd_1"][1:], 1, atol=1e-5)
    assert curves["similarity_mse/gd_3"][5:].min() > 1e-3 and curves["similarity_grad_cos/gd_3"][5:].max() < 0.999
