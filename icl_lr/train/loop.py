"""The training loop in named phases (train, log, eval, checkpoint, stop), for one run or for a pack of
runs of one shape trained as one program (icl_lr/train/pack.py), each run of a pack with its own run
dir, records, checkpoints and W&B run, as it would have alone.
"""

import logging
import time
from pathlib import Path

import jax
import numpy as np

from icl_lr.fields import ConfigError, one_line
from icl_lr.records.checkpoint import Checkpoints, restore_params
from icl_lr.records.run_dir import RunDirError, step_dirs
from icl_lr.records.schema import (
    METRICS_FILE,
    MODEL_ERROR,
)
from icl_lr.records.tracking import LocalFiles, Tracker, Trackers, read_jsonl
from icl_lr.train import evaluate, pack, parallel, phases
from icl_lr.train.config import RunConfig
from icl_lr.train.optimizer import make_optimizer
from icl_lr.train.preemption import NonFiniteLoss, StopRequest
from icl_lr.train.progress import LiveBar, duration
from icl_lr.train.setup import build
from icl_lr.train.step import init_state
from icl_lr.train.trajectory import trajectory_steps

log = logging.getLogger("icl_lr")


class Throughput:
    """Training steps per second over the dispatches since the last `reset`.

    Dispatches that compile (the first of each length) are left out, and so is everything between
    dispatches (eval, checkpoints, logging).
    """

    def __init__(self):
        self.compiled_lengths, self.steps, self.seconds = set(), 0, 0.0

    def record(self, n_steps: int, seconds: float) -> bool:
        """Counts one dispatch; returns True when it was a compile (not counted)."""
        if n_steps not in self.compiled_lengths:
            self.compiled_lengths.add(n_steps)
            return True
        self.steps, self.seconds = self.steps + n_steps, self.seconds + seconds
        return False

    def steps_per_second(self) -> float | None:
        return self.steps / self.seconds if self.steps else None

    def reset(self) -> None:
        self.steps, self.seconds = 0, 0.0


def _initial_params(init_from: str, template, tracker: Tracker):
    """Params from a local step directory, or from a W&B model artifact (downloaded through the run)."""
    try:
        path = Path(init_from) if Path(init_from).exists() else tracker.download_checkpoint(init_from)
        return restore_params(path, template)
    except Exception as error:  # a bad reference, no network, or shapes that do not fit the config
        reason = one_line(error, 300)
        raise ConfigError(f"init_from: cannot start from {init_from} ({type(error).__name__}: {reason})") from error


def _log_phase(tracker: Tracker, window: list, step: int, cfg: RunConfig, rate: float | None) -> None:
    """Mean train metrics over the dispatches since the last log line, and one progress line."""
    metrics = {k: np.concatenate([w[k] for w in window]) for k in window[0]}
    record = {
        "train/loss": float(metrics["loss"].mean()),
        "train/grad_norm": float(metrics["grad_norm"].mean()),
        "train/lr": float(metrics["lr"][-1]),
    }
    total = cfg.training.steps
    line = f"step {step}/{total} | loss {record['train/loss']:.4f} | grad norm {record['train/grad_norm']:.3f}"
    line += f" | lr {record['train/lr']:.2e}"
    if rate:
        record["train/steps_per_second"] = rate
        record["train/examples_per_second"] = rate * cfg.training.batch_size
        line += f" | {rate:.0f} steps/s | ETA {duration((total - step) / rate)}"
    tracker.log(record, step)
    log.info(line)


BEST_OF = ("train/loss", MODEL_ERROR)  # the summary keeps each one's minimum as best/<key>


def summary_of(records: list) -> dict:
    """The summary's metrics, derived from the run's records (metrics.jsonl): each key's last value, and
    best/<key> the minimum of each BEST_OF key. A lost or damaged summary.json is so rebuilt whole."""
    summary = {}
    for record in records:
        summary |= {k: v for k, v in record.items() if k != "step"}
        for key in BEST_OF:
            if key in record:
                summary[f"best/{key}"] = min(record[key], summary.get(f"best/{key}", np.inf))
    return summary


def _check_finite(metrics: dict, first_step: int) -> None:
    """Stops a run whose loss is no longer finite, rather than training on NaN."""
    finite = np.isfinite(metrics["loss"])
    if not finite.all():
        i = int(np.argmin(finite))
        raise NonFiniteLoss(
            f"the training loss is {metrics['loss'][i]} at step {first_step + i + 1} (lr {metrics['lr'][i]:.2e}): "
            "training diverged; lower training.learning_rate or raise training.warmup_steps"
        )


class Member:
    """One run of the loop: its config, components, checkpoints and trackers; `stopped`, the error that
    stopped it alone (a run of a pack whose loss is no longer finite)."""

    def __init__(self, index: int | None, cfg: RunConfig, run_dir: Path, trackers):
        self.index, self.cfg, self.run_dir, self.trackers = index, cfg, Path(run_dir), list(trackers)
        self.setup, self.tx = build(cfg), make_optimizer(cfg.training)  # the run's components, built once
        self.checkpoints = Checkpoints(self.run_dir / "checkpoints", cfg.training.max_to_keep)
        t = cfg.training
        self.trajectory = set(trajectory_steps(t.steps, t.steps_per_dispatch, t.trajectory))
        self.window, self.stopped, self.writers = [], None, []

    @property
    def tracker(self) -> Tracker:
        return Trackers(self.writers)

    def start_state(self, at_most: int | None = None):
        """The run dir's last checkpoint (at or before `at_most`), else fresh params (or init_from's); and
        whether it resumed."""
        cfg = self.cfg
        state = init_state(self.setup, self.tx, cfg.seed)
        restored = self.checkpoints.restore_latest(state, at_most)
        if restored is not None:
            return restored, True
        if cfg.init_from:
            log.info("initial params from %s", cfg.init_from)
            return state.replace(params=_initial_params(cfg.init_from, state, Trackers(self.trackers))), False
        return state, False


def _start_states(members: list) -> tuple[list, bool]:
    """Each run's start state, all at one step: a pack whose runs were checkpointed at different steps (a kill
    between their saves) resumes every run from the last step they all have. A run without a checkpoint there
    is refused before any later checkpoint is removed (and after, where the one there proved unreadable)."""
    started = [member.start_state() for member in members]
    steps = [int(state.step) for state, _ in started]
    if len(set(steps)) > 1:
        common = min(steps)
        kept = lambda m: {int(d.name) for d in step_dirs(m.checkpoints.latest.directory)}
        _refuse_behind(common, [m for m, step in zip(members, steps, strict=True) if common not in kept(m) | {step}])
        log.info("the pack's runs were checkpointed at steps %s: all resume from step %d", steps, common)
        started = [member.start_state(common) for member in members]
        _refuse_behind(common, [m for m, (state, _) in zip(members, started, strict=True) if state.step != common])
    return [state for state, _ in started], any(resumed for _, resumed in started)


def _refuse_behind(common: int, behind: list) -> None:
    if behind:
        run_dirs = ", ".join(str(m.run_dir) for m in behind)
        raise RunDirError(f"training.pack: no checkpoint at step {common} in {run_dirs}: a pack resumes its runs "
                          "from one step; resume them alone, or start new run dirs")  # fmt: skip


def train(cfg: RunConfig, run_dir: Path, trackers=(), stop: StopRequest | None = None) -> dict:
    """Trains to cfg.training.steps, resuming from run_dir's checkpoints; returns the final summary and
    the last held-out curves ("curves").

    `cfg.init_from` (a checkpoint step directory or W&B artifact reference) sets the initial params
    of a new run; a run dir with checkpoints of its own always resumes from those instead. `stop`: a
    SIGTERM or Ctrl-C, answered between dispatches by a checkpoint and `Preempted` or KeyboardInterrupt.
    """
    (result,) = train_pack([(cfg, run_dir, trackers)], stop)
    if isinstance(result, NonFiniteLoss):
        raise result
    return result


def train_pack(runs: list, stop: StopRequest | None = None, keys: tuple | None = None, names=None) -> list:
    """Trains each (cfg, run_dir, trackers) of `runs` as `train` does, several as one program (a pack,
    icl_lr/train/pack.py; `keys`: its traced keys where it was checked before; `names`: each run's index for its
    log lines, where a launcher's jobs are more than the runs); returns each run's result, or the NonFiniteLoss
    that stopped it alone."""
    stop = stop or StopRequest()
    cfgs = [cfg for cfg, _, _ in runs]
    t = cfgs[0].training
    parallel.check_split(cfgs[0])
    mesh = parallel.data_mesh()
    program = pack.Runs(cfgs, mesh, keys)
    names = pack.log_names(program.k) if names is None else names
    members = [Member(name, *run) for name, run in zip(names, runs, strict=True)]
    states, resumed = _start_states(members)
    state = parallel.replicate(program.stack(states), mesh)  # a checkpoint from any device count fits
    step, n_params = int(states[0].step), sum(p.size for p in jax.tree.leaves(states[0].params))
    del states
    epochs = f" ({t.num_epochs} epochs over {cfgs[0].data.train_size} prompts)" if t.num_epochs else ""
    log.info(
        "%s at step %d of %d%s; model %d parameters; on %d %s device%s%s; %s",
        "resumed" if resumed else "starting",
        step,
        t.steps,
        epochs,
        n_params,
        mesh.size,
        jax.devices()[0].platform.upper(),
        "s" * (mesh.size > 1),
        f" in {jax.process_count()} processes" if jax.process_count() > 1 else "",
        program.describe() if program.k > 1 else f"run dir {members[0].run_dir}",
    )  # fmt: skip
    started = time.perf_counter()
    eval_sets = {}  # the runs of a pack share the sets their configs share
    for member, run_state in zip(members, program.unstack(state), strict=True):
        with pack.as_member(member.index):
            if program.k > 1:
                log.info("run dir %s", member.run_dir)
            if parallel.is_primary():  # the other processes of a multi-host run write nothing
                member.writers = [LocalFiles(member.run_dir, resume_step=step), *member.trackers]
            member.evaluator = evaluate.Evaluator(member.setup, member.cfg, run_state.rng, mesh, eval_sets)
    del eval_sets
    dispatch = program.dispatch(members[0].setup, members[0].tx)
    facts = {"n_params": n_params, "n_devices": mesh.size, "pack_size": program.k}
    throughput = Throughput()
    stop.watched = True  # from here on, a stop signal is answered at the end of a dispatch

    with LiveBar(log, enabled=parallel.is_primary()) as bar:  # on a terminal only
        rate = None
        while step < t.steps and any(m.stopped is None for m in members):
            # train: one dispatch, up to the next multiple of steps_per_dispatch (a preempted run realigns)
            n_steps = min(t.steps_per_dispatch - step % t.steps_per_dispatch, t.steps - step)
            dispatch_started = time.perf_counter()
            state, metrics = dispatch(state, n_steps)
            metrics = jax.device_get(metrics)
            for i, member in enumerate(members):
                if member.stopped is None:
                    member.window.append(program.metrics_of(metrics, i))
            if throughput.record(n_steps, time.perf_counter() - dispatch_started) and "compile_seconds" not in facts:
                facts["compile_seconds"] = time.perf_counter() - dispatch_started
                log.info("train step compiled and first %d steps run in %.1fs", n_steps, facts["compile_seconds"])
            first_step, step = step, step + n_steps
            is_last = step == t.steps
            rate = throughput.steps_per_second() or rate
            bar.draw(step, t.steps, rate, duration((t.steps - step) / rate) if rate else None)
            stopping = stop.requested and not is_last  # one answer for every run of the pack
            saves = step % t.eval_every == 0 or step % t.checkpoint_every == 0 or is_last or stopping
            saves = saves or step in members[0].trajectory
            run_states = program.unstack(state) if saves else [None] * program.k
            for member, run_state in zip(members, run_states, strict=True):
                if member.stopped is None:
                    with pack.as_member(member.index):
                        _run_phases(member, run_state, first_step, step, rate, stop if stopping else None)
            if step % t.log_every == 0 or is_last or step in member.trajectory:
                throughput.reset()

            # stop (SIGTERM, Ctrl-C): every run checkpointed at this step, W&B told, then stop (the same command
            # resumes here)
            if stopping:
                for member in members:
                    member.checkpoints.close()
                stop.stop(f"at step {step}: checkpoint saved")

    results = []
    for member in members:
        with pack.as_member(member.index):
            member.checkpoints.close()
            results.append(member.stopped or _finish(member, step, facts | member.evaluator.references, started))
    return results


def _run_phases(member: Member, state, first_step: int, step: int, rate, stop: StopRequest | None):
    """One run's phases after a dispatch: its loss checked, log, eval, checkpoint and, when the loop `stop`s, its
    checkpoint at this step. A run whose loss is no longer finite stops alone (`member.stopped`), W&B told it
    failed: the other runs of its program go on."""
    t, tracker = member.cfg.training, member.tracker
    try:
        _check_finite(member.window[-1], first_step)
    except NonFiniteLoss as error:
        log.error("training stopped: %s%s", error, "; the pack's other runs go on" if member.index is not None else "")
        member.stopped = error
        tracker.stopped(error)
        return
    is_last = step == t.steps

    # log: train metrics and a progress line (at a trajectory step too: its loss beside its eval)
    if step % t.log_every == 0 or is_last or step in member.trajectory:
        _log_phase(tracker, member.window, step, member.cfg, rate)
        member.window = []

    # eval: error curves, and the best checkpoint by held-out error
    best_dir = None
    if step % t.eval_every == 0 or is_last or step in member.trajectory:
        scalars = member.evaluator(state.params, tracker, step, final=is_last)
        best_dir = member.checkpoints.save_best(state, scalars[MODEL_ERROR])

    # checkpoint: the latest state, and a trajectory step's kept for the study of the run's dynamics; one W&B
    # artifact version a step, with every alias that step has
    saved = step % t.checkpoint_every == 0 or is_last
    kept = member.checkpoints.save_trajectory(state) if step in member.trajectory else None
    aliases = ["latest"] * saved + [f"step-{step}"] * bool(saved or kept) + ["best"] * bool(best_dir)
    aliases += [f"trajectory-{step}"] * bool(kept)
    upload = member.checkpoints.save_latest(state) if saved else kept or best_dir
    if upload:
        tracker.log_checkpoint(upload, step, aliases)

    # stop (SIGTERM, Ctrl-C): a checkpoint at this step and W&B told
    if stop:
        if not saved:
            tracker.log_checkpoint(member.checkpoints.save_latest(state), step, ["latest", f"step-{step}"])
        log.warning("%s at step %d: checkpoint saved; the same command resumes here",
                    "SIGTERM" if stop.preempted else "Ctrl-C", step)  # fmt: skip
        if stop.preempted:
            tracker.preempting()


def _finish(member: Member, step: int, facts: dict, started: float) -> dict:
    """The run's summary (its records' and the loop's facts) to its trackers; returns it with the last held-out
    curves ("curves")."""
    run_dir = member.run_dir
    facts = facts | {"step": step, "wall_seconds": time.perf_counter() - started}
    facts["ood_seconds"] = member.evaluator.ood_seconds
    records = read_jsonl(run_dir / METRICS_FILE) if member.writers else []
    curves_by_step = phases.held_out_by_step(run_dir) if member.writers else {}
    summary = summary_of(records) | facts
    if member.cfg.training.trajectory or member.cfg.eval.predictions:  # a run studied by its steps
        summary |= phases.recorded(curves_by_step, member.tracker, step)
    member.tracker.finish(summary)
    log.info("done: %d steps in %s", step, duration(facts["wall_seconds"]))
    return summary | {"curves": curves_by_step[max(curves_by_step)] if curves_by_step else {}}
