"""What a run directory survives: the list of ways a user (or a crash) can misuse one, each refused
in one line or repaired, never a corrupted record. Each test reproduces the failure it guards
against, through `python train.py` as a user starts it."""

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import analyze
from helpers import FAST, ROOT, RunFile, assert_trees_equal, final_state, no_key_env, run_config, train_cli
from icl_lr.config import ConfigError
from icl_lr.run_dir import RunDirLock, wandb_run_id


def start(run_dir, *overrides, env=None):
    """`python train.py FAST overrides` on run_dir, whatever its exit code."""
    command = [sys.executable, str(ROOT / "train.py"), *FAST, *overrides, f"hydra.run.dir={run_dir}"]
    return subprocess.run(command, cwd=ROOT, env=env or no_key_env(), capture_output=True, text=True, timeout=300)


def one_error_line(result) -> str:
    """The refused start's output: exit code 2 and exactly one error line, no traceback."""
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if "][ERROR] - " in line]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in output, output[-2000:]
    return errors[0]


def snapshot(run_dir) -> dict:
    """Every file of the run's record (not W&B's, not the per-start config copies) and its bytes."""
    skip = ("wandb", "attempts", "train.log")
    files = [p for p in run_dir.rglob("*") if p.is_file() and not any(part in skip for part in p.parts)]
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in files}


CONSTANT = ["training.schedule=constant"]  # so a run resumed from step 20 equals one that never stopped
NO_WANDB = "wandb.mode=disabled"  # where W&B is not under test: a faster start


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 40-step run, tracked offline."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    train_cli(run_dir, *CONSTANT)
    return run_dir


@pytest.fixture
def finished_run(trained, tmp_path):
    """A copy of `trained` to damage or extend."""
    return Path(shutil.copytree(trained, tmp_path / "run", symlinks=True))


def test_a_finished_run_started_again_changes_nothing(finished_run):
    before = snapshot(finished_run)
    result = train_cli(finished_run, *CONSTANT)
    assert "already finished at step 40" in result.stdout + result.stderr
    assert snapshot(finished_run) == before  # summary.json keeps its 24 keys, curves and checkpoints intact
    assert len(list((finished_run / "wandb").glob("offline-run-*"))) == 1  # no second W&B run


def test_a_finished_run_extends_when_training_steps_grows_and_cadences_may_change(finished_run):
    train_cli(finished_run, *CONSTANT, "training.steps=60", "training.log_every=20", "eval.batch_size=16", NO_WANDB)
    summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["step"] == 60 and "eval/excess/mean" in summary


@pytest.mark.parametrize("added", [["model.embedding_std"], ["data.bin_scheme", "data.token_value_embedding"]])
def test_a_run_dir_from_before_a_key_existed_resumes(finished_run, added):
    """A record without a key added since counts as its default (the old behaviour), or the key is free
    (model.embedding_std acts only at init, which the resume replaces)."""
    record_path = finished_run / "checkpoints" / "run_config.json"
    record = json.loads(record_path.read_text())
    for key in added:
        del record[key]
    record_path.write_text(json.dumps(record))
    train_cli(finished_run, *CONSTANT, "training.steps=60", NO_WANDB)
    assert json.loads((finished_run / "summary.json").read_text())["step"] == 60


@pytest.mark.parametrize(
    "overrides, named",
    [
        (["data.noise_std=0.5", "training.learning_rate=3e-3"], "data.noise_std: 0.0 -> 0.5, training.learning_rate"),
        (["model.n_embd=64"], "model.n_embd: 32 -> 64"),
        (["training.steps=20"], "training.steps (20) is below the run's 40"),
    ],
)
def test_a_resume_with_another_trajectory_is_refused_and_the_original_config_kept(finished_run, overrides, named):
    before = snapshot(finished_run)
    assert named in one_error_line(start(finished_run, *CONSTANT, *overrides))
    assert snapshot(finished_run) == before  # .hydra/config.yaml still holds the config the run trained with
    assert len(list((finished_run / ".hydra" / "attempts").iterdir())) == 2  # each start's own config is kept


def test_a_second_writer_is_refused(finished_run):
    before = snapshot(finished_run)
    with RunDirLock(finished_run):  # this test's process writes the run dir
        line = one_error_line(start(finished_run, *CONSTANT, "training.steps=60"))
    assert f"is in use by process {os.getpid()}" in line
    assert snapshot(finished_run) == before


def test_the_lock_of_a_killed_writer_is_taken_over_and_released_at_exit(finished_run):
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs, as a SIGKILLed run leaves behind
    (finished_run / "run.lock").write_text(f"{dead.pid} {socket.gethostname()}\n")
    (finished_run / "wandb_run_id").write_text("/")  # damaged too: no traceback even with W&B disabled
    result = train_cli(finished_run, *CONSTANT, "training.steps=60", NO_WANDB)
    output = result.stdout + result.stderr
    assert f"taking over the lock of process {dead.pid}" in output and "resumed at step 40 of 60" in output
    assert not (finished_run / "run.lock").exists()


@pytest.mark.parametrize("content", [b"", b"/", bytes(range(200, 256))], ids=["empty", "slash", "random-bytes"])
def test_a_damaged_wandb_id_file_is_recovered_from_the_wandb_folder(finished_run, content):
    run_id = (finished_run / "wandb_run_id").read_text()
    (finished_run / "wandb_run_id").write_bytes(content)
    assert wandb_run_id(finished_run) == run_id == (finished_run / "wandb_run_id").read_text()


def test_a_resumed_run_with_a_damaged_wandb_id_continues_its_wandb_run(finished_run):
    run_id = (finished_run / "wandb_run_id").read_text()
    (finished_run / "wandb_run_id").write_text("/")
    result = train_cli(finished_run, *CONSTANT, "training.steps=60")
    assert "not a W&B run id: recovered " + run_id in result.stdout + result.stderr
    assert {RunFile.load(d).run_id for d in (finished_run / "wandb").glob("offline-run-*")} == {run_id}


@pytest.fixture(scope="module")
def straight_60(tmp_path_factory):
    """The run `trained` would be if it had been started with 60 steps."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    train_cli(run_dir, *CONSTANT, "training.steps=60", NO_WANDB)
    return run_dir


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(fast_config, finished_run, straight_60, damage):
    for path in (p for p in (finished_run / "checkpoints" / "latest" / "40").rglob("*") if p.is_file()):
        if damage == "truncated":
            path.write_bytes(path.read_bytes()[:10])
        else:
            path.unlink()
    (finished_run / "checkpoints" / "latest" / "60.orbax-checkpoint-tmp-1").mkdir()  # a save cut short by a kill
    result = train_cli(finished_run, *CONSTANT, "training.steps=60", NO_WANDB)
    output = result.stdout + result.stderr
    assert "checkpoint step 40 is unreadable" in output and "resumed at step 20 of 60" in output
    assert "a checkpoint save that never completed" in output
    assert not list((finished_run / "checkpoints" / "latest").glob("*tmp*"))
    assert (finished_run / "checkpoints" / "damaged").is_dir()  # moved aside, not deleted
    cfg = fast_config(*CONSTANT, "training.steps=60")
    assert_trees_equal(final_state(cfg, finished_run), final_state(cfg, straight_60))


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.noise_std_choices=0.5", "data.noise_std_choices"),
        ("data.noise_std_choices=[a,b]", r"data.noise_std_choices\[0\]"),
        ("data.task_pool_size=abc", "data.task_pool_size"),
        ("data.task_pool_size=2.5", "data.task_pool_size"),
        ("seed=abc", "seed"),
        ("seed=1.5", "seed"),
        ("model.n_embd=0", "model.n_embd"),
        ("model.n_embd=-32", "model.n_embd"),
        ("training.min_lr_ratio=-1", "training.min_lr_ratio"),
        ("wandb.mode=bogus", "wandb.mode"),
        ("+trainng.steps=5", "trainng"),
        ("data.curriculum.dims_increment=-1", "data.curriculum.dims_increment"),
        ("init_from=/no/such/checkpoint", "init_from"),
    ],
)
def test_a_bad_value_is_refused_in_one_line_naming_the_key(tmp_path, override, key):
    if override.startswith("init_from"):  # checked with the run dir, before anything compiles
        assert "init_from: no checkpoint step directory" in one_error_line(start(tmp_path, override))
        assert not (tmp_path / "checkpoints" / "latest").exists()
        return
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run_config(*FAST, override)


def test_a_bad_value_from_the_command_line(tmp_path):
    started = time.perf_counter()
    assert "seed must be an integer, got 1.5" in one_error_line(start(tmp_path, "seed=1.5"))
    assert time.perf_counter() - started < 30 and not (tmp_path / "checkpoints").exists()


def test_a_warmup_longer_than_the_run_warns(caplog):
    run_config(*FAST, "training.warmup_steps=100")
    assert "training.warmup_steps (100) is longer than the run (40 steps)" in caplog.text


def test_analyze_lists_unfinished_runs_and_skips_damaged_ones(trained, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    runs = tmp_path / "runs"
    for name in ("done", "stale", "crashed", "damaged"):
        shutil.copytree(trained, runs / name, symlinks=True)
    (runs / "crashed" / "summary.json").unlink()  # killed before its end
    stale_metrics = runs / "stale" / "metrics.jsonl"  # resumed to 60, killed after step 50: summary.json is stale
    stale_metrics.write_text(stale_metrics.read_text() + json.dumps({"step": 50, "train/loss": 1.0}) + "\n")
    (runs / "damaged" / "summary.json").write_text('{"step": 2')  # truncated
    out = tmp_path / "analysis"
    assert analyze.main([str(runs), "--out", str(out), "--no-plots"]) == 0
    table = {os.path.basename(r["run_dir"]): r for r in pd.read_csv(out / "runs.csv").to_dict("records")}
    assert {k: v["status"] for k, v in table.items()} == {"done": "finished", "stale": "crashed", "crashed": "crashed"}
    assert pd.isna(table["stale"]["eval/excess/mean"])  # never its stale summary
    assert "skipping " + str(runs / "damaged") in caplog.text
    assert "stale: crashed at step 50" in caplog.text and "crashed: crashed at step 40" in caplog.text
