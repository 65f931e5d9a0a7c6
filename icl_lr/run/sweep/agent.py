"""`--agent`: one run of a sweep that many agents share (a SLURM job array's tasks), each taking the next
proposal, or its own or an orphaned run, claimed in the sweep folder's claims.jsonl under its lock."""

import contextlib
import fcntl
import logging
import os
import socket
import warnings
from pathlib import Path

from icl_lr.records.run_dir import is_alive, new_run_id
from icl_lr.records.tracking import read_jsonl
from icl_lr.run.sweep.devices import gpu_indices
from icl_lr.run.sweep.progress import Progress
from icl_lr.run.sweep.results import append_result, previous_runs, recorded
from icl_lr.run.sweep.runner import start_run
from icl_lr.run.sweep.spec import load_sweep, plain, resolve_program, sweeps
from icl_lr.train.preemption import Preempted

log = logging.getLogger("icl_lr.run.sweep")
AGENTS_LOCK = "agents.lock"  # --agent: the sweep folder's lock between agents
CLAIMS_FILE = "claims.jsonl"  # --agent: {"run_id", "params", "agent"} of each run an agent took (latest line wins)


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
    done = previous_runs(results_file)
    ended = {run.name for run in done}
    latest = {claim["run_id"]: claim for claim in read_jsonl(claims_file)}
    open_claims = [claim for run_id, claim in latest.items() if run_id not in ended]
    config = lambda claim: {key: {"value": value} for key, value in claim["params"].items()}
    for claim in open_claims:
        if claim["agent"] == me or _orphaned(claim):
            if claim["agent"] != me:
                append_result(claims_file, claim | {"agent": me})  # the latest line of a run id is its claim
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
    params = {key: plain(spec["value"]) for key, spec in proposal.config.items()}
    append_result(claims_file, {"run_id": run_id, "params": params, "agent": me})
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
    run = start_run(sweep, proposal, sweep_id, overrides, 0, 1, gpu_indices(), number, progress, run_id)
    try:
        run.process.wait()
    except (KeyboardInterrupt, Preempted) as stop:  # the run checkpoints; this task's requeue resumes it
        if run.process.poll() is None and isinstance(stop, Preempted):
            run.process.terminate()
        run.process.wait()
        log.error("%s during run %s; the same agent, requeued, resumes it", type(stop).__name__, run_id)
        raise
    with _agents_lock(folder):
        _, result = recorded(run, metric, folder / "results.jsonl")
    progress.ended_run(run, result[metric], run.returncode, number)
    return [result]
