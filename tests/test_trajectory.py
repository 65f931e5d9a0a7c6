"""training.trajectory: checkpoints at log-spaced steps, kept and evaluated, through train.py as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import (
    FAST,
    ROOT,
    RunFile,
    assert_trees_equal,
    final_state,
    held_out_curves,
    no_key_env,
    run_config,
    train_cli,
)
from icl_lr.analysis import sources
from icl_lr.cli import analyze
from icl_lr.fields import ConfigError
from icl_lr.records.checkpoint import restore_params
from icl_lr.records.schema import HELD_OUT, set_of
from icl_lr.records.tracking import read_jsonl
from icl_lr.run.evaluation import content_hash
from icl_lr.train import phases
from icl_lr.train.trajectory import trajectory_steps


@pytest.mark.unit
def test_trajectory_steps_are_log_spaced_dispatch_ends_from_the_first_to_the_last():
    assert trajectory_steps(12000, 10, 8) == (10, 30, 80, 210, 580, 1590, 4360, 12000)
    assert trajectory_steps(40, 10, 3) == (10, 20, 40) and trajectory_steps(45, 10, 5) == (10, 20, 30, 40, 45)
    assert trajectory_steps(40, 10, 0) == () and trajectory_steps(40, 10, 1) == (40,)
    steps = trajectory_steps(100_000, 1, 50)
    assert len(set(steps)) == 50 and steps[0] == 1 and steps[-1] == 100_000
    ratios = np.diff(np.log(steps[10:]))  # past the first integers, log-spaced
    assert ratios.max() / ratios.min() < 1.5
    with pytest.raises(ConfigError, match=r"training.trajectory \(5\) must be at most the run's dispatches \(4"):
        run_config(*FAST, "training.trajectory=5")
    with pytest.raises(ConfigError, match="training.trajectory must be 0 .off. or in"):
        run_config(*FAST, "training.trajectory=-1")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A FAST run with a trajectory of 3 (steps 10, 20, 40), its periodic log, checkpoint and eval at 40 only."""
    run_dir = tmp_path_factory.mktemp("trajectory") / "run"
    periodic = ("training.log_every=40", "training.checkpoint_every=40", "training.eval_every=40")
    train_cli(run_dir, "training.trajectory=3", *periodic, wandb=True)
    return run_dir


def test_a_trajectory_keeps_a_checkpoint_at_each_of_its_steps_and_evaluates_it(run_dir):
    kept = sorted(int(p.name) for p in (run_dir / "checkpoints" / "trajectory").iterdir())
    assert kept == [10, 20, 40]
    evaluated = [r["step"] for r in read_jsonl(run_dir / "curves.jsonl") if set_of(r) == HELD_OUT]
    assert evaluated == [10, 20, 40]
    logged = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in r]
    assert {10, 20, 40} <= set(logged)  # each trajectory step's training loss beside its eval
    cfg = run_config(*FAST, "training.trajectory=3")
    last = final_state(cfg, run_dir)
    assert_trees_equal(restore_params(run_dir / "checkpoints" / "trajectory" / "40", last), last.params)
    assert held_out_curves(run_dir)["step"] == 40
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    aliases = [a["aliases"] for a in RunFile.load(offline).artifacts if a["type"] == "model"]
    for step in (10, 20, 40):
        assert any({f"step-{step}", f"trajectory-{step}"} <= set(names) for names in aliases), aliases


def test_the_summary_and_w_and_b_carry_the_phases_analyze_reads_from_the_curves(run_dir):
    found = phases.phases(phases.held_out_by_step(run_dir))
    assert [p.step for p in found] == [10, 20, 40] and found[-1].measure == phases.ERROR_GAP
    summary = json.loads((run_dir / "summary.json").read_text())
    wanted = {
        "phases/closest": found[-1].closest,
        "phases/measure": "error_gap",
        "phases/changes": [list(c) for c in phases.changes(found)],
    }
    assert {k: summary[k] for k in wanted} == wanted
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    w = RunFile.load(offline)
    assert {k: w.summary[k] for k in wanted} == wanted
    (row,) = [r for r in w.history if phases.PHASES_TABLE + ".path" in r]  # one table, at the last step
    assert row["step"] == 40 and row[phases.PHASES_TABLE + ".nrows"] == 3


def test_the_eval_command_scores_every_kept_checkpoint_by_step_and_goes_on_where_it_stopped(run_dir, tmp_path):
    out = tmp_path / "eval"
    command = [sys.executable, str(ROOT / "eval.py"), str(run_dir), "--trajectory", "data.n_points=6", "--out"]
    first = subprocess.run([*command, str(out)], cwd=ROOT, env=no_key_env(), capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    scored = [(r["step"], len(r["model"])) for r in read_jsonl(out / "curves.jsonl") if set_of(r) == HELD_OUT]
    assert scored == [(10, 6), (20, 6), (40, 6)]
    used = json.loads((out / "model.json").read_text())
    assert [e["step"] for e in used["trajectory"]] == [10, 20, 40]
    assert all(e["sha256"] == content_hash(Path(e["step_dir"])) for e in used["trajectory"])
    assert "checkpoints/trajectory/10" in used["trajectory"][0]["step_dir"]
    ended = json.loads((out / "summary.json").read_text())  # the checkpoints' phases, as a trajectory run's
    assert ended["phases/measure"] == "error_gap" and ended["phases/closest"] in {"bayes", "least_squares", "averaging",
                                                                                   "3nn"}  # fmt: skip
    assert all(step in (20, 40) for step, _, _ in ended["phases/changes"])
    records = {name: read_jsonl(out / name) for name in ("metrics.jsonl", "curves.jsonl")}
    for name, kept in records.items():  # stopped after step 20 was scored, cut short inside step 40's records
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in kept if r["step"] <= 20) + '{"step": 40')
    again = subprocess.run([*command, str(out)], cwd=ROOT, env=no_key_env(), capture_output=True, text=True)
    assert again.returncode == 0 and "going on with the trajectory eval" in again.stdout + again.stderr
    assert "scoring" in again.stderr and "step 10," not in again.stderr  # only step 40 scored again
    assert {name: read_jsonl(out / name) for name in records} == records
    other = subprocess.run([*command[:-2], "data.n_points=5", "--out", str(out)], cwd=ROOT, env=no_key_env(),
                           capture_output=True, text=True)  # fmt: skip
    assert other.returncode == 2 and "holds a trajectory eval on another config (differs in data.n_points" in (
        other.stdout + other.stderr
    )
    table = sources.load_local([out]).history  # analyze reads it as a run: its history by step
    assert sorted(table["step"].unique().tolist())[-3:] == [10, 20, 40]
    assert analyze.main([str(out), "--out", str(tmp_path / "analysis")]) == 0  # and its phases, as a run's
    assert pd.read_csv(tmp_path / "analysis" / "phases.csv").step.tolist() == [10, 20, 40]
