"""The tasks, by the name `data.task` gives them."""

from icl_lr.task.base import Task
from icl_lr.task.config import DataConfig
from icl_lr.task.linear import LinearRegression

TASKS = {"linear_regression": LinearRegression}  # data.task -> its class (icl_lr/task/base.py's interface)


def task_of(cfg: DataConfig) -> Task:
    return TASKS[cfg.task](cfg)
