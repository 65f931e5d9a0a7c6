"""eval.llc (icl_lr/train/analyses/llc.py): the SGLD estimator on a model whose LLC is known (a regular model's
is d/2), against a float64 numpy SGLD fed the same batches and noise, end to end through the Evaluator on a tiny
run, and its keys' bad values refused in one line."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import FAST, run_config
from icl_lr.fields import ConfigError
from icl_lr.records.tracking import LocalFiles, read_jsonl
from icl_lr.train import parallel, setup
from icl_lr.train.analyses import llc as llc_analysis
from icl_lr.train.analyses.llc import default_nbeta, gaussian_noise, sgld_llc
from icl_lr.train.evaluate import Evaluator
from icl_lr.train.optimizer import make_optimizer
from icl_lr.train.step import init_state

pytestmark = pytest.mark.unit


def linear_regression(seed: int, n: int, dims: int = 3, noise_std: float = 0.1):
    """y = w.x + b + noise on n samples, x ~ N(0, I), and its least-squares minimum {w, b} (d = dims + 1)."""
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(n, dims))
    ys = xs @ rng.normal(size=dims) + 0.5 + noise_std * rng.normal(size=n)
    solution = np.linalg.lstsq(np.c_[xs, np.ones(n)], ys, rcond=None)[0]
    return xs, ys, {"w": solution[:dims], "b": solution[dims]}


def mse(params, xs, ys):
    return jnp.mean((ys - xs @ params["w"] - params["b"]) ** 2)


def regular_llc(seed: int, nbeta_scale: float = 1.0) -> np.ndarray:
    """Each of 16 chains' estimate for linear regression with d = 4 parameters at its least-squares minimum,
    minibatches of 500 of 20,000 samples, at `nbeta_scale` times devinterp's nbeta (the step size scaled as its
    inverse: the same steps relative to the drift); data and SGLD from `seed`."""
    xs, ys, w_star = linear_regression(seed, n=20_000)
    xs, ys, w_star = jnp.asarray(xs, jnp.float32), jnp.asarray(ys, jnp.float32), jax.tree.map(jnp.float32, w_star)
    batch_key, noise_key = jax.random.split(jax.random.PRNGKey(seed))

    def loss(w, c, t):
        ids = jax.random.randint(jax.random.fold_in(jax.random.fold_in(batch_key, c), t), (500,), 0, len(ys))
        return mse(w, xs[ids], ys[ids])

    def estimate(w):
        knobs = dict(step_size=3e-4 / nbeta_scale, localization=1.0, nbeta=nbeta_scale * default_nbeta(500))
        return sgld_llc(loss, gaussian_noise(noise_key, w), w, **knobs, chains=16, draws=2000, burn_in=500)

    llc, losses = jax.jit(estimate)(w_star)
    assert losses.shape == (16, 2500) and np.isfinite(losses).all()
    return np.asarray(llc, np.float64)


def test_a_regular_models_llc_is_half_its_parameter_count_at_any_temperature():
    """d/2 = 2 within 0.2 (4 standard deviations of the estimate over seeds 0-9: docs/evaluation.md), at
    devinterp's nbeta and at twice it (a regular model's LLC does not depend on the temperature; an estimate
    without the nbeta factor, 2 / nbeta, would)."""
    for nbeta_scale in (1, 2):
        llc = regular_llc(seed=0, nbeta_scale=nbeta_scale)
        assert abs(llc.mean() - 2.0) < 0.2, (nbeta_scale, llc)


def numpy_sgld(xs, ys, w_star, ids, xi, step_size, localization, nbeta, burn_in):
    """The same estimator in float64, chain by chain and step by step, the MSE's gradient by hand."""
    chains, steps = ids.shape[:2]
    theta_star = np.r_[w_star["w"], w_star["b"]]
    features = np.c_[xs, np.ones(len(xs))]
    losses = np.zeros((chains, steps))
    for c in range(chains):
        theta = theta_star.copy()
        for t in range(steps):
            f, y = features[ids[c, t]], ys[ids[c, t]]
            residual = y - f @ theta
            losses[c, t] = np.mean(residual**2)
            grad = -2 * f.T @ residual / len(y)
            theta = theta - step_size / 2 * (nbeta * grad + localization * (theta - theta_star))
            theta = theta + np.sqrt(step_size) * xi[c, t]
    return nbeta * (losses[:, burn_in:].mean(1) - losses[:, 0]), losses


@pytest.mark.parametrize("at_once", [16, 2])  # 3 chains side by side, or 2 and then 1 (memory bounded)
def test_the_estimator_matches_a_numpy_sgld_fed_the_same_batches_and_noise(at_once, monkeypatch):
    monkeypatch.setattr(llc_analysis, "CHAINS_AT_ONCE", at_once)
    xs, ys, w_star = linear_regression(seed=1, n=2000)
    chains, steps, burn_in, batch = 3, 300, 100, 64
    rng = np.random.default_rng(2)
    ids, xi = rng.integers(0, len(ys), (chains, steps, batch)), rng.normal(size=(chains, steps, 4))
    knobs = dict(step_size=3e-4, localization=10.0, nbeta=default_nbeta(batch))
    expected_llc, expected_losses = numpy_sgld(xs, ys, w_star, ids, xi, **knobs, burn_in=burn_in)

    xs32, ys32, ids32, xi32 = (
        jnp.asarray(a, jnp.float32 if a.dtype == float else jnp.int32) for a in (xs, ys, ids, xi)
    )
    loss = lambda w, c, t: mse(w, xs32[ids32[c, t]], ys32[ids32[c, t]])
    noise = lambda c, t: {"w": xi32[c, t, :3], "b": xi32[c, t, 3]}
    run = jax.jit(lambda w: sgld_llc(loss, noise, w, **knobs, chains=chains, draws=steps - burn_in, burn_in=burn_in))
    llc, losses = run(jax.tree.map(jnp.float32, w_star))
    np.testing.assert_allclose(losses, expected_losses, rtol=2e-5)
    np.testing.assert_allclose(llc, expected_llc, rtol=1e-4)
    assert np.all(np.abs(expected_llc) > 0.1)  # a comparison of numbers, not of noise around 0


LLC_RUN = ("eval.llc_chains=2", "eval.llc_draws=6", "eval.llc_burn_in=3", "eval.llc_batch_size=8")


def evaluate_once(tmp_path, *overrides) -> dict:
    """One eval of a tiny run at its init, its records in tmp_path: its metrics.jsonl record."""
    cfg = run_config(*FAST, *overrides)
    run = setup.build(cfg)
    state = init_state(run, make_optimizer(cfg.training), cfg.seed)
    evaluator = Evaluator(run, cfg, state.rng, parallel.data_mesh())
    evaluator(state.params, LocalFiles(tmp_path), 20, final=False)
    (record,) = read_jsonl(tmp_path / "metrics.jsonl")
    return record


def test_the_analysis_logs_the_estimate_and_saves_the_trace_and_only_when_asked(tmp_path):
    record = evaluate_once(tmp_path / "on", "eval.llc=true", *LLC_RUN)
    assert np.isfinite(record["eval/llc/mean"]) and record["eval/llc/std_err"] >= 0
    saved = np.load(tmp_path / "on" / "llc" / "step_20.npz")
    assert saved["trace"].shape == (2, 6) and np.isfinite(saved["trace"]).all()
    nbeta = default_nbeta(8)
    np.testing.assert_allclose(saved["llc"], nbeta * (saved["trace"].mean(1) - saved["init_loss"]), rtol=1e-5)
    np.testing.assert_allclose(record["eval/llc/mean"], saved["llc"].mean(), rtol=1e-6)

    record = evaluate_once(tmp_path / "off", *LLC_RUN)
    assert not any("llc" in key for key in record) and not (tmp_path / "off" / "llc").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["eval.llc_chains=0"], r"eval\.llc_chains must be in \[1, 1,000\], got 0"),
        (["eval.llc_draws=2000000"], r"eval\.llc_draws must be in \[1, 1,000,000\]"),
        (["eval.llc_burn_in=-1"], r"eval\.llc_burn_in must be in \[0, "),
        (["eval.llc_step_size=-0.01"], r"eval\.llc_step_size must be in \(0, 1\], got -0\.01"),
        (["eval.llc_step_size=nan"], r"eval\.llc_step_size must be in \(0, 1\]"),
        (["eval.llc_localization=-1"], r"eval\.llc_localization must be a finite number >= 0"),
        (["eval.llc_beta=inf"], r"eval\.llc_beta must be a finite number >= 0"),
        (["eval.llc_beta=auto"], r"eval\.llc_beta must be a number, got 'auto'"),
        (["eval.llc_batch_size=0"], r"eval\.llc_batch_size must be null or in \[1, "),
        (["eval.llc=true", "eval.llc_batch_size=1"], r"eval\.llc_beta=0 \(n / log n\) needs batches of 2"),
        (["eval.llc=true", "eval.llc_chains=1000", "eval.llc_batch_size=2000"], r"eval\.llc_chains x eval\."),
        (["eval.llc_chains=1000", "eval.llc_draws=20000"], r"eval\.llc_chains x \(eval\.llc_burn_in \+ eval\.llc_dr"),
        (
            ["eval.n_prompts=100000", "eval.predictions=30000"],
            r"eval\.predictions x data\.n_points must be at most 262",
        ),
    ],
)
def test_bad_values_are_refused_in_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message) as refused:
        run_config(*overrides)
    assert "\n" not in str(refused.value)
