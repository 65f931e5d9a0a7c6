"""A run directory, the run's whole record: its files, its lock (one writer at a time), its identity
(one W&B run per dir: a copy is told from a move) and the config record of its latest start.

What a start may do with a dir is decided above, where the run is composed (icl_lr/run/start.py).
"""

import dataclasses
import json
import logging
import os
import re
import secrets
import socket
import string
from pathlib import Path

from icl_lr.fields import flatten, one_line
from icl_lr.records.schema import (
    CONFIG_FILE,
    IDENTITY_FILE,
    LEGACY_CONFIG_FILE,
    LEGACY_ID_FILE,
    LOCK_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
)

log = logging.getLogger("icl_lr")

TAKE_OVER_VARIABLE = "ICL_LR_TAKE_OVER_LOCK"  # =1: take over a lock held on another host
RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class RunDirError(RuntimeError):
    """A start that would corrupt the run dir; the message is one line."""

    kind = "run dir error"


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
        return pid is not None and (host != socket.gethostname() or is_alive(pid))

    def _take_over_if_stale(self) -> None:
        pid, host, job = self.holder()
        here = socket.gethostname()
        if pid is not None and host == here and is_alive(pid):
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


def is_alive(pid: int) -> bool:
    """Whether a process of this host runs under `pid`."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def config_record(cfg) -> dict:
    """A resolved config (dataclasses) as run_config.json stores it: dotted keys, values as JSON reads them."""
    return json.loads(json.dumps(flatten(dataclasses.asdict(cfg))))


class UnreadableRecord(ValueError):
    """A config record that exists but cannot be read (truncated, not JSON)."""


def read_config_record(run_dir: Path) -> dict | None:
    """The config record of the run dir's latest start (older dirs: the one under checkpoints/); None
    when it has none; UnreadableRecord when it has one that cannot be read. A record from before
    training.decay_steps existed gets the horizon those runs had: their first start's training.steps."""
    for name in (CONFIG_FILE, LEGACY_CONFIG_FILE):
        path = Path(run_dir) / name
        if not path.exists():
            continue
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict) or "training.steps" not in record:
                raise ValueError("not a config record")
        except (OSError, ValueError) as error:
            raise UnreadableRecord(f"{path} cannot be read ({one_line(error, 80)})") from None
        record.setdefault("training.decay_steps", record.get("training.steps"))
        return record
    return None


def step_dirs(directory: Path) -> list:
    """A checkpoint folder's step dirs (checkpoints/latest/<step>, ...), by step; none when it is missing."""
    directory = Path(directory)
    steps = [p for p in directory.iterdir() if p.name.isdigit()] if directory.is_dir() else []
    return sorted(steps, key=lambda p: int(p.name))


def has_checkpoints(run_dir: Path) -> bool:
    return bool(step_dirs(Path(run_dir) / "checkpoints" / "latest"))


def read_summary(run_dir: Path) -> dict | None:
    """summary.json, or None when it is missing or damaged."""
    try:
        return json.loads((Path(run_dir) / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None


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
    A new run dir takes the W&B agent's run id (claim_agent_run_id), else a new one.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    identity, here = read_identity(run_dir), _location(run_dir)
    run_id, was = identity["wandb_run_id"], identity.get("path")
    record = {"wandb_run_id": run_id, **here}
    agent_id = claim_agent_run_id(run_dir) if run_id is None else None
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


def name_run(run_dir: Path, run_id: str) -> None:
    """Gives a new run dir (no identity.json yet) its W&B run id before its first start, as an agent's
    WANDB_RUN_ID gives it to a run alone: the local sweep runner's packed runs keep the ids it names them by."""
    if not (Path(run_dir) / IDENTITY_FILE).exists():
        write_atomic(Path(run_dir) / IDENTITY_FILE, json.dumps({"wandb_run_id": run_id}) + "\n")


AGENT_CLAIM_SUFFIX = ".claimed"  # beside the agent's parameter file: the run dir that took its run id


def started_by_agent() -> bool:
    """Whether a W&B agent (or the local sweep runner, which starts runs as it does) started this process: its
    sweep and run ids are set and its parameter file WANDB_SWEEP_PARAM_PATH exists and is that run's
    (`config-<WANDB_RUN_ID>.yaml`). The variables alone, exported in a shell, are not an agent."""
    run_id, param_path = os.environ.get("WANDB_RUN_ID") or "", os.environ.get("WANDB_SWEEP_PARAM_PATH")
    return bool(
        os.environ.get("WANDB_SWEEP_ID")
        and RUN_ID.fullmatch(run_id)
        and param_path
        and Path(param_path).is_file()
        and Path(param_path).name == f"config-{run_id}.yaml"
    )


def claim_agent_run_id(run_dir: Path) -> str | None:
    """The agent's WANDB_RUN_ID for a new run dir, when an agent started this process and no other run dir took
    that id before (a claim file beside the parameter file names the dir that did): two run dirs never share a
    W&B run. Anything else is ignored, in one line."""
    run_id, sweep_id = os.environ.get("WANDB_RUN_ID"), os.environ.get("WANDB_SWEEP_ID")
    if not run_id:
        return None
    if not started_by_agent():
        log.warning(
            "WANDB_RUN_ID=%s is set without a W&B agent's parameter file for it (WANDB_SWEEP_PARAM_PATH): ignored, "
            "each run dir keeps a W&B run of its own",
            run_id[:64],
        )
        return None
    param_path = Path(os.environ["WANDB_SWEEP_PARAM_PATH"])
    claim, here = param_path.with_name(param_path.name + AGENT_CLAIM_SUFFIX), str(run_dir.resolve())
    try:
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        holder = claim.read_text().strip()
        if holder != here:
            log.warning("W&B run %s of sweep %s is already %s's: this run dir gets a W&B run of its own", run_id,
                        sweep_id, holder)  # fmt: skip
            return None
        return run_id
    except OSError as error:  # a parameter file's folder this process cannot write: the agent's word alone
        log.warning("cannot claim W&B run %s beside %s (%s): taken unclaimed", run_id, param_path, error.strerror)
        return run_id
    with os.fdopen(fd, "w") as f:
        f.write(here + "\n")
    return run_id


def new_run_id() -> str:
    """Eight lowercase letters and digits, as W&B makes its run ids."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def _logged_history(run_dir: Path) -> bool:
    path = run_dir / METRICS_FILE
    return path.exists() and path.stat().st_size > 0


def write_atomic(path: Path, text: str) -> None:
    """Writes a file whole or not at all: a reader (or a crash) never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
