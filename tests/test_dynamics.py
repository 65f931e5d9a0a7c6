"""A run's trajectory of checkpoints: its algorithm phases (icl_lr/train/phases.py, on hand-made curves whose
answer is known) and its essential dynamics (icl_lr/analysis/dynamics.py, on trajectories of known structure,
against scikit-learn's PCA), then both from one tiny run with training.trajectory and eval.predictions through
analyze.py."""

import html
import json
import re

import jax
import numpy as np
import pandas as pd
import pytest

from helpers import FAST, parts, run_config, train_cli
from icl_lr.analysis import dynamics, plots, sections, trajectories
from icl_lr.cli import analyze
from icl_lr.fields import ConfigError
from icl_lr.records.schema import HELD_OUT
from icl_lr.task import baselines
from icl_lr.train import phases
from icl_lr.train.eval_sets import set_key


def similarity(**by_name) -> dict:
    return {f"similarity_mse/{name}": values for name, values in by_name.items()}


@pytest.mark.unit
def test_the_closest_predictor_by_similarity_is_the_least_mean_over_k_from_1_and_its_changes_are_listed():
    curves_by_step = {  # k = 0 (every predictor without a context) would pick newton_5 at step 10: left out
        10: similarity(gd_1=[9.0, 0.1, 0.1], newton_5=[0.0, 0.5, 0.7], online_gd=[9.0, 0.3, 0.2]),
        20: similarity(gd_1=[9.0, 0.4, 0.2], newton_5=[0.0, 0.1, 0.1], online_gd=[9.0, 0.3, 0.2]),
        40: similarity(gd_1=[9.0, 0.5, 0.5], newton_5=[0.0, 0.2, 0.0], online_gd=[9.0, 0.3, 0.2])
        | {"model": [1.0, 0.9, 0.1], "bayes": [1.0, 0.9, 0.1]},  # an error curve equal to the model's: not used
    }
    found = phases.phases(curves_by_step)
    assert [(p.step, p.closest, p.measure) for p in found] == [
        (10, "gd_1", phases.SIMILARITY),
        (20, "newton_5", phases.SIMILARITY),
        (40, "newton_5", phases.SIMILARITY),
    ]
    assert found[0].distance == pytest.approx(0.1) and found[1].distance == pytest.approx(0.1)
    assert found[0].runner_up == "online_gd" and found[0].margin == pytest.approx(0.15)
    assert phases.changes(found) == [(20, "gd_1", "newton_5")]


@pytest.mark.unit
def test_without_similarity_curves_the_closest_is_the_least_error_gap_among_the_baselines():
    model_early, model_late = [1.0, 0.80, 0.70, 0.60], [1.0, 0.40, 0.20, 0.05]
    baselines_k = {
        "bayes": [1.0, 0.35, 0.15, 0.04],
        "averaging": [1.0, 0.82, 0.71, 0.62],
        "least_squares": [1.0, 3.0, 9.0, 0.0],
    }
    by_step = {
        5: {"model": model_early, **baselines_k, "model_6_loops": model_early, "ce/model": [0.0] * 4},
        50: {"model": model_late, **baselines_k, "nearest_neighbours": [np.nan] * 4},  # not measured: left out
    }
    found = phases.phases(by_step)
    assert [(p.step, p.closest, p.measure) for p in found] == [
        (5, "averaging", phases.ERROR_GAP),
        (50, "bayes", phases.ERROR_GAP),
    ]
    assert found[1].distance == pytest.approx(np.mean([0.05, 0.05, 0.01]))
    gaps = phases.distances(by_step[5])[0]
    assert set(gaps) == {"bayes", "averaging", "least_squares"}  # the model and its other loop counts are no baselines
    assert max(gaps, key=gaps.get) == "least_squares" != found[0].closest  # the farthest is not the one picked
    assert phases.changes(found) == [(50, "averaging", "bayes")]
    assert phases.phases({1: {"model": [1.0, 1.0]}}) == []  # nothing to compare with


def line_trajectory(rng, steps: int, shape=(6, 5)):
    """Predictions moving along one unit direction: a start, the direction and t in [0, 3] with tiny jitter."""
    start, direction = rng.normal(size=shape), rng.normal(size=shape)
    direction /= np.linalg.norm(direction)
    t = np.linspace(0, 3, steps)
    jitter = 1e-5 * rng.normal(size=(steps, *shape))
    return start + t[:, None, None] * direction + jitter, direction


@pytest.mark.unit
def test_a_trajectory_along_one_direction_has_it_as_its_first_component_and_a_baseline_at_its_end_lands_there():
    rng = np.random.default_rng(0)
    predictions, direction = line_trajectory(rng, 9)
    found = dynamics.essential_dynamics({"run": predictions}, {"end": predictions[-1], "far": predictions[0] + 5})
    assert found.explained[0] > 0.9999 and found.explained.sum() == pytest.approx(1.0, abs=1e-6)
    assert abs(found.components[0] @ direction.reshape(-1)) == pytest.approx(1.0, abs=1e-6)
    pc1 = found.trajectories["run"][:, 0]
    assert np.all(np.diff(pc1) > 0) or np.all(np.diff(pc1) < 0)  # it moves one way along PC1
    assert abs(pc1[-1] - pc1[0]) == pytest.approx(3.0, rel=1e-4)  # the distance travelled, in prediction units
    assert found.baselines["end"] == pytest.approx(found.trajectories["run"][-1], abs=1e-9)
    assert not np.allclose(found.baselines["far"], found.trajectories["run"][0])
    assert np.allclose(dynamics.project(found, predictions), found.trajectories["run"])


@pytest.mark.unit
def test_the_joint_pca_of_two_runs_is_scikit_learns_centred_on_all_their_checkpoints():
    decomposition = pytest.importorskip("sklearn.decomposition")
    rng = np.random.default_rng(1)
    runs = {"a": rng.normal(size=(7, 4, 5)), "b": rng.normal(size=(5, 4, 5)) + 2}
    baseline = rng.normal(size=(4, 5))
    found = dynamics.essential_dynamics(runs, {"ridge": baseline}, n_components=3)
    stacked = np.concatenate([r.reshape(len(r), -1) for r in runs.values()])
    pca = decomposition.PCA(n_components=3, svd_solver="full").fit(stacked)
    total = pca.explained_variance_ / pca.explained_variance_ratio_
    assert found.explained == pytest.approx(pca.explained_variance_ / total[0], rel=1e-9)
    ours = np.concatenate([found.trajectories["a"], found.trajectories["b"]])
    signs = np.sign(np.sum(ours * pca.transform(stacked), axis=0))  # a component's sign is a convention
    assert ours == pytest.approx(pca.transform(stacked) * signs, abs=1e-9)
    assert found.baselines["ridge"] == pytest.approx(pca.transform(baseline.reshape(1, -1))[0] * signs, abs=1e-9)
    assert ours.mean(axis=0) == pytest.approx(np.zeros(3), abs=1e-9)  # centred over both runs' checkpoints
    with pytest.raises(ValueError, match="one prompt set"):
        dynamics.essential_dynamics({"a": runs["a"], "c": rng.normal(size=(3, 4, 6))})


def write_run(run_dir, curves_by_step: dict, predictions_by_step: dict, model_json: dict | None = None) -> None:
    """A hand-made run or eval dir: held-out records in curves.jsonl (and another set's), predictions/*.npz."""
    (run_dir / "predictions").mkdir(parents=True)
    records = [{"step": s, "set": HELD_OUT, **c} for s, c in curves_by_step.items()]
    records += [{"step": s, "set": "pretrain", "model": [0.0, 0.0]} for s in curves_by_step]
    (run_dir / "curves.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for step, arrays in predictions_by_step.items():
        np.savez(run_dir / "predictions" / f"step_{step}.npz", **arrays)
    if model_json is not None:
        (run_dir / "model.json").write_text(json.dumps(model_json))


@pytest.mark.unit
def test_trajectories_read_each_runs_steps_and_fit_one_pca_per_prompt_set(tmp_path):
    rng = np.random.default_rng(2)
    targets, other_targets = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    first = lambda t: {"model": rng.normal(size=(3, 4)), "targets": t, "baseline/bayes": t * 0.9, "baseline/dmmse": t}
    curves = {s: {"model": [1.0, e, e], "bayes": [1.0, 0.1, 0.1], "averaging": [1.0, 0.8, 0.8]} for s, e in
              ((10, 0.75), (20, 0.2))}  # fmt: skip
    write_run(tmp_path / "a", curves, {10: first(targets), 20: {"model": rng.normal(size=(3, 4))}})
    b_first = first(targets) | {"baseline/dmmse": targets + 1}  # its own task pool: another dMMSE
    write_run(tmp_path / "b", curves, {5: {"model": rng.normal(size=(2, 4))}, 10: b_first,
                                       30: {"model": rng.normal(size=(3, 4))}})  # fmt: skip
    write_run(tmp_path / "c", curves, {10: first(other_targets)}, {"trajectory": [{"step": 10}]})
    write_run(tmp_path / "d", curves, {10: first(targets)})  # no trajectory: not shown
    runs = pd.DataFrame({
        "run_id": ["a", "b", "/x/c", "d"], "status": "finished", "run_dir": [str(tmp_path / n) for n in "abcd"],
        "training.trajectory": [4, 0, 0, 0], "eval.predictions": [3, 3, 0, 0],
    })  # fmt: skip
    traced = trajectories.trajectory_runs(runs)
    assert [run_id for run_id, _ in traced] == ["a", "b", "/x/c"]  # c: an eval dir of eval.py --trajectory
    table, changes = trajectories.phase_tables(traced)
    assert list(table[table.run_id == "a"].closest) == ["averaging", "bayes"]
    assert changes.values.tolist() == [[r, 20, "averaging", "bayes"] for r in ("a", "b", "/x/c")]
    assert trajectories.phase_lines(table, changes)[0] == (
        "algorithm phases of a (by error gap, a proxy): averaging from step 10, then bayes from step 20"
    )
    b = trajectories.read_predictions(tmp_path / "b")
    assert b.steps == [10, 30] and b.model.shape == (2, 3, 4)  # step 5 had another eval.predictions: left out
    found = trajectories.dynamics_of(traced)
    assert [sorted(group) for group, _ in found] == [["a", "b"], ["/x/c"]]  # by their prompts' targets
    assert sorted(found[0][1].baselines) == ["bayes", "dmmse", "dmmse (b)"]
    coordinates, variance = trajectories.dynamics_tables(found)
    assert coordinates[coordinates.predictor == "model"].step.tolist() == [10, 20, 10, 30, 10]
    assert set(variance.prompt_set) == {0, 1} and list(variance[variance.prompt_set == 0].runs)[0] == "a, b"
    out = tmp_path / "essential_dynamics.png"
    plots.plot_dynamics(found, {"/x/c": "c"}, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.unit
def test_the_by_step_table_pairs_each_eval_with_the_loss_logged_before_it_and_its_llc(tmp_path):
    records = [
        {"step": 10, "train/loss": 2.0},
        {
            "step": 10,
            "eval/model/error_mean": 1.5,
            "eval/excess/mean": 0.5,
            "eval/llc/mean": 3.0,
            "eval/llc/std_err": 0.2,
        },
        {"step": 20, "train/loss": 1.0},
        {"step": 30, "train/loss": 0.5},
        {"step": 30, "eval/model/error_mean": 0.7, "eval/excess/mean": 0.1},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    table = trajectories.by_step_table([("run", tmp_path)])
    assert list(table.step) == [10, 30] and list(table.train_loss) == [2.0, 0.5]
    assert list(table.model_error) == [1.5, 0.7] and list(table.excess) == [0.5, 0.1]
    assert table.llc.iloc[0] == 3.0 and table.llc_std_err.iloc[0] == 0.2 and table.llc.iloc[1:].isna().all()


def test_eval_predictions_is_refused_past_the_held_out_prompts_in_one_line():
    with pytest.raises(
        ConfigError, match=r"eval.predictions must be 0 \(off\) or in \[1, eval.n_prompts \(64\)\], got 65"
    ):
        run_config(*FAST, "eval.predictions=65")
    assert run_config(*FAST, "eval.predictions=64").eval.predictions == 64


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A FAST run with a trajectory of 4 (steps 10, 20, 30, 40) and its predictions on 8 held-out prompts."""
    run_dir = tmp_path_factory.mktemp("dynamics") / "run"
    train_cli(run_dir, "training.trajectory=4", "eval.predictions=8")
    return run_dir


def test_each_eval_saves_the_models_predictions_and_the_first_the_baselines_and_targets(run_dir):
    files = {int(p.stem.removeprefix("step_")): dict(np.load(p)) for p in (run_dir / "predictions").glob("*.npz")}
    assert sorted(files) == [10, 20, 30, 40]
    first = files[10]
    assert first["model"].shape == (8, 8) and all(set(files[s]) == {"model"} for s in (20, 30, 40))
    assert {"targets", "baseline/bayes", "baseline/least_squares"} <= set(first)
    cfg = run_config(*FAST, "training.trajectory=4", "eval.predictions=8")
    task, _ = parts(cfg.data)
    prompts = task.sample_batch(set_key(cfg.eval, 0), cfg.eval.n_prompts)  # the held-out set's, from eval.seed
    assert first["targets"] == pytest.approx(np.asarray(prompts.scored[:8]))
    expected = jax.vmap(baselines.least_squares)(prompts.xs[:8], prompts.ys[:8])
    assert first["baseline/least_squares"] == pytest.approx(np.asarray(expected), abs=1e-5)
    assert not np.allclose(files[10]["model"], files[40]["model"])  # the model moved


def test_analyze_shows_the_phases_and_the_essential_dynamics_of_a_trajectory(run_dir, tmp_path, capsys):
    out = tmp_path / "analysis"
    assert analyze.main([str(run_dir), "--out", str(out), "--html"]) == 0
    printed = capsys.readouterr().out
    assert "algorithm phases of" in printed and "of the variance of the predictions" in printed

    table = pd.read_csv(out / "phases.csv")
    assert list(table.step) == [10, 20, 30, 40] and set(table.measure) == {phases.SIMILARITY}
    with np.load(run_dir / "predictions" / "step_10.npz") as first:
        by_baseline = {n.removeprefix("baseline/"): first[n] for n in first.files if n.startswith("baseline/")}
    for row in table.itertuples():  # by hand: the baseline predicting nearest the model on the 8 prompts, k >= 1
        model = np.load(run_dir / "predictions" / f"step_{row.step}.npz")["model"]
        apart = {n: np.mean(np.mean((model - p) ** 2, axis=0)[1:]) / 3 for n, p in by_baseline.items()}
        assert row.closest == min(apart, key=apart.get) and row.distance == pytest.approx(apart[row.closest], rel=1e-5)
    assert (out / "phase_changes.csv").exists()

    coordinates, variance = pd.read_csv(out / "dynamics.csv"), pd.read_csv(out / "dynamics_variance.csv")
    model = coordinates[coordinates.predictor == "model"]
    assert list(model.step) == [10, 20, 30, 40] and {"bayes", "least_squares"} <= set(coordinates.predictor)
    ratios = variance.explained_variance_ratio
    assert list(variance.component) == ["pc1", "pc2", "pc3"] and ratios.is_monotonic_decreasing and ratios.sum() <= 1
    saved = [np.load(run_dir / "predictions" / f"step_{s}.npz")["model"].reshape(-1) for s in (10, 20, 30, 40)]
    centred = np.asarray(saved, np.float64) - np.mean(saved, axis=0)
    _, singular, _ = np.linalg.svd(centred, full_matrices=False)
    assert ratios.to_numpy() == pytest.approx((singular**2 / np.sum(singular**2))[:3], rel=1e-6)
    assert (out / "essential_dynamics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(pd.read_csv(out / "by_step.csv").step) == [10, 20, 30, 40] and (out / "loss_and_llc.png").exists()

    page = (out / "report.html").read_text()
    titles = [html.unescape(t) for t in re.findall(r"<h[23]>(.*?)</h[23]>", page)]
    shown = (sections.TRAJECTORY, sections.BY_STEP, sections.PHASES, sections.DYNAMICS)
    assert list(shown) == [t for t in titles if t in shown]
    assert 'id="essential_dynamics"' in page and "explained variance" in page
