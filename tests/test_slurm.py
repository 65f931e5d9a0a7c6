"""The cluster paths against a real SLURM (scripts/local_slurm.sh: Debian's slurm-wlm, one node, this host):
Hydra's submitit SLURM launcher, the sbatch job array of the local sweep runner's agents, srun's tasks forming
one distributed run, and a requeue's SIGTERM and SIGKILL. Behind the `slurm` marker (`pytest -m slurm`, as root
with slurm-wlm and munge installed); skipped in one line where the cluster cannot start."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from helpers import FAST, ROOT, RunFile, assert_trees_equal, final_state, no_key_env, output, run_config, seed_sweep
from icl_lr.analysis import sources
from icl_lr.records.schema import HELD_OUT, set_of
from icl_lr.records.tracking import read_jsonl
from icl_lr.train.loop import train

pytestmark = pytest.mark.slurm
CONSTANT_LR = ["training.schedule=constant"]  # a run cut mid-way resumes with the same rates


SCRIPT = ROOT / "scripts" / "local_slurm.sh"


def local_slurm(*args, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """scripts/local_slurm.sh with `args`, in this environment less SLURM_CONF (the script refuses another
    cluster's) plus `env`."""
    base = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    return subprocess.run([str(SCRIPT), *args], env=base | (env or {}), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def needs_slurm() -> None:
    if os.geteuid() != 0 or not shutil.which("slurmctld"):
        pytest.skip("the local SLURM needs root and Debian's slurm-wlm and munge (scripts/local_slurm.sh)")


@pytest.fixture(scope="module")
def cluster():
    """The local cluster, started if it is not up (and left up: starting it is idempotent); every test of the
    module talks to it through its SLURM_CONF, set in this process's environment (so in the jobs' too)."""
    needs_slurm()
    started = local_slurm("start", env={"LOCAL_SLURM_KILL_WAIT": "5"})
    if started.returncode != 0:
        pytest.skip(f"the local SLURM did not start: {(started.stderr or started.stdout).strip()[-300:]}")
    conf = local_slurm("env").stdout.strip().removeprefix("export SLURM_CONF=")
    assert f"export SLURM_CONF={conf}" in started.stdout and Path(conf).is_file()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", conf)
        shown = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
        config = dict(line.split(" = ", 1) for line in shown.splitlines() if " = " in line)
        config = {key.strip(): value.strip() for key, value in config.items()}
        assert config["SLURM_CONF"] == conf  # this cluster's, not a system one
        yield {"conf": conf, "dir": Path(conf).parent, "kill_wait": int(config["KillWait"].split()[0])}


@pytest.fixture
def fake_daemon(tmp_path):
    """fake_daemon(name): a process called `name` (a copy of sleep) that no SLURM started; killed at the end."""
    started = []

    def start(name: str) -> subprocess.Popen:
        binary = tmp_path / "fake" / name
        binary.parent.mkdir(exist_ok=True)
        shutil.copy(shutil.which("sleep"), binary)
        started.append(subprocess.Popen([str(binary), "600"]))
        wait_for(lambda: Path(f"/proc/{started[-1].pid}/comm").read_text().strip() == name, 10, f"fake {name}")
        return started[-1]

    yield start
    for process in started:
        process.kill()
        process.wait()


def alive(pid: int) -> bool:
    """The process runs (a zombie, exited but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_start_refuses_where_a_system_config_it_did_not_write_exists(tmp_path):
    """A system slurm.conf of another cluster: `start` refuses in one line, exit code 1, and writes nothing
    there; --force (or LOCAL_SLURM_FORCE=1) is named as the way past."""
    needs_slurm()
    system = tmp_path / "etc" / "slurm.conf"
    system.parent.mkdir()
    system.write_text("ClusterName=theirs\nSlurmctldHost=elsewhere\n")
    env = {"LOCAL_SLURM_DIR": str(tmp_path / "state"), "LOCAL_SLURM_SYSTEM_CONF": str(system)}
    refused = local_slurm("start", env=env)
    assert refused.returncode == 1 and refused.stdout == "", output(refused)
    assert (
        len(refused.stderr.splitlines()) == 1 and f"{system} exists" in refused.stderr and "--force" in refused.stderr
    )
    assert system.read_text() == "ClusterName=theirs\nSlurmctldHost=elsewhere\n"
    assert not (tmp_path / "state" / "slurmctld.pid").exists()


def test_start_refuses_where_a_slurmctld_it_did_not_start_runs(tmp_path, fake_daemon):
    """A process named slurmctld not in the pid files: `start` refuses, naming its pid, and the process lives."""
    needs_slurm()
    fake = fake_daemon("slurmctld")
    env = {"LOCAL_SLURM_DIR": str(tmp_path / "state"), "LOCAL_SLURM_SYSTEM_CONF": str(tmp_path / "none")}
    refused = local_slurm("start", env=env)
    assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1, output(refused)
    assert "slurmctld processes this script did not start" in refused.stderr and str(fake.pid) in refused.stderr
    assert not (tmp_path / "state" / "slurmctld.pid").exists() and fake.poll() is None


def test_stop_stops_its_own_daemons_and_leaves_another_slurmd_and_cluster_alive(cluster, tmp_path, fake_daemon):
    """A second cluster in its own state dir, beside the module's and a foreign slurmd (so started with --force,
    on its own ports): `stop` ends its slurmctld and slurmd, by their pid files, and nothing else; a second
    `stop` finds no pid files and says so."""
    fake = fake_daemon("slurmd")
    state = tmp_path / "state"
    env = {"LOCAL_SLURM_DIR": str(state), "LOCAL_SLURM_SYSTEM_CONF": str(tmp_path / "none"),
           "LOCAL_SLURM_PORT": "6957"}  # fmt: skip
    refused = local_slurm("start", env=env)
    assert refused.returncode == 1 and "did not start" in refused.stderr, output(refused)
    started = local_slurm("start", "--force", env=env)
    assert started.returncode == 0, output(started)
    assert f"export SLURM_CONF={state / 'slurm.conf'}" in started.stdout
    ours = {name: int((state / f"{name}.pid").read_text()) for name in ("slurmctld", "slurmd")}
    theirs = {name: int((cluster["dir"] / f"{name}.pid").read_text()) for name in ("slurmctld", "slurmd")}
    ran = subprocess.run(["srun", "-n", "1", "hostname"], env=os.environ | {"SLURM_CONF": str(state / "slurm.conf")},
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert ran.returncode == 0, output(ran)
    stopped = local_slurm("stop", env=env)
    assert stopped.returncode == 0 and "stopped slurmctld slurmd" in stopped.stdout, output(stopped)
    assert not any(alive(pid) for pid in ours.values())
    assert fake.poll() is None and all(alive(pid) for pid in theirs.values())
    assert subprocess.run(["scontrol", "ping"], capture_output=True, text=True).stdout.count("is UP") == 1
    again = local_slurm("stop", env=env)
    assert again.returncode == 0 and "no pid files" in again.stdout, output(again)


def job_env(**extra) -> dict:
    """The submitting environment, which SLURM passes to its jobs: no W&B key, one CPU device per process (so a
    job's run equals this process's bit for bit), this venv's python and wandb first on PATH."""
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    return no_key_env(JAX_NUM_CPU_DEVICES="1", PATH=path, **extra)


def squeue(job: str) -> str:
    """The job's state (PENDING, RUNNING, ...), or '' once it has left the queue."""
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def sbatch(script: Path, *options, args=(), cwd: Path, env: dict) -> str:
    """`sbatch options script args`: the job id."""
    command = ["sbatch", "--parsable", "--cpus-per-task=1", "--mem=2G", *options, str(script), *args]
    submitted = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert submitted.returncode == 0, submitted.stderr
    return submitted.stdout.strip().split(";")[0]


def test_a_hydra_multirun_through_the_slurm_launcher_runs_each_job_on_slurm(cluster, tmp_path):
    """hydra/launcher=slurm (submitit): two jobs, each a SLURM job with a complete run dir."""
    command = [sys.executable, "train.py", "-m", "hydra/launcher=slurm", *FAST, "training.steps=20", "seed=0,1"]
    command += ["hydra.launcher.partition=local", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
                "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={tmp_path}"]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, output(result)[-3000:]
    logs = sorted(tmp_path.glob(".submitit/*_*/*_0_log.out"))  # submitit's: one SLURM array task per job
    assert len(logs) == 2
    for log, job in zip(logs, ("0", "1"), strict=True):
        task = log.parent.name  # <array job id>_<task>
        assert f"JobEnvironment(job_id={task}," in log.read_text() and "starting at step 0 of 20" in log.read_text()
        run_dir = tmp_path / job
        assert json.loads((run_dir / "summary.json").read_text())["step"] == 20
        assert (run_dir / "checkpoints").is_dir() and (run_dir / "curves.jsonl").exists()
        assert not (run_dir / "run.lock").exists()  # released at the end
    seeds = [RunFile.load(next((tmp_path / j / "wandb").glob("offline-run-*"))).config_value("seed") for j in "01"]
    assert seeds == [0, 1]


def test_a_job_array_of_sweep_agents_runs_each_grid_point_once(cluster, tmp_path):
    """scripts/slurm_agent.sbatch with a sweep YAML: 3 array tasks, 2 at once, on a grid of 3 points: one run
    each, every point once, all in one sweep folder; a fourth agent finds nothing left."""
    sweep = seed_sweep(tmp_path / "seeds.yaml")
    script = ROOT / "scripts" / "slurm_agent.sbatch"
    job = sbatch(script, "--array=0-2%2", "--gpus-per-node=0", "--wait", args=[str(sweep), "--", *FAST,
                 "training.steps=20"], cwd=tmp_path, env=job_env())  # fmt: skip
    folder = tmp_path / "outputs" / f"sweep-slurm-{job}"
    results = read_jsonl(folder / "results.jsonl")
    assert sorted(r["seed"] for r in results) == [0, 1, 2] and all(r["exit_code"] == 0 for r in results)
    claims = read_jsonl(folder / "claims.jsonl")
    assert sorted(c["agent"] for c in claims) == [f"slurm-{job}_{task}" for task in range(3)]
    for result in results:
        assert json.loads((tmp_path / result["run_dir"] / "summary.json").read_text())["step"] == 20
    logs = [(tmp_path / f"slurm-{job}_{task}.out").read_text() for task in range(3)]
    assert all("[" in log and "end" in log for log in logs), logs
    more = subprocess.run([sys.executable, "-m", "icl_lr.run.sweep", str(sweep), "--agent", "--sweep-id",
                           f"slurm-{job}", "--count", "3"], cwd=tmp_path, env=job_env(), capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert more.returncode == 0 and "nothing left for this agent" in output(more)


def test_srun_tasks_form_one_distributed_run_equal_to_one_process(cluster, tmp_path):
    """`srun -n 2 python train.py training.distributed=true`: two processes of one CPU device each, one run
    dir and one W&B run, its curves those of one process on two devices' worth of batch."""
    run_dir = tmp_path / "srun"
    command = ["srun", "-n", "2", "--cpus-per-task=1", sys.executable, "train.py", *FAST, *CONSTANT_LR,
               "training.distributed=true", f"hydra.run.dir={run_dir}"]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, output(result)[-3000:]
    assert "on 2 CPU devices in 2 processes" in output(result)
    cfg = run_config(*FAST, *CONSTANT_LR)
    train(cfg, tmp_path / "one")
    ran = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in r]
    one = [r for r in read_jsonl(tmp_path / "one" / "metrics.jsonl") if "train/loss" in r]
    assert [r["step"] for r in ran] == [10, 20, 30, 40]
    np.testing.assert_allclose([r["train/loss"] for r in ran], [r["train/loss"] for r in one], rtol=1e-4)
    held_out = lambda d: [r for r in read_jsonl(d / "curves.jsonl") if set_of(r) == HELD_OUT][-1]["model"]
    np.testing.assert_allclose(held_out(run_dir), held_out(tmp_path / "one"), rtol=1e-4, atol=1e-6)
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    for a, b in zip(*(jax.tree.leaves(final_state(cfg, d).params) for d in (run_dir, tmp_path / "one")), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def training_job(tmp_path: Path, *overrides) -> tuple[Path, Path]:
    """A batch script that trains in outputs/slurm-$SLURM_JOB_ID (the run dir a requeued job finds again)."""
    script = tmp_path / "train.sbatch"
    command = " ".join([sys.executable, str(ROOT / "train.py"), *FAST, *CONSTANT_LR, *overrides])
    script.write_text(f"#!/bin/bash\n#SBATCH --output=job-%j.out\n#SBATCH --open-mode=append\nexec {command} "
                      f"hydra.run.dir={tmp_path}/slurm-$SLURM_JOB_ID\n")  # fmt: skip
    return script, tmp_path


def requeue_and_release(job: str) -> None:
    """scontrol requeue, then let the requeued job start at once (SLURM holds a requeued job back a while)."""
    subprocess.run(["scontrol", "requeue", job], check=True)
    wait_for(lambda: squeue(job) == "PENDING", 120, f"job {job} pending again")
    subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], check=True)


def test_a_requeued_job_checkpoints_on_sigterm_and_resumes_in_the_same_run(cluster, tmp_path):
    """scontrol requeue mid-run: SIGTERM, a checkpoint, W&B told preempting; the job again under the same id
    resumes in the same run dir and W&B run and ends equal to an uninterrupted run."""
    steps = ["training.steps=20000", "training.checkpoint_every=20000", "training.eval_every=20000"]
    steps += ["training.log_every=100"]  # about 1,000 steps a second here: 20 s of training
    script, folder = training_job(tmp_path, *steps)
    job = sbatch(script, "--requeue", cwd=folder, env=job_env())
    run_dir = folder / f"slurm-{job}"
    logged = lambda: any(r.get("step", 0) >= 500 for r in read_jsonl(run_dir / "metrics.jsonl"))
    wait_for(logged, 300, "the run's first steps")
    requeue_and_release(job)
    wait_for(lambda: squeue(job) == "", 600, f"job {job} to end")
    log = (run_dir / "train.log").read_text()
    stopped_at = int(log.split("SIGTERM at step ")[1].split(":")[0])
    assert 500 <= stopped_at < 20000  # checkpointed where SIGTERM found it: there is no periodic checkpoint
    assert f"resumed at step {stopped_at} of 20000" in log and "done: 20000 steps" in log, log[-3000:]
    assert "Traceback" not in (folder / f"job-{job}.out").read_text()  # both attempts' output, appended
    attempts = sorted((run_dir / "wandb").glob("offline-run-*"))
    runs = [RunFile.load(p) for p in attempts]  # the first may hold nothing: its unwritten records died (below)
    assert len(runs) == 2 and {p.name.rsplit("-", 1)[1] for p in attempts} == {runs[1].run_id}  # one W&B run
    # SLURM signals W&B's service too, which shuts down at once: the mark is lost, and said so
    preempting = any(r["type"] == "preempting" for r in sources.read_wandb_records(attempts[0]))
    assert preempting or "W&B's service is gone (ConnectionResetError" in log
    assert min(h["step"] for h in runs[1].history if "train/loss" in h) > stopped_at
    cfg = run_config(*FAST, *CONSTANT_LR, *steps)
    train(cfg, tmp_path / "straight")
    assert_trees_equal(final_state(cfg, run_dir), final_state(cfg, tmp_path / "straight"))


def test_a_requeued_job_killed_past_its_grace_time_resumes_from_its_last_checkpoint(cluster, tmp_path):
    """Dispatches longer than KillWait: SIGTERM waits for the dispatch's end, SIGKILL comes first; the job again
    takes the dead job's lock over, resumes from the last periodic checkpoint and ends equal to an unkilled run."""
    dispatch = 3000 * cluster["kill_wait"]  # about 0.7 ms a step here: a dispatch outlasts the grace time twice
    steps = [f"training.steps={3 * dispatch}", f"training.steps_per_dispatch={dispatch}"]
    steps += [f"training.{key}={dispatch}" for key in ("checkpoint_every", "eval_every", "log_every")]
    script, folder = training_job(tmp_path, *steps)
    job = sbatch(script, "--requeue", cwd=folder, env=job_env())
    run_dir = folder / f"slurm-{job}"
    saved = lambda: any(p.name.isdigit() for p in (run_dir / "checkpoints" / "latest").glob("*"))
    wait_for(saved, 600, "the first periodic checkpoint")
    requeue_and_release(job)
    wait_for(lambda: squeue(job) == "", 900, f"job {job} to end")
    log = (run_dir / "train.log").read_text()
    assert f"resumed at step {dispatch} of {3 * dispatch}" in log, log[-3000:]
    assert "taking over the lock of process" in log and "SIGTERM at step" not in log  # SIGKILL: no stop of its own
    cfg = run_config(*FAST, *CONSTANT_LR, *steps)
    train(cfg, tmp_path / "straight")
    assert_trees_equal(final_state(cfg, run_dir), final_state(cfg, tmp_path / "straight"))
