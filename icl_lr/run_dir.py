"""The guards and the identity of a run directory, the run's whole record: one writer at a time, the
config of its latest start beside its records, a finished run left as it is, and one W&B run per dir.

Every start of `train.py` on a directory is planned by `plan_start` (it reads only, and refuses a start
that would relabel or corrupt the records) and committed by `RunStart.commit` (identity, config record)
before anything compiles or W&B starts, so a refused start changes nothing there but its own entry under
`.hydra/attempts/`.
"""

import dataclasses
import json
import logging
import os
import re
import secrets
import shutil
import socket
import string
from dataclasses import dataclass
from pathlib import Path

from icl_lr.config import ConfigError, RunConfig, flatten

log = logging.getLogger("icl_lr")

LOCK_FILE = "run.lock"
IDENTITY_FILE = "identity.json"  # {"wandb_run_id", "path", "inode", "device"[, "copied_from"]}
LEGACY_ID_FILE = "wandb_run_id"  # the id alone, as run dirs held it before identity.json
CONFIG_FILE = "run_config.json"  # the resolved config of the latest start, beside the records it produced
LEGACY_CONFIG_FILE = "checkpoints/run_config.json"
SUMMARY_FILE = "summary.json"
TAKE_OVER_VARIABLE = "ICL_LR_TAKE_OVER_LOCK"  # =1: take over a lock held on another host
RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Keys that do not change what the model sees or how it is updated: a resume may change them.
# training.steps may only grow (it extends the run; the schedule keeps its horizon, training.decay_steps);
# model.embedding_std acts only at init, which a resume replaces with the checkpoint (so run dirs from
# before that key existed resume too).
FREE_KEYS = ("training.log_every", "training.eval_every", "training.checkpoint_every", "training.max_to_keep")
FREE_KEYS += ("training.steps_per_dispatch", "init_from", "training.steps", "model.embedding_std")
FREE_KEYS += ("training.distributed", "training.cpu_devices")  # where the steps run, not what they compute
FREE_PREFIXES = ("eval.", "wandb.")


class RunDirError(RuntimeError):
    """A start that would corrupt the run dir; the message is one line."""


class RunDirLock:
    """`run.lock` holds the writer's pid, host and SLURM job; a second writer is refused, a dead one's lock
    taken over. A lock from another host is taken over when it names this SLURM job (a requeue) or when
    ICL_LR_TAKE_OVER_LOCK=1 says its process is gone."""

    def __init__(self, run_dir: Path, what: str = "run dir"):
        self.path, self.what = Path(run_dir) / LOCK_FILE, what
        self.owner = f"{os.getpid()} {socket.gethostname()} {os.environ.get('SLURM_JOB_ID', '-')}"

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                f.write(self.owner + "\n")
            return self

    def holder(self) -> tuple[int | None, str, str]:
        """(pid, host, SLURM job id or '-') of the lock's writer; pid None when there is no readable lock."""
        try:
            pid_text, host, job, *_ = self.path.read_text().split() + ["-"]
            return int(pid_text), host, job
        except (OSError, ValueError):  # no lock, or one half written by a killed process
            return None, socket.gethostname(), "-"

    def is_held(self) -> bool:
        """Whether a live process holds the lock (as far as this host can tell): the run dir is being written."""
        pid, host, _ = self.holder()
        return pid is not None and (host != socket.gethostname() or _is_alive(pid))

    def _take_over_if_stale(self) -> None:
        pid, host, job = self.holder()
        here = socket.gethostname()
        if pid is not None and host == here and _is_alive(pid):
            raise RunDirError(
                f"{self.what} {self.path.parent} is in use by process {pid} on {host}; "
                f"wait for it, or delete {self.path} if that process is gone"
            )
        if pid is not None and host != here:
            requeued = job != "-" and job == os.environ.get("SLURM_JOB_ID")
            if not requeued and os.environ.get(TAKE_OVER_VARIABLE) != "1":
                slurm = f" (SLURM job {job})" if job != "-" else ""
                raise RunDirError(
                    f"{self.what} {self.path.parent} is locked by process {pid} on host {host}{slurm}, which this host "
                    f"cannot check; if that job is gone, start again with {TAKE_OVER_VARIABLE}=1"
                )
            why = f"SLURM job {job} requeued" if requeued else f"{TAKE_OVER_VARIABLE}=1"
            log.warning("taking over the lock of process %s on %s (%s)", pid, host, why)
        else:
            log.warning("taking over the lock of process %s, which is no longer running", pid)
        self.path.unlink(missing_ok=True)

    def __exit__(self, *exc_info):
        try:
            if self.path.read_text().strip() == self.owner:
                self.path.unlink()
        except OSError:
            pass


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def config_record(cfg: RunConfig) -> dict:
    """The resolved config as stored in run_config.json: dotted keys, values as JSON reads them back."""
    return json.loads(json.dumps(flatten(dataclasses.asdict(cfg))))


def read_config_record(run_dir: Path) -> dict | None:
    """The config record of the run dir's latest start (older dirs: the one under checkpoints/); None
    when it has none or it cannot be read (a warning). A record from before training.decay_steps existed
    gets the horizon those runs had: their first start's training.steps."""
    for name in (CONFIG_FILE, LEGACY_CONFIG_FILE):
        path = Path(run_dir) / name
        if not path.exists():
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            log.warning("no readable %s: the start's config cannot be checked against the run's", path)
            return None
        record.setdefault("training.decay_steps", record.get("training.steps"))
        return record
    return None


def differing_keys(stored: dict, current: dict) -> list:
    """Keys whose change would alter the training trajectory of a resumed run. A key the stored record
    lacks (added to the code after the run started) counts as its default: a new key's default keeps the
    old behaviour, or the key is free."""
    keys = sorted(set(stored) | set(current))
    free = lambda key: key in FREE_KEYS or key.startswith(FREE_PREFIXES)
    defaults = config_record(RunConfig())
    return [k for k in keys if not free(k) and stored.get(k, defaults.get(k)) != current.get(k)]


def has_checkpoints(run_dir: Path) -> bool:
    latest = Path(run_dir) / "checkpoints" / "latest"
    return latest.is_dir() and any(p.name.isdigit() for p in latest.iterdir())


def read_summary(run_dir: Path) -> dict | None:
    """summary.json, or None when it is missing or damaged."""
    try:
        return json.loads((Path(run_dir) / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None


def with_horizon(cfg: RunConfig, stored: dict | None) -> RunConfig:
    """cfg with training.decay_steps set: as given, else the stored run's, else this run's length."""
    t = cfg.training
    if t.decay_steps is not None:
        return cfg
    horizon = stored["training.decay_steps"] if stored else t.steps
    return dataclasses.replace(cfg, training=dataclasses.replace(t, decay_steps=horizon))


@dataclass(frozen=True)
class RunStart:
    """What a start on a run dir does: `finished` (the summary of a run with nothing left to do), else
    trains `cfg` (training.decay_steps resolved), resuming its checkpoints when `resumed`."""

    run_dir: Path
    cfg: RunConfig
    finished: dict | None
    resumed: bool
    stored: dict | None  # the config record of the run's previous start

    def commit(self, attempt_dir: Path | None) -> str:
        """Writes the start's record (identity, run_config.json, .hydra/) and returns its W&B run id."""
        run_id = claim_identity(self.run_dir, fresh=not self.resumed)
        write_atomic(self.run_dir / CONFIG_FILE, json.dumps(config_record(self.cfg), indent=2) + "\n")
        if attempt_dir is not None:  # .hydra/ holds the latest start's Hydra config; each start's own stays
            for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
                if (attempt_dir / name).exists():
                    shutil.copyfile(attempt_dir / name, self.run_dir / ".hydra" / name)
        if self.resumed and self.stored and self.cfg.training.steps > self.stored["training.steps"]:
            log.info("extending the run from %d to %d steps; %s", self.stored["training.steps"], *self._extension())
        return run_id

    def _extension(self) -> tuple:
        t = self.cfg.training
        if t.schedule == "constant" or t.horizon >= t.steps:
            return t.steps, f"the {t.schedule} schedule goes on as it was (horizon {t.horizon} steps)"
        floor = t.min_lr_ratio * t.learning_rate
        return t.steps, (
            f"the {t.schedule} schedule keeps its horizon (training.decay_steps={t.horizon}): the learning rate "
            f"stays at its floor {floor:.2e} from step {t.horizon} on"
        )


def plan_start(run_dir: Path, cfg: RunConfig) -> RunStart:
    """Every check of a start, reading only; the caller holds the RunDirLock. Raises RunDirError or
    ConfigError (one line) for a start that would change or relabel what the run dir records."""
    run_dir = Path(run_dir)
    resumed = has_checkpoints(run_dir)
    if cfg.init_from and not resumed:
        check_init_from(cfg.init_from)
    stored = read_config_record(run_dir)
    has_results = (run_dir / SUMMARY_FILE).exists()
    cfg = with_horizon(cfg, stored if resumed or has_results else None)
    current = config_record(cfg)
    changed = differing_keys(stored, current) if stored and (resumed or has_results) else []
    details = ", ".join(f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in changed)
    if resumed and changed:
        raise RunDirError(f"run dir {run_dir} was trained with another config ({details}); start a new run dir")
    if resumed and stored and cfg.training.steps < stored["training.steps"]:
        raise RunDirError(
            f"training.steps ({cfg.training.steps}) is below the run's {stored['training.steps']}: "
            "a resume may only extend a run"
        )
    if not resumed and has_results and (changed or not stored or cfg.training.steps != stored["training.steps"]):
        differs = details or f"training.steps: {stored and stored.get('training.steps')!r} -> {cfg.training.steps}"
        raise RunDirError(
            f"run dir {run_dir} holds the results of a run ({differs}) but no checkpoints to continue it from; "
            "start a new run dir"
        )
    summary = read_summary(run_dir)
    finished = summary if summary and summary.get("step") == cfg.training.steps else None
    return RunStart(run_dir, cfg, finished, resumed, stored)


def _location(run_dir: Path) -> dict:
    """Where a run dir lives: its real path and its inode (a move keeps the inode, a copy gets another)."""
    stat = run_dir.stat()
    return {"path": str(run_dir.resolve()), "inode": stat.st_ino, "device": stat.st_dev}


def read_identity(run_dir: Path) -> dict:
    """{"wandb_run_id": id or None, and the location it was given at when the dir records one}: from
    identity.json, else the older wandb_run_id file; a damaged one's id is recovered from the names of
    W&B's run folders in the dir (a warning)."""
    run_dir = Path(run_dir)
    for name in (IDENTITY_FILE, LEGACY_ID_FILE):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            text = path.read_text()
            identity = json.loads(text) if name == IDENTITY_FILE else {"wandb_run_id": text.strip()}
            if RUN_ID.fullmatch(str(identity.get("wandb_run_id"))):
                return identity
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            text = "<unreadable>"
        recovered = sorted((run_dir / "wandb").glob("*run-*-*"), key=lambda p: p.stat().st_mtime)
        run_id = recovered[-1].name.rsplit("-", 1)[-1] if recovered else None
        found = f"recovered {run_id} from {recovered[-1].name}" if run_id else "a new id"
        log.warning("%s held %r, not a W&B run id: %s", path, text[:40], found)
        return {"wandb_run_id": run_id}
    return {"wandb_run_id": None}


def claim_identity(run_dir: Path, fresh: bool) -> str:
    """The W&B run id this start logs to, written with the dir's location to identity.json.

    The dir's own id, unless the dir is a copy of another (its recorded location is another path and
    inode: the copy gets a new id, the original keeps its own), or this is a fresh start (no checkpoint)
    after an earlier start logged history (a new W&B run, so W&B's history never mixes two attempts).
    A new run dir takes the sweep agent's WANDB_RUN_ID; outside a sweep that variable is ignored.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    identity, here = read_identity(run_dir), _location(run_dir)
    run_id, was = identity["wandb_run_id"], identity.get("path")
    record = {"wandb_run_id": run_id, **here}
    agent_id = os.environ.get("WANDB_RUN_ID") if os.environ.get("WANDB_SWEEP_ID") else None
    if os.environ.get("WANDB_RUN_ID") and not os.environ.get("WANDB_SWEEP_ID"):
        log.warning("WANDB_RUN_ID is set outside a sweep: ignored, each run dir keeps a W&B run of its own")
    if run_id is None:
        record["wandb_run_id"] = agent_id or new_run_id()
    elif (
        was
        and was != here["path"]
        and [identity.get("inode"), identity.get("device")] != [here["inode"], here["device"]]
    ):
        record |= {"wandb_run_id": new_run_id(), "copied_from": {"path": was, "wandb_run_id": run_id}}
        log.warning(
            "run dir %s is a copy of %s (W&B run %s): it goes on as W&B run %s, the original keeps its own",
            run_dir,
            was,
            run_id,
            record["wandb_run_id"],
        )
    elif fresh and _logged_history(run_dir):
        record["wandb_run_id"] = new_run_id()
        log.warning(
            "an earlier start of %s logged history but left no checkpoint: training starts over as W&B run %s "
            "(W&B run %s keeps the earlier attempt)",
            run_dir,
            record["wandb_run_id"],
            run_id,
        )
    else:
        if was and was != here["path"]:
            log.info("run dir %s was moved here from %s: the same run, W&B run %s", run_dir, was, run_id)
        if "copied_from" in identity:
            record["copied_from"] = identity["copied_from"]
    write_atomic(run_dir / IDENTITY_FILE, json.dumps(record, indent=2) + "\n")
    (run_dir / LEGACY_ID_FILE).unlink(missing_ok=True)
    return record["wandb_run_id"]


def new_run_id() -> str:
    """Eight lowercase letters and digits, as W&B makes its run ids."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def _logged_history(run_dir: Path) -> bool:
    path = run_dir / "metrics.jsonl"
    return path.exists() and path.stat().st_size > 0


def write_atomic(path: Path, text: str) -> None:
    """Writes a file whole or not at all: a reader (or a crash) never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def check_init_from(init_from: str) -> None:
    """A local checkpoint must exist; a W&B reference (with ':alias') is looked up when the run starts."""
    if ":" in init_from:
        return
    path = Path(init_from)
    if not (path / "default").is_dir():
        raise ConfigError(
            f"init_from: no checkpoint step directory at {path} (expected <run dir>/checkpoints/latest/<step>, "
            "or a W&B artifact entity/project/model-<id>:<alias>)"
        )
