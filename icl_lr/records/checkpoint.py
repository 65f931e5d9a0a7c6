"""Orbax checkpoints of the whole TrainState: the latest few for resuming, and the best by eval error.

Orbax writes each step to a temporary directory and renames it when complete, so a run killed
mid-save leaves only whole checkpoints behind (its temporary directories are removed on the next
start), and a restart resumes from the last of them; a checkpoint that cannot be read (a damaged
disk, a truncated copy) is moved to `checkpoints/damaged/` and the one before it is used.
Saves wait for completion: a checkpoint is uploaded as a W&B artifact right after it is written.
"""

import contextlib
import errno
import gc
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from icl_lr.fields import ConfigError, one_line
from icl_lr.records.run_dir import step_dirs
from icl_lr.records.schema import TRAJECTORY

TRAJECTORY_TMP = ".writing"  # a trajectory checkpoint being saved, renamed to its step when whole
BEST_METRIC = "eval_error"
log = logging.getLogger("icl_lr")


class Checkpoints:
    def __init__(self, directory: Path, max_to_keep: int):
        directory = Path(directory).absolute()
        self.damaged = directory / "damaged"
        for leftover in [*directory.glob("*/*.orbax-checkpoint-tmp*"), *directory.glob(f"*/*{TRAJECTORY_TMP}")]:
            log.warning("removing %s, a checkpoint save that never completed", leftover)
            shutil.rmtree(leftover, ignore_errors=True)
        for step_dir in directory.glob("best/[0-9]*"):  # the best manager reads every step's metrics on start
            if not _metadata_readable(step_dir):
                self._set_aside(step_dir, "best", "has unreadable metadata")
        self.latest = ocp.CheckpointManager(
            directory / "latest", options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep)
        )
        self.best = ocp.CheckpointManager(
            directory / "best",
            options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m[BEST_METRIC], best_mode="min"),
        )
        self.trajectory_dir = directory / TRAJECTORY

    def save_latest(self, state) -> Path:
        """Saves and returns the step's directory once complete (ready to upload)."""
        step = int(state.step)
        with _one_error(self.latest.directory / str(step), state):
            self.latest.save(step, args=ocp.args.StandardSave(state))
            self.latest.wait_until_finished()
        return self.latest.directory / str(step)

    def save_trajectory(self, state) -> Path:
        """Saves the state as a trajectory checkpoint (checkpoints/trajectory/<step>, never rotated) and returns
        its directory once whole: written beside it and renamed, so a kill mid-save leaves no step dir; one left
        past a resumed run's step by an earlier attempt is written again."""
        step_dir = self.trajectory_dir / str(int(state.step))
        writing = step_dir.with_name(step_dir.name + TRAJECTORY_TMP)
        for leftover in (step_dir, writing):
            shutil.rmtree(leftover, ignore_errors=True)
        writing.mkdir(parents=True)
        with _one_error(writing / "default", state), ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(writing / "default", state)
            checkpointer.wait_until_finished()
        writing.rename(step_dir)
        return step_dir

    def save_best(self, state, eval_error: float) -> Path | None:
        """Saves if `eval_error` beats the best so far and returns its directory, else None."""
        step = int(state.step)
        if self.best.best_step() is not None and eval_error >= self._best_error():
            return None
        with _one_error(self.best.directory / str(step), state):
            self.best.save(step, args=ocp.args.StandardSave(state), metrics={BEST_METRIC: float(eval_error)})
            self.best.wait_until_finished()
        return self.best.directory / str(step)

    def _best_error(self) -> float:
        self.best.wait_until_finished()
        return self.best.metrics(self.best.best_step())[BEST_METRIC]

    def restore_latest(self, template, at_most: int | None = None) -> object | None:
        """The last readable checkpoint shaped like `template`, or None when there is none; `at_most`: the
        last at or before that step, those after it removed (a pack resumes its runs from one step, and
        writes those steps again as they were).

        Each step is restored on its own (not through the manager, whose state one damaged step
        can spoil for the rest); an unreadable one is moved to damaged/ and the one before it tried.
        """
        for step_dir in step_dirs(self.latest.directory):
            if at_most is not None and int(step_dir.name) > at_most:
                log.info("removing checkpoint step %s of %s: the run resumes from step %d", step_dir.name,
                         self.latest.directory, at_most)  # fmt: skip
                shutil.rmtree(step_dir)
                self.latest.reload()
        for step_dir in reversed(step_dirs(self.latest.directory)):
            try:
                return _restore(step_dir, template)
            except CheckpointMismatch:
                raise  # whole, but of another model: not damage
            except Exception as error:  # orbax raises many kinds for a damaged step
                reason = one_line(error)
                self._set_aside(
                    step_dir, "latest", f"is unreadable ({type(error).__name__}: {reason}), the one before is tried"
                )
                self.latest.reload()
        return None

    def _set_aside(self, step_dir: Path, kind: str, why: str) -> None:
        """Moves a damaged step directory to damaged/, never deleting it, and says so in one line."""
        moved = self.damaged / f"{kind}-{step_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        log.warning("%s checkpoint step %s %s; moved to %s", kind, step_dir.name, why, moved)
        moved.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(step_dir, moved)

    def close(self) -> None:
        """Waits for asynchronous saves, so the last checkpoint is on disk when the run ends."""
        self.latest.wait_until_finished()
        self.best.wait_until_finished()
        self.latest.close()
        self.best.close()


@contextlib.contextmanager
def _one_error(step_dir: Path, state):
    """A failed save as one exception. A disk without room for the state (its bytes and a quarter more) is
    refused before orbax starts: orbax's threads would each log their failure, tracebacks included. Those
    of other failures are held back (absl, ERROR); a full disk is raised as OSError(ENOSPC)."""
    needed = 1.25 * sum(x.nbytes for x in jax.tree.leaves(state)) + 2**20
    free = shutil.disk_usage(step_dir.parent).free
    if free < needed:
        raise OSError(errno.ENOSPC, f"No space left on device for {step_dir}: {free / 2**20:.1f} MiB free, "
                      f"a checkpoint needs about {needed / 2**20:.1f} MiB")  # fmt: skip
    try:
        with _orbax_quiet(logging.CRITICAL):
            yield
    except Exception as error:
        if "No space left on device" in str(error) or getattr(error, "errno", None) == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"No space left on device writing {step_dir}") from None
        raise


@contextlib.contextmanager
def _orbax_quiet(level: int):
    """Orbax's log lines (absl's logger) below `level` held back for the while."""
    absl = logging.getLogger("absl")
    previous = absl.level
    absl.setLevel(level)
    try:
        yield
    finally:
        absl.setLevel(previous)


def _metadata_readable(step_dir: Path) -> bool:
    """Whether a step directory's JSON metadata (orbax's and the saved metrics), where present, parses."""
    for name in ("_CHECKPOINT_METADATA", "metrics/metrics"):
        try:
            json.loads((step_dir / name).read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            return False
    return True


class CheckpointMismatch(ConfigError):
    """A readable checkpoint of another model: its arrays' shapes differ from the config's."""


def _leaf_name(path) -> str:
    """A tree path as orbax names the array ('opt_state.1.0.mu.read_in.bias')."""
    return ".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _check_shapes(step_dir: Path, template, prefix: str = "") -> None:
    """Refuses, before restoring, a checkpoint whose arrays (those under `prefix`) differ in shape from
    `template`'s: orbax would fail deep in its event loop, burying the cause under its tracebacks."""
    with ocp.StandardCheckpointer() as checkpointer, _orbax_quiet(logging.ERROR):  # its item dir has no
        stored_tree = checkpointer.metadata(step_dir / "default").item_metadata  # step metadata: it warns so
    stored = {m.name: tuple(m.shape) for m in jax.tree.leaves(stored_tree or {}) if m.name.startswith(prefix)}
    if not stored:
        raise ValueError(f"{step_dir} has no readable array metadata")  # damage, not another model
    wanted = {_leaf_name(p): tuple(x.shape) for p, x in jax.tree.leaves_with_path(template)}
    wanted = {name: shape for name, shape in wanted.items() if name.startswith(prefix)}
    differ = [
        f"{n} {stored.get(n)} vs {wanted.get(n)}"
        for n in sorted(set(stored) | set(wanted))
        if stored.get(n) != wanted.get(n)
    ]
    if differ:
        raise CheckpointMismatch(
            f"{step_dir} holds another model's arrays ({len(differ)} differ, e.g. {differ[0]}: stored vs config)"
        )


def _restore(step_dir: Path, template, prefix: str = ""):
    """The TrainState saved in one step directory, shaped like `template`."""
    step_dir = Path(step_dir).absolute()
    _check_shapes(step_dir, template, prefix)
    _quiet_failed_reads()
    try:
        with ocp.StandardCheckpointer() as checkpointer, _orbax_quiet(logging.CRITICAL):  # its failure: one error
            return checkpointer.restore(step_dir / "default", _abstract(template))
    except Exception as error:
        reason = f"{type(error).__name__}: {one_line(error, 160)}"
    gc.collect()  # the failed reads' coroutines, reported now rather than at exit
    raise UnreadableCheckpoint(f"{step_dir} cannot be read ({reason})")


class UnreadableCheckpoint(ValueError):
    """A checkpoint whose arrays cannot be read (damaged, half deleted); the message is one line."""


def _is_a_failed_read(text: str) -> bool:
    """Whether a report names one of a failed restore's reads: TensorStore's threads report each array they
    could not read, each callback into orbax's event loop once that loop has closed, and asyncio each task."""
    return any(s in text for s in ("Event loop is closed", "while reading array index", "orbax"))


def _orbax_reads_unretrieved(record: logging.LogRecord) -> bool:
    """False for asyncio's "exception was never retrieved" of orbax's own reads (logging.Filter's protocol)."""
    message = record.getMessage()
    return not ("never retrieved" in message and _is_a_failed_read(message))


def _quiet_failed_reads() -> None:
    """Holds back the reports of a failed restore's other reads (asyncio's log, Python's unraisable hook):
    they come from TensorStore's threads, during the restore and after it, and its one error already says it.
    Installed once, before the first restore; every other report passes through."""
    asyncio_log = logging.getLogger("asyncio")
    if _orbax_reads_unretrieved not in asyncio_log.filters:
        asyncio_log.addFilter(_orbax_reads_unretrieved)
    hook = sys.unraisablehook
    if getattr(hook, "quiet_failed_reads", False):
        return

    def quiet(unraisable):
        if not _is_a_failed_read(str(unraisable.exc_value)):
            hook(unraisable)

    quiet.quiet_failed_reads = True
    sys.unraisablehook = quiet


def restore_params(step_dir: Path, template):
    """Params of the TrainState saved in one step directory (a checkpoint or a downloaded artifact)."""
    return _restore(step_dir, template, prefix="params.").params


def _abstract(template):
    """Shapes and dtypes of `template`: what orbax restores into."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
