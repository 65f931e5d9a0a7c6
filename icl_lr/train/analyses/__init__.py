"""Analyses of the held-out prompts: what an eval computes on them beyond the model's curves, one module
each (as big_vision's evaluators), built from the config and run by the Evaluator in ANALYSES' order.

An analysis is a class with
- `Config`: the keys it owns (`icl_lr.components.NoKeys` for the built-ins: their keys are the eval
  section's, eval.probes, eval.attention, eval.n_loops, eval.predictions, eval.algorithms and
  eval.algorithm_steps, eval.llc and eval.llc_*);
- `check(cfg, task, family)`: refuses a run it cannot analyse in one line (ConfigError) before anything
  compiles; `task` and `family` are the run's classes;
- `__init__(setup, cfg, mesh)`: what it needs, built once (prompts of its own, jitted functions);
- `__call__(params, held_out, step) -> Result`, on the held-out set (eval_sets.EvalSet);
and, a built-in, `wanted(eval_cfg)`: whether its eval key turns it on. Any other (an installed package's
entry point under `icl_lr.analyses`, or an import path) runs where eval.analyses names it.
"""

from typing import NamedTuple

from icl_lr.components import Registry
from icl_lr.fields import check
from icl_lr.task.base import LINEAR_INTERFACE, is_linear


class Result(NamedTuple):
    """What an analysis adds at one eval: `curves` {name: [value per k]}, logged with the held-out set's
    (curves.jsonl, W&B's eval/curves) and summarised as its scalars are; `scalars` {name: number}, one value
    an eval, logged as eval/<name> beside the held-out set's scalars (metrics.jsonl, W&B's history, the
    summary); `arrays` {name: array}, saved in the run dir as <analysis>/step_<n>.npz; `figures` {W&B key:
    tracking.Image or tracking.Table}."""

    curves: dict = {}
    arrays: dict = {}
    figures: dict = {}
    scalars: dict = {}


ANALYSES = Registry(
    "eval.analyses",
    "icl_lr.analyses",
    {
        "algorithms": "icl_lr.train.analyses.algorithms:Algorithms",
        "probes": "icl_lr.train.analyses.probes:Probes",
        "attention": "icl_lr.train.analyses.attention:Attention",
        "loops": "icl_lr.train.analyses.loops:Loops",
        "predictions": "icl_lr.train.analyses.predictions:Predictions",
        "llc": "icl_lr.train.analyses.llc:LLC",
    },
    ("check",),
)


def wanted(eval_cfg) -> dict:
    """{name: class} of the analyses a run's eval section turns on: the built-ins whose key is set, then
    those eval.analyses names."""
    check(
        not set(eval_cfg.analyses) & set(ANALYSES.builtins),
        f"eval.analyses names analyses besides the built-ins, which their own keys turn on (eval.algorithms, "
        f"eval.probes, eval.attention, eval.n_loops, eval.predictions, eval.llc): got {list(eval_cfg.analyses)}",
    )
    on = {name: ANALYSES.resolve(name) for name in ANALYSES.builtins}
    on = {name: analysis for name, analysis in on.items() if analysis.wanted(eval_cfg)}
    return on | {name: ANALYSES.resolve(name) for name in eval_cfg.analyses}


def check_run(cfg, task, family) -> None:
    """Each analysis the run turns on checks that it can run (task, family: the run's classes)."""
    for analysis in wanted(cfg.eval).values():
        analysis.check(cfg, task, family)


def check_linear(key: str, cfg, task) -> None:
    """eval.<key> reads the one weight vector of a task with a context of at least two points."""
    check(
        is_linear(task),
        f"eval.{key} reads a task's one weight vector: data.task={cfg.data.task} lacks "
        f"{', '.join(n for n in LINEAR_INTERFACE if not hasattr(task, n))}",
    )
    check(
        cfg.data.n_points >= 2,
        f"eval.{key} scores predictions from a context: data.n_points must be >= 2, got {cfg.data.n_points}",
    )
