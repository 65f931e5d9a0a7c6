"""training.trajectory: checkpoints at log-spaced steps, kept and evaluated, through train.py as a user runs it."""

import numpy as np
import pytest

from helpers import FAST, RunFile, assert_trees_equal, final_state, held_out_curves, run_config, train_cli
from icl_lr.fields import ConfigError
from icl_lr.records.checkpoint import restore_params
from icl_lr.records.schema import HELD_OUT, set_of
from icl_lr.records.tracking import read_jsonl
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


def test_a_trajectory_keeps_a_checkpoint_at_each_of_its_steps_and_evaluates_it(tmp_path):
    run_dir = tmp_path / "run"
    train_cli(run_dir, "training.trajectory=3", "training.checkpoint_every=40", "training.eval_every=40")
    kept = sorted(int(p.name) for p in (run_dir / "checkpoints" / "trajectory").iterdir())
    assert kept == [10, 20, 40]
    evaluated = [r["step"] for r in read_jsonl(run_dir / "curves.jsonl") if set_of(r) == HELD_OUT]
    assert evaluated == [10, 20, 40]
    cfg = run_config(*FAST, "training.trajectory=3")
    last = final_state(cfg, run_dir)
    assert_trees_equal(restore_params(run_dir / "checkpoints" / "trajectory" / "40", last), last.params)
    assert held_out_curves(run_dir)["step"] == 40
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    aliases = [a["aliases"] for a in RunFile.load(offline).artifacts if a["type"] == "model"]
    for step in (10, 20, 40):
        assert any({f"step-{step}", f"trajectory-{step}"} <= set(names) for names in aliases), aliases
