"""The tasks, by the name `data.task` gives them."""

from icl_lr.task.base import Task
from icl_lr.task.classification import LinearClassification
from icl_lr.task.config import DataConfig
from icl_lr.task.linear import LinearRegression
from icl_lr.task.mixture import TaskMixture, component_config
from icl_lr.task.nonlinear import DecisionTree, Quadratic, Relu2NN
from icl_lr.task.sparse import SparseLinear

TASKS = {  # data.task -> its class (icl_lr/task/base.py's interface)
    "linear_regression": LinearRegression,
    "sparse_linear": SparseLinear,
    "linear_classification": LinearClassification,
    "quadratic": Quadratic,
    "relu_2nn": Relu2NN,
    "decision_tree": DecisionTree,
    "mixture": TaskMixture,  # of the classes data.task_mixture names
}
LINEAR = ("linear_regression", "sparse_linear", "linear_classification")  # tasks with one w: probes, algorithms


def task_of(cfg: DataConfig) -> Task:
    if cfg.task == "mixture":
        return TaskMixture(cfg, tuple(task_of(component_config(cfg, name)) for name in cfg.task_mixture))
    return TASKS[cfg.task](cfg)
