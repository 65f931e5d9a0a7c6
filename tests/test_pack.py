"""Packed runs (icl_lr/train/pack.py, `python -m icl_lr.cli.pack`, the sweep runner's --pack): K runs of one
shape as one program, each still a run of its own: run dir, W&B run, checkpoints; curves as the runs alone,
resumed bit for bit after SIGTERM and SIGKILL; a diverging run stops alone; runs of other shapes refused."""

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import (
    FAST,
    ROOT,
    RunFile,
    assert_trees_equal,
    final_state,
    held_out_curves,
    no_key_env,
    output,
    run_config,
    seed_sweep,
)
from icl_lr.fields import ConfigError
from icl_lr.records.run_dir import RunDirError
from icl_lr.records.tracking import read_jsonl
from icl_lr.train import pack, parallel
from icl_lr.train.loop import train, train_pack
from icl_lr.train.preemption import NonFiniteLoss

METRICS = "metrics.jsonl"
LONGER = ["training.steps=60", "training.trajectory=3"]  # checkpoints at 20, 40, 60; a trajectory at 10, 30, 60
RUNS = [["seed=0"], ["seed=1", "data.noise_std=0.25"], ["seed=2", "data.noise_std=0.5"]]  # seeds and noise levels


def spec(tmp_path: Path, name: str, runs=RUNS) -> tuple[Path, list]:
    """A pack file of `runs` (FAST, 60 steps) under tmp_path/name, and their run dirs."""
    run_dirs = [tmp_path / name / f"run{i}" for i in range(len(runs))]
    path = tmp_path / f"{name}.json"
    overrides = [[*FAST, *LONGER, *run, f"hydra.run.dir={d}"] for run, d in zip(runs, run_dirs, strict=True)]
    path.write_text(json.dumps({"runs": overrides}))
    return path, run_dirs


def pack_command(path: Path) -> list:
    return [sys.executable, "-m", "icl_lr.cli.pack", str(path)]


def configs(runs=RUNS) -> list:
    return [run_config(*FAST, *LONGER, *run) for run in runs]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The pack trained in this process, never stopped, without W&B: its run dirs."""
    root = tmp_path_factory.mktemp("straight")
    run_dirs = [root / f"run{i}" for i in range(len(RUNS))]
    results = train_pack([(cfg, d, ()) for cfg, d in zip(configs(), run_dirs, strict=True)])
    assert all(r["step"] == 60 and r["pack_size"] == 3 for r in results)
    return run_dirs


# W&B names its service in its children's environment: a command joining a parent's would find its SIGKILLed run
# still open there ("run ID ... is in use"), and cannot join this one, of a process long gone.
PARENTS_SERVICE = no_key_env(WANDB_SERVICE="3-1-unix-/nonexistent/wandb-service.sock")


def signal_at(command: list, saved: Path, signum: int) -> tuple[int, str]:
    """Starts `command` and sends it `signum` once `saved` (a checkpoint step dir) exists: (exit code, output)."""
    process = subprocess.Popen(command, cwd=ROOT, env=PARENTS_SERVICE, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.time() + 180
    while not saved.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signum)
    printed, _ = process.communicate(timeout=180)
    return process.returncode, printed


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """The pack from its command line, stopped by SIGTERM once its last run saved step 20, SIGKILLed once it saved
    step 40, then run to its end: (run dirs, the SIGTERM's exit code and output, the last start's result)."""
    path, run_dirs = spec(tmp_path_factory.mktemp("stopped"), "pack")
    terminated = signal_at(pack_command(path), run_dirs[-1] / "checkpoints" / "latest" / "20", signal.SIGTERM)
    signal_at(pack_command(path), run_dirs[-1] / "checkpoints" / "latest" / "40", signal.SIGKILL)
    last = subprocess.run(pack_command(path), cwd=ROOT, env=PARENTS_SERVICE, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    return run_dirs, terminated, last


def test_a_pack_trains_each_run_as_it_trains_alone(straight, tmp_path):
    """Each run of the pack: the held-out curves and the losses of the same run trained alone (float32 rounding)."""
    for cfg, run_dir in zip(configs(), straight, strict=True):
        alone = train(cfg, tmp_path / run_dir.name)
        packed = held_out_curves(run_dir)
        for name, curve in alone["curves"].items():
            np.testing.assert_allclose(packed[name], curve, rtol=1e-5, atol=1e-6, err_msg=name)
        losses = lambda d: [r["train/loss"] for r in read_jsonl(d / "metrics.jsonl") if "train/loss" in r]
        np.testing.assert_allclose(losses(run_dir), losses(tmp_path / run_dir.name), rtol=1e-5)
    assert held_out_curves(straight[0])["bayes"] != held_out_curves(straight[2])["bayes"]  # noise levels apart


def test_a_pack_stopped_by_sigterm_and_sigkill_resumes_bit_for_bit(stopped, straight):
    run_dirs, (code, terminated), last = stopped
    assert code == 143 and "preempted: SIGTERM at step" in terminated and "Traceback" not in terminated
    assert last.returncode == 0, output(last)[-3000:]
    assert "resumed at step" in output(last) and "3 runs in one program, differing in data.noise_std, seed" in output(
        last
    )
    for cfg, run_dir, reference in zip(configs(), run_dirs, straight, strict=True):
        assert_trees_equal(final_state(cfg, run_dir), final_state(cfg, reference))
        untimed = lambda d: [{k: v for k, v in r.items() if "per_second" not in k} for r in read_jsonl(d / METRICS)]
        assert untimed(run_dir) == untimed(reference)  # every step once, each as the unstopped pack logged it
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["step"] == 60 and summary["pack_size"] == 3


def test_each_run_of_a_pack_is_a_run_of_its_own(stopped):
    """Every file a run alone writes, and one W&B run per run dir (read with W&B's reader): its own config,
    history and summary, the SIGTERM-stopped attempt marked preempted and resumed under the same id."""
    run_dirs, *_ = stopped
    for run_dir, run in zip(run_dirs, RUNS, strict=True):
        for name in ("train.log", "run_config.json", "identity.json", "metrics.jsonl", "curves.jsonl", "summary.json"):
            assert (run_dir / name).is_file(), name
        assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / ".hydra" / "overrides.yaml").is_file()
        log_lines = (run_dir / "train.log").read_text()
        assert f"[{run_dir.name}] eval at step 60" in log_lines
        assert not any(f"[{other.name}]" in log_lines for other in run_dirs if other != run_dir)
        identity = json.loads((run_dir / "identity.json").read_text())["wandb_run_id"]
        files = [RunFile.load(d) for d in sorted((run_dir / "wandb").glob("offline-run-*"))]
        files = [f for f in files if f.run_id]  # the SIGKILLed attempt's service wrote nothing (docs/records.md)
        assert {f.run_id for f in files} == {identity} and files[0].exit_code == 143
        final = files[-1]
        assert final.exit_code == 0 and final.config_value("seed") == int(run[0].split("=")[1])
        noise = float(run[1].split("=")[1]) if len(run) > 1 else 0.0
        assert final.config_value("data.noise_std") == noise
        summary = json.loads((run_dir / "summary.json").read_text())
        assert final.summary["eval/excess/mean"] == pytest.approx(summary["eval/excess/mean"], rel=1e-6)
        assert [a for a in final.artifacts if a["type"] == "model" and "step-60" in a["aliases"]]
        kept = sorted(int(p.name) for p in (run_dir / "checkpoints" / "trajectory").iterdir())
        assert kept == [10, 30, 60]  # the trajectory's checkpoints, through the SIGTERM and the SIGKILL
        assert any("trajectory-30" in a["aliases"] for f in files for a in f.artifacts if a["type"] == "model")


def test_a_pack_checkpointed_at_different_steps_resumes_every_run_from_one(straight, tmp_path):
    """A kill between the runs' saves: the runs ahead go back to the step all have, and end as the pack did."""
    run_dirs = [tmp_path / d.name for d in straight]
    for source, copy in zip(straight, run_dirs, strict=True):
        shutil.copytree(source, copy)
    shutil.rmtree(run_dirs[1] / "checkpoints" / "latest" / "60")  # run 1's last save never happened
    for run_dir in run_dirs:
        (run_dir / "summary.json").unlink()
    train_pack([(cfg, d, ()) for cfg, d in zip(configs(), run_dirs, strict=True)])
    for cfg, run_dir, reference in zip(configs(), run_dirs, straight, strict=True):
        assert_trees_equal(final_state(cfg, run_dir), final_state(cfg, reference))
        steps = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in r]
        assert steps == sorted(set(steps)) and steps[-1] == 60


def test_a_pack_whose_run_lacks_the_common_step_is_refused_before_any_checkpoint_is_removed(straight, tmp_path):
    """Run 1 holds step 20 only (its later saves never happened), and run 0's step 20 has rotated out: the pack
    cannot resume from one step; refused in one line, every run's checkpoints as they were."""
    run_dirs = [tmp_path / d.name for d in straight]
    for source, copy in zip(straight, run_dirs, strict=True):
        shutil.copytree(source, copy)
    for step in ("40", "60"):
        shutil.rmtree(run_dirs[1] / "checkpoints" / "latest" / step)
    shutil.rmtree(run_dirs[0] / "checkpoints" / "latest" / "20")
    kept = {d: sorted(p.name for p in (d / "checkpoints" / "latest").iterdir()) for d in run_dirs}
    with pytest.raises(RunDirError, match=f"no checkpoint at step 20 in {run_dirs[0]}:"):
        train_pack([(cfg, d, ()) for cfg, d in zip(configs(), run_dirs, strict=True)])
    assert {d: sorted(p.name for p in (d / "checkpoints" / "latest").iterdir()) for d in run_dirs} == kept


def test_a_diverging_run_of_a_pack_stops_alone(tmp_path, caplog):
    runs = [["seed=0"], ["seed=1", "data.noise_std=1e30"]]  # squared errors past float32: the loss is inf
    run_dirs = [tmp_path / "fine", tmp_path / "diverged"]
    results = train_pack([(cfg, d, ()) for cfg, d in zip(configs(runs), run_dirs, strict=True)])
    assert results[0]["step"] == 60 and (run_dirs[0] / "summary.json").exists()
    assert isinstance(results[1], NonFiniteLoss) and "at step 1 " in str(results[1])
    assert not (run_dirs[1] / "summary.json").exists() and not read_jsonl(run_dirs[1] / "metrics.jsonl")
    assert re.search("training stopped: the training loss is (inf|nan) at step 1 ", caplog.text)
    assert "other runs go on" in caplog.text
    alone = read_jsonl(run_dirs[0] / "metrics.jsonl")
    with pytest.raises(NonFiniteLoss):  # a run alone still raises
        train(configs(runs)[1], tmp_path / "alone")
    assert alone[-1]["step"] == 60


@pytest.mark.unit
@pytest.mark.parametrize(
    "a, b, named",
    [
        ("training.steps=60", "training.steps=80", "training.steps, the loop's cadence"),
        (
            "data.task=linear_regression",
            "data.task=sparse_linear",
            "data.sparsity, data.task, which choose the program",
        ),
        ("model.n_embd=32", "model.n_embd=64", "model.n_embd, which set a shape or a branch"),
        ("data.n_points=8", "data.n_points=9", "data.n_points, which set a shape or a branch"),
        ("training.warmup_steps=0", "training.warmup_steps=10", "training.warmup_steps, which set a shape or a branch"),
    ],
)
def test_runs_that_cannot_share_one_program_are_refused_naming_the_keys(a, b, named):
    with pytest.raises(ConfigError, match=f"^training.pack: the runs differ in {named}"):
        pack.check([run_config(*FAST, *LONGER, a), run_config(*FAST, *LONGER, b)], parallel.data_mesh())
    learning_rates = [run_config(*FAST, f"training.learning_rate={lr}", "data.prior_scale=2") for lr in (1e-3, 3e-3)]
    assert pack.check(learning_rates, parallel.data_mesh()) == ("training.learning_rate",)


def test_the_pack_command_refuses_runs_of_two_shapes_in_one_line(tmp_path):
    path, run_dirs = spec(tmp_path, "shapes", [["model.n_embd=32"], ["model.n_embd=64"]])
    result = subprocess.run(pack_command(path), cwd=ROOT, env=no_key_env(), capture_output=True, text=True)
    errors = [line for line in output(result).splitlines() if "[ERROR]" in line]
    assert result.returncode == 2 and len(errors) == 1 and "model.n_embd" in errors[0], output(result)[-2000:]
    assert not any(d.exists() and any(d.iterdir()) and (d / "run_config.json").exists() for d in run_dirs)


def test_the_sweep_runner_packs_its_proposals(tmp_path):
    """`--pack 3` on a 3-seed grid: one process, three runs, each recorded in results.jsonl with its run dir,
    console.log and result, as the runs alone record them."""
    sweep = seed_sweep(tmp_path / "seeds.yaml")
    command = [sys.executable, "-m", "icl_lr.run.sweep", str(sweep), "--count", "3", "--pack", "3"]
    command += ["--sweep-id", "packed", "--", *FAST, "wandb.mode=disabled"]
    result = subprocess.run(command, cwd=tmp_path, env=no_key_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, output(result)[-3000:]
    assert "3 proposals in 1 pack: 3" in output(result)
    results = read_jsonl(tmp_path / "outputs" / "sweep-packed" / "results.jsonl")
    assert sorted(r["seed"] for r in results) == [0, 1, 2] and all(r["exit_code"] == 0 for r in results)
    summaries = {}
    for r in results:
        run_dir = tmp_path / r["run_dir"]
        summaries[r["seed"]] = summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["step"] == 40 and summary["pack_size"] == 3
        assert (run_dir / "console.log").resolve() == (run_dir.parent / f"pack-{results[0]['run_id']}.log").resolve()
        assert json.loads((run_dir / "identity.json").read_text())["wandb_run_id"] == r["run_id"]
    alone = train(run_config(*FAST), tmp_path / "alone")
    assert alone["eval/excess/mean"] == pytest.approx(summaries[0]["eval/excess/mean"], rel=1e-5)


def test_a_hydra_multirun_packs_its_jobs_of_one_shape(tmp_path):
    """`-m hydra/launcher=pack` over two seeds and two widths: two packs, each job its own run dir (the sweep's
    subdir) with Hydra's files, and its result as the job trained alone."""
    command = [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=pack", f"hydra.sweep.dir={tmp_path}"]
    command += [*FAST, "training.steps=20", "wandb.mode=disabled", "seed=0,1", "model.n_embd=32,64"]
    result = subprocess.run(command, cwd=tmp_path, env=no_key_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "4 jobs in 2 packs of up to 16: 2 + 2" in output(result), output(result)[-3000:]
    for job in (0, 3):
        summary = json.loads((tmp_path / str(job) / "summary.json").read_text())
        given = yaml.safe_load((tmp_path / str(job) / ".hydra" / "overrides.yaml").read_text())
        overrides = [o.lstrip("+") for o in given if o.lstrip("+").startswith(("seed=", "model.n_embd="))]
        assert summary["pack_size"] == 2 and len(overrides) == 2
        alone = train(run_config(*FAST, "training.steps=20", *overrides), tmp_path / f"alone{job}")
        assert alone["eval/excess/mean"] == pytest.approx(summary["eval/excess/mean"], rel=1e-5)


def test_a_diverging_job_alone_in_its_pack_stops_alone_and_the_multirun_goes_on(tmp_path):
    """`-m hydra/launcher=pack` over two jobs of two shapes (a list of noise levels is no number: each job a pack of
    one): the first diverges and is recorded as failed, in one line of its train.log; the second trains to its end."""
    command = [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=pack", f"hydra.sweep.dir={tmp_path}"]
    command += [*FAST, "training.steps=20", "wandb.mode=disabled", "data.noise_std_choices=[1e30],[0.5,1.0]"]
    result = subprocess.run(command, cwd=tmp_path, env=no_key_env(), capture_output=True, text=True, timeout=300)
    assert "2 jobs in 2 packs of up to 16: 1 + 1" in output(result), output(result)[-3000:]
    assert f"JobFailed: {tmp_path / '0'}: exit code 1" in output(result)  # Hydra's report of the failed job, at the end
    log = (tmp_path / "0" / "train.log").read_text()
    assert len(re.findall("training stopped: the training loss is (inf|nan) at step 1 ", log)) == 1
    assert not (tmp_path / "0" / "summary.json").exists()
    assert json.loads((tmp_path / "1" / "summary.json").read_text())["step"] == 20


@pytest.mark.slow  # cover in the suite: every task's train step (test_tasks) and the packs of linear regression above
@pytest.mark.parametrize("task", ["polynomial", "gp_regression", "sparse_parity", "low_rank", "tabular"])
def test_a_pack_of_each_function_class_trains_each_run_as_its_own(task, tmp_path):
    shape = {"sparse_parity": ["data.n_dims=4", "data.parity_k=2"], "low_rank": ["data.n_dims=4"],
             "tabular": ["data.table=diabetes"]}.get(task, [])  # fmt: skip
    runs = [[f"data.task={task}", *shape, f"seed={s}", "training.steps=20", "eval.n_prompts=16"] for s in (0, 1)]
    run_dirs = [tmp_path / f"run{i}" for i in range(2)]
    cfgs = [run_config(*FAST, *run) for run in runs]
    results = train_pack([(cfg, d, ()) for cfg, d in zip(cfgs, run_dirs, strict=True)])
    assert [r["step"] for r in results] == [20, 20] and all(r["pack_size"] == 2 for r in results)
    finals = [held_out_curves(d) for d in run_dirs]
    assert all(np.isfinite(f["model"]).all() for f in finals) and finals[0]["model"] != finals[1]["model"]
