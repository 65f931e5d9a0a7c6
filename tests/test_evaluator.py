"""icl_lr/train/eval_sets.py and evaluate.py: the eval sets (each builder's prompts and baselines), scoring a
set per k, and the Evaluator's records (its runs: tests/test_train.py, tests/test_ood.py, tests/test_algorithms.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import data_config, parts
from icl_lr.model.bins import Bins
from icl_lr.task.base import pool_key
from icl_lr.task.linear import LinearRegression
from icl_lr.train import eval_sets, evaluate
from icl_lr.train.config import EvalConfig

pytestmark = pytest.mark.unit  # the fast tier: no process started

KEY = jax.random.PRNGKey(0)


def test_score_takes_set_k_at_k_and_nan_past_the_last_set():
    ys = jnp.zeros((2, 5))
    sets = [eval_sets.EvalSet(None, ys, {"b": np.arange(5) + 10.0 * k}) for k in range(3)]
    model_curves = lambda params, inputs, ys_: {"model": np.full(5, -1.0)}
    curves = evaluate.score(model_curves, None, eval_sets.EvalSets(sets, per_k=True))
    np.testing.assert_array_equal(curves["b"], [0, 11, 22, np.nan, np.nan])
    np.testing.assert_array_equal(
        evaluate.score(model_curves, None, eval_sets.EvalSets(sets[1:]))["b"], np.arange(5) + 10
    )


def test_pretrain_prompts_come_from_the_runs_pool():
    cfg = data_config(n_dims=3, n_points=8, task_pool_size=5)
    run_key = jax.random.PRNGKey(7)
    pool = LinearRegression(cfg).pool_functions(pool_key(run_key), jnp.arange(5))
    eval_set = eval_sets.pretrain_set(*parts(cfg), EvalConfig(n_prompts=64), run_key, pool)
    batch = LinearRegression(cfg).sample_batch(
        jax.random.fold_in(jax.random.PRNGKey(12345), 1), 64, pool_key=pool_key(run_key)
    )
    np.testing.assert_array_equal(eval_set.ys, batch.ys)
    solve = lambda x, y: np.linalg.lstsq(np.asarray(x), np.asarray(y), rcond=None)[0]  # noiseless: w itself
    recovered = [solve(x, y) for x, y in zip(np.asarray(batch.xs), np.asarray(batch.ys), strict=True)]
    distances = np.linalg.norm(np.asarray(recovered)[:, None] - np.asarray(pool)[None], axis=2).min(axis=1)
    assert distances.max() < 1e-3  # every prompt's task is in the pool
    curves = eval_set.baseline_curves
    assert curves["dmmse"][2] < 1e-6 < curves["bayes"][2]  # two points name the task among 5; ridge needs 3


def test_per_sigma_sets_follow_the_matching_ridge():
    """With sigmas far apart, the mixture's posterior settles on the prompt's sigma: on each sigma's set
    Bayes tends to ridge at that sigma's lambda, and stays off the other's."""
    cfg = data_config(n_dims=2, n_points=24, noise_std_choices=(0.05, 2.0))
    sets = eval_sets.sigma_sets(*parts(cfg), EvalConfig(n_prompts=512))
    assert sorted(sets) == [0.05, 2.0]
    for sigma, other in ((0.05, 2.0), (2.0, 0.05)):
        curves = sets[sigma].baseline_curves
        matching, mismatched = curves[f"ridge_sigma_{sigma:g}"][-4:], curves[f"ridge_sigma_{other:g}"][-4:]
        gap = np.abs(curves["bayes"][-4:] - matching)
        assert gap.max() < 0.05 * np.abs(mismatched - matching).max()
    ys_low, ys_high = (np.asarray(sets[s].ys) for s in (0.05, 2.0))
    assert np.var(ys_high - ys_low) == pytest.approx(2.0**2 - 0.05**2, rel=0.1)  # same x's and w's, its own noise


def test_token_baselines_see_the_decoded_bins():
    """least_squares_on_bins is numpy's pseudo-inverse on the bin centres the model sees, scored on exact ys."""
    from icl_lr.train import eval_sets

    cfg = data_config(n_dims=2, n_points=5, encoding="tokens", vocab_size=8, bin_range=2.0)
    batch = LinearRegression(cfg).sample_batch(KEY, 64)
    curves = eval_sets.eval_set_of(*parts(cfg), batch).baseline_curves
    centres = np.asarray(Bins(cfg).centres(), np.float64)
    xs_seen = centres[np.asarray(Bins(cfg).to_tokens(batch.xs))]
    ys_seen = centres[np.asarray(Bins(cfg).y_targets(batch.ys))] * cfg.y_scale
    ys = np.asarray(batch.ys, np.float64)
    preds = np.array(
        [
            [x[k] @ np.linalg.pinv(x[:k]) @ y[:k] if k else 0.0 for k in range(5)]
            for x, y in zip(xs_seen, ys_seen, strict=True)
        ]
    )
    np.testing.assert_allclose(curves["least_squares_on_bins"], ((preds - ys) ** 2).mean(0) / 2, rtol=2e-3, atol=1e-4)
    assert curves["least_squares_on_bins"][4] > 10 * curves["least_squares"][4] + 1e-3  # exact values: 0 error


def test_analyses_run_as_the_eval_section_says(tmp_path, monkeypatch):
    """The built-ins by their own keys, in ANALYSES' order; another by eval.analyses (an import path here);
    eval.analyses naming a built-in is refused in one line."""
    from helpers import run_config
    from icl_lr.fields import ConfigError
    from icl_lr.train import analyses

    (tmp_path / "my_analysis.py").write_text(
        "from icl_lr.components import NoKeys\n\nclass Mine:\n    Config = NoKeys\n\n"
        "    @staticmethod\n    def check(cfg, task, family):\n        pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = run_config("eval.attention=true", "eval.probes=true", "eval.analyses=[my_analysis:Mine]")
    assert list(analyses.wanted(cfg.eval)) == ["probes", "attention", "my_analysis:Mine"]
    with pytest.raises(ConfigError, match=r"eval.analyses names analyses besides the built-ins.*got \['probes'\]"):
        run_config("eval.analyses=[probes]")
