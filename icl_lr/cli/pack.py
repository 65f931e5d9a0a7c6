"""Train several runs as one pack: `python -m icl_lr.cli.pack PACK.json` (what `--pack` of the local sweep
runner starts; a Hydra multirun packs with `hydra/launcher=pack`).

PACK.json is {"runs": [[override, ...], ...]}: each run's `train.py` overrides, `hydra.run.dir=<its run
dir>` among them. Each run is composed as `python train.py <its overrides>` composes it and keeps every
file of its run dir (train.log holds its own lines and the pack's); the console shows each run's lines
under its run dir's name. Exit code: 0 when every run finished, 1 when one stopped alone (its loss no
longer finite), 2 for a config or run dir error, 130 on Ctrl-C, 143 on SIGTERM (the same command resumes).
"""

import contextlib
import datetime
import json
import logging
import sys
from pathlib import Path

from hydra.errors import HydraException
from omegaconf import OmegaConf

from icl_lr.cli.errors import exit_code
from icl_lr.cli.train import GROUPS, Job, run_pack
from icl_lr.fields import ConfigError, one_line
from icl_lr.run.config import composed
from icl_lr.train.pack import MEMBER
from icl_lr.train.preemption import StopRequest

log = logging.getLogger("icl_lr")
FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's, as a run alone logs


class _Prefix(logging.Filter):
    """On the icl_lr logger: a line about one run of the pack (icl_lr/train/pack.py's MEMBER) starts with its
    name, and carries its index to the run dirs' handlers."""

    def __init__(self, names: list):
        super().__init__()
        self.names = names

    def filter(self, record) -> bool:
        record.member = MEMBER.get()
        if record.member is not None and not getattr(record, "prefixed", False):
            record.msg, record.prefixed = f"[{self.names[record.member]}] {record.msg}", True
        return True


class _OfMember(logging.Filter):
    """On a run dir's train.log: its run's lines and the pack's, not those of the other runs."""

    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def filter(self, record) -> bool:
        return getattr(record, "member", None) in (None, self.index)


@contextlib.contextmanager
def member_logs(run_dirs: list):
    """Each run dir's train.log, appended to, for the pack's life."""
    logger = logging.getLogger("icl_lr")
    prefix = _Prefix([Path(d).name for d in run_dirs])
    handlers = []
    for index, run_dir in enumerate(run_dirs):
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(Path(run_dir) / "train.log")
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(_OfMember(index))
        handlers.append(handler)
    logger.addFilter(prefix)
    for handler in handlers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeFilter(prefix)
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()


def console_logging() -> None:
    """A run's console lines as a run alone shows them (Hydra's job format), the loggers configs/config.yaml
    quietens quietened."""
    logging.basicConfig(level=logging.INFO, format=FORMAT, stream=sys.stdout, force=True)
    for name, level in (("absl", "WARNING"), ("jax._src.xla_bridge", "WARNING"), ("asyncio", "CRITICAL")):
        logging.getLogger(name).setLevel(level)


def write_attempt(full, run_dir: Path, overrides: list) -> tuple:
    """(the run's config without Hydra's node, its attempt dir): the start's Hydra files (config.yaml,
    overrides.yaml, hydra.yaml) written there, as Hydra writes them for a run alone."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    attempt_dir = Path(run_dir) / ".hydra" / "attempts" / stamp
    attempt_dir.mkdir(parents=True, exist_ok=True)
    cfg = OmegaConf.masked_copy(full, [k for k in full if k != "hydra"])
    OmegaConf.save(cfg, attempt_dir / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(overrides)), attempt_dir / "overrides.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": full.hydra}), attempt_dir / "hydra.yaml")
    return cfg, attempt_dir


def compose_job(overrides: list) -> Job:
    """One run, as `python train.py <overrides>` has it."""
    if not any(o.startswith("hydra.run.dir=") for o in overrides):
        raise ConfigError(f"a packed run needs hydra.run.dir=<its run dir>: {' '.join(overrides)}")
    full = composed(overrides)
    run_dir = Path(full.hydra.run.dir)
    cfg, attempt_dir = write_attempt(full, run_dir, overrides)
    choices = {group: full.hydra.runtime.choices.get(group) for group in GROUPS}
    return Job(cfg, run_dir, attempt_dir, choices, overrides)


def train_jobs(jobs: list, stop: StopRequest, keys: tuple | None = None) -> int:
    """Trains `jobs` as one pack (`keys`: its traced keys, where a launcher checked it) with each run dir's
    train.log; the pack's exit code (module docstring)."""
    with member_logs([job.run_dir for job in jobs]):
        try:
            results = run_pack(jobs, stop, keys)
        except (Exception, KeyboardInterrupt) as error:
            return exit_code(error)
    stopped = [str(run_dir) for run_dir, result in results if isinstance(result, Exception)]
    if stopped:
        log.error("training stopped in %d of %d runs: %s (their train.log says why)", len(stopped), len(results),
                  ", ".join(stopped))  # fmt: skip
    return 1 if stopped else 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    console_logging()
    stop = StopRequest().install()
    try:
        runs = json.loads(Path(argv[0]).read_text())["runs"]
        if not (isinstance(runs, list) and runs and all(isinstance(r, list) for r in runs)):
            raise ValueError("runs must be a non-empty list of override lists")
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.error('%s: not a pack file ({"runs": [[override, ...], ...]}): %s', argv[0], one_line(error))
        return 2
    try:
        jobs = [compose_job([str(o) for o in overrides]) for overrides in runs]
    except HydraException as error:
        return exit_code(ConfigError(one_line(error, None)))
    except ConfigError as error:
        return exit_code(error)
    return train_jobs(jobs, stop)


if __name__ == "__main__":
    sys.exit(main())
