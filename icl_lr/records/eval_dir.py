"""An eval dir, the records of one evaluation (python eval.py): a dir of its own that no other process writes.

The default dir is new for each process (created exclusively, a suffix where the second is taken); a dir the
user names must be new or empty, and outside every run and eval dir. It is locked as a run dir is, and its
emptiness is checked under the lock, so two evaluations never share one, at once or one after the other.
"""

import json
import os
import time
from pathlib import Path

from icl_lr.records.run_dir import RunDirError, RunDirLock
from icl_lr.records.schema import (
    CONFIG_FILE,
    EVAL_CONFIG_FILE,
    EVAL_MODEL_FILE,
    IDENTITY_FILE,
    LOCK_FILE,
    METRICS_FILE,
)


class EvalDirError(RunDirError):
    """An eval dir that would mix or replace records; the message is one line."""

    kind = "eval dir error"


MARKS = (CONFIG_FILE, IDENTITY_FILE, METRICS_FILE, EVAL_CONFIG_FILE, LOCK_FILE)  # a run's or an eval's records


def records_holder(path: Path) -> Path | None:
    """The run or eval dir that is `path` or holds it (a folder with a run's or an eval's records), or None."""
    path = Path(path).resolve()  # links followed, `..` taken as the file system takes it
    for folder in (path, *path.parents):
        if any((folder / name).exists() for name in MARKS):
            return folder
    return None


def default_eval_dir(root: Path = Path("outputs") / "eval") -> Path:
    """outputs/eval/<date>/<H-M-S>, created by this process alone (<H-M-S>_<n> where it is taken); refused where
    it would land inside a run or eval dir (a command started from inside one)."""
    if (holder := records_holder(root)) is not None:
        raise EvalDirError(f"the default eval dir {root} would be inside {holder}, a run's or an eval's records: "
                           "start from elsewhere or name --out")  # fmt: skip
    base = root / time.strftime("%Y-%m-%d") / time.strftime("%H-%M-%S")
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(10_000):
        out = base if n == 0 else base.with_name(f"{base.name}_{n}")
        try:
            os.mkdir(out)
            return out
        except FileExistsError:
            continue
    raise EvalDirError(f"no free eval dir under {base.parent}; name one with --out")


def is_trajectory_eval(out: Path) -> bool:
    """Whether `out` holds the records of a trajectory eval (eval.py --trajectory), which goes on where it stopped."""
    try:
        return "trajectory" in json.loads((Path(out) / EVAL_MODEL_FILE).read_text())
    except (OSError, ValueError, TypeError):
        return False


class EvalDir(RunDirLock):
    """The eval dir `out` (None: a new default one, made on entering), locked for the evaluation; a dir inside a
    run or eval dir, or one that holds anything already, is refused (RunDirError, one line) before anything runs,
    except, with `resume`, an earlier trajectory eval's own dir (its records go on)."""

    def __init__(self, out: Path | None, resume: bool = False):
        if out is not None and Path(out).exists() and not Path(out).is_dir():
            raise EvalDirError(f"--out {out} is a file: an eval writes a new or empty dir")
        holder = None if out is None else records_holder(out)
        itself = out is not None and holder == Path(out).resolve()
        self.resume = resume and itself and is_trajectory_eval(out)
        if itself and not self.resume:
            raise EvalDirError(
                f"--out {out} already holds a run's or an eval's records: an eval writes a new or empty dir"
            )
        if holder is not None and not self.resume:
            raise EvalDirError(
                f"--out {out} is inside {holder}, a run's or an eval's records: an eval writes a dir of its own; "
                "name a new one"
            )
        self.out = out

    def __enter__(self) -> Path:
        self.out = Path(self.out) if self.out is not None else default_eval_dir()
        super().__init__(self.out, "eval dir")
        try:
            super().__enter__()
        except OSError as error:
            raise EvalDirError(f"--out {self.out}: cannot write there ({error.strerror or error})") from None
        held = sorted(p.name for p in self.out.iterdir() if p.name != LOCK_FILE)
        if held and not self.resume:
            super().__exit__(None, None, None)
            raise EvalDirError(
                f"--out {self.out} already holds {', '.join(held[:3])}: an eval writes a new or empty dir"
            )
        return self.out
