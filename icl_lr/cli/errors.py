"""How a command ends: one map from the error that stopped it to its exit code and its one line, for train,
pack, sweep and eval alike. An error it does not know is a bug, and is raised with its traceback."""

import errno
import logging

from icl_lr.fields import ConfigError, one_line
from icl_lr.records.run_dir import RunDirError
from icl_lr.train.preemption import NonFiniteLoss, Preempted

log = logging.getLogger("icl_lr")

RESUME = "start the same command again to resume from the last checkpoint"
INTERRUPTED, PREEMPTED = 130, Preempted.exit_code  # 128 + SIGINT, 128 + SIGTERM


def no_space_left(error: BaseException) -> bool:
    """Whether a full disk is behind `error`: an OSError ENOSPC anywhere in its chain (orbax wraps its own)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC or "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def ending(error: BaseException, again: str = RESUME) -> tuple[int, str | None] | None:
    """(exit code, its one line or None where the loop has said it) of an error that ends a command (`again`: how
    to go on after a stop); None for any other error (a bug)."""
    if isinstance(error, KeyboardInterrupt):
        return INTERRUPTED, f"interrupted{f' {error}' if str(error) else ''}; {again}"
    if isinstance(error, Preempted):
        return PREEMPTED, f"preempted: {error}"
    if no_space_left(error):
        reason = error.strerror if isinstance(error, OSError) and error.strerror else one_line(error, None)
        return 1, f"disk full: {reason}; free some and {again}"
    if isinstance(error, ConfigError):
        return 2, f"config error: {one_line(error, None)}"
    if isinstance(error, RunDirError):
        return 2, f"{error.kind}: {error}"
    if isinstance(error, NonFiniteLoss):
        return 1, None  # the loop said it, in the run's own log
    return None


def exit_code(error: BaseException, again: str = RESUME) -> int:
    """Says `error`'s one line and returns its exit code; raises it again when it is a bug."""
    ended = ending(error, again)
    if ended is None:
        raise error
    code, line = ended
    if line:
        log.error("%s", line)
    return code
