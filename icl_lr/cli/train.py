"""Train one model: `python train.py [hydra overrides]`. One Hydra run = one W&B run.

Examples:
  python train.py                                   # default: d=5, tiny GPT-2, ~minutes on a CPU
  python train.py model=gpt2_small data.noise_std=0.5 training.learning_rate=3e-4
  python train.py -m data.noise_std=0,0.25,0.5      # Hydra multirun
  python train.py hydra.run.dir=outputs/<dir>       # resume a stopped run from its last checkpoint
"""

import contextlib
import errno
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from icl_lr.fields import ConfigError
from icl_lr.records import schema
from icl_lr.records.run_dir import RunDirError, RunDirLock, config_record, read_config_record
from icl_lr.run.config import from_dictconfig, overrides_from_agent, section_overrides
from icl_lr.run.start import plan_start, with_horizon
from icl_lr.train.preemption import Preempted, StopRequest

log = logging.getLogger("icl_lr")
GROUPS = ("data", "model", "training", "experiment")  # config groups whose choice W&B records


class JobFailed(RuntimeError):
    """A multirun job that failed; Hydra records it and goes on with the next job."""


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


def run_pack(jobs: list, stop: StopRequest) -> list:
    """The runs of `jobs` ((cfg, run_dir, attempt_dir, choices, overrides) each, as `run` takes them) as one
    pack (icl_lr/train/pack.py), each with its own run dir and W&B run; a run that had finished is left out.
    Returns each trained run's (run dir, result, or the error that stopped it alone)."""
    from icl_lr.records.tracking import resolve_mode
    from icl_lr.train import pack, parallel

    run_cfgs = [from_dictconfig(cfg, overrides) for cfg, _, _, _, overrides in jobs]
    run_dirs = [Path(run_dir).resolve() for _, run_dir, _, _, _ in jobs]
    shared = sorted({str(d) for d in run_dirs if run_dirs.count(d) > 1})
    if shared:
        raise ConfigError(f"training.pack: runs of the pack share the run dir {', '.join(shared)}; give each its own")
    mode = resolve_mode(run_cfgs[0].wandb.mode)
    if run_cfgs[0].training.distributed:
        raise ConfigError("training.distributed: a pack trains in one process; pack runs without it")
    parallel.use_cpu_devices(run_cfgs[0])
    parallel.use_compile_cache(run_cfgs[0])
    pack.check(run_cfgs, parallel.data_mesh())  # refused before any run dir is touched
    with contextlib.ExitStack() as stack:
        started = []
        for run_cfg, (_, run_dir, attempt_dir, choices, _) in zip(run_cfgs, jobs, strict=True):
            with pack.as_member(len(started)):
                run = start_run(stack, run_cfg, run_dir, attempt_dir, choices, mode)
            started += [run] if run else []
        if not started:
            return []
        from icl_lr.train.loop import train_pack

        results = train_pack(started, stop)
    return [(run_dir, result) for (_, run_dir, _), result in zip(started, results, strict=True)]


def no_space_left(error: BaseException) -> bool:
    """Whether a full disk is behind `error`: an OSError ENOSPC anywhere in its chain (orbax wraps its own)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC or "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


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
    except KeyboardInterrupt as error:
        where = f" {error}" if str(error) else ""
        log.error("interrupted%s; start the same command again to resume from the last checkpoint", where)
        raise SystemExit(130) from None
    except Preempted as error:  # the whole multirun stops: its job is being taken away
        log.error("preempted: %s", error)
        raise SystemExit(Preempted.exit_code) from None
    except Exception as error:
        from icl_lr.train.loop import NonFiniteLoss

        if no_space_left(error):
            kind = "disk full"
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            error = f"{reason}; free some and start the same command again to resume from the last checkpoint"
        elif isinstance(error, ConfigError):
            kind = "config error"
        elif isinstance(error, RunDirError):
            kind = "run dir error"
        elif isinstance(error, NonFiniteLoss):
            kind = "training stopped"
        else:
            raise  # a bug: Hydra shows where
        log.error("%s: %s", kind, error)
        if multirun:  # the next jobs still run; Hydra reports the failure at the end
            raise JobFailed(f"{run_dir}: {kind}: {error}") from None
        sys.exit(2 if kind in ("config error", "run dir error") else 1)


def run_cli() -> None:
    """`python train.py` and `icl-lr-train`: the command line, as Hydra (and a sweep agent) give it."""
    if os.environ.get("WANDB_SWEEP_ID"):
        sys.argv = overrides_from_agent(sys.argv)
    sys.argv = [sys.argv[0], *section_overrides(sys.argv[1:])]
    main()


if __name__ == "__main__":
    run_cli()
