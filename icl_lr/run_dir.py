"""The guards of a run directory, the run's whole record: one writer at a time, the config it was
started with, a finished run left as it is, and a W&B run id that survives damage.

Every start of `train.py` on a directory passes through `open_run_dir` before anything compiles or
W&B starts, so a refused start changes nothing there but its own entry under `.hydra/attempts/`.
"""

import dataclasses
import json
import logging
import os
import re
import shutil
import socket
from pathlib import Path

from icl_lr.config import ConfigError, RunConfig, flatten

log = logging.getLogger("icl_lr")

LOCK_FILE = "run.lock"
ID_FILE = "wandb_run_id"
CONFIG_FILE = "checkpoints/run_config.json"  # the config the checkpoints were trained with
RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Keys that do not change what the model sees or how it is updated: a resume may change them.
# training.steps may only grow (it extends the run); model.embedding_std acts only at init, which a
# resume replaces with the checkpoint (so run dirs from before that key existed resume too).
FREE_KEYS = ("training.log_every", "training.eval_every", "training.checkpoint_every", "training.max_to_keep")
FREE_KEYS += ("training.steps_per_dispatch", "init_from", "training.steps", "model.embedding_std")
FREE_KEYS += ("training.distributed", "training.cpu_devices")  # where the steps run, not what they compute
FREE_PREFIXES = ("eval.", "wandb.")


class RunDirError(RuntimeError):
    """A start that would corrupt the run dir; the message is one line."""


class RunDirLock:
    """`run.lock` holds the writer's pid and host; a second writer is refused, a dead one's lock taken over."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.owner = f"{os.getpid()} {socket.gethostname()}"

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

    def holder(self) -> tuple[int | None, str]:
        """(pid, host) of the lock's writer; pid None when there is no readable lock."""
        try:
            pid_text, _, host = self.path.read_text().strip().partition(" ")
            return int(pid_text), host
        except (OSError, ValueError):  # no lock, or one half written by a killed process
            return None, socket.gethostname()

    def is_held(self) -> bool:
        """Whether a live process holds the lock: the run dir is being written."""
        pid, host = self.holder()
        return pid is not None and _is_alive(pid, host)

    def _take_over_if_stale(self) -> None:
        pid, host = self.holder()
        if pid is not None and _is_alive(pid, host):
            raise RunDirError(
                f"run dir {self.path.parent} is in use by process {pid} on {host}; "
                f"wait for it, or delete {self.path} if that process is gone"
            )
        log.warning("taking over the lock of process %s, which is no longer running", pid)
        self.path.unlink(missing_ok=True)

    def __exit__(self, *exc_info):
        try:
            if self.path.read_text().strip() == self.owner:
                self.path.unlink()
        except OSError:
            pass


def _is_alive(pid: int, host: str) -> bool:
    if host != socket.gethostname():
        return True  # cannot tell from here: assume it runs
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def config_record(cfg: RunConfig) -> dict:
    """The resolved config as stored with the checkpoints: dotted keys, values as JSON reads them back."""
    return json.loads(json.dumps(flatten(dataclasses.asdict(cfg))))


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


def check_resume(run_dir: Path, cfg: RunConfig) -> None:
    """Refuses (RunDirError, one line) a resume whose config would change the trajectory so far."""
    path = Path(run_dir) / CONFIG_FILE
    current = config_record(cfg)
    if not has_checkpoints(run_dir):
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, json.dumps(current, indent=2) + "\n")
        return
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("no readable %s: the resumed config cannot be checked against the original", path)
        return
    changed = differing_keys(stored, current)
    if changed:
        details = ", ".join(f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise RunDirError(f"run dir {run_dir} was trained with another config ({details}); start a new run dir")
    if cfg.training.steps < stored["training.steps"]:
        raise RunDirError(
            f"training.steps ({cfg.training.steps}) is below the run's {stored['training.steps']}: "
            "a resume may only extend a run"
        )


def finished_summary(run_dir: Path, cfg: RunConfig) -> dict | None:
    """The summary of a run dir that already reached cfg.training.steps, else None."""
    try:
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if summary.get("step") == cfg.training.steps else None


def keep_original_hydra_config(run_dir: Path, attempt_dir: Path) -> None:
    """`.hydra/` holds the config the run was started with; each start's own is in .hydra/attempts/<time>/.

    Hydra writes each start's config into `attempt_dir`; only a run dir's first start copies it up.
    """
    original = Path(run_dir) / ".hydra"
    if (original / "config.yaml").exists() and has_checkpoints(run_dir):
        return
    for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        if (attempt_dir / name).exists():
            shutil.copyfile(attempt_dir / name, original / name)


def wandb_run_id(run_dir: Path) -> str:
    """The run dir's W&B run id: its id file, else recovered from W&B's own run folders, else new."""
    from wandb.sdk.lib import runid

    run_dir = Path(run_dir)
    path = run_dir / ID_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = None
    except (OSError, UnicodeDecodeError):
        text = "<unreadable>"
    if text is not None and RUN_ID.fullmatch(text):
        return text
    recovered = sorted((run_dir / "wandb").glob("*run-*-*"), key=lambda p: p.stat().st_mtime)
    run_id = recovered[-1].name.rsplit("-", 1)[-1] if recovered else None
    if text is not None:
        found = f"recovered {run_id} from {recovered[-1].name}" if run_id else "a new id"
        log.warning("%s held %r, not a W&B run id: %s", path, text[:40], found)
    run_id = run_id or os.environ.get("WANDB_RUN_ID") or runid.generate_id()
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, run_id)
    return run_id


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def open_run_dir(run_dir: Path, cfg: RunConfig, attempt_dir: Path | None = None) -> dict | None:
    """All checks of a start, in order; the caller holds the RunDirLock. Returns the summary of a run
    that is already finished (nothing to do), else None. Raises RunDirError or ConfigError."""
    if cfg.init_from and not has_checkpoints(run_dir):
        check_init_from(cfg.init_from)
    check_resume(run_dir, cfg)
    if attempt_dir is not None:
        keep_original_hydra_config(run_dir, attempt_dir)
    return finished_summary(run_dir, cfg)


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
