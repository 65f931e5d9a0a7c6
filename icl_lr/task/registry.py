"""The tasks, by the name `data.task` gives them (icl_lr/components.py: a built-in's line here, an installed
package's entry point in the group `icl_lr.tasks`, or an import path)."""

import dataclasses

from icl_lr.components import Registry
from icl_lr.task.base import Task
from icl_lr.task.config import DataConfig

TASK_INTERFACE = tuple(n for n in vars(Task) if not n.startswith("_")) + tuple(Task.__annotations__)

TASKS = Registry(
    "data.task",
    "icl_lr.tasks",
    {
        "linear_regression": "icl_lr.task.linear:LinearRegression",
        "sparse_linear": "icl_lr.task.sparse:SparseLinear",
        "linear_classification": "icl_lr.task.classification:LinearClassification",
        "quadratic": "icl_lr.task.nonlinear:Quadratic",
        "relu_2nn": "icl_lr.task.nonlinear:Relu2NN",
        "decision_tree": "icl_lr.task.nonlinear:DecisionTree",
        "polynomial": "icl_lr.task.polynomial:Polynomial",
        "gp_regression": "icl_lr.task.gp:GPRegression",
        "sparse_parity": "icl_lr.task.parity:SparseParity",
        "low_rank": "icl_lr.task.low_rank:LowRank",
        "tabular": "icl_lr.task.tabular:Tabular",
        "mixture": "icl_lr.task.mixture:TaskMixture",  # of the classes data.task_mixture names
    },
    TASK_INTERFACE,
)


def task_of(cfg: DataConfig) -> Task:
    """The task of a data section (its mixture's classes built from the same section)."""
    cls = TASKS.resolve(cfg.task)
    names = cls.component_names(vars(cfg)) if hasattr(cls, "component_names") else ()
    if not names:
        return cls(cfg)
    return cls(cfg, tuple(task_of(component_config(cfg, name)) for name in names))


def component_config(cfg: DataConfig, name: str) -> DataConfig:
    """A mixture's section as one of its classes' own."""
    return dataclasses.replace(cfg, task=name)
