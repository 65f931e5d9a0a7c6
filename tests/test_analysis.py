"""analyze.py on real tiny runs: a Hydra multirun over model width, noise and seed, offline."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import analyze
from helpers import FAST, ROOT, held_out_curves, no_key_env
from icl_lr import analysis


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """8 runs: 2 widths x 2 noise levels x 2 seeds, from one `python train.py -m` (Hydra multirun)."""
    sweep_dir = tmp_path_factory.mktemp("multirun")
    command = [
        sys.executable,
        "train.py",
        "-m",
        *FAST,
        "training.steps=20",
        "model.n_embd=16,32",
        "data.noise_std=0,0.5",
        "seed=0,1",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    result = subprocess.run(command, cwd=ROOT, env=no_key_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


def per_run_files(sweep_dir: Path) -> list:
    """(config overrides, summary, last curves) of each run, read straight from its files."""
    runs = []
    for run_dir in sorted(p for p in sweep_dir.iterdir() if p.name.isdigit()):
        overrides = dict(
            line.removeprefix("- ").split("=", 1)
            for line in (run_dir / ".hydra" / "overrides.yaml").read_text().splitlines()
        )
        summary = json.loads((run_dir / "summary.json").read_text())
        curves = held_out_curves(run_dir)
        runs.append((overrides, summary, curves))
    return runs


def test_multirun_makes_one_run_dir_and_wandb_run_per_job(sweep_dir):
    run_dirs = [p for p in sweep_dir.iterdir() if p.name.isdigit()]
    assert len(run_dirs) == 8
    assert len({(d / "wandb_run_id").read_text() for d in run_dirs}) == 8
    assert all(json.loads((d / "summary.json").read_text())["step"] == 20 for d in run_dirs)


def test_runs_table_has_the_config_and_summary_of_every_run(sweep_dir):
    runs, curves = analysis.load_local([sweep_dir])
    assert len(runs) == 8 and analysis.group_keys(runs) == ["model_size", "data.noise_std"]
    assert set(runs.model_size) == {"1L/16d/2H", "1L/32d/2H"}
    by_dir = runs.set_index("run_dir")
    for run_dir in by_dir.index:
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
        assert by_dir.loc[run_dir, "eval/excess/mean"] == summary["eval/excess/mean"]
        assert by_dir.loc[run_dir, "n_params"] == summary["n_params"]
    assert len(curves) == 8 * 5 * 8  # runs x predictors x context lengths


def test_aggregates_over_seeds_equal_the_per_run_numbers(sweep_dir):
    runs, curves = analysis.load_local([sweep_dir])
    keys = analysis.group_keys(runs)
    aggregate = analysis.aggregate_runs(runs, keys, ["eval/excess/mean"]).set_index(["model_size", "data.noise_std"])
    curve_stats = analysis.aggregate_curves(runs, curves, keys).set_index(
        ["model_size", "data.noise_std", "predictor", "k"]
    )
    files = per_run_files(sweep_dir)
    for width, size in ((16, "1L/16d/2H"), (32, "1L/32d/2H")):
        for noise in (0.0, 0.5):
            group = [
                (s, c) for o, s, c in files if o["model.n_embd"] == str(width) and float(o["data.noise_std"]) == noise
            ]
            values = np.array([s["eval/excess/mean"] for s, _ in group])
            row = aggregate.loc[(size, noise)]
            assert (
                row.n == 2
                and row["mean"] == pytest.approx(values.mean())
                and row["std"] == pytest.approx(values.std(ddof=1))
            )
            assert values.min() <= row.ci_low <= row.ci_high <= values.max()
            for k in (0, 3, 7):
                model_errors = [c["model"][k] for _, c in group]
                assert curve_stats.loc[(size, noise, "model", k), "mean"] == pytest.approx(np.mean(model_errors))


def test_bootstrap_interval_is_the_spread_of_the_mean():
    values = np.random.default_rng(1).normal(3.0, 2.0, size=400)
    low, high = analysis.bootstrap_interval(values)
    assert low < values.mean() < high
    assert high - low == pytest.approx(2 * 1.96 * values.std(ddof=1) / np.sqrt(400), rel=0.15)
    assert analysis.bootstrap_interval(np.full(5, 0.25)) == (0.25, 0.25)
    assert all(np.isnan(analysis.bootstrap_interval(np.array([1.0]))))


def test_cli_writes_tables_markdown_and_plots(sweep_dir, tmp_path):
    out = tmp_path / "analysis"
    assert analyze.main([str(sweep_dir), "--out", str(out), "--format", "csv", "parquet"]) == 0
    aggregate = pd.read_csv(out / "aggregate.csv")
    pd.testing.assert_frame_equal(aggregate, pd.read_parquet(out / "aggregate.parquet"), check_dtype=False)
    assert len(pd.read_csv(out / "runs.csv")) == 8
    assert set(aggregate.metric) >= {"eval/excess/mean", "eval/model/error_k3", "n_params"}
    markdown = (out / "summary.md").read_text()
    assert (
        "model_size" in markdown and "data.noise_std" in markdown and markdown.count("(n=2)") == 8
    )  # 4 groups x 2 metrics
    for plot in ("error_vs_context.png", "excess_vs_model_size.png", "excess_vs_noise_std.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_filters_and_refuses_bad_input(sweep_dir, tmp_path, caplog):
    out = tmp_path / "filtered"
    assert analyze.main([str(sweep_dir), "--out", str(out), "--where", "data.noise_std=0.5", "--no-plots"]) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 4 and set(runs["data.noise_std"]) == {0.5}
    assert analyze.main([str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert analyze.main([str(sweep_dir), "--out", str(out), "--group-by", "data.nosie_std"]) == 2
    assert analyze.main([str(sweep_dir), "--out", str(out), "--where", "nosie=1"]) == 2
    assert "unknown column(s) data.nosie_std" in caplog.text
    with pytest.raises(SystemExit) as exit_info:
        analyze.main(["--sweep", "abc"])
    assert exit_info.value.code == 2


def test_runs_group_by_the_noise_prior_they_really_had():
    """A sweep draws data.noise_std even where data.noise_std_choices overrides it: that value is NaN."""
    model = {"n_layer": 1, "n_embd": 8, "n_head": 1}
    hierarchical = {"data": {"noise_std": 0.5, "noise_std_choices": [0.1, 1.0]}, "model": model}
    fixed = {"data": {"noise_std": 0.5, "noise_std_choices": None}, "model": model}
    from_sweep = {"data.noise_std": 0.25, "data.noise_std_choices": "[0.1,1.0]", "model": "gpt2_tiny"}
    from_sweep |= {f"model.{k}": v for k, v in model.items()}  # W&B's flat config, a sweep's text values
    runs = pd.DataFrame([analysis._run_row(str(i), c, {}) for i, c in enumerate([hierarchical, fixed, from_sweep])])
    assert (
        np.isnan(runs["data.noise_std"][0]) and runs["data.noise_std"][1] == 0.5 and np.isnan(runs["data.noise_std"][2])
    )
    assert list(runs["data.noise_std_choices"].fillna("null")) == ["[0.1, 1.0]", "null", "[0.1, 1.0]"]
    assert "model" not in runs and list(runs.model_size) == ["1L/8d/1H"] * 3


def test_a_key_older_runs_lack_counts_as_its_default(sweep_dir, tmp_path):
    """A run from before a config key existed (training.precision, here) groups with runs that have the
    key at its default, rather than making the key look swept."""
    import shutil

    older = tmp_path / "older"
    shutil.copytree(sweep_dir / "0", older)
    config = (older / ".hydra" / "config.yaml").read_text()
    (older / ".hydra" / "config.yaml").write_text(config.replace("  precision: fp32\n", ""))
    assert "precision" not in (older / ".hydra" / "config.yaml").read_text()
    runs, _ = analysis.load_local([sweep_dir, older])
    assert list(runs["training.precision"].unique()) == ["fp32"]
    assert "training.precision" not in analysis.group_keys(runs)
