"""Sweep YAMLs: valid for the W&B sweeps engine, expanded by wandb's agent code into runnable Hydra runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import sweeps
from helpers import FAST, ROOT, RunFile, no_key_env
from icl_lr.sweep import expand_command, load_sweep, run_sweep

SWEEP_FILES = sorted((ROOT / "sweeps").glob("*.yaml"))


def with_absolute_program(path: Path, tmp_path: Path) -> Path:
    """A copy of a sweep YAML that runs the project's train.py from any working directory."""
    config = yaml.safe_load(path.read_text())
    config["program"] = str(ROOT / config["program"])
    copy = tmp_path / path.name
    copy.write_text(yaml.safe_dump(config))
    return copy


def test_sweep_files_cover_model_size_noise_prior_and_a_bayes_search():
    configs = {path.stem: load_sweep(path) for path in SWEEP_FILES}
    assert {"model_size", "noise_prior", "lr_bayes"} <= set(configs)
    assert configs["lr_bayes"]["method"] == "bayes" and configs["lr_bayes"]["early_terminate"]["type"] == "hyperband"
    assert set(configs["noise_prior"]["parameters"]) >= {
        "data.noise_std",
        "data.noise_std_choices",
        "data.prior_scale",
        "data.task_pool_size",
    }


def test_an_invalid_sweep_is_refused_with_the_engine_reasons(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"program": "train.py", "method": "grd", "parameters": {"seed": {"values": [0]}}}))
    with pytest.raises(ValueError, match="bad.yaml: invalid sweep config: .*grd"):
        load_sweep(bad)


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_agent_command_reaches_hydra_as_overrides(path):
    sweep = load_sweep(path)
    proposal = sweeps.next_run(sweep, [])
    params = {k: v["value"] for k, v in proposal.config.items()}
    argv = expand_command(sweep, params, {"WANDB_SWEEP_ID": "sw1", "WANDB_RUN_ID": "run1"})
    assert argv[:3] == ["/usr/bin/env", sys.executable, "train.py"]
    assert sorted(argv[3:-1]) == sorted(f"{k}={v}" for k, v in params.items())  # no "--" prefixes for Hydra
    assert argv[-1] == "hydra.run.dir=outputs/sweep-sw1/run1"  # one output dir per run, not Hydra's timestamps


def test_an_expanded_command_trains(tmp_path):
    sweep = load_sweep(with_absolute_program(ROOT / "sweeps" / "model_size.yaml", tmp_path))
    proposal = sweeps.next_run(sweep, [])  # grid: model=gpt2_tiny, seed=0
    params = {k: v["value"] for k, v in proposal.config.items()}
    argv = expand_command(sweep, params, {"WANDB_SWEEP_ID": "sw1", "WANDB_RUN_ID": "run1"})
    fast = [o for o in FAST if not o.startswith("model.")] + ["training.steps=20"]
    env = no_key_env(WANDB_RUN_ID="run1")
    result = subprocess.run(argv + fast, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "outputs" / "sweep-sw1" / "run1"
    assert json.loads((run_dir / "summary.json").read_text())["step"] == 20
    record = RunFile.load(next((run_dir / "wandb").glob("offline-run-*")))
    assert record.run_id == "run1"
    assert (
        record.config_value("model.n_layer") == 3 and record.config_value("seed") == params["seed"]
    )  # gpt2_tiny: 3 layers


def test_local_sweep_runs_and_records_offline_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for key, value in no_key_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    path = with_absolute_program(ROOT / "sweeps" / "noise_prior.yaml", tmp_path)
    results = run_sweep(path, count=2, overrides=[*FAST, "training.steps=20"], sweep_id="local-test")
    assert len(results) == 2 and len({r["run_id"] for r in results}) == 2
    for result in results:
        assert result["exit_code"] == 0
        run_dir = tmp_path / "outputs" / "sweep-local-test" / result["run_id"]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert result["eval/excess/mean"] == summary["eval/excess/mean"]  # the metric the engine saw
        record = RunFile.load(next((run_dir / "wandb").glob("offline-run-*")))
        assert (record.run_id, record.group) == (result["run_id"], "local-test")
        assert record.config_value("data.noise_std") == result["data.noise_std"]
        assert record.config_value("data.prior_scale") == result["data.prior_scale"]
        pool = result["data.task_pool_size"]
        assert record.config_value("data.task_pool_size") == (None if pool == "null" else pool)
