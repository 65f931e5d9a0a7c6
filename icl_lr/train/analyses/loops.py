"""eval.n_loops: a looped model (model.family=looped) scored on the held-out prompts with its loop unit
applied other numbers of times than it trained with: the same parameters looped fewer or more times."""

import dataclasses

import numpy as np

from icl_lr.components import NoKeys
from icl_lr.fields import check
from icl_lr.records.schema import MODEL, loops_curve
from icl_lr.train.analyses import Result
from icl_lr.train.eval_sets import EvalSet
from icl_lr.train.evaluate import make_model_curves_fn


class Loops:
    """The curves `model_<b>_loops` (schema.loops_curve): the model's squared error / d at b loops."""

    Config = NoKeys

    @staticmethod
    def wanted(eval_cfg) -> bool:
        return bool(eval_cfg.n_loops)

    @staticmethod
    def check(cfg, task, family) -> None:
        check(
            hasattr(cfg.model, "n_loops"),
            f"eval.n_loops scores other loop counts of a looped model: model.family={cfg.model.family} has no "
            "model.n_loops",
        )

    def __init__(self, setup, cfg, mesh):
        looped = lambda n: setup.model.clone(config=dataclasses.replace(setup.model.config, n_loops=n))
        self.curves = {n: make_model_curves_fn(looped(n), cfg.eval, mesh) for n in cfg.eval.n_loops}

    def __call__(self, params, held_out: EvalSet, step: int) -> Result:
        return Result(
            curves={
                loops_curve(n): np.asarray(curves(params, held_out.inputs, held_out.ys)[MODEL])
                for n, curves in self.curves.items()
            }
        )
