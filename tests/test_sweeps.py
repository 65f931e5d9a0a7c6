"""Sweep YAMLs: valid for the W&B sweeps engine, expanded by wandb's agent code into runnable Hydra runs."""

import itertools
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
import yaml
from wandb.sdk.lib import config_util

import sweeps
from helpers import FAST, ROOT, RunFile, no_key_env, run_config, seed_sweep
from icl_lr.analysis import sources
from icl_lr.records.run_dir import RunDirError
from icl_lr.records.tracking import read_jsonl
from icl_lr.run.sweep.devices import worker_cores, worker_environment
from icl_lr.run.sweep.runner import run_sweep
from icl_lr.run.sweep.spec import expand_command, load_sweep

SWEEP_FILES = sorted((ROOT / "sweeps").glob("*.yaml"))


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
    for parameters in (5, {"seed": 5}):  # the engine's own check breaks on these (an AttributeError)
        bad.write_text(yaml.safe_dump({"program": "train.py", "method": "grid", "parameters": parameters}))
        with pytest.raises(ValueError, match="bad.yaml: parameters must map each key to its spec"):
            load_sweep(bad)


GRIDS = [p for p in SWEEP_FILES if load_sweep(p)["method"] == "grid"]


@pytest.mark.parametrize(
    "path",  # the GPU-sized task-diversity grid is its CPU one's larger copy: in the suite, the CPU one
    [pytest.param(p, marks=pytest.mark.slow) if p.stem == "task_diversity" else p for p in GRIDS],
    ids=lambda p: p.stem,
)
def test_every_point_of_a_grid_is_a_valid_run(path):
    """Each point of a grid sweep composes and passes every check (the families' and encodings' pairings too)."""
    parameters = load_sweep(path)["parameters"]
    axes = [[(k, v) for v in spec.get("values", [spec.get("value")])] for k, spec in parameters.items()]
    for point in itertools.product(*axes):
        run_config(*(f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in point))


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_agent_command_reaches_hydra_as_overrides(path):
    sweep = load_sweep(path)
    proposal = sweeps.next_run(sweep, [])
    params = {k: v["value"] for k, v in proposal.config.items()}
    argv = expand_command(sweep, params, {"WANDB_SWEEP_ID": "sw1", "WANDB_RUN_ID": "run1"})
    assert argv[:3] == ["/usr/bin/env", sys.executable, "train.py"]
    assert sorted(argv[3:-1]) == sorted(f"{k}={v}" for k, v in params.items())  # no "--" prefixes for Hydra
    assert argv[-1] == "hydra.run.dir=outputs/sweep-sw1/run1"  # one output dir per run, not Hydra's timestamps


def test_a_run_started_as_the_agent_starts_it_keeps_its_nested_config(tmp_path):
    """`wandb agent`'s environment and parameter file (written by wandb's own config_util): wandb.init
    merges that file over the run's config, which must keep every model field beside `model: gpt2_small`."""
    sweep = load_sweep(ROOT / "sweeps" / "model_size.yaml") | {"program": str(ROOT / "train.py")}
    params = {"model": "gpt2_small", "seed": 1}
    param_file = tmp_path / "wandb" / "sweep-sw1" / "config-run1.yaml"
    config_util.save_config_file_from_dict(str(param_file), {k: {"value": v} for k, v in params.items()})
    agent_env = {"WANDB_SWEEP_ID": "sw1", "WANDB_RUN_ID": "run1", "WANDB_SWEEP_PARAM_PATH": str(param_file)}
    argv = expand_command(sweep, params, agent_env)
    fast = [o for o in FAST if o != "model.n_layer=1"] + ["training.steps=20"]
    result = subprocess.run(argv + fast, cwd=tmp_path, env=no_key_env(**agent_env), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "outputs" / "sweep-sw1" / "run1"
    record = RunFile.load(next((run_dir / "wandb").glob("offline-run-*")))
    assert record.run_id == "run1" and record.config_value("model") == "gpt2_small" and record.config_value("seed") == 1
    assert [record.config_value(f"model.{k}") for k in ("n_layer", "n_embd", "n_head")] == [6, 32, 4]
    runs, _, _ = sources.load_wandb_files([run_dir])  # what `analyze.py --wandb` reads: no TypeError
    assert list(runs.model_size) == ["6L/32d/4H"]


def test_local_sweep_runs_as_the_agent_does_from_any_directory_and_resumes(tmp_path, monkeypatch):
    folder = tmp_path / "clone"  # a checkout under another name: W&B would name the project after it
    folder.mkdir()
    monkeypatch.chdir(folder)  # the YAML's program is found in its repository
    for key, value in no_key_env().items():
        monkeypatch.setenv(key, value)
    for key in ("WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT"):
        monkeypatch.delenv(key, raising=False)
    path = ROOT / "sweeps" / "noise_prior.yaml"
    results = run_sweep(path, count=1, overrides=[*FAST, "training.steps=20"], sweep_id="local-test")
    assert len(results) == 1
    sweep_dir = folder / "outputs" / "sweep-local-test"
    for result in results:
        assert result["exit_code"] == 0
        run_dir = sweep_dir / result["run_id"]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert result["eval/excess/mean"] == summary["eval/excess/mean"]  # the metric the engine saw
        (record,) = [RunFile.load(d) for d in (folder / "wandb").glob(f"offline-run-*-{result['run_id']}")]
        assert (record.run_id, record.group) == (result["run_id"], "local-test")
        assert record.project == load_sweep(path)["project"] == "icl-lr"  # the sweep's, not "clone"
        for key in ("data.noise_std", "data.prior_scale", "data.task_pool_size"):
            assert record.config_value(key) == result[key]  # as the agent's parameter file sets them
        assert (folder / "wandb" / "sweep-local-test" / f"config-{result['run_id']}.yaml").exists()
    assert [r["run_id"] for r in read_jsonl(sweep_dir / "results.jsonl")] == [r["run_id"] for r in results]
    with pytest.raises(RunDirError, match="has 1 runs in .* already: continue it with --resume local-test"):
        run_sweep(path, count=2, overrides=[*FAST, "training.steps=20"], sweep_id="local-test")
    more = run_sweep(path, count=2, overrides=[*FAST, "training.steps=20"], sweep_id="local-test", resume=True)
    assert len(more) == 1 and len(read_jsonl(sweep_dir / "results.jsonl")) == 2  # the finished run counted
    assert more[0]["run_id"] != results[0]["run_id"]


def test_every_sweep_names_its_project():
    for path in SWEEP_FILES:
        assert load_sweep(path)["project"] == "icl-lr", path


def test_two_runners_on_one_sweep_id_cannot_both_start(tmp_path):
    command = [sys.executable, "-m", "icl_lr.run.sweep", str(ROOT / "sweeps" / "model_size.yaml"), "--count", "1"]
    command += ["--sweep-id", "dup", "--", *FAST, "training.steps=20"]
    first = subprocess.Popen(command, cwd=tmp_path, env=no_key_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not (tmp_path / "outputs" / "sweep-dup" / "run.lock").exists() and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run(command, cwd=tmp_path, env=no_key_env(), capture_output=True, text=True, timeout=120)
    first.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 2
    assert "sweep outputs/sweep-dup is in use by process" in second.stderr
    assert len(read_jsonl(tmp_path / "outputs" / "sweep-dup" / "results.jsonl")) == 1  # each run once


@pytest.mark.parametrize(
    "text, says",
    [("program: train.py\nmethod: [grid", "not valid YAML"), ("- a\n- b\n", "a sweep config is a mapping")],
)
def test_a_broken_sweep_file_is_refused_in_one_line(tmp_path, text, says):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "icl_lr.run.sweep", str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    errors = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(errors) == 1 and says in errors[0], result.stderr


def run_interval(run_dir) -> tuple:
    """(first, last) timestamps of a run's train.log lines."""
    stamps = [line[1:24] for line in (run_dir / "train.log").read_text().splitlines() if line.startswith("[20")]
    return stamps[0], stamps[-1]


@pytest.mark.slow  # the suite's cover: the local sweep above
def test_workers_run_a_sweep_two_at_a_time_each_on_its_share_of_the_cores(tmp_path, monkeypatch, capfd, caplog):
    """... and the runner's console: a line per run start and end (k/N, elapsed, ETA, best so far), the runs'
    own output in their run dirs, a closing table best first."""
    caplog.set_level(logging.INFO, logger="icl_lr.run.sweep")
    monkeypatch.chdir(tmp_path)
    for key, value in no_key_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("JAX_NUM_CPU_DEVICES")  # each run's training.cpu_devices=auto splits what it is given
    path = ROOT / "sweeps" / "model_size.yaml"  # a grid: two workers must not get the same point
    results = run_sweep(path, count=2, overrides=[*FAST, "training.steps=40"], sweep_id="local-two", workers=2)
    assert [r["exit_code"] for r in results] == [0, 0]
    assert len({(r["model"], r["seed"]) for r in results}) == 2
    (first_start, first_end), (second_start, second_end) = (
        run_interval(tmp_path / "outputs" / "sweep-local-two" / r["run_id"]) for r in results
    )
    assert first_start < second_end and second_start < first_end  # they overlapped
    logs = [(tmp_path / "outputs" / "sweep-local-two" / r["run_id"] / "train.log").read_text() for r in results]
    devices = [int(re.search(r"on (\d+) CPU devices?;", log).group(1)) for log in logs]
    assert sum(devices) <= max(2, len(os.sched_getaffinity(0)))  # a share of the cores each, not all of them
    terminal = capfd.readouterr()
    assert "step 40/40" not in terminal.out + terminal.err  # the runs' output is in their run dirs
    for r in results:
        console = (tmp_path / "outputs" / "sweep-local-two" / r["run_id"] / "console.log").read_text()
        assert "step 40/40" in console and "done: 40 steps" in console
    lines = [record.getMessage() for record in caplog.records]
    starts = [line for line in lines if re.match(r"\[\d/2\] start ", line)]
    ends = [line for line in lines if re.match(r"\[\d/2\] end ", line)]
    assert len(starts) == len(ends) == 2 and all("elapsed 0:" in line for line in starts + ends)
    best = min(results, key=lambda r: r["eval/excess/mean"])
    assert "ETA 0:00:00" in ends[-1] and f"best so far {best['eval/excess/mean']:.4g} ({best['run_id']})" in ends[-1]
    table = lines[-1].splitlines()
    assert table[0] == "the sweep's runs, best first by eval/excess/mean (lower is better):"
    assert [row.split()[0] for row in table[2:]] == [
        r["run_id"] for r in sorted(results, key=lambda r: r["eval/excess/mean"])
    ]


def test_workers_get_a_gpu_or_cores_each_and_share_memory_when_they_share_a_gpu():
    assert worker_environment(0, 2, []) == {}  # CPU only: the runs get a share of the cores instead
    assert [worker_cores(slot, 2, [0, 1, 2, 3, 4]) for slot in range(2)] == [[0, 2, 4], [1, 3]]
    assert [worker_cores(slot, 3, [0, 1]) for slot in range(3)] == [[0], [1], [0]]
    assert worker_environment(1, 2, ["0", "1"]) == {"CUDA_VISIBLE_DEVICES": "1"}
    four_on_two = [worker_environment(slot, 4, ["0", "1"]) for slot in range(4)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in four_on_two] == ["0", "1", "0", "1"]
    assert {e["XLA_PYTHON_CLIENT_MEM_FRACTION"] for e in four_on_two} == {"0.45"}


@pytest.mark.slow  # the suite's cover: the pack launcher's multirun; submitit on SLURM: the slurm tier
def test_a_multirun_through_the_submitit_launcher(tmp_path):
    """hydra/launcher=slurm's launcher in its local mode: each job in a submitit process of its own."""
    command = [sys.executable, "train.py", "-m", "hydra/launcher=submitit_local", *FAST, "training.steps=20"]
    command += ["seed=0,1", f"hydra.sweep.dir={tmp_path}"]
    result = subprocess.run(command, cwd=ROOT, env=no_key_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads((tmp_path / job / "summary.json").read_text()) for job in ("0", "1")]
    assert [s["step"] for s in summaries] == [20, 20]
    assert summaries[0]["eval/model/error_mean"] != summaries[1]["eval/model/error_mean"]  # two seeds
    assert list(tmp_path.glob(".submitit/*"))  # submitit's job folders: it ran them
    slurm = subprocess.run(
        [sys.executable, "train.py", "hydra/launcher=slurm", "--cfg", "hydra", "--package", "hydra.launcher"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    launcher = yaml.safe_load(slurm.stdout)
    assert launcher["_target_"].endswith("SlurmLauncher") and launcher["gpus_per_node"] == 1


def test_the_slurm_agent_script_parses_and_asks_for_a_sweep():
    script = ROOT / "scripts" / "slurm_agent.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    bare = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert bare.returncode != 0 and "usage: sbatch --array" in bare.stderr


@pytest.mark.slow  # the suite's cover of a stop: test_records.py's SIGTERM
def test_ctrl_c_ends_a_local_sweep_cleanly(tmp_path):
    command = [sys.executable, "-m", "icl_lr.run.sweep", str(ROOT / "sweeps" / "model_size.yaml"), "--count", "2"]
    command += ["--sweep-id", "local-int", "--", *FAST, "training.steps=5000", "training.checkpoint_every=20"]
    # A terminal's foreground job: its own process group, SIGINT at its default. A suite started in the
    # background of a non-interactive shell ignores SIGINT and would pass that on; a handler is not inherited.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        sweep = subprocess.Popen(command, cwd=tmp_path, env=no_key_env(), stderr=subprocess.PIPE, text=True,
                                 start_new_session=True)  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, previous)
    run_dirs = tmp_path / "outputs" / "sweep-local-int"
    deadline = time.time() + 120
    while not list(run_dirs.glob("*/checkpoints/latest/[0-9]*")) and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(sweep.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground process group
    _, stderr = sweep.communicate(timeout=120)
    assert sweep.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    (line,) = [line for line in stderr.splitlines() if "[sweep] interrupted" in line]  # one line
    assert "interrupted during run" in line and "--resume local-int" in line
    continued = shlex.split(line.split("continue with: ")[1])
    assert continued[-len(FAST) - 3 :] == ["--", *FAST, "training.steps=5000", "training.checkpoint_every=20"]
    (run_dir,) = [p for p in run_dirs.iterdir() if p.is_dir()]
    (folder,) = (tmp_path / "wandb").glob(f"offline-run-*-{run_dir.name}")  # WANDB_DIR: where the sweep started
    assert RunFile.load(folder).exit_code not in (None, 0)  # marked failed


@pytest.mark.slow  # the suite's cover: test_pack.py's diverging job alone, whose multirun goes on
def test_a_failing_multirun_job_neither_stops_nor_spoils_the_next(tmp_path):
    """One process runs every job: a config error, then a run that diverges after W&B started, then good runs."""
    command = [sys.executable, str(ROOT / "train.py"), "-m", *FAST, "training.steps=20", "training.grad_clip=1e30"]
    command += ["model.n_head=3,2", "training.learning_rate=1e8,1e-3", f"hydra.sweep.dir={tmp_path}"]
    result = subprocess.run(command, cwd=ROOT, env=no_key_env(), capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert output.count("config error: model.n_embd (32) must be divisible by model.n_head (3)") >= 2
    assert "training stopped: the training loss is nan at step" in output
    assert not (tmp_path / "0" / "wandb").exists() and not (tmp_path / "1" / "wandb").exists()
    diverged, good = (RunFile.load(next((tmp_path / j / "wandb").glob("offline-run-*"))) for j in ("2", "3"))
    assert diverged.run_id != good.run_id and diverged.exit_code == 1 and good.exit_code == 0
    assert good.config_value("training.learning_rate") == 1e-3 and good.config_value("model.n_head") == 2
    assert [row["step"] for row in good.history if "train/loss" in row] == [10, 20]  # its own history only
    assert json.loads((tmp_path / "3" / "summary.json").read_text())["step"] == 20


@pytest.mark.slow  # the suite's cover: an agent killed mid-run (below) and the SLURM array (slurm tier)
def test_agents_sharing_a_sweep_run_each_point_once_and_take_over_an_orphaned_run(tmp_path):
    """--agent, as a job array's tasks start it: two agents at once on a 3-point grid each run one point; a
    claim whose agent died on this host is resumed by the next agent under its run id; then nothing is left."""
    sweep = seed_sweep(tmp_path / "seeds.yaml")
    folder = tmp_path / "outputs" / "sweep-shared"
    folder.mkdir(parents=True)
    gone = f"{os.uname().nodename}-{2**22 + 1}"  # a pid above Linux's largest: no process has it
    orphan = {"run_id": "orphan01", "params": {"seed": 2}, "agent": gone}
    (folder / "claims.jsonl").write_text(json.dumps(orphan) + "\n")
    agent = [sys.executable, "-m", "icl_lr.run.sweep", str(sweep), "--agent", "--sweep-id", "shared", "--count", "3"]
    agent += ["--", *FAST, "training.steps=20"]
    started = [subprocess.Popen(agent, cwd=tmp_path, env=no_key_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for _ in range(3)]  # fmt: skip
    outputs = [p.communicate(timeout=300)[0] for p in started]
    assert [p.returncode for p in started] == [0, 0, 0], outputs
    results = read_jsonl(folder / "results.jsonl")
    assert sorted(r["seed"] for r in results) == [0, 1, 2]  # each point once; seed 2 is the orphan's
    assert {r["run_id"] for r in results if r["seed"] == 2} == {"orphan01"}
    assert all(json.loads((tmp_path / r["run_dir"] / "summary.json").read_text())["step"] == 20 for r in results)
    last = subprocess.run(agent, cwd=tmp_path, env=no_key_env(), capture_output=True, text=True, timeout=120)
    assert last.returncode == 0 and "nothing left for this agent" in last.stdout + last.stderr
    refused = subprocess.run(agent[:5] + ["--agent", "--count", "3"], cwd=tmp_path, capture_output=True, text=True)
    assert refused.returncode == 2 and "--agent takes --sweep-id" in refused.stderr


def test_an_agent_killed_mid_run_stops_its_run_and_the_next_agent_records_it_once(tmp_path):
    """SIGKILL of an agent: its run's process gets SIGTERM (it checkpoints and ends, never training on unrecorded);
    the next agent takes the orphaned claim, resumes the run to its end and records it once, with its metric. An
    agent killed after its run ended but before recording it: the next agent records that run as finished."""
    sweep = seed_sweep(tmp_path / "seeds.yaml", seeds=(0, 1))
    sweep.write_text(sweep.read_text() + "metric: {name: eval/excess/mean, goal: minimize}\n")
    folder = tmp_path / "outputs" / "sweep-kill"
    agent = [sys.executable, "-m", "icl_lr.run.sweep", str(sweep), "--agent", "--sweep-id", "kill", "--count", "2"]
    agent += ["--", *FAST, "training.steps=200", "training.eval_every=100"]
    first = subprocess.Popen(agent, cwd=tmp_path, env=no_key_env(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while not list(folder.glob("*/checkpoints/latest/[0-9]*")) and time.time() < deadline:
        time.sleep(0.05)
    first.kill()
    first.wait()
    (run_dir,) = [p.parent.parent.parent for p in folder.glob("*/checkpoints/latest/[0-9]*")][:1]
    lock = run_dir / "run.lock"
    while lock.exists() and time.time() < deadline:  # the run's process saves and ends on its parent's death
        time.sleep(0.1)
    assert not lock.exists() and "preempted" in (run_dir / "console.log").read_text()
    assert not (run_dir / "summary.json").exists()
    second = subprocess.run(agent, cwd=tmp_path, env=no_key_env(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    (result,) = read_jsonl(folder / "results.jsonl")
    assert result["run_id"] == run_dir.name and result["exit_code"] == 0
    assert result["eval/excess/mean"] == json.loads((run_dir / "summary.json").read_text())["eval/excess/mean"]
    assert json.loads((run_dir / "summary.json").read_text())["step"] == 200
    # killed after its run ended, before recording it: the result line is lost and the claim is orphaned
    (folder / "results.jsonl").write_text("")
    claims = read_jsonl(folder / "claims.jsonl")
    gone = f"{os.uname().nodename}-{2**22 + 1}"  # a pid above Linux's largest: no process has it
    (folder / "claims.jsonl").write_text("".join(json.dumps(c | {"agent": gone}) + "\n" for c in claims))
    third = subprocess.run(agent, cwd=tmp_path, env=no_key_env(), capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stdout + third.stderr
    (again,) = read_jsonl(folder / "results.jsonl")
    assert again == result  # recorded as the finished run it is: same metric, exit code 0
