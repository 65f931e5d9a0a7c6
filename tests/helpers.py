"""What the tests share: a fast run's overrides, composing configs, running train.py as a user does,
restoring a run's final state, and reading W&B's offline run files with W&B's own reader."""

import dataclasses
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np
import yaml
from hydra import compose, initialize_config_dir

from icl_lr.analysis import sources
from icl_lr.model.encoding import ENCODINGS
from icl_lr.records.checkpoint import Checkpoints
from icl_lr.records.run_dir import read_identity
from icl_lr.records.schema import HELD_OUT, set_of
from icl_lr.records.tracking import read_jsonl
from icl_lr.run.config import from_dictconfig, from_values, section_overrides
from icl_lr.task.registry import task_of
from icl_lr.train import setup
from icl_lr.train.optimizer import make_optimizer
from icl_lr.train.step import init_state

ROOT = Path(__file__).resolve().parents[1]

# A run small enough for a test: the tiny model, d=3, checkpoints/evals every 20 steps.
FAST = [
    "data.n_dims=3",
    "data.n_points=8",
    "model.n_layer=1",
    "model.n_embd=32",
    "training.batch_size=16",
    "training.steps=40",
    "training.warmup_steps=0",
    "training.steps_per_dispatch=10",
    "training.log_every=10",
    "training.eval_every=20",
    "training.checkpoint_every=20",
    "eval.n_prompts=64",
    "eval.batch_size=32",
    "eval.ood=false",  # the OOD suite has its own tests (test_ood.py)
]


def compose_config(*overrides, config_name="config"):
    """The Hydra config that `python train.py *overrides` would get."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name, overrides=section_overrides(overrides))


def run_config(*overrides):
    return from_dictconfig(compose_config(*overrides), overrides)


def data_config(**values):
    """A checked data section: the shared keys and those of the task and encoding it names (keys of other
    components dropped, as from a YAML)."""
    values = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in values.items()}
    return from_values({"data": values}).data


def model_config(**values):
    """A checked model section: the shared keys and those of the family it names."""
    return from_values({"model": values}).model


def encoding_for(family: str) -> str:
    """The encoding a family's tests use: the one it takes (paired for lsa and the encoder), else continuous."""
    from icl_lr.model.icl_model import FAMILIES

    return (getattr(FAMILIES.resolve(family), "encodings", None) or ("continuous",))[0]


def encoding_of(data):
    """The encoding a data section names, scored by its task."""
    return ENCODINGS.resolve(data.encoding).build(data, task_of(data))


def parts(data) -> tuple:
    """(task, encoding) of a data section, as a run's Setup holds them."""
    task = task_of(data)
    return task, ENCODINGS.resolve(data.encoding).build(data, task)


def held_out(data, eval_cfg, pool=None):
    """The held-out eval set of a data section."""
    from icl_lr.train import eval_sets

    return eval_sets.held_out_set(*parts(data), eval_cfg, pool)


def no_key_env(**extra) -> dict:
    """The environment of a machine with no W&B key and no mode set (W&B's default: offline here)."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_RUN_ID")}
    return env | {"NETRC": os.devnull} | extra


def auto_devices_env(**extra) -> dict:
    """no_key_env without the suite's one-device pin (conftest.py): training.cpu_devices=auto splits the
    CPU as it does for a user."""
    return {k: v for k, v in no_key_env(**extra).items() if k != "JAX_NUM_CPU_DEVICES"}


def run_env(wandb: bool) -> dict:
    """no_key_env, W&B off unless `wandb` (WANDB_MODE=disabled: two seconds less a start where W&B is not under
    test; a test of W&B's records asks for it, and fails without it)."""
    return no_key_env() if wandb else no_key_env(WANDB_MODE="disabled")


def train_cli(run_dir, *overrides, fast=True, env=None, cwd=ROOT, timeout=300, wandb=False):
    """`python train.py [FAST] overrides hydra.run.dir=run_dir`, as a user runs it; checks it succeeds. `env`:
    its environment, else run_env(wandb)."""
    command = [sys.executable, str(ROOT / "train.py"), *(FAST if fast else []), *overrides, f"hydra.run.dir={run_dir}"]
    result = subprocess.run(
        command, cwd=cwd, env=env or run_env(wandb), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def run_id_of(run_dir) -> str:
    """The W&B run id a run dir records (its identity.json)."""
    return read_identity(Path(run_dir))["wandb_run_id"]


def start(run_dir, *overrides, env=None, wandb=False):
    """`python train.py FAST overrides` on run_dir, whatever its exit code (`env`: as train_cli's)."""
    command = [sys.executable, str(ROOT / "train.py"), *FAST, *overrides, f"hydra.run.dir={run_dir}"]
    return subprocess.run(command, cwd=ROOT, env=env or run_env(wandb), capture_output=True, text=True, timeout=300)


def output(result) -> str:
    """What a finished `train.py` printed: Hydra's log lines go to stdout, Python's errors to stderr."""
    return result.stdout + result.stderr


def final_state(cfg, run_dir):
    """The last checkpointed TrainState of a run dir."""
    template = init_state(setup.build(cfg), make_optimizer(cfg.training), cfg.seed)
    checkpoints = Checkpoints(run_dir / "checkpoints", cfg.training.max_to_keep)
    try:
        return checkpoints.restore_latest(template)
    finally:
        checkpoints.close()


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@dataclass
class RunFile:
    """What one W&B run file recorded, read by W&B's own reader (`wandb leet inspect --json`, which
    checks each record's CRC): identity, config, history rows, summary, artifacts, exit code."""

    path: Path
    run_id: str = ""
    project: str = ""
    group: str = ""
    job_type: str = ""
    sweep_id: str = ""
    name: str = ""
    tags: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: list = field(default_factory=list)  # nested keys joined by "." (eval/curves.path)
    summary: dict = field(default_factory=dict)
    artifacts: list = field(default_factory=list)  # {name, type, aliases, files}
    exit_code: int | None = None

    @classmethod
    def load(cls, path: Path) -> "RunFile":
        """`path`: an offline-run-* directory or its .wandb file."""
        run = cls(Path(path))
        for record in sources.read_wandb_records(path):
            kind, body = record["type"], record.get(record["type"], {})
            if kind == "run":
                run.run_id, run.project, run.group = body["run_id"], body.get("project", ""), body.get("run_group", "")
                run.job_type, run.name, run.tags, run.sweep_id = (
                    body.get("job_type", ""),
                    body.get("display_name", ""),
                    body.get("tags", []),
                    body.get("sweep_id", ""),
                )
                run.config |= body.get("config", {}).get("update", {})
            elif kind == "config":
                run.config |= body.get("update", {})
            elif kind == "history":
                run.history.append(body["item"])
            elif kind == "summary":
                run.summary |= body.get("update", {})
                for key in body.get("remove", {}):
                    run.summary.pop(key, None)
            elif kind == "artifact":
                files = [entry["path"] for entry in body["manifest"]["contents"]]
                run.artifacts.append(
                    {"name": body["name"], "type": body["type"], "aliases": body["aliases"], "files": files}
                )
            elif kind == "exit":
                run.exit_code = body.get("exit_code", 0)
        return run

    def config_value(self, dotted_key: str):
        """A config value by its dotted key ('data.noise_std'), as icl-lr logs it: flat keys."""
        value = self.config[dotted_key]
        return value.get("value", value) if isinstance(value, dict) and "value" in value else value


def held_out_curves(run_dir) -> dict:
    """The last eval's held-out curves of a run dir ({"step": ..., "set": "held_out", predictor: [N]})."""
    return [r for r in read_jsonl(Path(run_dir) / "curves.jsonl") if set_of(r) == HELD_OUT][-1]


def kill_at_first_checkpoint(command: list, run_dir: Path, env=None) -> list:
    """Starts `command` (a train.py run on `run_dir`) and SIGKILLs it once its first checkpoint is written: the
    steps saved by then."""
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    steps = lambda: sorted(int(p.name) for p in (run_dir / "checkpoints" / "latest").glob("*") if p.name.isdigit())
    deadline = time.time() + 120
    while not steps() and time.time() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return steps()


def seed_sweep(path: Path, seeds=(0, 1, 2)) -> Path:
    """A grid sweep YAML over `seed`, with the sweeps' own command (a run dir per W&B run id)."""
    command = ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"]
    command += ["hydra.run.dir=outputs/sweep-${envvar:WANDB_SWEEP_ID}/${envvar:WANDB_RUN_ID}"]
    grid = {"program": "train.py", "method": "grid", "project": "icl-lr", "command": command}
    path.write_text(yaml.safe_dump(grid | {"parameters": {"seed": {"values": list(seeds)}}}))
    return path
