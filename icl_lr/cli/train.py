"""Train one model: `python train.py [hydra overrides]`. One Hydra run = one W&B run.

Examples:
  python train.py                                   # default: d=5, tiny GPT-2, ~minutes on a CPU
  python train.py model=gpt2_small data.noise_std=0.5 training.learning_rate=3e-4
  python train.py -m data.noise_std=0,0.25,0.5      # Hydra multirun
  python train.py hydra.run.dir=outputs/<dir>       # resume a stopped run from its last checkpoint
"""

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import NamedTuple

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from icl_lr.cli.errors import INTERRUPTED, PREEMPTED, exit_code
from icl_lr.fields import ConfigError
from icl_lr.records import schema
from icl_lr.records.run_dir import RunDirLock, config_record, read_config_record
from icl_lr.run.config import from_dictconfig, overrides_from_agent, section_overrides
from icl_lr.run.start import plan_start, with_horizon
from icl_lr.train.preemption import StopRequest

log = logging.getLogger("icl_lr")
GROUPS = ("data", "model", "training", "experiment")  # config groups whose choice W&B records


class JobFailed(RuntimeError):
    """A multirun job that failed; Hydra records it and goes on with the next job."""


class Job(NamedTuple):
    """One run as a launcher hands it over: its composed config, run dir, this start's attempt dir (its Hydra
    files), the config groups chosen and the command line's overrides."""

    cfg: DictConfig
    run_dir: Path
    attempt_dir: Path
    choices: dict
    overrides: list


def run(cfg: DictConfig, run_dir: Path, attempt_dir: Path, choices: dict, stop: StopRequest, overrides=()) -> None:
    """One run on run_dir: checks, W&B, training. Raises on failure (W&B's run is then marked failed).
    `overrides`: the command line's, whose keys of a component the run does not have are refused.

    Multi-host (training.distributed): process 0 runs this; the others train beside it once it says so.
    """
    run_cfg = from_dictconfig(cfg, overrides)
    # Imported once Hydra has set up logging: orbax's first (absl) log line otherwise installs a second
    # root handler, which doubles every line of `--info`; `--help`, `--cfg` and `--info` skip JAX too.
    from icl_lr.records.tracking import resolve_mode
    from icl_lr.train import parallel

    mode = resolve_mode(run_cfg.wandb.mode)  # a bad WANDB_MODE is a config error, before anything starts
    parallel.use_cpu_devices(run_cfg)
    parallel.use_compile_cache(run_cfg)
    if run_cfg.training.distributed:
        parallel.initialize_distributed()
        if not parallel.same_on_every_process(str(run_dir.absolute())):
            raise ConfigError(
                "training.distributed: the processes have different run dirs; give them one, "
                "e.g. hydra.run.dir=outputs/slurm-$SLURM_JOB_ID"
            )
        if not parallel.is_primary():
            logging.getLogger("icl_lr").setLevel(logging.WARNING)  # process 0 tells the progress
            if parallel.agree(0):  # process 0 has committed the start: its record holds the resolved config
                from icl_lr.train.loop import train

                train(with_horizon(run_cfg, read_config_record(run_dir)), run_dir, stop=stop)
            return
    with contextlib.ExitStack() as stack:
        started = start_run(stack, run_cfg, run_dir, attempt_dir, choices, mode)
        if started:
            from icl_lr.train.loop import train

            train(*started, stop=stop)


def start_run(stack: contextlib.ExitStack, run_cfg, run_dir: Path, attempt_dir: Path, choices: dict, mode: str):
    """Locks run_dir and starts its W&B run for the life of `stack`, after every check of the start and its
    record: (the config to train, run_dir, trackers), or None for a run with nothing left to do (said)."""
    from icl_lr.train import parallel

    stack.enter_context(RunDirLock(run_dir))
    try:
        start = plan_start(run_dir, run_cfg)
        if not start.finished:
            parallel.check_split(start.cfg)  # before W&B starts a run for it
            run_id = start.commit(attempt_dir)
    except Exception:
        parallel.agree(0)  # the other processes stop too
        raise
    parallel.agree(not start.finished)
    if start.finished:
        excess = start.finished.get("eval/excess/mean", float("nan"))
        over = start.finished.get(schema.REFERENCE, schema.BAYES)
        done = f"{run_dir} already finished at step {start.finished['step']} (excess over {over} {excess:.4f})"
        log.info("%s; nothing to do. Raise training.steps to extend it.", done)
        return None
    if mode == "disabled":  # no W&B at all: it need not even be installed
        return start.cfg, run_dir, ()
    from icl_lr.records.code import code_config
    from icl_lr.records.tracking import WandbRun, flat_config

    config = flat_config(config_record(start.cfg), choices) | code_config(start.code)
    return start.cfg, run_dir, [stack.enter_context(WandbRun(run_cfg.wandb, mode, config, run_dir, run_id))]


def run_pack(jobs: list, stop: StopRequest, keys: tuple | None = None) -> list:
    """The runs of `jobs` (Job each) as one program (icl_lr/train/pack.py), each with its own run dir and W&B run;
    a run that had finished is left out. `keys`: the traced keys where a launcher has checked the pack already
    (else checked here, before any run dir is touched). Returns each trained run's (run dir, result, or the error
    that stopped it alone)."""
    from icl_lr.records.tracking import resolve_mode
    from icl_lr.train import pack, parallel

    run_cfgs = [from_dictconfig(job.cfg, job.overrides) for job in jobs]
    run_dirs = [Path(job.run_dir).resolve() for job in jobs]
    shared = sorted({str(d) for d in run_dirs if run_dirs.count(d) > 1})
    if shared:
        raise ConfigError(f"training.pack: runs of the pack share the run dir {', '.join(shared)}; give each its own")
    mode = resolve_mode(run_cfgs[0].wandb.mode)
    if run_cfgs[0].training.distributed:
        raise ConfigError("training.distributed: a pack trains in one process; pack runs without it")
    parallel.use_cpu_devices(run_cfgs[0])
    parallel.use_compile_cache(run_cfgs[0])
    if keys is None:
        keys = pack.check(run_cfgs, parallel.data_mesh())
    names = pack.log_names(len(jobs))  # each job's index for its log lines
    with contextlib.ExitStack() as stack:
        started = []
        for name, run_cfg, job in zip(names, run_cfgs, jobs, strict=True):
            with pack.as_member(name):
                run = start_run(stack, run_cfg, job.run_dir, job.attempt_dir, job.choices, mode)
            started += [(name, run)] if run else []
        if not started:
            return []
        from icl_lr.train.loop import train_pack

        names, started = zip(*started, strict=True)
        results = train_pack(list(started), stop, keys, list(names))
    return [(run_dir, result) for (_, run_dir, _), result in zip(started, results, strict=True)]


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")  # icl_lr/configs: the repo's configs/
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    choices = {group: hydra_cfg.runtime.choices.get(group) for group in GROUPS}
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    stop = StopRequest().install()
    logging.raiseExceptions = False  # a full disk fails train.log's handler too: no traceback per log line
    try:
        run(cfg, run_dir, run_dir / hydra_cfg.output_subdir, choices, stop, hydra_cfg.overrides.task)
    except (Exception, KeyboardInterrupt) as error:
        code = exit_code(error)  # a bug raises here: Hydra shows where
        if multirun and code not in (INTERRUPTED, PREEMPTED):  # the next jobs run; Hydra reports it at the end
            raise JobFailed(f"{run_dir}: exit code {code} (its train.log says why)") from None
        raise SystemExit(code) from None  # interrupted or preempted: the whole multirun stops, to be resumed


def run_cli() -> None:
    """`python train.py` and `icl-lr-train`: the command line, as Hydra (and a sweep agent) give it."""
    if os.environ.get("WANDB_SWEEP_ID"):
        sys.argv = overrides_from_agent(sys.argv)
    sys.argv = [sys.argv[0], *section_overrides(sys.argv[1:])]
    main()


if __name__ == "__main__":
    run_cli()
