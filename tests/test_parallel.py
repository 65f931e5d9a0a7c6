"""Past one device: data parallel over a CPU split into devices and over processes, checkpoints across device
counts, bf16 compute."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import FAST, ROOT, auto_devices_env, final_state, no_key_env, run_config, train_cli
from icl_lr.records.schema import HELD_OUT, set_of
from icl_lr.records.tracking import read_jsonl
from icl_lr.run.start import plan_start
from icl_lr.train import setup
from icl_lr.train.loop import train
from icl_lr.train.optimizer import make_optimizer
from icl_lr.train.step import init_state

TWO_DEVICES = no_key_env(JAX_NUM_CPU_DEVICES="2")
CONSTANT_LR = ["training.schedule=constant", "wandb.mode=disabled"]  # a run cut at step 20 resumes the same
TOLERANCE = dict(rtol=1e-4, atol=1e-5)  # measured: float32 sums in another order (docs/scaling_out.md)
RUN = run_config(*FAST, *CONSTANT_LR)  # the runs' config, to read their checkpoints


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """40 steps on one device; and runs cut at step 20 and resumed on the other device count. One-device
    parts run in this process, two-device parts in a process that sees two devices."""
    root = tmp_path_factory.mktemp("devices")
    train(RUN, root / "one")
    train_cli(root / "two_then_one", *CONSTANT_LR, "training.steps=20", env=TWO_DEVICES)
    train(RUN, root / "two_then_one")
    first_half = plan_start(root / "one_then_two", run_config(*FAST, *CONSTANT_LR, "training.steps=20"))
    first_half.commit(None)  # its config record, as a start of train.py writes it: what the resume checks
    train(first_half.cfg, root / "one_then_two")
    second_half = train_cli(root / "one_then_two", *CONSTANT_LR, env=TWO_DEVICES)
    return root, second_half.stdout + second_half.stderr


def losses(run_dir):
    return np.asarray([r["train/loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in r])


def assert_params_close(a, b):
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **TOLERANCE)


def test_two_devices_train_and_evaluate_like_one(runs):
    """Steps 21-40 and the step-40 eval of one_then_two ran on two devices."""
    root, log = runs
    assert "resumed at step 20 of 40" in log and "on 2 CPU devices" in log
    summaries = [json.loads((root / name / "summary.json").read_text()) for name in ("one", "one_then_two")]
    assert [s["n_devices"] for s in summaries] == [1, 2]  # the devices of a run's last attempt, for the record
    np.testing.assert_allclose(losses(root / "one_then_two"), losses(root / "one"), **TOLERANCE)
    curves = [
        [r for r in read_jsonl(root / name / "curves.jsonl") if set_of(r) == HELD_OUT]
        for name in ("one", "one_then_two")
    ]
    assert [r["step"] for r in curves[1]] == [20, 40]
    np.testing.assert_allclose(curves[1][-1]["model"], curves[0][-1]["model"], **TOLERANCE)


CORES = len(os.sched_getaffinity(0))
SPLITS_A_CPU = pytest.mark.skipif(CORES < 2 or jax.default_backend() != "cpu", reason="splits a CPU of 2 cores or more")


@SPLITS_A_CPU
def test_a_cpu_is_split_into_one_device_per_core_once_per_process(tmp_path):
    """training.cpu_devices=auto: one device per core (FAST's batches of 16 and 32 split over 2, 4, 8, 16);
    a later job of the same multirun that asks for another count is refused, not run on the wrong one."""
    command = [sys.executable, "train.py", "-m", *FAST, "training.steps=10", "wandb.mode=disabled"]
    command += ["training.cpu_devices=auto,1", f"hydra.sweep.dir={tmp_path}"]
    result = subprocess.run(command, cwd=ROOT, env=auto_devices_env(), capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    split = min(16, 2 ** (CORES.bit_length() - 1))
    assert f"on {split} CPU devices;" in output
    assert f"config error: training.cpu_devices (1): this process already runs on {split} CPU devices" in output
    assert (tmp_path / "0" / "summary.json").exists() and not (tmp_path / "1" / "summary.json").exists()


@SPLITS_A_CPU
def test_a_batch_that_does_not_split_keeps_one_device(tmp_path):
    result = train_cli(
        tmp_path, "training.batch_size=15", "training.steps=10", "wandb.mode=disabled", env=auto_devices_env()
    )
    assert "on 1 CPU device;" in result.stdout + result.stderr


def slurm_task_env(task: int, n_tasks: int) -> dict:
    """The variables `srun` gives task `task` of a one-node job (jax.distributed reads them); the job id,
    from this process's id, picks the coordinator's port, so parallel test workers do not collide."""
    job = str(os.getpid())
    slurm = dict(SLURM_JOB_ID=job, SLURM_STEP_NODELIST="localhost", SLURM_NTASKS=str(n_tasks))
    return no_key_env(**slurm, SLURM_PROCID=str(task), SLURM_LOCALID=str(task), SLURM_STEP_NUM_NODES="1")


def srun(commands: list) -> tuple[list, list]:
    """Each command as one task of a SLURM job step, all at once: (exit codes, outputs)."""
    env = lambda i: slurm_task_env(i, len(commands))  # noqa: E731
    tasks = [
        subprocess.Popen(c, cwd=ROOT, env=env(i), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for i, c in enumerate(commands)
    ]
    logs = [task.communicate(timeout=300)[0].decode() for task in tasks]
    return [task.returncode for task in tasks], logs


def test_processes_with_different_run_dirs_all_stop(tmp_path):
    command = [sys.executable, "train.py", *FAST, "training.distributed=true", "wandb.mode=disabled"]
    codes, logs = srun([[*command, f"hydra.run.dir={tmp_path / str(i)}"] for i in range(2)])
    assert codes == [2, 2]
    assert all("the processes have different run dirs" in log for log in logs)


@pytest.mark.slow  # the suite's cover: two devices above, and the processes' start below
def test_two_processes_train_like_one_and_resume_on_one(runs, tmp_path):
    """training.distributed under SLURM's variables: two processes of one CPU device each train one run
    (process 0 alone writes the run dir and W&B), as one process does; the run dir then resumes on one."""
    root, _ = runs
    run_dir = tmp_path / "two_processes"
    command = [sys.executable, "train.py", *FAST, *CONSTANT_LR, "training.distributed=true", f"hydra.run.dir={run_dir}"]
    codes, logs = srun([command, command])
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "on 2 CPU devices in 2 processes" in logs[0] and "step 40/40" in logs[0]
    assert "step 40/40" not in logs[1]  # process 1 trains quietly
    np.testing.assert_allclose(losses(run_dir), losses(root / "one"), **TOLERANCE)
    assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in r] == [10, 20, 30, 40]
    assert_params_close(final_state(RUN, run_dir), final_state(RUN, root / "one"))
    resumed = train_cli(run_dir, *CONSTANT_LR, "training.steps=60", wandb=True)
    assert "resumed at step 40 of 60" in resumed.stdout + resumed.stderr


def test_checkpoints_move_between_device_counts(runs):
    root, _ = runs
    straight = final_state(RUN, root / "one")
    for name in ("two_then_one", "one_then_two"):
        records = read_jsonl(root / name / "metrics.jsonl")
        assert [r["step"] for r in records if "train/loss" in r] == [10, 20, 30, 40]  # resumed at 20, none twice
        assert_params_close(final_state(RUN, root / name), straight)


SPLIT_CHECK = """
import jax, json, sys
sys.path.insert(0, "tests")
from helpers import FAST, held_out, run_config
from icl_lr.train import evaluate, parallel
from icl_lr.train.optimizer import make_optimizer
from icl_lr.train import setup
from icl_lr.train.step import init_state, make_dispatch
cfg = run_config(*FAST)
mesh = parallel.data_mesh()
run, tx = setup.build(cfg), make_optimizer(cfg.training)
model = run.model
state = jax.device_put(init_state(run, tx, 0), parallel.replicated(mesh))
step = make_dispatch(run, tx, cfg, mesh).lower(state, 2).compile()
eval_set = held_out(cfg.data, cfg.eval)
curves_fn = evaluate.make_model_curves_fn(model, cfg.eval, mesh)
curves = curves_fn.lower(state.params, eval_set.inputs, eval_set.ys).compile()
print(json.dumps({"devices": mesh.size, "step": step.as_text(), "eval": curves.as_text()}))
"""


def test_the_step_and_the_eval_are_split_across_devices():
    """Compiled for two devices, the step sums its gradients across them (an all-reduce), so each device
    computed half the batch; the eval gathers its per-device sums the same way."""
    result = subprocess.run(
        [sys.executable, "-c", SPLIT_CHECK], cwd=ROOT, env=TWO_DEVICES, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    compiled = json.loads(result.stdout.splitlines()[-1])
    assert compiled["devices"] == 2
    assert "all-reduce" in compiled["step"] and "all-reduce" in compiled["eval"]


def test_a_batch_that_does_not_split_is_refused_in_one_line(tmp_path):
    command = [sys.executable, "train.py", "training.batch_size=15", f"hydra.run.dir={tmp_path}"]
    result = subprocess.run(command, cwd=ROOT, env=TWO_DEVICES, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and not (tmp_path / "wandb").exists()  # refused before W&B starts a run
    assert "config error: training.batch_size (15) must be divisible by the number of devices (2)" in result.stdout


def test_bf16_computes_in_bfloat16_and_stays_near_float32():
    """Params stay float32; the outputs of a bf16 model are float32 and within bfloat16's rounding of fp32's."""
    cfg32, cfg16 = run_config(*FAST), run_config(*FAST, "training.precision=bf16")
    model32, model16 = setup.build(cfg32).model, setup.build(cfg16).model
    params = init_state(setup.build(cfg32), make_optimizer(cfg32.training), 0).params
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    xs = jax.random.normal(jax.random.PRNGKey(1), (8, cfg32.data.n_points, cfg32.data.n_dims))
    ys = jax.random.normal(jax.random.PRNGKey(2), (8, cfg32.data.n_points))
    inputs = model32.encoding.encode(xs, ys)
    out32 = model32.apply({"params": params}, inputs)
    out16 = model16.apply({"params": params}, inputs)
    assert out16.dtype == jnp.float32
    hidden = lambda model: model.apply({"params": params}, inputs, capture_intermediates=True)[1]
    block_out = hidden(model16)["intermediates"]["transformer"]["h_0"]["__call__"][0]
    assert block_out.dtype == jnp.bfloat16
    scale = float(jnp.abs(out32).max())
    assert 0 < float(jnp.abs(out16 - out32).max()) < 0.02 * scale  # bfloat16 keeps 8 bits of mantissa


def test_importing_the_package_does_not_start_jax():
    """training.cpu_devices must be applied before JAX's backend starts: no module may start it on import
    (a module-level jnp array did, and every run got one CPU device)."""
    code = (
        "import importlib, pkgutil, jax, icl_lr\n"
        "for m in pkgutil.walk_packages(icl_lr.__path__, 'icl_lr.'):\n"
        "    importlib.import_module(m.name)\n"
        "jax.config.update('jax_num_cpu_devices', 3)\n"
        "print(len(jax.devices('cpu')))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_NUM_CPU_DEVICES", "XLA_FLAGS")}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "3"
