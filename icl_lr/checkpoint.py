"""Orbax checkpoints of the whole TrainState: the latest few for resuming, and the best by eval error.

Orbax writes each step to a temporary directory and renames it when complete, so a run killed
mid-save leaves only whole checkpoints behind, and a restart resumes from the last of them.
Saves wait for completion: a checkpoint is uploaded as a W&B artifact right after it is written.
"""

from pathlib import Path

import jax
import orbax.checkpoint as ocp

BEST_METRIC = "eval_error"


class Checkpoints:
    def __init__(self, directory: Path, max_to_keep: int):
        directory = Path(directory).absolute()
        self.latest = ocp.CheckpointManager(
            directory / "latest", options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep)
        )
        self.best = ocp.CheckpointManager(
            directory / "best",
            options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m[BEST_METRIC], best_mode="min"),
        )

    def save_latest(self, state) -> Path:
        """Saves and returns the step's directory once complete (ready to upload)."""
        step = int(state.step)
        self.latest.save(step, args=ocp.args.StandardSave(state))
        self.latest.wait_until_finished()
        return self.latest.directory / str(step)

    def save_best(self, state, eval_error: float) -> Path | None:
        """Saves if `eval_error` beats the best so far and returns its directory, else None."""
        step = int(state.step)
        if self.best.best_step() is not None and eval_error >= self._best_error():
            return None
        self.best.save(step, args=ocp.args.StandardSave(state), metrics={BEST_METRIC: float(eval_error)})
        self.best.wait_until_finished()
        return self.best.directory / str(step)

    def _best_error(self) -> float:
        self.best.wait_until_finished()
        return self.best.metrics(self.best.best_step())[BEST_METRIC]

    def restore_latest(self, template) -> object | None:
        """The last complete checkpoint shaped like `template`, or None when there is none."""
        step = self.latest.latest_step()
        if step is None:
            return None
        return self.latest.restore(step, args=ocp.args.StandardRestore(_abstract(template)))

    def close(self) -> None:
        """Waits for asynchronous saves, so the last checkpoint is on disk when the run ends."""
        self.latest.wait_until_finished()
        self.best.wait_until_finished()
        self.latest.close()
        self.best.close()


def restore_params(step_dir: Path, template):
    """Params of the TrainState saved in one step directory (a checkpoint or a downloaded artifact)."""
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(Path(step_dir).absolute() / "default", _abstract(template)).params


def _abstract(template):
    """Shapes and dtypes of `template`: what orbax restores into."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
