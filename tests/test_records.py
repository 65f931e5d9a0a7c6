"""Records that stay true: no run relabelled, merged or double-counted, through `python train.py` and
`analyze.py` as a user runs them, W&B's offline files read with W&B's own reader."""

import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest

from helpers import (
    FAST,
    ROOT,
    RunFile,
    assert_trees_equal,
    final_state,
    no_key_env,
    output,
    run_id_of,
    start,
    train_cli,
)
from icl_lr.analysis import sources
from icl_lr.cli import analyze
from icl_lr.records.run_dir import RunDirLock
from icl_lr.records.tracking import read_jsonl
from icl_lr.train.loop import train

NO_WANDB = "wandb.mode=disabled"


def error_lines(result) -> list:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    return [line for line in output.splitlines() if "][ERROR] - " in line]


def wandb_runs(folder: Path) -> list:
    """The offline W&B runs under `folder`, oldest first (a folder W&B has made but not yet written its log into
    is not one yet)."""
    folders = sorted(folder.rglob("offline-run-*"), key=lambda d: d.name)
    return [RunFile.load(d) for d in folders if d.is_dir() and any(d.glob("*.wandb"))]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 40-step run, tracked offline."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    train_cli(run_dir, wandb=True)
    return run_dir


def copy_of(run_dir: Path, to: Path) -> Path:
    """`cp -a`: a copy keeps the files, the identity file included, but not the dir's inode."""
    return Path(shutil.copytree(run_dir, to, symlinks=True))


def test_a_misspelled_experiment_is_refused_before_anything_runs(tmp_path):
    for flags in ([], ["--cfg", "job"]):
        command = [sys.executable, str(ROOT / "train.py"), *flags, *FAST, "experiment=garg2O22"]
        result = subprocess.run(
            command + [f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True
        )
        assert result.returncode != 0 and "Could not find 'experiment/garg2O22'" in output(result)
        assert "garg2022" in output(result)  # the options it could have been
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_lost_summary_is_rebuilt_whole_from_the_records(finished, tmp_path, damage):
    run_dir = copy_of(finished, tmp_path / "run")
    original = json.loads((run_dir / "summary.json").read_text())
    if damage == "deleted":
        (run_dir / "summary.json").unlink()
    else:
        (run_dir / "summary.json").write_text(json.dumps(original)[:50])
    train_cli(run_dir, NO_WANDB)
    rebuilt = json.loads((run_dir / "summary.json").read_text())
    timings = {"wall_seconds", "compile_seconds", "ood_seconds"}  # facts of a start, not of the records
    assert {k: v for k, v in rebuilt.items() if k not in timings} == {
        k: v for k, v in original.items() if k not in timings
    }
    assert len(rebuilt) >= len(original) - 1 > 30


def test_results_without_checkpoints_are_never_relabelled(finished, tmp_path):
    run_dir = copy_of(finished, tmp_path / "run")
    shutil.rmtree(run_dir / "checkpoints")
    before = {p: p.read_bytes() for p in (run_dir / "run_config.json", run_dir / ".hydra" / "config.yaml")}
    (line,) = error_lines(start(run_dir, "data.noise_std=0.5"))
    assert "holds the results of a run (data.noise_std: 0.0 -> 0.5) but no checkpoints" in line
    (line,) = error_lines(start(run_dir, "training.steps=60"))  # nothing to extend them from either
    assert "holds the results of a run (training.steps: 40 -> 60)" in line
    assert {p: p.read_bytes() for p in before} == before
    assert "already finished at step 40" in output(train_cli(run_dir))  # the same config: its results stand


def test_a_restart_without_checkpoint_starts_a_new_wandb_run(tmp_path):
    """Killed (SIGKILL) after W&B received some history but before the first checkpoint, then started
    with another config: two W&B runs, each with its own config and only its own history."""
    run_dir = tmp_path / "run"
    slow = ["training.steps=50000", "training.checkpoint_every=50000", "training.eval_every=50000"]
    command = [sys.executable, str(ROOT / "train.py"), *FAST, *slow, f"hydra.run.dir={run_dir}"]
    process = subprocess.Popen(command, cwd=ROOT, env=no_key_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not any(
        "train/loss" in row for run in wandb_runs(run_dir / "wandb") for row in run.history
    ):  # W&B has written some of its history
        time.sleep(0.5)
    process.kill()
    process.wait()
    killed_id = run_id_of(run_dir)
    result = train_cli(run_dir, "data.prior_scale=2.0", wandb=True)
    assert "left no checkpoint: training starts over as W&B run" in output(result)
    killed, restarted = wandb_runs(run_dir / "wandb")
    assert killed.run_id == killed_id != restarted.run_id == run_id_of(run_dir)
    assert killed.config_value("data.prior_scale") == 1.0 and restarted.config_value("data.prior_scale") == 2.0
    assert [row["step"] for row in restarted.history if "train/loss" in row] == [10, 20, 30, 40]
    assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in r] == [10, 20, 30, 40]


@pytest.fixture(scope="module")
def copies(finished, tmp_path_factory):
    """`cp -a D C/orig; cp -a D C/longer`, then `longer` extended to 100 steps."""
    folder = tmp_path_factory.mktemp("copies")
    copy_of(finished, folder / "orig")
    longer = copy_of(finished, folder / "longer")
    result = train_cli(longer, "training.steps=100", wandb=True)
    return folder, output(result)


def test_a_copied_run_dir_gets_its_own_wandb_run(finished, copies):
    folder, log = copies
    assert f"is a copy of {finished.resolve()} (W&B run {run_id_of(finished)})" in log
    identity = json.loads((folder / "longer" / "identity.json").read_text())
    assert identity["copied_from"] == {"path": str(finished.resolve()), "wandb_run_id": run_id_of(finished)}
    assert identity["path"] == str((folder / "longer").resolve()) and identity["wandb_run_id"] != run_id_of(finished)
    assert run_id_of(folder / "orig") == run_id_of(finished)  # never started: the original's id
    resumed = wandb_runs(folder / "longer" / "wandb")[-1]
    assert resumed.run_id == identity["wandb_run_id"] and resumed.config_value("training.steps") == 100


def test_analyze_counts_each_run_once_by_what_it_ran(copies, tmp_path):
    folder, _ = copies
    out = tmp_path / "analysis"
    assert analyze.main([str(folder), "--out", str(out), "--no-plots"]) == 0
    runs = pd.read_csv(out / "runs.csv").set_index("run_id")
    assert sorted(runs["training.steps"]) == [40, 100]  # the extended run's latest config, not its first
    assert runs.loc[run_id_of(folder / "longer"), "step"] == 100
    assert set(pd.read_csv(out / "curve_aggregate.csv").n) == {1}  # was n = 4 for 2 runs
    history = pd.read_csv(out / "history.csv")
    assert not history.duplicated(["run_id", "step", "metric"]).any()
    assert history.groupby("run_id").step.max().to_dict() == {run_id_of(folder / "orig"): 40, runs.index[0]: 100}
    out_files = tmp_path / "from_wandb"
    assert analyze.main([str(folder), "--wandb-files", "--out", str(out_files), "--no-plots"]) == 0
    assert sorted(pd.read_csv(out_files / "runs.csv")["training.steps"]) == [40, 100]  # was 1 run


def test_a_copy_never_started_counts_once_and_is_named(finished, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    for name in ("a", "b"):
        copy_of(finished, tmp_path / "runs" / name)
    out = tmp_path / "analysis"
    assert analyze.main([str(tmp_path / "runs"), "--out", str(out), "--no-plots"]) == 0
    assert len(pd.read_csv(out / "runs.csv")) == 1
    assert f"run {run_id_of(finished)} is in 2 run dirs: counted once" in caplog.text


@pytest.mark.slow  # the suite's cover: the copied run dir above
def test_a_moved_run_dir_keeps_its_wandb_run(finished, tmp_path):
    run_dir = copy_of(finished, tmp_path / "here")
    train_cli(run_dir, "training.steps=60", NO_WANDB)  # its identity now names this place
    moved = run_dir.rename(tmp_path / "there")
    result = train_cli(moved, "training.steps=80", NO_WANDB)
    assert "was moved here from" in output(result) and run_id_of(moved) == run_id_of(tmp_path / "there")
    assert json.loads((moved / "identity.json").read_text())["path"] == str(moved.resolve())


def test_an_extension_keeps_the_schedule_horizon_and_records_its_latest_start(finished, tmp_path):
    run_dir = copy_of(finished, tmp_path / "run")
    result = train_cli(run_dir, "training.steps=100", "eval.n_prompts=32", NO_WANDB)
    assert "the cosine schedule keeps its horizon (training.decay_steps=40): the learning rate stays" in output(result)
    lrs = {r["step"]: r["train/lr"] for r in read_jsonl(run_dir / "metrics.jsonl") if "train/lr" in r}
    floor = 0.1 * 1e-3  # min_lr_ratio x learning_rate
    assert lrs[40] == pytest.approx(floor, rel=0.02) and all(lrs[s] == pytest.approx(floor) for s in (50, 70, 100))
    record = json.loads((run_dir / "run_config.json").read_text())
    assert (record["training.steps"], record["training.decay_steps"], record["eval.n_prompts"]) == (100, 40, 32)
    assert "steps: 100" in (run_dir / ".hydra" / "config.yaml").read_text()  # .hydra/ is the latest start's
    assert len(list((run_dir / ".hydra" / "attempts").iterdir())) == 2  # and each start's own stays


@pytest.mark.slow  # the suite's cover: run_dir_v1 below
def test_a_run_dir_of_the_older_layout_resumes(finished, tmp_path):
    """Before identity.json and run_config.json beside the records: wandb_run_id, checkpoints/run_config.json."""
    run_dir = copy_of(finished, tmp_path / "run")
    run_id = run_id_of(run_dir)
    (run_dir / "identity.json").unlink()
    (run_dir / "wandb_run_id").write_text(run_id)
    record = json.loads((run_dir / "run_config.json").read_text())
    del record["training.decay_steps"]
    (run_dir / "run_config.json").unlink()
    (run_dir / "checkpoints" / "run_config.json").write_text(json.dumps(record))
    train_cli(run_dir, "training.steps=60", wandb=True)
    assert run_id_of(run_dir) == run_id and not (run_dir / "wandb_run_id").exists()
    assert {r.run_id for r in wandb_runs(run_dir / "wandb")} == {run_id}
    assert json.loads((run_dir / "run_config.json").read_text())["training.decay_steps"] == 40


def test_wandb_run_id_in_the_shell_is_not_every_runs_id(tmp_path):
    command = [sys.executable, str(ROOT / "train.py"), "-m", *FAST, "training.steps=20", "seed=0,1"]
    command += [f"hydra.sweep.dir={tmp_path}"]
    env = no_key_env(WANDB_RUN_ID="shared1")
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WANDB_RUN_ID=shared1 is set without a W&B agent's parameter file for it" in output(result)
    ids = [run.run_id for job in ("0", "1") for run in wandb_runs(tmp_path / job / "wandb")]
    assert len(set(ids)) == 2 and "shared1" not in ids


CONSTANT = ["training.schedule=constant", "training.steps=1000", "training.log_every=10"]
CONSTANT += ["training.eval_every=500", "training.checkpoint_every=500"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The 1000-step run, never stopped."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    train_cli(run_dir, *CONSTANT, NO_WANDB)
    return run_dir


@pytest.mark.parametrize(
    "signum, exit_code, preempting",
    [(signal.SIGTERM, 143, True), pytest.param(signal.SIGINT, 130, False, marks=pytest.mark.slow)],
    ids=["TERM", "INT"],
)
def test_a_stop_signal_checkpoints_tells_wandb_and_releases_the_lock(
    fast_config, straight, tmp_path, signum, exit_code, preempting
):
    run_dir = tmp_path / "stopped"
    command = [sys.executable, str(ROOT / "train.py"), *FAST, *CONSTANT, f"hydra.run.dir={run_dir}"]
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal: SIGINT not ignored
    try:
        process = subprocess.Popen(
            command, cwd=ROOT, env=no_key_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.time() + 120
    while not read_jsonl(run_dir / "metrics.jsonl") and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signum)
    printed, _ = process.communicate(timeout=120)
    assert process.returncode == exit_code and "Traceback" not in printed, printed[-3000:]
    (line,) = [line for line in printed.splitlines() if "][ERROR] - " in line]
    step = int(line.split(" at step ")[1].split(":")[0])
    assert 0 < step < 1000 and ("preempted: SIGTERM at step" if preempting else "interrupted at step") in line
    assert [p.name for p in (run_dir / "checkpoints" / "latest").iterdir()] == [str(step)]
    assert not (run_dir / "run.lock").exists()
    (stopped,) = wandb_runs(run_dir / "wandb")
    assert stopped.exit_code == (143 if preempting else 1)  # finished, never left running
    marked = any(r["type"] == "preempting" for r in sources.read_wandb_records(stopped.path))  # mark_preempting
    assert marked == preempting
    assert f"resumed at step {step} of 1000" in output(train_cli(run_dir, *CONSTANT, wandb=True))  # the same W&B run
    cfg = fast_config(*CONSTANT)
    assert_trees_equal(final_state(cfg, run_dir), final_state(cfg, straight))  # as if never stopped
    assert {r.run_id for r in wandb_runs(run_dir / "wandb")} == {run_id_of(run_dir)}
    steps = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 1000  # nothing counted twice


@pytest.mark.slow  # the suite's cover: SIGTERM to the run's process (above); SLURM's own: the slurm tier
def test_a_sigterm_to_every_process_of_the_run_as_slurm_sends_it_stops_cleanly(fast_config, straight, tmp_path):
    """SLURM signals W&B's service with the run, and it shuts down at once: the run checkpoints, says what W&B
    lost in one line, exits 143 without a traceback, and resumes to the unstopped run's parameters."""
    import psutil

    run_dir = tmp_path / "stopped"
    command = [sys.executable, str(ROOT / "train.py"), *FAST, *CONSTANT, f"hydra.run.dir={run_dir}"]
    process = subprocess.Popen(command, cwd=ROOT, env=no_key_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)  # fmt: skip
    deadline = time.time() + 120
    while not read_jsonl(run_dir / "metrics.jsonl") and time.time() < deadline:
        time.sleep(0.05)
    everyone = [process.pid, *(child.pid for child in psutil.Process(process.pid).children(recursive=True))]
    assert len(everyone) > 1  # W&B's service among them
    for pid in everyone:
        psutil.Process(pid).send_signal(signal.SIGTERM)
    printed, _ = process.communicate(timeout=120)
    assert process.returncode == 143 and "Traceback" not in printed, printed[-3000:]
    assert "W&B's service is gone" in printed and "preempted: SIGTERM at step" in printed
    step = int(printed.split("preempted: SIGTERM at step ")[1].split(":")[0])
    assert f"resumed at step {step} of 1000" in output(train_cli(run_dir, *CONSTANT, wandb=True))
    cfg = fast_config(*CONSTANT)
    assert_trees_equal(final_state(cfg, run_dir), final_state(cfg, straight))


@pytest.mark.slow  # the suite's cover: test_robustness.py's killed writer's lock
def test_a_lock_from_another_host_is_taken_over_only_when_said(finished, tmp_path):
    run_dir = copy_of(finished, tmp_path / "run")
    (run_dir / "run.lock").write_text("4242 node-elsewhere 777\n")
    (line,) = error_lines(start(run_dir, "training.steps=60", NO_WANDB))
    assert "locked by process 4242 on host node-elsewhere (SLURM job 777)" in line
    assert "ICL_LR_TAKE_OVER_LOCK=1" in line
    requeued = start(run_dir, "training.steps=60", NO_WANDB, env=no_key_env(SLURM_JOB_ID="777"))
    assert requeued.returncode == 0 and "SLURM job 777 requeued" in output(requeued)
    (run_dir / "run.lock").write_text("4242 node-elsewhere 777\n")
    forced = start(run_dir, "training.steps=80", NO_WANDB, env=no_key_env(ICL_LR_TAKE_OVER_LOCK="1"))
    assert forced.returncode == 0 and "ICL_LR_TAKE_OVER_LOCK=1" in output(forced)
    assert RunDirLock(run_dir).holder()[0] is None  # released at exit


FIXTURE_RUN = ["model.n_embd=16", "training.steps=40", "training.schedule=constant", NO_WANDB]
FIXTURES = {  # a run dir of 20 steps written by an earlier version: the overrides that resume it to 40
    # before the layered package: identity.json and the config record beside the records (its
    # checkpoints/run_config.json, no W&B id)
    "run_dir_v1": FIXTURE_RUN,
    # before each component owned its config: an LSTM on sparse prompts whose record holds every family's
    # and every task's keys (model.n_head, data.tree_depth, ...)
    "run_dir_v2": [*FIXTURE_RUN, "model=lstm", "data.task=sparse_linear"],
}


@pytest.mark.parametrize(
    "fixture",
    [pytest.param("run_dir_v1", marks=pytest.mark.slow), "run_dir_v2"],  # the suite's cover: v2, also an earlier dir
)
def test_a_run_dir_written_by_an_earlier_version_resumes(fixture, fast_config, tmp_path):
    """tests/fixtures/<fixture> resumes to 40 steps and ends where a run started now ends."""
    overrides = FIXTURES[fixture]
    run_dir = copy_of(ROOT / "tests" / "fixtures" / fixture, tmp_path / "old")
    result = train_cli(run_dir, *overrides)
    assert "resumed at step 20 of 40" in output(result)
    straight, cfg = tmp_path / "straight", fast_config(*overrides)
    train(cfg, straight)  # in this process: the command resumes bit for bit to train()'s state (test_train.py)
    # Its first 20 steps were computed on another machine, whose CPU kernels round differently (1e-9 apart
    # here): equal to 1e-4 of each leaf's scale, not bit for bit (a resume on one machine is, above).
    for resumed, fresh in zip(*(jax.tree.leaves(final_state(cfg, d)) for d in (run_dir, straight)), strict=True):
        fresh = np.asarray(fresh)
        np.testing.assert_allclose(np.asarray(resumed), fresh, rtol=1e-4, atol=1e-4 * np.abs(fresh).max())
    assert json.loads((run_dir / "summary.json").read_text())["step"] == 40
    assert json.loads((run_dir / "run_config.json").read_text())["model.n_embd"] == 16
    assert json.loads((run_dir / "components.json").read_text())["changes"] == []  # recorded from then on
