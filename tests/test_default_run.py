"""Whole runs that must learn in context: the README's main job (`python train.py`, ~6 min on 2 cores,
its CPU split as a user's run splits it), a run under Garg et al.'s optimiser (~3 min) and
experiment=tokens (~7 min), these two on one CPU device as measured; and the package installed as a user
installs it. Slow: run with `python -m pytest -m slow`."""

import json
import subprocess
import sys

import numpy as np
import pytest

from helpers import FAST, ROOT, auto_devices_env, held_out_curves, no_key_env, train_cli


@pytest.mark.slow
def test_default_run_learns_in_context(tmp_path):
    train_cli(tmp_path, fast=False, env=auto_devices_env(), timeout=1800)  # on the devices a user's run gets
    final = held_out_curves(tmp_path)
    assert final["step"] == 12000
    curves = {k: np.asarray(v) for k, v in final.items() if k != "step"}
    k = 10  # 2d
    assert curves["model"][k] < 0.1 * curves["model"][0]  # measured: 0.0035 vs 1.047
    assert curves["model"][k] < 0.2 * curves["averaging"][k]
    np.testing.assert_allclose(curves["model"][:3], curves["bayes"][:3], atol=0.05)  # Bayes-optimal where k < d


GARG_OPTIMISER = ["training.schedule=constant", "training.warmup_steps=0", "training.grad_clip=1e9"]
TINY = ["model=gpt2_tiny", "training.batch_size=128"]  # the model and batch docs/initialisation.md's table used


@pytest.mark.slow
def test_learns_under_garg_optimiser(tmp_path):
    """Constant Adam 1e-3 from step 0, no clipping (dtsip/in-context-learning src/train.py), 3,000 steps.

    With GPT-2's 0.02 read-in and 0.01 positions this run sat on the plateau (k = 10 error 0.98).
    """
    train_cli(tmp_path, *TINY, *GARG_OPTIMISER, "training.steps=3000", fast=False, timeout=1200)
    final = held_out_curves(tmp_path)
    model = np.asarray(final["model"])
    assert model[10] < 0.15 * model[0]  # measured: 0.059 vs 1.05


@pytest.mark.slow
def test_tokens_experiment_learns_in_context(tmp_path):
    """experiment=tokens (the seed's one-token-per-value format, d = 3; ~7 min): issue 14's goal, error at
    k = 2d below 0.2 x the k = 0 error, the k = 0 error within 5% of the prior's."""
    train_cli(tmp_path, "experiment=tokens", fast=False, timeout=1800)
    curves = {k: np.asarray(v) for k, v in held_out_curves(tmp_path).items() if k != "step"}
    assert curves["model"][0] == pytest.approx(curves["bayes"][0], rel=0.05)  # measured: 1.111 vs 1.108 (seed 0)
    assert curves["model"][6] < 0.2 * curves["model"][0]  # measured: 0.024 vs 1.111


@pytest.mark.slow
def test_an_installed_package_trains_analyzes_and_sweeps_from_another_directory(tmp_path):
    """`pip install .` (not editable): the wheel holds the commands, the configs and the sweep YAMLs."""
    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(ROOT)]
    subprocess.run(install, check=True, capture_output=True, timeout=600)
    env = no_key_env(PYTHONPATH=str(site))
    where = subprocess.run([sys.executable, "-c", "import icl_lr; print(icl_lr.__file__)"], env=env,
                           cwd=tmp_path, capture_output=True, text=True, check=True)  # fmt: skip
    assert where.stdout.startswith(str(site))  # the installed copy, not the checkout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = lambda *argv: subprocess.run(argv, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    trained = run(str(site / "bin" / "icl-lr-train"), *FAST, "training.steps=20", "hydra.run.dir=run")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads((elsewhere / "run" / "summary.json").read_text())["step"] == 20
    analyzed = run(str(site / "bin" / "icl-lr-analyze"), "run", "--no-plots")
    assert analyzed.returncode == 0 and (elsewhere / "analysis" / "runs.csv").exists(), analyzed.stderr[-3000:]
    sweep = site / "icl_lr" / "sweeps" / "model_size.yaml"
    swept = run(str(site / "bin" / "icl-lr-sweep"), str(sweep), "--count", "1", "--", *FAST, "training.steps=20")
    assert swept.returncode == 0, swept.stderr[-3000:]
