"""Run a W&B sweep YAML on this machine, without a W&B server.

    python -m icl_lr.run.sweep sweeps/noise_prior.yaml --count 4 [-- extra Hydra overrides]
    python -m icl_lr.run.sweep sweeps/noise_prior.yaml --count 8 --resume local-abc123

Runs are proposed by the open-source W&B sweeps engine (`sweeps`, the one behind W&B's own
controller: grid, random, bayes), and each is started as `wandb agent` starts it: the command the
YAML names, expanded by wandb's own agent code, with the agent's environment (WANDB_PROJECT, WANDB_DIR,
WANDB_SWEEP_ID, WANDB_RUN_ID, WANDB_SWEEP_PARAM_PATH) and its parameter file, written by wandb's own code
(icl_lr/records/wandb_adapter.py).
Runs go one at a time (or `--workers N` at once: one GPU each, round robin, with JAX's memory share
set when several share one; on a CPU, a share of its cores each), offline, under
outputs/sweep-<id>/<run id>/ (its output in console.log there), grouped by the sweep id. The console gets a
line per run start and end (k/N, elapsed, ETA, best so far) and, at the end, the runs best first; each
run's result is appended to outputs/sweep-<id>/results.jsonl as soon as it ends.
Early termination needs concurrent runs and a server, so it is ignored here. `--agent` runs one run and
exits, as `wandb agent --count 1` does: many agents (a SLURM job array's tasks) share one sweep.
"""

import argparse
import contextlib
import ctypes
import fcntl
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import yaml

from icl_lr.fields import one_line
from icl_lr.records import wandb_adapter
from icl_lr.records.config import WandbConfig
from icl_lr.records.run_dir import RunDirError, RunDirLock, is_alive, name_run, new_run_id, packed_exit_code
from icl_lr.records.tracking import read_jsonl
from icl_lr.run.config import overrides_from_agent
from icl_lr.train.preemption import Preempted, StopRequest
from icl_lr.train.progress import duration

try:
    with warnings.catch_warnings():  # the engine's pydantic-1 style config warns on import under pydantic 2
        warnings.simplefilter("ignore")
        import sweeps
except ImportError:  # the [sweep] extra is not installed: main says so in one line
    sweeps = None

log = logging.getLogger("icl_lr.run.sweep")
CONSOLE = "console.log"  # a sweep run's output (stdout and stderr), in its run dir
AGENTS_LOCK = "agents.lock"  # --agent: the sweep folder's lock between agents
CLAIMS_FILE = "claims.jsonl"  # --agent: {"run_id", "params", "agent"} of each run an agent took (latest line wins)


def load_sweep(path: Path) -> dict:
    """The sweep config, refused (ValueError, one line) when it is not YAML, not a mapping, or breaks the
    sweeps engine's schema (every violation named)."""
    try:
        config = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({one_line(error, None)})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a sweep config is a mapping (program, method, parameters, ...), got {config!r:.80}")
    # run_cap is the W&B server's (the open-source engine's schema predates it): checked here, honoured by run_sweep
    parameters = config.get("parameters")  # the engine's schema check itself breaks on another type
    if "parameters" in config and not (
        isinstance(parameters, dict) and all(isinstance(spec, dict) for spec in parameters.values())
    ):
        raise ValueError(
            f"{path}: parameters must map each key to its spec ({{values: [...]}}), got {parameters!r:.80}"
        )
    run_cap = config.get("run_cap")
    if run_cap is not None and not (isinstance(run_cap, int) and run_cap >= 1):
        raise ValueError(f"{path}: run_cap must be a positive integer, got {run_cap!r}")
    violations = sweeps.schema_violations_from_proposed_config({k: v for k, v in config.items() if k != "run_cap"})
    if violations:
        raise ValueError(f"{path}: invalid sweep config: " + "; ".join(" ".join(v.split()) for v in violations))
    return config


def expand_command(sweep: dict, params: dict, environ: dict) -> list:
    """The argv `wandb agent` would run for these parameters (its macro expansion, step for step)."""
    macros = {"env": ["/usr/bin/env"], "interpreter": [sys.executable], "program": [sweep["program"]]}
    return wandb_adapter.agent_argv(sweep.get("command") or [], params, macros, environ)


def _plain(value):
    """numpy scalars from the engine as plain Python values."""
    return value.item() if hasattr(value, "item") else value


def _run_dir(argv: list) -> Path:
    for arg in argv:
        if arg.startswith("hydra.run.dir="):
            return Path(arg.split("=", 1)[1])
    raise ValueError("the sweep's command must set hydra.run.dir (see sweeps/*.yaml)")


def _record(run_dir: Path, name: str, config: dict, returncode: int):
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    history = read_jsonl(run_dir / "metrics.jsonl")
    state = sweeps.RunState.finished if returncode == 0 else sweeps.RunState.failed
    # by alias: under pydantic 2 the engine's models ignore the field names (summary_metrics, history)
    return sweeps.SweepRun(name=name, state=state, config=config, summaryMetrics=summary, sampledHistory=history)


def resolve_program(sweep: dict, sweep_path: Path) -> dict:
    """The sweep with `program` made absolute: found beside the YAML or in a folder above it (the
    YAML's repository), else among the package's commands (icl_lr/cli/: an installed package's YAMLs), so
    the sweep runs from any working directory."""
    program = Path(sweep["program"])
    if program.is_absolute():
        return sweep
    commands = Path(__file__).resolve().parents[1] / "cli"
    for folder in [Path(sweep_path).resolve().parent, *Path(sweep_path).resolve().parents, commands]:
        if (folder / program).is_file():
            return sweep | {"program": str(folder / program)}
    raise FileNotFoundError(f"{sweep_path}: program {program} is not beside the YAML nor in a folder above it")


def agent_environment(sweep: dict, sweep_id: str, run_id: str, params: dict) -> dict:
    """What `wandb agent` adds to a run's environment (wandb_agent.py: `run_agent` sets the project and
    entity, `Agent.__init__` WANDB_DIR where unset, `Agent._command_run` the sweep and run ids and the
    parameter file, which wandb.init merges over the run's config). The project is `agent_project`'s,
    never the folder's name, which W&B would otherwise take."""
    base = os.environ.get("WANDB_DIR") or os.path.abspath(os.getcwd())
    param_path = os.path.join(base, "wandb", f"sweep-{sweep_id}", f"config-{run_id}.yaml")
    wandb_adapter.write_param_file(param_path, params)
    environ = {"WANDB_PROJECT": agent_project(sweep), "WANDB_DIR": base}
    if sweep.get("entity"):
        environ["WANDB_ENTITY"] = sweep["entity"]
    return environ | {"WANDB_SWEEP_ID": sweep_id, "WANDB_RUN_ID": run_id, "WANDB_SWEEP_PARAM_PATH": param_path}


def _previous_runs(results_file: Path) -> list:
    """The sweeps engine's records of a resumed sweep's runs, from its results.jsonl."""
    runs = []
    for result in read_jsonl(results_file):
        run_dir = Path(result["run_dir"])
        config = {key: {"value": value} for key, value in result["params"].items()}
        runs.append(_record(run_dir, result["run_id"], config, result["exit_code"]))
    return runs


def gpu_indices() -> list:
    """This machine's NVIDIA GPUs, by index, as nvidia-smi lists them (none without it). Not through JAX:
    its first use would take most of each GPU's memory in this process."""
    try:
        listed = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True)
    except FileNotFoundError:
        return []
    return listed.stdout.decode().split() if listed.returncode == 0 else []


def worker_environment(slot: int, workers: int, gpus: list) -> dict:
    """Worker `slot`'s devices: GPU slot mod #GPUs (CUDA_VISIBLE_DEVICES), with JAX's memory share set when
    several workers share one GPU; nothing on a CPU-only machine (see `worker_cores`)."""
    if not gpus:
        return {}
    sharing = -(-workers // len(gpus))  # workers per GPU, at most
    environ = {"CUDA_VISIBLE_DEVICES": gpus[slot % len(gpus)]}
    if sharing > 1:
        environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / sharing:.2f}"
    return environ


def worker_cores(slot: int, workers: int, cores: list) -> list:
    """Worker `slot`'s CPU cores when the runs share a CPU: a disjoint share while there are enough
    (each run's training.cpu_devices=auto then splits its own share, not every core), else one core."""
    if workers >= len(cores):
        return [cores[slot % len(cores)]]
    return cores[slot::workers]


@contextlib.contextmanager
def _on_cores(cores: list | None):
    """Processes started inside run on `cores` (None: on this one's): they inherit this thread's CPU
    affinity, set for the while and restored (no preexec_fn, which forks unsafely beside threads)."""
    if cores is None:
        yield
        return
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, own)


class _Running(NamedTuple):
    process: subprocess.Popen
    run_id: str
    proposal: object  # the engine's SweepRun proposal
    params: dict
    run_dir: Path
    slot: int
    number: int  # k of k/N
    started: float  # time.monotonic() at its start
    packed: bool = False  # one of the runs of a pack (one process for several runs)

    @property
    def returncode(self) -> int:
        """The run's exit code: its process's; a run of a pack whose process ran to its end (0, or 1 when one
        of its runs stopped alone) has 0 when it finished (its summary.json), else 1."""
        code = self.process.returncode
        return packed_exit_code(self.run_dir, code) if self.packed else code


class Progress:
    """The runner's console: one line per run start and end with k/N, elapsed time, ETA (the mean duration
    of the runs ended so far, over the runs left, `workers` at a time) and the best result so far."""

    def __init__(self, count: int, workers: int, metric: str | None, goal: str):
        self.count, self.workers, self.metric, self.goal = count, workers, metric, goal
        self.started, self.durations, self.best = time.monotonic(), [], None

    def _clock(self, ended: int) -> str:
        elapsed = time.monotonic() - self.started
        line = f"elapsed {duration(elapsed)}"
        if self.durations:
            left = -(-(self.count - ended) // self.workers) * sum(self.durations) / len(self.durations)
            line += f", ETA {duration(left)}"
        return line

    def started_run(self, run: "_Running", on: str) -> None:
        params = " ".join(f"{k}={v}" for k, v in run.params.items())
        log.info("[%d/%d] start %s%s: %s | %s", run.number, self.count, run.run_id, on, params, self._clock(0))

    def ended_run(self, run: "_Running", value, returncode: int, ended: int) -> None:
        self.durations.append(time.monotonic() - run.started)
        if returncode == 0 and _is_number(value) and (self.best is None or self._better(value, self.best[0])):
            self.best = (value, run.run_id)
        result = f"{self.metric} {value:.4g}" if _is_number(value) else f"exit code {returncode}"
        best = f" | best so far {self.best[0]:.4g} ({self.best[1]})" if self.best else ""
        log.info(
            "[%d/%d] end %s: %s in %s | %s%s",
            run.number, self.count, run.run_id, result, duration(self.durations[-1]), self._clock(ended), best,
        )  # fmt: skip

    def _better(self, value, than) -> bool:
        return value > than if self.goal == "maximize" else value < than

    def table(self, results: list) -> str:
        """The runs of this call, the best first by the sweep's metric; failed runs last."""

        def key(result):
            value = result.get(self.metric)
            ok = result["exit_code"] == 0 and _is_number(value)
            return (not ok, (-value if self.goal == "maximize" else value) if ok else 0.0)

        ordered = sorted(results, key=key)
        names = sorted({k for r in results for k in r if k not in ("run_id", "exit_code", self.metric)})
        header = ["run_id", *names, self.metric or "metric", "exit_code"]
        rows = [[str(r.get(h, "")) if not _is_number(r.get(h)) else f"{r[h]:.4g}" for h in header] for r in ordered]
        widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
        direction = "higher" if self.goal == "maximize" else "lower"
        return f"the sweep's runs, best first by {self.metric} ({direction} is better):\n" + "\n".join(lines)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def run_sweep(
    sweep_path: Path,
    count: int,
    overrides: list,
    sweep_id: str | None = None,
    resume: bool = False,
    workers: int = 1,
    pack: int = 1,
) -> list:
    """Proposes and runs runs until the sweep has `count` (a resumed sweep's earlier runs count), up to
    `workers` at once, each in its own process and W&B run, or, with `pack` > 1, up to `pack` proposals of
    one shape in one process (a pack, icl_lr/train/pack.py), each still its own run dir and W&B run;
    returns one dict per run of this call: id, params, metric, exit code, run dir. One runner per sweep id:
    a second is refused while one runs (the sweep folder's lock), and a sweep id that has results goes on
    only with `resume`."""
    sweep = resolve_program(load_sweep(sweep_path), sweep_path)
    if sweep.get("run_cap") and sweep["run_cap"] < count:
        log.info("the sweep's run_cap is %d: %d runs instead of %d", sweep["run_cap"], sweep["run_cap"], count)
        count = sweep["run_cap"]
    sweep_id = sweep_id or f"local-{new_run_id()}"
    folder = Path("outputs") / f"sweep-{sweep_id}"
    with RunDirLock(folder, "sweep"):
        results_file = folder / "results.jsonl"
        if resume and not results_file.exists():
            raise FileNotFoundError(f"--resume {sweep_id}: no {results_file} here (start from the sweep's folder)")
        if not resume and results_file.exists():
            raise RunDirError(
                f"sweep {sweep_id} has {len(read_jsonl(results_file))} runs in {results_file} already: continue it "
                f"with --resume {sweep_id}, or give another --sweep-id"
            )
        done = _previous_runs(results_file) if resume else []
        log.info(
            "sweep %s (%s, %s, W&B project %s): %d runs, %d done before, %d at a time%s",
            sweep_id,
            sweep_path,
            sweep["method"],
            agent_project(sweep),
            count,
            len(done),
            workers,
            f", packs of up to {pack} runs" if pack > 1 else "",
        )
        continued = ["python", "-m", "icl_lr.run.sweep", str(sweep_path), "--count", str(count), "--resume", sweep_id]
        continued += ["--workers", str(workers)] * (workers > 1) + ["--pack", str(pack)] * (pack > 1)
        continued += ["--", *overrides] if overrides else []
        runner = _Runner(sweep, sweep_id, overrides, workers, pack)
        return _run_all(runner, count, done, results_file, shlex.join(continued))


def agent_project(sweep: dict) -> str:
    """The W&B project a sweep's runs log to: its `project:`, else WANDB_PROJECT, else wandb.project's default."""
    return sweep.get("project") or os.environ.get("WANDB_PROJECT") or WandbConfig().project


class _Runner(NamedTuple):
    """What every run of a local sweep is started with."""

    sweep: dict
    sweep_id: str
    overrides: list
    workers: int
    pack: int


def _run_all(runner: _Runner, count, done, results_file, continued: str) -> list:
    """The runs of the sweep, `workers` processes at a time, each recorded in results_file as it ends. On Ctrl-C
    the runs got the same signal and stop (their W&B runs marked failed); on SIGTERM they are sent one. Either
    way one line says what stopped and the command that goes on (`continued`)."""
    sweep, workers = runner.sweep, runner.workers
    metric = sweep.get("metric", {}).get("name")
    progress = Progress(count, workers * runner.pack, metric, sweep.get("metric", {}).get("goal", "minimize"))
    results, running, queued, exhausted, gpus = [], [], [], False, gpu_indices()
    try:
        while running or queued or (not exhausted and len(done) < count):
            # start: proposals while a worker is free (running runs count, as the W&B controller counts them)
            while len({r.slot for r in running}) < workers:
                if not queued:
                    queued = _propose(runner, count, done, running)
                    exhausted = exhausted or not queued
                if not queued:
                    break
                slot = min(set(range(workers)) - {r.slot for r in running})
                running += _start_group(runner, queued.pop(0), slot, gpus, len(done) + len(running) + 1, progress)
            if not running:
                break
            # wait: for the first run to end, then record it
            finished = _wait_for_one(running)
            running.remove(finished)
            record, result = _recorded(finished, metric, results_file)
            done.append(record)
            results.append(result)
            progress.ended_run(finished, result[metric], finished.returncode, len(done))
            if finished.returncode:
                log.error("run %s failed (exit code %d); see %s/%s", finished.run_id, finished.returncode,
                          finished.run_dir, CONSOLE)  # fmt: skip
    except (KeyboardInterrupt, Preempted) as stop:
        for run in running:
            if run.process.poll() is None and isinstance(stop, Preempted):
                run.process.terminate()  # Ctrl-C reached the runs already; a SIGTERM to the runner did not
            run.process.wait()
        log.error(
            "%s during run%s %s; %d finished runs are in %s; continue with: %s",
            "interrupted" if isinstance(stop, KeyboardInterrupt) else "stopped by SIGTERM",
            "s" * (len(running) > 1),
            ", ".join(r.run_id for r in running),
            len(done),
            results_file,
            continued,
        )
        raise
    if results:
        log.info(progress.table(results))
    return results


def _propose(runner: _Runner, count: int, done: list, running: list) -> list:
    """The next groups of proposals to start: one proposal, or up to `pack` grouped into packs of one shape."""
    proposals = []
    while len(proposals) < runner.pack and len(done) + len(running) + len(proposals) < count:
        configs = [r.proposal.config for r in running] + proposals
        pending = [sweeps.SweepRun(name=str(i), state=sweeps.RunState.running, config=c) for i, c in enumerate(configs)]
        with warnings.catch_warnings():  # the engine's scipy/sklearn deprecation noise
            warnings.simplefilter("ignore")
            proposal = sweeps.next_run(runner.sweep, done + pending)
        if proposal is None:
            log.info("the sweep's search space is exhausted after %d runs", len(done) + len(configs))
            break
        proposals.append(proposal.config)
    if runner.pack == 1:
        return [[config] for config in proposals]
    return _packs(runner, proposals)


def _packs(runner: _Runner, configs: list) -> list:
    """`configs` in groups that can each train as one pack (icl_lr/train/pack.py's `groups`)."""
    from icl_lr.run.config import run_config_of
    from icl_lr.train import pack, parallel

    environ = {"WANDB_SWEEP_ID": runner.sweep_id, "WANDB_RUN_ID": "grouping"}  # no run's: nothing is written
    cfgs = [run_config_of(_member_argv(runner, config, environ)[1]) for config in configs]
    groups = [[configs[i] for i in members] for members, _ in pack.groups(cfgs, runner.pack, parallel.data_mesh())]
    log.info("%d proposals in %d pack%s: %s", len(configs), len(groups), "s" * (len(groups) > 1),
             " + ".join(str(len(g)) for g in groups))  # fmt: skip
    return groups


def _member_argv(runner: _Runner, config: dict, environ: dict) -> tuple:
    """(params, train.py's overrides) of one run of a pack: the sweep's command for its parameters, as `wandb
    agent` expands it in `environ`, after its program; the sweep's project and group in its W&B section."""
    params = {key: _plain(spec["value"]) for key, spec in config.items()}
    argv = expand_command(runner.sweep, params, environ)
    program = runner.sweep["program"]
    if Path(program).name != "train.py" or program not in argv:
        raise ValueError(f"--pack trains the runs of train.py; the sweep's program is {program}")
    overrides = overrides_from_agent(argv[argv.index(program) :])[1:]
    overrides += [f"wandb.group={runner.sweep_id}", f"wandb.project={agent_project(runner.sweep)}"]
    overrides += [f"wandb.entity={runner.sweep['entity']}"] if runner.sweep.get("entity") else []
    return params, overrides + runner.overrides


def _start_group(runner: _Runner, configs: list, slot: int, gpus: list, number: int, progress: Progress) -> list:
    """The runs of one group started: one run as `wandb agent` starts it, several as one pack's process (its
    output in the sweep folder's pack-<first run id>.log, each run's console.log a link to it)."""
    proposal = lambda config: sweeps.SweepRun(name="", state=sweeps.RunState.running, config=config)
    if len(configs) == 1:
        return [_start(runner.sweep, proposal(configs[0]), runner.sweep_id, runner.overrides, slot, runner.workers,
                       gpus, number, progress)]  # fmt: skip
    folder, run_ids = Path("outputs") / f"sweep-{runner.sweep_id}", [new_run_id() for _ in configs]
    members = []
    for config, run_id in zip(configs, run_ids, strict=True):
        params = {key: _plain(spec["value"]) for key, spec in config.items()}
        members.append(_member_argv(runner, config, agent_environment(runner.sweep, runner.sweep_id, run_id, params)))
    spec, console = folder / f"pack-{run_ids[0]}.json", folder / f"pack-{run_ids[0]}.log"
    spec.write_text(json.dumps({"runs": [overrides for _, overrides in members]}, indent=1) + "\n")
    run_dirs = [_run_dir(overrides) for _, overrides in members]
    for run_dir, run_id in zip(run_dirs, run_ids, strict=True):
        run_dir.mkdir(parents=True, exist_ok=True)
        name_run(run_dir, run_id)
        if not (run_dir / CONSOLE).exists():
            (run_dir / CONSOLE).symlink_to(os.path.relpath(console, run_dir))
    environ = {"WANDB_PROJECT": agent_project(runner.sweep)} | worker_environment(slot, runner.workers, gpus)
    with open(console, "ab") as output:
        process = subprocess.Popen([sys.executable, "-m", "icl_lr.cli.pack", str(spec)], env=os.environ | environ,
                                   stdout=output, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)  # fmt: skip
    runs = []
    for i, ((params, _), config, run_id, run_dir) in enumerate(zip(members, configs, run_ids, run_dirs, strict=True)):
        run = _Running(process, run_id, proposal(config), params, run_dir, slot, number + i, time.monotonic(), True)
        progress.started_run(run, f" in pack {spec.name} ({len(configs)} runs)")
        runs.append(run)
    return runs


def _start(sweep, proposal, sweep_id, overrides, slot, workers, gpus, number, progress: Progress,
           run_id: str | None = None) -> _Running:  # fmt: skip
    """One run's process, started as `wandb agent` starts it, on worker `slot`'s devices; its output goes to
    its run dir's console.log, not to the runner's terminal. `run_id`: a claimed run's, resumed in its run dir."""
    params = {key: _plain(spec["value"]) for key, spec in proposal.config.items()}
    run_id = run_id or new_run_id()
    environ = agent_environment(sweep, sweep_id, run_id, params)
    argv = expand_command(sweep, params, environ) + [f"wandb.group={sweep_id}", *overrides]
    run_dir = _run_dir(argv)  # before the run: a command without it is refused untried
    devices = worker_environment(slot, workers, gpus)
    on, cores = (f" on GPU {devices['CUDA_VISIBLE_DEVICES']}" if devices else ""), None
    if not gpus and workers > 1 and hasattr(os, "sched_setaffinity"):
        cores = worker_cores(slot, workers, sorted(os.sched_getaffinity(0)))
        on = f" on CPU cores {','.join(map(str, cores))}"
    run_dir.mkdir(parents=True, exist_ok=True)
    _wait_for_writer(run_dir)
    with _on_cores(cores), open(run_dir / CONSOLE, "ab") as console:
        process = subprocess.Popen(argv, env=os.environ | environ | devices, stdout=console, stderr=subprocess.STDOUT,
                                   preexec_fn=_die_with_parent)  # fmt: skip
    run = _Running(process, run_id, proposal, params, run_dir, slot, number, time.monotonic())
    progress.started_run(run, on)
    return run


_PR_SET_PDEATHSIG = 1  # prctl(2)
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None  # loaded before any fork


def _die_with_parent() -> None:
    """In a run's process before it execs: SIGTERM when the runner or agent that started it dies, however it dies
    (SIGKILL too), so the run checkpoints and stops (exit 143) instead of training on unrecorded; the next
    agent resumes it. Only a prctl call here: nothing that could take a lock another thread held at the fork."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


WRITER_WAIT = 600  # seconds an agent waits for a run's earlier process to save and end before it resumes the run


def _wait_for_writer(run_dir: Path) -> None:
    """Waits while a process of this host still writes `run_dir` (the process of an agent that died, saving its
    checkpoint as it stops), so the run resumes from that checkpoint, or is recorded as the finished run it is,
    rather than being refused as in use."""
    lock = RunDirLock(run_dir)
    if not lock.is_held():
        return
    pid = lock.holder()[0]
    log.info("run dir %s is still written by process %s, the run's earlier process: waiting for it to end", run_dir,
             pid)  # fmt: skip
    deadline = time.monotonic() + WRITER_WAIT
    while lock.is_held() and time.monotonic() < deadline:
        time.sleep(0.5)


@contextlib.contextmanager
def _agents_lock(folder: Path):
    """Held by one agent at a time while it takes a proposal or records a result (an flock: others wait)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / AGENTS_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def agent_name() -> str:
    """Who claims a run: the SLURM array task or job (which a requeued job keeps), else host and pid."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    if job:
        return f"slurm-{job}" + (f"_{task}" if task else "")
    return f"{socket.gethostname()}-{os.getpid()}"


def _orphaned(claim: dict) -> bool:
    """A claim whose agent was a process of this host that has ended (not a SLURM task's: a requeue resumes it)."""
    host, _, pid = claim["agent"].rpartition("-")
    return host == socket.gethostname() and pid.isdigit() and not is_alive(int(pid))


def _claim(sweep: dict, folder: Path, count: int) -> tuple | None:
    """(run id, proposal config, k) of this agent's run: its own open claim (a requeued SLURM task), an orphaned
    one, or the engine's next proposal, claimed in claims.jsonl; None when the sweep has `count` runs or is done."""
    results_file, claims_file, me = folder / "results.jsonl", folder / CLAIMS_FILE, agent_name()
    done = _previous_runs(results_file)
    ended = {run.name for run in done}
    latest = {claim["run_id"]: claim for claim in read_jsonl(claims_file)}
    open_claims = [claim for run_id, claim in latest.items() if run_id not in ended]
    config = lambda claim: {key: {"value": value} for key, value in claim["params"].items()}
    for claim in open_claims:
        if claim["agent"] == me or _orphaned(claim):
            if claim["agent"] != me:
                _append_result(claims_file, claim | {"agent": me})  # the latest line of a run id is its claim
            return claim["run_id"], config(claim), len(done) + 1
    if len(done) + len(open_claims) >= count:
        log.info("the sweep has its %d runs (%d ended, %d running): nothing left for this agent", count, len(done),
                 len(open_claims))  # fmt: skip
        return None
    pending = [sweeps.SweepRun(name=c["run_id"], state=sweeps.RunState.running, config=config(c)) for c in open_claims]
    with warnings.catch_warnings():  # the engine's scipy/sklearn deprecation noise
        warnings.simplefilter("ignore")
        proposal = sweeps.next_run(sweep, done + pending)
    if proposal is None:
        log.info("the sweep's search space is exhausted after %d runs", len(done) + len(open_claims))
        return None
    run_id = new_run_id()
    params = {key: _plain(spec["value"]) for key, spec in proposal.config.items()}
    _append_result(claims_file, {"run_id": run_id, "params": params, "agent": me})
    return run_id, proposal.config, len(done) + len(open_claims) + 1


def run_agent(sweep_path: Path, count: int, overrides: list, sweep_id: str) -> list:
    """One run of the sweep, as `wandb agent --count 1` runs one: agents started anywhere that share the sweep's
    folder (a SLURM job array's tasks) each take the next proposal under the folder's lock, claimed in
    claims.jsonl, so no proposal runs twice; an agent requeued as the same SLURM task resumes its own run."""
    sweep = resolve_program(load_sweep(sweep_path), sweep_path)
    folder = Path("outputs") / f"sweep-{sweep_id}"
    with _agents_lock(folder):
        claimed = _claim(sweep, folder, count)
    if claimed is None:
        return []
    run_id, config, number = claimed
    metric = sweep.get("metric", {}).get("name")
    progress = Progress(count, 1, metric, sweep.get("metric", {}).get("goal", "minimize"))
    proposal = sweeps.SweepRun(name=run_id, state=sweeps.RunState.running, config=config)
    run = _start(sweep, proposal, sweep_id, overrides, 0, 1, gpu_indices(), number, progress, run_id)
    try:
        run.process.wait()
    except (KeyboardInterrupt, Preempted) as stop:  # the run checkpoints; this task's requeue resumes it
        if run.process.poll() is None and isinstance(stop, Preempted):
            run.process.terminate()
        run.process.wait()
        log.error("%s during run %s; the same agent, requeued, resumes it", type(stop).__name__, run_id)
        raise
    with _agents_lock(folder):
        _, result = _recorded(run, metric, folder / "results.jsonl")
    progress.ended_run(run, result[metric], run.returncode, number)
    return [result]


def _recorded(run: _Running, metric: str | None, results_file: Path) -> tuple:
    """(the engine's record, the result) of an ended run, its result appended to results_file."""
    returncode = run.returncode
    record = _record(run.run_dir, run.run_id, run.proposal.config, returncode)
    result = {"run_id": run.run_id, **run.params, metric: record.summary_metrics.get(metric), "exit_code": returncode}
    _append_result(results_file, result | {"params": run.params, "run_dir": str(run.run_dir)})
    return record, result


def _wait_for_one(running: list) -> _Running:
    """The first of the running runs to end (polled: each run is its own process)."""
    while True:
        for run in running:
            if run.process.poll() is not None:
                return run
        time.sleep(0.5)


def _append_result(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(result) + "\n")


PACK_ON_GPU = 16  # --pack auto on a GPU: gpt2_tiny's runs at 16 to a pack (docs/benchmark.md)


def pack_size(value: str) -> int:
    """--pack's runs per pack: a number >= 1, or auto (PACK_ON_GPU with a GPU, else 1)."""
    if value == "auto":
        return PACK_ON_GPU if gpu_indices() else 1
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"--pack must be auto or an integer >= 1, got {value}")
    return int(value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="a sweep YAML, e.g. sweeps/noise_prior.yaml")
    parser.add_argument("--count", type=int, default=4, help="runs in the sweep, earlier ones of --resume included")
    parser.add_argument("--sweep-id", help="name for the group and output folder (default: local-<random id>)")
    parser.add_argument("--resume", metavar="SWEEP_ID", help="continue this local sweep (its results.jsonl)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="runs at once, each in its own process (one GPU each when there are GPUs)",
    )
    parser.add_argument(
        "--pack",
        default="1",
        help="up to this many runs of one shape trained as one program (a pack: each still its own run dir and W&B "
        "run), or auto: 16 on a GPU, 1 on a CPU (where packing does not pay; docs/benchmark.md)",
    )
    parser.add_argument(
        "--agent",
        action="store_true",
        help="one run, then exit, as `wandb agent --count 1`: agents sharing --sweep-id (a SLURM job array's "
        "tasks, scripts/slurm_agent.sbatch) never run a proposal twice; --count is the whole sweep's",
    )
    parser.epilog = "Hydra overrides after `--` are added to every run, e.g. `-- training.steps=2000`."
    argv = sys.argv[1:] if argv is None else list(argv)
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][sweep] %(message)s")
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # --pack's grouping starts JAX
    if sweeps is None:
        log.error("the local sweep runner needs the W&B sweeps engine: pip install 'icl-lr[sweep]'")
        return 2
    StopRequest().install()  # SIGTERM: the runs are sent one and the runner stops, saying how to go on
    try:
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        pack = pack_size(args.pack)
        sweep_id = args.resume or args.sweep_id
        if args.agent:
            if not args.sweep_id or args.resume or args.workers != 1 or pack != 1:
                raise ValueError("--agent takes --sweep-id (the id its agents share), not --resume, --workers, --pack")
            results = run_agent(args.sweep, args.count, overrides, args.sweep_id)
        else:
            results = run_sweep(args.sweep, args.count, overrides, sweep_id, bool(args.resume), args.workers, pack)
    except (ValueError, FileNotFoundError, RunDirError) as error:
        log.error("%s", error)
        return 2
    except KeyboardInterrupt:
        return 130
    except Preempted:
        return Preempted.exit_code
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


def run_cli() -> None:
    """`python -m icl_lr.run.sweep` and `icl-lr-sweep`."""
    sys.exit(main())


if __name__ == "__main__":
    run_cli()
