"""The steps of a run's trajectory (training.trajectory): checkpoints at log-spaced steps, kept and evaluated,
for the study of how in-context learning emerges (dense early, where the model changes fastest)."""

import numpy as np


def trajectory_steps(steps: int, steps_per_dispatch: int, n: int) -> tuple:
    """`n` steps from the first dispatch's end to `steps`, log-spaced, each the end of a dispatch (a multiple of
    steps_per_dispatch, or the last step); where rounding makes two equal, the next free dispatch end is taken."""
    if n == 0:
        return ()
    ends = sorted({*range(steps_per_dispatch, steps, steps_per_dispatch), steps})
    wanted = np.geomspace(ends[0], steps, n) if n > 1 else np.asarray([steps])
    picked, free = [], list(ends)
    for target in wanted:  # nearest free dispatch end at or after the target, else the nearest before it
        i = int(np.searchsorted(free, target - 1e-9))
        i = min(i, len(free) - 1)
        picked.append(free.pop(i))
    return tuple(sorted(picked))
