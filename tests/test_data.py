import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm, truncnorm

from helpers import data_config, encoding_of
from icl_lr.model.read_in import ContinuousInputs
from icl_lr.task import sampling
from icl_lr.task.base import Batch
from icl_lr.task.config import CurriculumConfig, DataConfig
from icl_lr.task.linear import LinearRegression

pytestmark = pytest.mark.unit  # the fast tier: no process started

KEY = jax.random.PRNGKey(0)


def test_shapes_and_determinism():
    cfg = data_config(n_dims=4, n_points=7)
    batch = LinearRegression(cfg).sample_batch(KEY, 3)
    assert batch.xs.shape == (3, 7, 4) and batch.ys.shape == (3, 7) and batch.point_mask.shape == (7,)
    again = LinearRegression(cfg).sample_batch(KEY, 3)
    np.testing.assert_array_equal(batch.ys, again.ys)
    assert not np.allclose(batch.ys, LinearRegression(cfg).sample_batch(jax.random.PRNGKey(1), 3).ys)


def test_statistics_match_the_prior():
    cfg = data_config(n_dims=4, n_points=32, prior_scale=2.0, noise_std=0.5)
    batch = LinearRegression(cfg).sample_batch(KEY, 4096)
    xs, ys = np.asarray(batch.xs), np.asarray(batch.ys)
    assert xs.mean() == pytest.approx(0, abs=0.01) and xs.var() == pytest.approx(1, rel=0.02)
    # Var(y) = prior_scale^2 d + sigma^2 = 16.25
    assert ys.var() == pytest.approx(16.25, rel=0.05)
    # Recover w per sequence by least squares: residual variance is sigma^2, w variance prior_scale^2.
    w = np.linalg.lstsq(xs[0], ys[0], rcond=None)[0]
    ws = np.stack([np.linalg.lstsq(x, y, rcond=None)[0] for x, y in zip(xs[:512], ys[:512], strict=True)])
    residual = ys[:512] - np.einsum("bnd,bd->bn", xs[:512], ws)
    assert residual.var() * 32 / (32 - 4) == pytest.approx(0.25, rel=0.05)
    assert ws.var() == pytest.approx(4.0, rel=0.1) and w.shape == (4,)


def test_hierarchical_noise_draws_sigma_per_sequence():
    cfg = data_config(n_dims=2, n_points=400, noise_std_choices=(0.1, 1.0))
    batch = LinearRegression(cfg).sample_batch(KEY, 64)
    xs, ys = np.asarray(batch.xs), np.asarray(batch.ys)
    stds = []
    for x, y in zip(xs, ys, strict=True):
        w = np.linalg.lstsq(x, y, rcond=None)[0]
        stds.append(np.std(y - x @ w))
    stds = np.array(stds)
    near = np.minimum(abs(stds - 0.1), abs(stds - 1.0))
    assert near.max() < 0.1
    assert 10 < np.sum(stds > 0.5) < 54  # both values drawn, roughly uniformly


def test_task_pool_is_fixed_and_finite():
    cfg = data_config(n_dims=3, n_points=5, task_pool_size=4)
    pool_key = jax.random.PRNGKey(7)
    w1 = LinearRegression(cfg).functions(jax.random.PRNGKey(1), 256, pool_key)
    w2 = LinearRegression(cfg).functions(jax.random.PRNGKey(2), 256, pool_key)
    pool = np.unique(np.round(np.concatenate([w1, w2]), 6), axis=0)
    assert pool.shape == (4, 3)
    fresh = LinearRegression(cfg).functions(jax.random.PRNGKey(1), 256)  # no pool key: the prior
    assert np.unique(np.round(fresh, 6), axis=0).shape[0] == 256


def test_curriculum_truncates_dims_and_points():
    cur = CurriculumConfig(
        enabled=True, dims_start=2, dims_increment=1, points_start=4, points_increment=2, interval=10
    )
    cfg = data_config(n_dims=5, n_points=9, curriculum=cur)
    assert [tuple(map(int, sampling.curriculum_stage(cfg, s))) for s in (0, 9, 10, 25, 1000)] == [
        (2, 4),
        (2, 4),
        (3, 6),
        (4, 8),
        (5, 9),
    ]
    batch = LinearRegression(cfg).sample_batch(KEY, 8, step=jnp.asarray(10))
    assert np.all(np.asarray(batch.xs)[..., 3:] == 0) and np.all(np.asarray(batch.xs)[..., :3] != 0)
    np.testing.assert_array_equal(batch.point_mask, [1, 1, 1, 1, 1, 1, 0, 0, 0])
    full = LinearRegression(cfg).sample_batch(KEY, 8)  # evaluation: no step, full task
    assert np.all(np.asarray(full.xs) != 0) and np.all(full.point_mask == 1)


def test_continuous_encoding_interleaves_x_and_y():
    cfg = data_config(n_dims=3, n_points=4)
    batch = LinearRegression(cfg).sample_batch(KEY, 2)
    inputs = encoding_of(cfg).encode(batch.xs, batch.ys)
    assert inputs.shape == (2, 8, 3)
    np.testing.assert_array_equal(inputs[:, 0::2], batch.xs)
    np.testing.assert_array_equal(inputs[:, 1::2, 0], batch.ys)
    assert np.all(inputs[:, 1::2, 1:] == 0)
    # The prediction for y_i is read at x_i's token.
    outputs = jnp.arange(2 * 8, dtype=jnp.float32).reshape(2, 8, 1)
    np.testing.assert_array_equal(encoding_of(cfg).predict(outputs)[0], [0, 2, 4, 6])


def test_binned_y_reads_continuous_inputs_and_bins_the_y():
    cfg = data_config(n_dims=3, n_points=4, encoding="binned_y", vocab_size=16, bin_range=2.0)
    batch = LinearRegression(cfg).sample_batch(KEY, 2)
    enc = encoding_of(cfg)
    np.testing.assert_array_equal(enc.encode(batch.xs, batch.ys), ContinuousInputs(cfg).encode(batch.xs, batch.ys))
    assert enc.n_outputs == 16 and enc.sequence_length == 8
    logits = jnp.full((2, 8, 16), -1e9).at[:, 0::2].set(jax.nn.one_hot(enc.head.bins.y_targets(batch.ys), 16) * 1e9)
    np.testing.assert_allclose(enc.point_losses(logits, batch.ys), 0, atol=1e-6)  # the y's own bin: no loss
    np.testing.assert_allclose(
        enc.predict(logits), enc.head.bins.centres()[enc.head.bins.y_targets(batch.ys)] * cfg.y_scale
    )


def test_binned_loss_weighs_cross_entropy_and_the_decoded_means_error():
    cfg = data_config(n_dims=3, n_points=4, encoding="binned_y", vocab_size=16, bin_range=2.0)
    batch = LinearRegression(cfg).sample_batch(KEY, 2)
    logits = jax.random.normal(jax.random.PRNGKey(5), (2, 8, 16))
    probs = np.asarray(jax.nn.softmax(logits[:, 0::2], axis=-1), np.float64)  # the outputs at the x tokens
    centres = (np.linspace(-2, 2, 17)[:-1] + np.linspace(-2, 2, 17)[1:]) / 2
    ys = np.asarray(batch.ys, np.float64)
    target_bins = np.clip(np.floor((ys / cfg.y_scale + 2) / 4 * 16), 0, 15).astype(int)
    cross_entropy = -np.log(np.take_along_axis(probs, target_bins[..., None], -1)[..., 0])
    mean_error = (probs @ centres - ys / cfg.y_scale) ** 2
    for ce_weight, mean_weight in [(1.0, 0.0), (0.0, 1.0), (0.1, 2.0)]:
        weighted = dataclasses.replace(cfg, ce_weight=ce_weight, mean_loss_weight=mean_weight)
        got = encoding_of(weighted).point_losses(logits, batch.ys)
        np.testing.assert_allclose(got, ce_weight * cross_entropy + mean_weight * mean_error, rtol=1e-4, atol=1e-5)


def test_token_encoding_layout_and_decoding():
    cfg = data_config(n_dims=3, n_points=4, encoding="tokens", vocab_size=16, bin_range=2.0)
    batch = LinearRegression(cfg).sample_batch(KEY, 2)
    enc = encoding_of(cfg)
    tokens = enc.encode(batch.xs, batch.ys)
    assert tokens.shape == (2, 16) and tokens.dtype == jnp.int32
    assert 0 <= int(tokens.min()) and int(tokens.max()) < 16
    per_point = np.asarray(tokens).reshape(2, 4, 4)
    np.testing.assert_array_equal(per_point[..., :3], enc.head.bins.to_tokens(batch.xs))
    np.testing.assert_array_equal(per_point[..., 3], enc.head.bins.y_targets(batch.ys))
    # Bins: value -> id -> centre is within half a bin for in-range values, clipped outside.
    values = jnp.array([-5.0, -1.99, -0.1, 0.1, 1.3, 5.0])
    centres = enc.head.bins.centres()[enc.head.bins.to_tokens(values)]
    np.testing.assert_allclose(centres[1:-1], values[1:-1], atol=2.0 / 16 + 1e-6)
    assert float(centres[0]) == pytest.approx(-2 + 0.125) and float(centres[-1]) == pytest.approx(2 - 0.125)
    # y_i is predicted from the last x coordinate of point i; a one-hot logit decodes to its centre.
    logits = jnp.full((1, 16, 16), -1e9).at[0, 2, 5].set(0.0)
    assert float(enc.predict(logits)[0, 0]) == pytest.approx(float(enc.head.bins.centres()[5]) * cfg.y_scale)


def test_gaussian_quantile_bins_against_scipy():
    """Equal-probability bins of N(0, 1): edges at its quantiles, centres its conditional means (scipy's
    truncated normal), ids of standard normal draws equally frequent, rounding variance E[(v - centre)^2]."""
    cfg = data_config(encoding="tokens", vocab_size=10, bin_scheme="gaussian_quantiles")
    enc = encoding_of(cfg)
    edges = norm.ppf(np.linspace(0, 1, 11))
    np.testing.assert_allclose(enc.head.bins.edges()[1:-1], edges[1:-1], rtol=1e-4)
    np.testing.assert_allclose(enc.head.bins.centres(), truncnorm.mean(edges[:-1], edges[1:]), rtol=1e-4, atol=1e-5)
    draws = np.random.default_rng(0).normal(size=200_000)
    ids = np.asarray(enc.head.bins.to_tokens(jnp.asarray(draws)))
    np.testing.assert_allclose(np.bincount(ids, minlength=10) / len(draws), 0.1, atol=0.003)
    rounding = np.mean((draws - np.asarray(enc.head.bins.centres())[ids]) ** 2)
    assert enc.head.bins.rounding_variance == pytest.approx(rounding, rel=0.02)
    uniform = encoding_of(data_config(encoding="tokens", vocab_size=10, bin_range=2.0))
    assert uniform.head.bins.rounding_variance == pytest.approx(0.4**2 / 12)


def test_bin_baselines_against_an_independent_numpy_posterior():
    """ce/bayes and ce/marginal: -log of the y bin's mass under the Gaussian posterior (prior) predictive,
    numpy's posterior and scipy's normal cdf; noise variance = sigma^2 + (bin width * y_scale)^2 / 12."""
    cfg = data_config(n_dims=3, n_points=6, encoding="tokens", vocab_size=16, bin_range=2.0, noise_std=0.3)
    batch = LinearRegression(cfg).sample_batch(KEY, 4)
    got = encoding_of(cfg).baseline_metrics(batch.xs, batch.ys)
    noise_var = 0.3**2 + (0.25 * cfg.y_scale) ** 2 / 12
    edges = np.linspace(-2, 2, 17) * cfg.y_scale
    edges[0], edges[-1] = -np.inf, np.inf
    for p, (xs, ys) in enumerate(zip(np.asarray(batch.xs, np.float64), np.asarray(batch.ys, np.float64), strict=True)):
        for k in range(6):
            cov = np.linalg.inv(xs[:k].T @ xs[:k] / noise_var + np.eye(3))
            mean, var = xs[k] @ cov @ xs[:k].T @ ys[:k] / noise_var, noise_var + xs[k] @ cov @ xs[k]
            b = np.searchsorted(edges, ys[k]) - 1
            for name, (m, v) in {"ce/bayes": (mean, var), "ce/marginal": (0.0, xs[k] @ xs[k] + noise_var)}.items():
                want = -np.log(norm.cdf(edges[b + 1], m, v**0.5) - norm.cdf(edges[b], m, v**0.5))
                assert float(got[name][p, k]) == pytest.approx(want, rel=1e-3, abs=1e-4), (name, p, k)


def test_binned_eval_metrics_median_and_coverage():
    """A histogram with mass 0.1, 0.3, 0.3, 0.3 on bins 4..7 (cdf 0.1, 0.4, 0.7, 1): the median is bin 6's
    centre, the central 50% interval (cdf 0.25 to 0.75) spans bins 5..7 and the 90% interval bins 4..7."""
    cfg = data_config(n_dims=1, n_points=4, encoding="binned_y", vocab_size=16, bin_range=2.0)
    enc = encoding_of(cfg)
    logits = jnp.full((1, 8, 16), -1e9).at[:, :, 4:8].set(jnp.log(jnp.array([0.1, 0.3, 0.3, 0.3])))
    target_bins = np.array([3, 4, 5, 7])
    ys = jnp.asarray(enc.head.bins.centres()[target_bins] * cfg.y_scale)[None]
    metrics = enc.eval_metrics(logits, ys)
    median = float(enc.head.bins.centres()[6]) * cfg.y_scale
    np.testing.assert_allclose(metrics["model_median"][0], (median - ys[0]) ** 2, rtol=1e-5)
    np.testing.assert_array_equal(metrics["coverage/50"][0], [0, 0, 1, 1])
    np.testing.assert_array_equal(metrics["coverage/90"][0], [0, 1, 1, 1])
    np.testing.assert_allclose(metrics["ce/model"][0, 1:], -np.log([0.1, 0.3, 0.3]), rtol=1e-4)
    # A calibrated histogram (N(0, 1) over 64 bins, ys drawn from it) covers about 50% and 90%: a little
    # more, as an interval takes whole bins.
    fine = encoding_of(dataclasses.replace(cfg, vocab_size=64, bin_range=4.0))
    ys = jax.random.normal(KEY, (4000, 4)) * cfg.y_scale
    logits = jnp.broadcast_to(jax.scipy.stats.norm.logpdf(fine.head.bins.centres()), (4000, 8, 64))
    metrics = fine.eval_metrics(logits, ys)
    assert 0.5 <= float(metrics["coverage/50"].mean()) <= 0.56
    assert 0.9 <= float(metrics["coverage/90"].mean()) <= 0.93


def training_set_batches(cfg: DataConfig, batch_size: int, steps: range, run_key=KEY):
    per_epoch = -(-cfg.train_size // batch_size)
    batches = [
        LinearRegression(cfg).training_batch(run_key, None, batch_size, jnp.asarray(s), per_epoch) for s in steps
    ]
    return per_epoch, batches


def prompt_ids(cfg: DataConfig, batch: Batch, run_key=KEY) -> list:
    """Which training-set prompt each counted row of `batch` is, matched by its ys."""
    every = LinearRegression(cfg).training_set_prompts(run_key, jnp.arange(cfg.train_size))
    rows = np.asarray(batch.ys)[np.asarray(batch.example_mask) > 0]
    return [int(np.flatnonzero(np.all(np.asarray(every.ys) == row, axis=1))[0]) for row in rows]


def test_each_epoch_visits_every_training_prompt_once_in_its_own_order():
    cfg = data_config(n_dims=3, n_points=4, train_size=10)
    per_epoch, batches = training_set_batches(cfg, 4, range(6))  # 3 steps per epoch: 4 + 4 + 2 (topped up, masked)
    assert per_epoch == 3
    np.testing.assert_array_equal([b.example_mask.sum() for b in batches], [4, 4, 2, 4, 4, 2])
    epochs = [sum((prompt_ids(cfg, b) for b in batches[e * 3 : e * 3 + 3]), []) for e in (0, 1)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(10))
    assert epochs[0] != epochs[1]  # reshuffled per epoch
    _, again = training_set_batches(cfg, 4, range(4, 5))  # a pure function of (run key, step): resume sees the same
    np.testing.assert_array_equal(again[0].ys, batches[4].ys)
    _, other_run = training_set_batches(cfg, 4, range(1), run_key=jax.random.PRNGKey(1))
    assert not np.allclose(other_run[0].ys, batches[0].ys)  # another seed, another set


def test_training_set_prompts_follow_the_prior_and_the_task_pool():
    cfg = data_config(n_dims=2, n_points=6, train_size=2048, task_pool_size=3)
    batch = LinearRegression(cfg).training_set_prompts(KEY, jnp.arange(2048))
    ws = np.stack(
        [np.linalg.lstsq(x, y, rcond=None)[0] for x, y in zip(np.asarray(batch.xs), np.asarray(batch.ys), strict=True)]
    )
    assert np.unique(np.round(ws, 4), axis=0).shape == (3, 2)  # every prompt's w from the run's pool of 3
    np.testing.assert_allclose(np.asarray(batch.xs).std(), 1, rtol=0.03)
