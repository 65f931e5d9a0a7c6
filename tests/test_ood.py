"""The anchors' evaluations: Garg et al.'s OOD prompts against their definitions, Raventos et al.'s dMMSE
against an independent numpy posterior and their pretrain prompts, Bai et al.'s per-sigma sets."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import data_config, encoding_of, train_cli
from icl_lr.analysis import sections, sources, tables
from icl_lr.cli import analyze
from icl_lr.records.schema import BAYES, HELD_OUT, MODEL
from icl_lr.records.tracking import read_jsonl
from icl_lr.task import baselines, ood, sampling
from icl_lr.task.linear import LinearRegression
from icl_lr.train import eval_sets, evaluate

D, N, P = 4, 9, 512


@pytest.fixture(scope="module")
def suite():
    return ood.conditions(jax.random.PRNGKey(0), LinearRegression(data_config(n_dims=D, n_points=N)), P)


def only_set(suite, name):
    sets, per_k = suite[name].sets, suite[name].per_k
    assert not per_k and len(sets) == 1
    return [np.asarray(a) for a in sets[0]]


def test_transformation_has_the_eigenvalues_and_keeps_the_norm():
    eigenvalues = 1 / jnp.arange(1, 6)
    t = np.asarray(sampling.transformation(jax.random.PRNGKey(3), eigenvalues, normalize=True))
    np.testing.assert_allclose(t, t.T, atol=1e-6)
    expected = np.sort(np.asarray(eigenvalues) * np.sqrt(5 / np.sum(np.asarray(eigenvalues) ** 2)))
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(t)), expected, rtol=1e-5)
    assert np.trace(t.T @ t) == pytest.approx(5, rel=1e-5)  # E|x t|^2 = d


def test_skewed_and_half_subspace_inputs_have_their_covariance(suite):
    for name, eigenvalues in (("skewed", 1 / np.arange(1, D + 1)), ("half_subspace", 1.0 * (np.arange(D) < D // 2))):
        xs, _ = only_set(suite, name)
        covariance = np.cov(xs.reshape(-1, D).T)
        target = eigenvalues**2 * D / np.sum(eigenvalues**2)  # t^T t's spectrum: x = z t with z ~ N(0, I)
        np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(covariance)), np.sort(target), atol=0.08)
    xs, _ = only_set(suite, "half_subspace")
    assert np.linalg.matrix_rank(xs.reshape(-1, D), tol=1e-4) == D // 2


def test_scaled_inputs_and_tasks(suite):
    xs_half, ys_half = only_set(suite, "scale_x_0.5")
    xs_three, _ = only_set(suite, "scale_x_3")
    np.testing.assert_allclose(xs_three / 3, xs_half / 0.5, atol=1e-5)
    xs, ys_two = only_set(suite, "scale_y_2")
    _, ys_three = only_set(suite, "scale_y_3")
    _, ys_one_half = only_set(suite, "scale_y_0.5")
    np.testing.assert_allclose(1.5 * (ys_three - ys_two), ys_two - ys_one_half, atol=1e-4)  # ys = s w.x + noise
    assert np.mean((ys_two - ys_one_half) ** 2) / 1.5**2 == pytest.approx(D, rel=0.1)  # w.x has variance d


def test_noisy_labels_are_rescaled_to_std_sqrt_d(suite):
    _, ys = only_set(suite, "noisy_labels")
    assert np.std(ys) == pytest.approx(np.sqrt(D), rel=1e-4)


def numpy_ridge(xs, ys, ridge_lambda):
    """Each prefix's ridge prediction of y_k in float64, closed form (lambda 0: the min-norm solution)."""
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    solve = lambda x, y: np.linalg.pinv(x.T @ x + ridge_lambda * np.eye(x.shape[1])) @ x.T @ y
    return np.asarray([xs[k] @ solve(xs[:k], ys[:k]) for k in range(len(ys))])


def reference_predictions(condition, prompts=4):
    """The condition's reference predictions on its first prompts, as the evaluator computes them."""
    xs, ys = condition.sets[0]
    task = condition.task
    return xs[:prompts], ys[:prompts], task.baselines(xs[:prompts], ys[:prompts], task.cfg.noise_stds)[task.reference]


@pytest.mark.parametrize("noise_std", [0.0, 0.5])
def test_scaled_and_noisy_labels_are_scored_against_their_own_ridge(noise_std):
    """scale_y_s: w's prior of std s prior_scale, so Bayes is ridge at sigma^2 / (s prior_scale)^2;
    noisy_labels: unit noise and w both rescaled by one constant, so ridge at 1 / prior_scale^2."""
    prior_scale = 1.5
    task = LinearRegression(data_config(n_dims=D, n_points=N, prior_scale=prior_scale, noise_std=noise_std))
    suite = ood.conditions(jax.random.PRNGKey(0), task, 64)
    lambdas = {f"scale_y_{s:g}": noise_std**2 / (s * prior_scale) ** 2 for s in ood.SCALES}
    for name, ridge_lambda in (lambdas | {"noisy_labels": 1 / prior_scale**2}).items():
        assert suite[name].task.reference == BAYES
        xs, ys, preds = reference_predictions(suite[name])
        for p in range(len(xs)):
            np.testing.assert_allclose(preds[p], numpy_ridge(xs[p], ys[p], ridge_lambda), rtol=1e-5, atol=1e-5)


def test_noisy_labels_excess_is_over_a_reference_finite_at_k_equal_d():
    """A model that predicts ridge at lambda = 1 / prior_scale^2 has no excess on noisy_labels at any k, k = d
    included, where least squares (the noiseless training prior's Bayes) is singular."""
    task = LinearRegression(data_config(n_dims=D, n_points=N))
    condition = ood.conditions(jax.random.PRNGKey(0), task, P)["noisy_labels"]
    (xs, ys), reference = condition.sets[0], condition.task.reference
    eval_set = eval_sets.eval_set_of(condition.task, encoding_of(task.cfg), eval_sets._prompts(xs, ys))  # as ood_sets
    ridge = np.stack([numpy_ridge(x, y, 1.0) for x, y in zip(np.asarray(xs), np.asarray(ys), strict=True)])
    curves = eval_set.baseline_curves | {MODEL: np.asarray(eval_sets.squared_error_curve(ridge, ys, D))}
    summary = evaluate.summarize(curves, D, reference)
    excess = curves[MODEL] - curves[reference]
    assert np.isfinite(excess).all()
    np.testing.assert_allclose(excess, 0, atol=1e-4)
    assert summary["excess/mean"] == pytest.approx(0, abs=1e-4) and f"excess/error_k{D}" in summary
    assert curves["least_squares"][D] > 100 * curves[BAYES][D]  # the old reference's singular prefix


def test_x_moving_conditions_keep_the_training_bayes_and_drop_outliers():
    """x's drawn apart from w leave its posterior as it was; the suite's labels are clean, so an outlier run's
    conditions are scored against Gaussian noise's Bayes, not its Huber baseline."""
    task = LinearRegression(data_config(n_dims=D, n_points=N, noise_std=0.5, outlier_fraction=0.1))
    suite = ood.conditions(jax.random.PRNGKey(0), task, 4)
    clean = LinearRegression(data_config(n_dims=D, n_points=N, noise_std=0.5))
    assert task.reference == "huber"
    for name in ("scale_x_2", "skewed", "half_subspace", "random_quadrants", "orthogonal_query", "repeated_query"):
        assert suite[name].task == clean and suite[name].task.reference == BAYES


def per_k_sets(suite, name):
    sets, per_k = suite[name].sets, suite[name].per_k
    assert per_k
    return [tuple(np.asarray(a) for a in s) for s in sets]


def test_random_quadrant_contexts_share_an_orthant_and_queries_do_not(suite):
    sets = per_k_sets(suite, "random_quadrants")
    assert len(sets) == N
    xs, _ = sets[N - 1]
    context_signs = np.sign(xs[:, : N - 1])
    assert (context_signs == context_signs[:, :1]).all()  # every context point in the prompt's orthant
    queries = np.stack([xs_k[:, k] for k, (xs_k, _) in enumerate(sets)], axis=1)
    assert 0.4 < np.mean(np.sign(queries) == context_signs[:, :1]) < 0.6  # queries: any orthant


def test_orthogonal_queries_are_orthogonal_to_the_context_and_keep_their_norm(suite):
    sets = per_k_sets(suite, "orthogonal_query")
    assert len(sets) == D  # past k = d - 1 the context spans R^d
    for k, (xs, _) in enumerate(sets):
        if k:  # cosines, float32's precision: a query nearly in the span is a small residual, scaled up
            cosines = np.einsum("pkd,pd->pk", xs[:, :k], xs[:, k]) / np.linalg.norm(xs[:, :k], axis=2)
            np.testing.assert_allclose(cosines / np.linalg.norm(xs[:, k], axis=1)[:, None], 0, atol=1e-3)
        reference = sets[-1][0] if k < D - 1 else sets[0][0]  # x_k as drawn, before orthogonalising
        np.testing.assert_allclose(np.linalg.norm(xs[:, k], axis=1), np.linalg.norm(reference[:, k], axis=1), rtol=1e-4)


def test_repeated_queries_repeat_a_context_point(suite):
    for k, (xs, _) in enumerate(per_k_sets(suite, "repeated_query")[1:], start=1):
        distances = np.linalg.norm(xs[:, :k] - xs[:, k : k + 1], axis=2).min(axis=1)
        np.testing.assert_allclose(distances, 0, atol=1e-6)


def numpy_dmmse(xs, ys, pool, sigmas):
    """The posterior mean over (task, sigma), uniform prior, from Gaussian likelihoods, in float64."""
    xs, ys, pool = (np.asarray(a, np.float64) for a in (xs, ys, pool))
    preds = []
    for k in range(len(ys)):
        log_weights, outputs = [], []
        for w in pool:
            for sigma in sigmas:
                residuals = ys[:k] - xs[:k] @ w
                log_weights.append(np.sum(-(residuals**2) / (2 * sigma**2) - np.log(sigma)))
                outputs.append(xs[k] @ w)
        weights = np.exp(np.asarray(log_weights) - max(log_weights))
        preds.append(np.sum(weights * np.asarray(outputs)) / weights.sum())
    return np.asarray(preds)


def all_predictions(*args):
    """baselines.all_predictions as one compiled program (op by op, each primitive is compiled on its own)."""
    return jax.jit(baselines.all_predictions, static_argnums=(2, 3))(*args)


@pytest.mark.parametrize("sigmas", [(0.5,), (0.3, 1.0)])
def test_dmmse_is_the_posterior_mean_over_the_pool(sigmas):
    cfg = data_config(n_dims=3, n_points=7, noise_std=sigmas[0], noise_std_choices=sigmas if len(sigmas) > 1 else None)
    pool = LinearRegression(cfg).pool_functions(jax.random.PRNGKey(1), jnp.arange(6))
    batch = LinearRegression(cfg).sample_batch(jax.random.PRNGKey(2), 8, pool_key=jax.random.PRNGKey(1))
    preds = all_predictions(batch.xs, batch.ys, cfg.prior_scale, cfg.noise_stds, pool)["dmmse"]
    for p in range(8):
        np.testing.assert_allclose(preds[p], numpy_dmmse(batch.xs[p], batch.ys[p], pool, sigmas), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(preds[:, 0], batch.xs[:, 0] @ pool.mean(axis=0), rtol=1e-5)  # k = 0: the pool's mean


@pytest.fixture(scope="module")
def pool_runs(tmp_path_factory):
    """Two real tiny runs with a task pool (8 and 2 tasks) and two noise levels; the first with the OOD suite."""
    root = tmp_path_factory.mktemp("pools")
    common = ["data.noise_std_choices=[0.1,1.0]", "training.steps=20"]
    train_cli(root / "pool8", "data.task_pool_size=8", "eval.ood=true", *common, wandb=True)
    train_cli(root / "pool2", "data.task_pool_size=2", *common, wandb=True)
    return root


def test_a_run_logs_every_set(pool_runs):
    """The sets' scalars in the summary, their curves in curves.jsonl (with "set") and as W&B tables."""
    run_dir = pool_runs / "pool8"
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("eval/pretrain/dmmse/error_k3", "eval/dmmse/error_k3", "eval/sigma_0.1/ridge_sigma_1/error_k3"):
        assert np.isfinite(summary[key])
    assert summary["eval/ood/orthogonal_query/model/error_k1"] > 0
    assert "eval/ood/orthogonal_query/model/error_k6" not in summary  # past k = d - 1: not scored
    conditions = set(ood.conditions(jax.random.PRNGKey(0), LinearRegression(data_config()), 2))
    assert conditions == {key.split("/")[2] for key in summary if key.startswith("eval/ood/")}
    records = read_jsonl(run_dir / "curves.jsonl")
    sets = {r["set"] for r in records}  # every record names its set, the held-out one too
    assert sets == {HELD_OUT, "pretrain", "sigma_0.1", "sigma_1"} | {f"ood/{c}" for c in conditions}
    (orthogonal,) = [r for r in records if r.get("set") == "ood/orthogonal_query"]
    assert np.isfinite(orthogonal["model"][:3]).all() and np.isnan(orthogonal["model"][3:]).all()
    assert summary["ood_seconds"] > 0
    assert {summary[f"eval/ood/{c}/excess_over"] for c in conditions} == {BAYES}  # each condition's own Bayes
    assert all(np.isfinite(summary[f"eval/ood/{c}/excess/mean"]) for c in conditions)
    files = next((run_dir / "wandb").glob("offline-run-*")) / "files"
    table = json.loads(next(files.rglob("eval/ood/skewed/curves_[0-9]*.table.json")).read_text())
    (skewed,) = [r for r in records if r.get("set") == "ood/skewed"]
    np.testing.assert_allclose(
        np.asarray(table["data"])[:, table["columns"].index("model")], skewed["model"], rtol=1e-6
    )


def test_analysis_reads_every_set_and_plots_the_pool_sizes(pool_runs, tmp_path):
    runs, curves, _ = sources.load_local([pool_runs])
    records = read_jsonl(pool_runs / "pool8" / "curves.jsonl")
    (pretrain,) = [r for r in records if r.get("set") == "pretrain"]
    run8 = runs.set_index("data.task_pool_size").loc[8, "run_id"]
    mine = curves[(curves.run_id == run8) & (curves.set == "pretrain") & (curves.predictor == "dmmse")]
    np.testing.assert_allclose(mine.sort_values("k").value, pretrain["dmmse"], rtol=1e-6)
    stats = tables.task_pool_stats(runs, curves, ["data.task_pool_size"]).set_index(
        ["data.task_pool_size", "set", "predictor"]
    )
    assert stats.loc[(8, "pretrain", "dmmse"), "mean"] == pytest.approx(np.mean(pretrain["dmmse"]))
    assert stats.loc[(2, "held_out", "model"), "n"] == 1
    out = tmp_path / "analysis"
    assert analyze.main([str(pool_runs), "--out", str(out), "--html"]) == 0
    for name in ("error_vs_task_pool.png", "ood_vs_context.png", "error_per_sigma.png", "task_pool.csv"):
        assert (out / name).stat().st_size > 0
    assert "Error vs task pool size" in (out / "report.html").read_text()  # the interactive figure


def test_dmmse_chunks_a_large_pool():
    """A pool whose dMMSE does not fit one batch gives the same predictions in chunks."""
    cfg = data_config(n_dims=2, n_points=5, noise_std=0.5)
    pool = LinearRegression(cfg).pool_functions(jax.random.PRNGKey(1), jnp.arange(64))
    batch = LinearRegression(cfg).sample_batch(jax.random.PRNGKey(2), 16)
    whole = all_predictions(batch.xs, batch.ys, 1.0, (0.5,), pool)["dmmse"]
    original = baselines.DMMSE_CHUNK
    try:
        baselines.DMMSE_CHUNK = 5 * 64 * 3  # 3 prompts per chunk
        chunked = all_predictions(batch.xs, batch.ys, 1.0, (0.5,), pool)["dmmse"]  # traced with the small chunk
    finally:
        baselines.DMMSE_CHUNK = original
    np.testing.assert_allclose(chunked, whole, rtol=1e-4, atol=1e-5)  # float32 sums in another order


def test_the_wandb_report_has_the_ood_and_task_pool_panels(pool_runs):
    import wandb_workspaces.reports.v2 as wr

    from icl_lr.analysis import wandb_report

    runs, _, _ = sources.load_local([pool_runs])
    keys = tables.group_keys(runs)
    assert tables.TASK_POOL in keys
    report = wandb_report.build_report("team", "icl-lr", None, runs, keys, {"headline": "", "note": "", "markdown": ""})
    after = {b.text: report.blocks[i + 1] for i, b in enumerate(report.blocks) if isinstance(b, wr.H1)}
    assert list(after)[-3:] == [sections.OOD, sections.SIGMA, sections.TASK_POOL]  # report.html's order
    ood_grid, pool_grid = after[sections.OOD], after[sections.TASK_POOL]
    conditions = sorted(ood.conditions(jax.random.PRNGKey(0), LinearRegression(data_config()), 2))
    bars, *charts = ood_grid.panels
    assert bars.metrics == [f"eval/ood/{c}/model/error_mean" for c in conditions]
    (folder,) = (pool_runs / "pool8" / "wandb").glob("offline-run-*")
    logged = sources.read_wandb_file(folder)["summary"]
    for condition, chart in zip(conditions, charts, strict=True):
        table = chart.query["summaryTable"]["tableKey"]
        assert table == f"eval/ood/{condition}/curves_chart_table" and logged[table]["_type"] == "table-file"
    assert all(metric in runs for metric in bars.metrics)
    scatter = [(p.x, p.y, p.log_x) for p in pool_grid.panels]
    x = wr.Config(tables.TASK_POOL)
    assert scatter == [(x, "eval/model/error_mean", True), (x, "eval/pretrain/model/error_mean", True)]


def test_function_classes_get_the_conditions_that_move_their_xs_labelled_by_their_own_functions():
    """polynomial and gp_regression: the x-moving conditions only (their prior has no w to scale), each set's
    labels the class's functions at the moved x's: noiseless cubics that ridge on the 7 features fits exactly
    from k = 7, and GP values of the prior's variance at x's three times the training scale. The suite is
    traced as one program here (op by op it takes about a minute on 2 cores)."""
    from icl_lr.task.registry import task_of

    moved = ["scale_x_0.333", "scale_x_0.5", "scale_x_2", "scale_x_3", "skewed", "half_subspace",
             "random_quadrants", "orthogonal_query", "repeated_query"]  # fmt: skip

    def drawn(task, key, n_prompts):  # (names, per_k, labelling tasks) by tracing; the sets computed jitted
        found = {}

        def sets(k):
            suite = task.ood_conditions(k, n_prompts)
            found.update({name: (c.per_k, c.task) for name, c in suite.items()})
            return [c.sets for c in suite.values()]

        return dict(zip(found, zip(found.values(), jax.jit(sets)(key), strict=True), strict=True))

    poly = task_of(data_config(task="polynomial", n_dims=2, poly_degree=3, n_points=10, noise_std=0.0))
    suite = drawn(poly, jax.random.PRNGKey(0), 64)
    assert list(suite) == moved and all(labeller is poly for (_, labeller), _ in suite.values())
    for name, ((per_k, _), sets) in suite.items():
        for k, (xs, ys) in enumerate(sets):
            if per_k and k < 7:
                continue  # set k is scored at its k alone
            bayes = np.asarray(poly.baselines(xs, ys, (0.0,))[BAYES])
            scored = [k] if per_k else range(7, 10)
            error = np.abs(bayes[:, scored] - np.asarray(ys)[:, scored]).max()
            assert error < 1e-3 * np.abs(np.asarray(ys)).max(), (name, k, error)
    gp = task_of(data_config(task="gp_regression", n_dims=2, n_points=6, noise_std=0.0, prior_scale=2.0))
    xs, ys = jax.jit(lambda k: gp.ood_conditions(k, 1000)["scale_x_3"].sets[0])(jax.random.PRNGKey(1))
    assert np.std(np.asarray(xs)) == pytest.approx(3.0, rel=0.05)
    assert np.var(np.asarray(ys)) == pytest.approx(4.0, rel=0.08)  # k(x, x) prior_scale^2 at any x
