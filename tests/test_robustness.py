"""What a run directory survives: the list of ways a user (or a crash) can misuse one, each refused
in one line or repaired, never a corrupted record. Each test reproduces the failure it guards
against, through `python train.py` as a user starts it. tests/test_records.py holds the records' own
(identity, copies, extensions, SIGTERM), tests/test_sweeps.py the sweep runner's.

What each input gets (the red-team list):

Config keys, every one: a wrong type or an unknown key is one line naming it, before anything compiles.
  data.n_dims in [1, 4,096], n_points in [1, 65,536] (n_dims = 1 with the OOD suite runs, without half_subspace;
    eval.algorithms and eval.probes need n_points >= 2); w_components in [1, 64]; hidden_width in [1, 4096];
    sparse_linear past 5,000 supports (and a mixture holding it) scores without Bayes, its excess over the Lasso;
    prior_scale > 0; noise_std >= 0; noise_std_choices non-empty, > 0 when several; x_dist, noise_dist one of their
    names, x_df, noise_df > 2 and finite, x_cov_df null or >= n_dims, x_ar in (-1, 1), a non-Gaussian noise_dist on
    linear_regression with w_prior=gaussian only (tests/test_distributions.py); task_pool_size, train_size in [1,
    2**31), dMMSE left out past 2**20 tasks; vocab_size >= 2; bin_range > 0; bin_scheme one of its names; ce_weight,
    mean_loss_weight >= 0, not both 0; token_* with the tokens encoding only; curriculum starts within the task,
    increments >= 0, interval >= 1.
  model.* counts in [1, 65,536], n_loops and loss_loops in [1, 1,000]; n_embd divisible by n_head;
    n_positions enough for the sequence; dropout in [0, 1);
    embedding_std > 0.
  training.steps in [1, 2**31), batch_size in [1, 2**20], steps_per_dispatch in [1, 10,000] (one XLA call),
    max_to_keep in [1, 1,000]; log/eval/checkpoint_every
    multiples of steps_per_dispatch; learning_rate, grad_clip > 0; warmup_steps >= 0 (past the run: a
    warning); decay_steps null or >= 1, kept by an extension; min_lr_ratio in [0, 1]; weight_decay >= 0;
    schedule, precision one of their names; num_epochs >= 1 (<= steps without train_size); cpu_devices
    auto or >= 1 (a later multirun job asking another count: refused); distributed without a job to join.
  eval.n_prompts, batch_size in [1, 2**20]; eval.n_loops each in [1, 1,000]; eval.seed and seed in
    [0, 2**32) (PRNGKey repeats larger ones);
    eval.algorithm_steps each in [1, 1000] (time grows with it, and a running XLA call does not see SIGTERM).
  wandb.mode one of its names, WANDB_MODE wins (dryrun = offline, a bogus one: one line); init_timeout
    finite and > 0; init_from: a missing checkpoint or an unreadable artifact, one line.
  experiment=<no such file>: Hydra's error with the options; nothing runs, not even --cfg job.
  On a resume: cadences, eval.*, wandb.*, a larger training.steps, cpu_devices, compile_cache, distributed,
    init_from, model.embedding_std, model.scan, allow_code_change may change; any other key is refused naming it,
    old value and new.
Files of a run dir:
  .hydra/: the latest start's Hydra config; .hydra/attempts/<time>/ every start's, refused ones too.
  run_config.json: the latest start's resolved config; missing, truncated or not a record beside checkpoints
    or results: refused in one line (nothing else in the dir is trusted to say how it trained); older dirs'
    checkpoints/run_config.json is read. components.json: a plugin's code changed since the run started (a
    file's sha256, a package's version), refused in one line unless training.allow_code_change (recorded);
    another icl-lr version, a warning; unreadable, refused in one line; missing (older dirs), recorded anew.
    identity.json: damaged, its id recovered from W&B's
    folder names; in a copied dir, a new W&B id; in a moved dir, the same; older dirs' wandb_run_id read.
  summary.json: lost or damaged, rebuilt whole from metrics.jsonl by starting the run again; written
    whole or not at all. metrics.jsonl, curves.jsonl: a cut-short last line is left out (a warning); a damaged
    line before it, refused in one line before W&B starts (analyze skips the run, a warning); records past
    the restored step are dropped on a resume.
  checkpoints/latest/<step>: unreadable, moved to damaged/ and the one before used; another model's,
    refused; half-written ones removed; all deleted beside results, only the same config is accepted
    ("already finished"). checkpoints/best/<step>: unreadable metadata, moved to damaged/.
  run.lock: a live writer on this host, refused; a dead one's, taken over; another host's, refused unless
    it names this SLURM job (a requeue) or ICL_LR_TAKE_OVER_LOCK=1. wandb/: copied along, read once.
  A full disk: one line ("disk full"), and the same command resumes from the last checkpoint.
CLI flags:
  train.py: Hydra's own; an agent's --key=value read as key=value; -m gives each job its own W&B run
    (WANDB_RUN_ID and WANDB_SWEEP_ID are an agent's only beside its parameter file for that run id, and a
    run id goes to one run dir: exported in a shell they are ignored in one line, the run in no sweep).
  python -m icl_lr.run.sweep: a file that is not YAML, not a mapping or not a sweep (parameters not a mapping
    of specs included), one line; --sweep-id
    with results, refused unless --resume; two runners on one id, the second refused; --resume without
    results, one line; --workers < 1, one line; the overrides after -- kept in the "continue with" line.
  analyze.py: paths without run dirs, one line; --wandb without a key, one line; --sweep or --report
    without --wandb, a usage error; --where / --group-by an unknown column, one line; --report-spec FILE,
    the report as W&B would receive it; a run found in several dirs (copies), counted once and named; runs
    whose excesses are over different references (excess_over) ranked apart, a headline sentence each.
The eval command (python eval.py SOURCE [overrides] [--out DIR], --from-garg FOLDER):
  --out: inside a run or eval dir (the run dir itself included), or a dir already holding anything, refused in
    one line before anything loads, the run's files untouched; locked while it is written and checked for
    emptiness under the lock, so two evals on one --out never share it (one refused), at once or later. No
    --out: outputs/eval/<date>/<time>, made exclusively (<time>_<n> when two start in one second).
  SOURCE: a missing path, a run dir without a config record or a readable one, one line; a run being written
    before its first checkpoint, one line saying so; its checkpoint removed while read (a rotation, a new
    best), the run's newest read instead; a checkpoint with arrays overwritten or deleted, or metadata garbage,
    one line naming it (orbax's read errors held back). --from-garg: a folder without state.pt or config.yaml,
    a config not YAML or lacking keys, a task icl-lr has no faithful match for, a state.pt that is not a torch
    file or lacks keys, one line naming the file.
  Overrides: before and after the flags; a key of the model (model.*, data.n_dims, data.encoding), refused.
The local sweep runner's agents (--agent): a run's process gets SIGTERM when its agent or runner dies (SIGKILL
  too): it checkpoints and stops; the next agent takes the orphaned claim, waits for that process to end, and
  resumes the run or records it as finished, one result per run with its metric.
Signals:
  SIGINT: the run's W&B run finished failed, the lock released, exit 130; the sweep runner stops its
    runs and says how to go on. SIGTERM: a checkpoint at the current step, W&B marked preempting and
    finished with exit code 143, the lock released, exit 143 (before the loop: it stops at once); the
    sweep runner passes it to its runs. SIGKILL: the next start takes the lock over and resumes from the
    last checkpoint; without one, training starts over as a new W&B run.
"""

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

from helpers import (
    FAST,
    ROOT,
    RunFile,
    assert_trees_equal,
    final_state,
    no_key_env,
    output,
    run_config,
    run_id_of,
    start,
    train_cli,
)
from icl_lr.cli import analyze
from icl_lr.fields import ConfigError
from icl_lr.records.eval_dir import EvalDir, EvalDirError, default_eval_dir
from icl_lr.records.run_dir import RunDirLock, read_identity, step_dirs
from icl_lr.records.tracking import read_jsonl
from icl_lr.run.evaluation import content_hash, load_params, local_model
from icl_lr.train import setup
from icl_lr.train.optimizer import make_optimizer
from icl_lr.train.step import init_state


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
    train_cli(run_dir, *CONSTANT, wandb=True)
    return run_dir


@pytest.fixture
def finished_run(trained, tmp_path):
    """A copy of `trained` to damage or extend."""
    return Path(shutil.copytree(trained, tmp_path / "run", symlinks=True))


def test_a_finished_run_started_again_changes_nothing(finished_run):
    before = snapshot(finished_run)
    result = train_cli(finished_run, *CONSTANT, wandb=True)
    assert "already finished at step 40" in result.stdout + result.stderr
    assert snapshot(finished_run) == before  # summary.json keeps its 24 keys, curves and checkpoints intact
    assert len(list((finished_run / "wandb").glob("offline-run-*"))) == 1  # no second W&B run


def test_a_finished_run_extends_when_training_steps_grows_and_cadences_may_change(finished_run):
    train_cli(finished_run, *CONSTANT, "training.steps=60", "training.log_every=20", "eval.batch_size=16", NO_WANDB)
    summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["step"] == 60 and "eval/excess/mean" in summary


@pytest.mark.parametrize(
    "added", [["model.embedding_std"], pytest.param(["data.w_prior", "data.w_centre"], marks=pytest.mark.slow)]
)
def test_a_run_dir_from_before_a_key_existed_resumes(finished_run, added):
    """A record without a key added since counts as its default (the old behaviour), or the key is free
    (model.embedding_std acts only at init, which the resume replaces)."""
    record_path = finished_run / "run_config.json"
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
        pytest.param(["model.n_embd=64"], "model.n_embd: 32 -> 64", marks=pytest.mark.slow),
        pytest.param(["training.steps=20"], "training.steps (20) is below the run's 40", marks=pytest.mark.slow),
    ],
)
def test_a_resume_with_another_trajectory_is_refused_and_the_original_config_kept(finished_run, overrides, named):
    before = snapshot(finished_run)
    assert named in one_error_line(start(finished_run, *CONSTANT, *overrides))
    assert snapshot(finished_run) == before  # .hydra/config.yaml still holds the config the run trained with
    assert len(list((finished_run / ".hydra" / "attempts").iterdir())) == 2  # each start's own config is kept


@pytest.mark.parametrize(
    "damage", ["deleted", *(pytest.param(d, marks=pytest.mark.slow) for d in ("truncated", "not a record"))]
)
def test_a_run_dir_without_a_readable_config_record_is_never_trained_under_another_config(finished_run, damage):
    record = finished_run / "run_config.json"
    if damage == "deleted":
        record.unlink()
    else:
        record.write_text(record.read_text()[:40] if damage == "truncated" else "[1, 2]")
    before = snapshot(finished_run)
    line = one_error_line(start(finished_run, *CONSTANT, "data.noise_std=0.5", "training.steps=60"))
    assert f"run dir {finished_run} holds checkpoints but {record}" in line and "start a new run dir" in line
    assert snapshot(finished_run) == before
    if damage == "deleted":  # results alone: refused too
        (finished_run / "checkpoints" / "latest").rename(finished_run / "gone")
        assert "holds results but" in one_error_line(start(finished_run, *CONSTANT))


@pytest.mark.slow  # the suite's cover: test_records.py's WANDB_RUN_ID in the shell, test_sweeps.py's agent runs
def test_wandb_agent_variables_exported_in_a_shell_give_no_run_a_shared_or_a_sweeps_id(tmp_path):
    """WANDB_SWEEP_ID and WANDB_RUN_ID without the agent's parameter file: each run its own id, in no sweep. With
    the agent's parameter file, the first run dir takes the agent's id and a second run dir a new one."""
    env = no_key_env(WANDB_SWEEP_ID="sw1", WANDB_RUN_ID="shared1")
    result = train_cli(tmp_path / "a", "training.steps=20", env=env)
    assert "WANDB_RUN_ID=shared1 is set without a W&B agent's parameter file" in output(result)
    record = RunFile.load(next((tmp_path / "a" / "wandb").glob("offline-run-*")))
    assert record.run_id == run_id_of(tmp_path / "a") != "shared1" and record.sweep_id == ""
    param_file = tmp_path / "wandb" / "sweep-sw1" / "config-shared1.yaml"
    param_file.parent.mkdir(parents=True)
    param_file.write_text("seed:\n  value: 0\n")
    env |= {"WANDB_SWEEP_PARAM_PATH": str(param_file), "WANDB_DIR": str(tmp_path)}
    result_c, result_d = (train_cli(tmp_path / name, "training.steps=20", env=env) for name in ("c", "d"))
    assert run_id_of(tmp_path / "c") == "shared1" and run_id_of(tmp_path / "d") not in ("shared1", None)
    assert f"W&B run shared1 of sweep sw1 is already {tmp_path / 'c'}'s" in output(result_d)
    train_cli(tmp_path / "c", "training.steps=30", env=env)  # its own resume keeps the agent's id
    assert run_id_of(tmp_path / "c") == "shared1"


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
    (finished_run / "identity.json").write_text("/")  # damaged too: no traceback even with W&B disabled
    result = train_cli(finished_run, *CONSTANT, "training.steps=60", NO_WANDB)
    output = result.stdout + result.stderr
    assert f"taking over the lock of process {dead.pid}" in output and "resumed at step 40 of 60" in output
    assert not (finished_run / "run.lock").exists()


@pytest.mark.parametrize("content", [b"", b"/", bytes(range(200, 256))], ids=["empty", "slash", "random-bytes"])
def test_a_damaged_identity_file_is_recovered_from_the_wandb_folder(finished_run, content):
    run_id = run_id_of(finished_run)
    (finished_run / "identity.json").write_bytes(content)
    assert read_identity(finished_run) == {"wandb_run_id": run_id}


def test_a_resumed_run_with_a_damaged_identity_continues_its_wandb_run(finished_run):
    run_id = run_id_of(finished_run)
    (finished_run / "identity.json").write_text("/")
    result = train_cli(finished_run, *CONSTANT, "training.steps=60", wandb=True)
    assert "not a W&B run id: recovered " + run_id in result.stdout + result.stderr
    assert {RunFile.load(d).run_id for d in (finished_run / "wandb").glob("offline-run-*")} == {run_id}
    assert run_id_of(finished_run) == run_id


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
        ("seed=4294967296", "seed must be in"),  # 2**32: PRNGKey would repeat seed 0
        ("seed=-1", "seed must be in"),
        ("eval.seed=4294967296", "eval.seed must be in"),
        ("wandb.init_timeout=inf", "wandb.init_timeout must be a finite"),
        ("data.task_pool_size=2147483648", "data.task_pool_size must be null or in"),
        ("training.decay_steps=0", "training.decay_steps"),
        ("model.n_embd=0", "model.n_embd"),
        ("model.n_embd=-32", "model.n_embd"),
        ("training.min_lr_ratio=-1", "training.min_lr_ratio"),
        ("wandb.mode=bogus", "wandb.mode"),
        ("+trainng.steps=5", "trainng"),
        ("data.curriculum.dims_increment=-1", "data.curriculum.dims_increment"),
        ("init_from=/no/such/checkpoint", "init_from"),
        ("data.w_components=100000", "data.w_components must be in"),  # its Bayes holds each one: memory
        ("eval.algorithm_steps=[1,100000000]", "eval.algorithm_steps must be a non-empty list of steps in"),
        ("data.task=relu_2nn data.hidden_width=1000000", "data.hidden_width must be in"),
        ("data.hidden_width=100", "data.hidden_width is a key of data.task=relu_2nn, not of data.task=linear_"),
        ("eval.algorithms=true data.n_points=1", "eval.algorithms scores predictions from a context"),
        ("eval.probes=true data.n_points=1", "eval.probes scores predictions from a context"),
    ],
)
def test_a_bad_value_is_refused_in_one_line_naming_the_key(tmp_path, override, key):
    if override.startswith("init_from"):  # checked with the run dir, before anything compiles
        assert "init_from: no checkpoint step directory" in one_error_line(start(tmp_path, override))
        assert not (tmp_path / "checkpoints" / "latest").exists()
        return
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run_config(*FAST, *override.split())


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
    for name in ("done", "stale", "crashed", "damaged"):  # four runs: each its own W&B id
        shutil.copytree(trained, runs / name, symlinks=True)
        (runs / name / "identity.json").write_text(json.dumps({"wandb_run_id": f"run-{name}"}))
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


@pytest.mark.parametrize(
    "env, says",
    [
        ({"WANDB_MODE": "bogus"}, "config error: WANDB_MODE (in the environment) must be one of"),
        ({}, "config error: training.distributed: no job to join"),
    ],
)
def test_a_bad_environment_is_refused_in_one_line(tmp_path, env, says):
    overrides = [] if env else ["training.distributed=true"]
    env = {k: v for k, v in no_key_env(**env).items() if not k.startswith(("SLURM", "OMPI", "JAX_COORDINATOR"))}
    assert says in one_error_line(start(tmp_path, *overrides, env=env))
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow  # the suite's cover: test_tracking.py's mode aliases
def test_wandb_mode_dryrun_is_wandbs_offline(tmp_path):
    train_cli(tmp_path, "training.steps=20", env=no_key_env(WANDB_MODE="dryrun"))
    (record,) = [RunFile.load(d) for d in (tmp_path / "wandb").glob("offline-run-*")]
    assert record.exit_code == 0


@pytest.mark.slow  # the suite's cover of the OOD suite: test_ood.py
def test_one_input_dimension_with_the_ood_suite_finishes(tmp_path):
    train_cli(tmp_path, "data.n_dims=1", "eval.ood=true", "training.steps=20", NO_WANDB)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["step"] == 20 and "eval/ood/skewed/model/error_mean" in summary
    assert not any("half_subspace" in key for key in summary)  # half of one dimension is no subspace


def test_a_task_pool_too_large_for_memory_trains_and_scores_without_dmmse(tmp_path):
    result = train_cli(tmp_path, "data.task_pool_size=1073741824", "training.steps=20", NO_WANDB)
    assert "dMMSE left out: a pool of 1073741824 tasks" in output(result)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "eval/pretrain/model/error_mean" in summary and not any("dmmse" in key for key in summary)


def test_a_partial_last_line_of_the_metrics_does_not_stop_a_resume(finished_run):
    metrics = finished_run / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 50, "train/lo')  # a full disk cut the write short
    result = train_cli(finished_run, *CONSTANT, "training.steps=60", NO_WANDB)
    assert "its last line is cut short" in output(result)
    assert [r["step"] for r in read_jsonl(metrics) if "train/loss" in r] == [10, 20, 30, 40, 50, 60]


def test_a_damaged_line_inside_the_metrics_is_refused_before_wandb_starts(finished_run):
    metrics = finished_run / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([*lines[:2], '{"step": 2', *lines[2:]]) + "\n")
    before = snapshot(finished_run)
    line = one_error_line(start(finished_run, *CONSTANT, "training.steps=60", wandb=True))
    assert f"{metrics}: line 3 of {len(lines) + 1} is damaged" in line and "move the file aside" in line
    assert snapshot(finished_run) == before and len(list((finished_run / "wandb").glob("offline-run-*"))) == 1


def test_a_damaged_best_checkpoint_is_moved_aside(finished_run):
    (best,) = (finished_run / "checkpoints" / "best").iterdir()
    (best / "_CHECKPOINT_METADATA").write_text('{"item_han')
    result = train_cli(finished_run, *CONSTANT, "training.steps=60", NO_WANDB)
    assert f"best checkpoint step {best.name} has unreadable metadata; moved to" in output(result)
    assert list((finished_run / "checkpoints" / "damaged").glob(f"best-{best.name}-*"))
    assert json.loads((finished_run / "summary.json").read_text())["step"] == 60


@pytest.fixture
def small_disk(tmp_path):
    """A 1.6 MiB file system: room for the records, not for every checkpoint (skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1600k", "tmpfs", str(mount)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a small file system here")
    yield mount
    subprocess.run(["umount", str(mount)])


def test_a_full_disk_is_said_in_one_line(small_disk):
    result = start(small_disk / "run", NO_WANDB)
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if "ERROR" in line]
    assert result.returncode == 1 and "Traceback" not in output, output[-3000:]
    (line,) = errors
    assert "disk full: No space left on device for" in line and "start the same command again" in line


def test_analyze_from_wandb_without_a_key_says_so_in_one_line(tmp_path, monkeypatch, capsys, caplog):
    for key, value in no_key_env(WANDB_CONFIG_DIR=str(tmp_path)).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert analyze.main(["--wandb", "team/icl-lr", "--out", str(tmp_path / "a")]) == 2
    assert "--wandb needs a W&B API key: run `wandb login`" in caplog.text


# The eval command (python eval.py) on a run dir: what its --out, the checkpoints it reads and a live run get.


def eval_cli(*argv):
    command = [sys.executable, str(ROOT / "eval.py"), *argv, NO_WANDB]
    return subprocess.run(command, cwd=ROOT, env=no_key_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("inside", ["", "sub/dir"])
def test_an_eval_into_a_run_dir_is_refused_and_the_run_untouched(finished_run, inside):
    before = snapshot(finished_run)
    line = one_error_line(eval_cli(str(finished_run), "--out", str(finished_run / inside)))
    assert str(finished_run) in line and ("is inside" if inside else "already holds a run's") in line
    assert snapshot(finished_run) == before and not (finished_run / "sub").exists()


def test_two_evals_never_share_a_dir_and_a_second_never_replaces_the_first(finished_run, tmp_path):
    """Two evals at once on one --out: one scores, the other is refused (the dir in use, or already holding
    the first's records); a third later, refused; the first's records stay whole. Default dirs: one each."""
    out = tmp_path / "shared"
    command = [sys.executable, str(ROOT / "eval.py"), str(finished_run), "--out", str(out), NO_WANDB]
    both = [subprocess.Popen(command, cwd=ROOT, env=no_key_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True) for n in (4, 6)]  # fmt: skip
    outputs = [p.communicate(timeout=300)[0] for p in both]
    assert sorted(p.returncode for p in both) == [0, 2], outputs
    assert any("is in use by process" in o or "already holds" in o for o in outputs)
    records = {name: (out / name).read_bytes() for name in ("metrics.jsonl", "curves.jsonl", "summary.json")}
    assert len(read_jsonl(out / "metrics.jsonl")) == 1
    assert "already holds" in one_error_line(eval_cli(str(finished_run), "--out", str(out)))
    assert {name: (out / name).read_bytes() for name in records} == records
    first, second = default_eval_dir(tmp_path / "eval"), default_eval_dir(tmp_path / "eval")
    assert first != second and first.parent == second.parent  # the same second: a suffix, made exclusively


@pytest.mark.parametrize("damage", ["arrays deleted", "metadata garbage"])
def test_an_unreadable_checkpoint_is_one_line_in_the_eval_command(finished_run, damage):
    step_dir = sorted((finished_run / "checkpoints" / "latest").iterdir())[-1]
    shutil.rmtree(finished_run / "checkpoints" / "best")
    if damage == "arrays deleted":
        for data in step_dir.glob("default/ocdbt.process_0/d/*"):
            data.unlink()
    else:
        (step_dir / "default" / "_METADATA").write_text("garbage")
    line = one_error_line(eval_cli(str(step_dir), "--out", str(finished_run.parent / "eval")))
    assert f"checkpoint {step_dir}" in line and ("cannot be read" in line or "no readable array metadata" in line)


def test_a_checkpoint_a_live_run_removes_while_it_is_read_gives_way_to_its_newest(trained, tmp_path):
    """A run being written rotates its checkpoints: the one an eval listed can be gone when it reads it."""
    run_dir = Path(shutil.copytree(trained, tmp_path / "run", symlinks=True))
    model = local_model(str(run_dir))
    assert model.step_dir.parent.name == "best"
    shutil.rmtree(model.step_dir)  # removed between listing and reading
    (newest,) = [p for p in step_dirs(run_dir / "checkpoints" / "latest")][-1:]
    template = init_state(setup.build(run_config(*FAST, *CONSTANT)), make_optimizer(run_config(*FAST).training), 0)
    read, params = load_params(model, template)
    assert read.step_dir == newest and read.step == 40 and read.sha256 == content_hash(newest)
    assert_trees_equal(params, final_state(run_config(*FAST, *CONSTANT), run_dir).params)
    shutil.rmtree(run_dir / "checkpoints")
    with RunDirLock(run_dir), pytest.raises(ConfigError, match=f"being written by process {os.getpid()}"):
        local_model(str(run_dir))  # a run being written (by this process), before its first checkpoint


@pytest.mark.unit
def test_an_eval_dir_is_judged_by_where_it_really_is(tmp_path):
    """--out through a link into a run dir is inside it; through `..` out of one, is not; a file is no dir."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run_config.json").write_text("{}")
    (tmp_path / "link").symlink_to(run_dir)
    with pytest.raises(EvalDirError, match="is inside"):
        EvalDir(tmp_path / "link" / "eval")
    assert EvalDir(run_dir / ".." / "elsewhere").out == run_dir / ".." / "elsewhere"
    (tmp_path / "file").write_text("x")
    with pytest.raises(EvalDirError, match="is a file"):
        EvalDir(tmp_path / "file")
    with pytest.raises(EvalDirError, match="the default eval dir .* would be inside"):
        default_eval_dir(run_dir / "outputs" / "eval")  # started from inside the run dir
    with EvalDir(tmp_path / "fresh") as out, pytest.raises(EvalDirError, match="already holds"):  # its lock
        EvalDir(out).__enter__()
