"""The local sweep runner: proposals from the sweeps engine started `workers` at a time (or grouped into packs of
one shape, each pack one process), each run started as `wandb agent` starts it and recorded as it ends."""

import json
import logging
import os
import shlex
import subprocess
import sys
import time
import warnings
from functools import partial
from pathlib import Path
from typing import NamedTuple

from icl_lr.records.run_dir import RunDirError, RunDirLock, name_run, new_run_id
from icl_lr.records.tracking import read_jsonl
from icl_lr.run.config import overrides_from_agent
from icl_lr.run.sweep.devices import gpu_indices, on_cores, worker_cores, worker_environment
from icl_lr.run.sweep.process import CONSOLE, Running, die_with_parent, wait_for_one, wait_for_writer
from icl_lr.run.sweep.progress import Progress
from icl_lr.run.sweep.results import previous_runs, recorded
from icl_lr.run.sweep.spec import (
    agent_environment,
    agent_project,
    expand_command,
    load_sweep,
    plain,
    resolve_program,
    run_dir_of,
    sweeps,
)
from icl_lr.train.preemption import Preempted

log = logging.getLogger("icl_lr.run.sweep")


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
        done = previous_runs(results_file) if resume else []
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
            finished = wait_for_one(running)
            running.remove(finished)
            record, result = recorded(finished, metric, results_file)
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
    params = {key: plain(spec["value"]) for key, spec in config.items()}
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
        return [start_run(runner.sweep, proposal(configs[0]), runner.sweep_id, runner.overrides, slot, runner.workers,
                       gpus, number, progress)]  # fmt: skip
    folder, run_ids = Path("outputs") / f"sweep-{runner.sweep_id}", [new_run_id() for _ in configs]
    members = []
    for config, run_id in zip(configs, run_ids, strict=True):
        params = {key: plain(spec["value"]) for key, spec in config.items()}
        members.append(_member_argv(runner, config, agent_environment(runner.sweep, runner.sweep_id, run_id, params)))
    spec, console = folder / f"pack-{run_ids[0]}.json", folder / f"pack-{run_ids[0]}.log"
    spec.write_text(json.dumps({"runs": [overrides for _, overrides in members]}, indent=1) + "\n")
    run_dirs = [run_dir_of(overrides) for _, overrides in members]
    for run_dir, run_id in zip(run_dirs, run_ids, strict=True):
        run_dir.mkdir(parents=True, exist_ok=True)
        name_run(run_dir, run_id)
        if not (run_dir / CONSOLE).exists():
            (run_dir / CONSOLE).symlink_to(os.path.relpath(console, run_dir))
    environ = {"WANDB_PROJECT": agent_project(runner.sweep)} | worker_environment(slot, runner.workers, gpus)
    with open(console, "ab") as output:
        process = subprocess.Popen([sys.executable, "-m", "icl_lr.cli.pack", str(spec)], env=os.environ | environ,
                                   stdout=output, stderr=subprocess.STDOUT,
                                   preexec_fn=partial(die_with_parent, os.getpid()))  # fmt: skip
    runs = []
    for i, ((params, _), config, run_id, run_dir) in enumerate(zip(members, configs, run_ids, run_dirs, strict=True)):
        run = Running(process, run_id, proposal(config), params, run_dir, slot, number + i, time.monotonic(), True)
        progress.started_run(run, f" in pack {spec.name} ({len(configs)} runs)")
        runs.append(run)
    return runs


def start_run(sweep, proposal, sweep_id, overrides, slot, workers, gpus, number, progress: Progress,
           run_id: str | None = None) -> Running:  # fmt: skip
    """One run's process, started as `wandb agent` starts it, on worker `slot`'s devices; its output goes to
    its run dir's console.log, not to the runner's terminal. `run_id`: a claimed run's, resumed in its run dir."""
    params = {key: plain(spec["value"]) for key, spec in proposal.config.items()}
    run_id = run_id or new_run_id()
    environ = agent_environment(sweep, sweep_id, run_id, params)
    argv = expand_command(sweep, params, environ) + [f"wandb.group={sweep_id}", *overrides]
    run_dir = run_dir_of(argv)  # before the run: a command without it is refused untried
    devices = worker_environment(slot, workers, gpus)
    on, cores = (f" on GPU {devices['CUDA_VISIBLE_DEVICES']}" if devices else ""), None
    if not gpus and workers > 1 and hasattr(os, "sched_setaffinity"):
        cores = worker_cores(slot, workers, sorted(os.sched_getaffinity(0)))
        on = f" on CPU cores {','.join(map(str, cores))}"
    run_dir.mkdir(parents=True, exist_ok=True)
    wait_for_writer(run_dir)
    with on_cores(cores), open(run_dir / CONSOLE, "ab") as console:
        process = subprocess.Popen(argv, env=os.environ | environ | devices, stdout=console, stderr=subprocess.STDOUT,
                                   preexec_fn=partial(die_with_parent, os.getpid()))  # fmt: skip
    run = Running(process, run_id, proposal, params, run_dir, slot, number, time.monotonic())
    progress.started_run(run, on)
    return run


PACK_ON_GPU = 16  # --pack auto on a GPU: gpt2_tiny's runs at 16 to a pack (docs/benchmark.md)


def pack_size(value: str) -> int:
    """--pack's runs per pack: a number >= 1, or auto (PACK_ON_GPU with a GPU, else 1)."""
    if value == "auto":
        return PACK_ON_GPU if gpu_indices() else 1
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"--pack must be auto or an integer >= 1, got {value}")
    return int(value)
