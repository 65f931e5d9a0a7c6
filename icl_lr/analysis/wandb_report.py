"""A W&B report of a sweep, built from code with wandb-workspaces (reports v2): `analyze.py --report`.

The panels read what train.py logs: scalars against the `step` metric, the summary, and each eval's
`eval/<set>/curves_chart` line series (a table `..._chart_table` of step = k, lineKey = predictor,
lineVal = error), drawn by W&B's own `wandb/lineseries/v0` chart as on a run's page. Runs are picked
by sweep (or by id), a group's runs by their ids; which groups and sets exist is read from analyze.py's
runs table.

Config keys are flat (`training.learning_rate`, one key), which W&B stores as
{"training.learning_rate": {"value": ...}}: the path `training.learning_rate.value`. wandb-workspaces
assumes nested keys (`config.training.value.learning_rate`, its `groupby_str_to_key` and `Config`), so
every config path here is written out in the flat form (icl_lr/records/wandb_adapter.py). `report_spec`
serialises the report as `save` sends it, without a server.
"""

import pandas as pd
import wandb_workspaces.reports.v2 as wr
from wandb_workspaces import expr

from icl_lr.analysis import sections
from icl_lr.analysis.plots import group_label
from icl_lr.analysis.sources import MODEL_SHAPE
from icl_lr.analysis.tables import TASK_POOL
from icl_lr.records import wandb_adapter
from icl_lr.records.schema import DISTANCE, EXCESS, HEADLINE, HELD_OUT, LEARNING_CURVES, PROBE_R2, curves_key


def _config_keys(keys: list[str], runs) -> list[str]:
    """The W&B config keys behind analyze's group keys (model_size is the model's shape: the keys of it the
    runs have)."""
    shape = [k for k in MODEL_SHAPE if k in runs and runs[k].notna().any()]
    return [k for key in keys for k in (shape if key == "model_size" else (key,))]


def _runset(entity: str, project: str, sweep: str | None, name: str, run_ids=None, **kwargs) -> wr.Runset:
    """The sweep's finished runs; a group's, by their ids (exact, whatever the types of its config values)."""
    filters = [expr.Metric("State") == "finished"]
    if sweep:
        filters.append(expr.Metric("Sweep") == sweep)
    if run_ids is not None:
        filters.append(expr.Metric("ID").isin(list(run_ids)))
    return wr.Runset(entity=entity, project=project, name=name, filters=expr.And(*filters), **kwargs)


def _curve_chart(eval_set: str, title: str, chart: str = "chart", xname: str = "in-context examples k"):
    """Error vs k of every predictor (chart="similarity_chart": each algorithm's distance from the model;
    "probe_chart": probe R² by layer), from the last eval's line-series table of `eval_set`."""
    chart_table = f"{curves_key(eval_set)}_{chart}_table"
    return wr.CustomChart(
        query={"summaryTable": {"tableKey": chart_table}},
        chart_name="wandb/lineseries/v0",
        chart_fields={"step": "step", "lineKey": "lineKey", "lineVal": "lineVal"},
        chart_strings={"title": title, "xname": xname},
    )


def build_report(
    entity: str, project: str, sweep: str | None, runs: pd.DataFrame, keys: list[str], summary: dict
) -> wr.Report:
    """The report of `runs` (analyze's table of finished runs), grouped by `keys`, with report.html's
    sections in its order (icl_lr/analysis/sections.py). `summary`: {"headline", "note", "markdown"} of
    analyze's summary table, the best group first.

    Sections: which config is best (the headline, the summary table); error vs k with the baselines for
    each group; learning curves, a parallel-coordinates panel and the run table over all runs, grouped by
    the swept config keys, with final excess vs model size and vs noise std when they vary; the OOD
    conditions, the noise levels, the task-pool panels, the algorithms' similarity and the probes' R² by
    layer when the runs logged them.
    """
    config_keys = _config_keys(keys, runs)
    grouped = dict(groupby=[f"config.{wandb_adapter.config_path(k)}" for k in config_keys])
    columns = [f"config:{wandb_adapter.config_path(k)}" for k in config_keys]
    columns += [f"summary:{m}" for m in (*HEADLINE, *LEARNING_CURVES)]
    picked = None if sweep else runs.run_id  # without a sweep, the runs analyze read, by id
    everything = _runset(
        entity, project, sweep, "sweep", picked, **grouped, pinned_columns=list(dict.fromkeys(columns))
    )
    overview = [
        wr.LinePlot(
            title=f"{metric} during training (mean, min-max over seeds)",
            x="step",
            y=[metric],
            log_y=True,
            groupby_aggfunc="mean",
            groupby_rangefunc="minmax",
        )
        for metric in LEARNING_CURVES
    ]
    overview.append(
        wr.ParallelCoordinatesPlot(
            columns=[wandb_adapter.flat_config_axis(k) for k in config_keys]
            + [wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(EXCESS))]
        )
    )
    if "model_size" in keys and runs.model_size.nunique() > 1:
        overview.append(wr.ScatterPlot(title="final excess vs model size", x="n_params", y=EXCESS, log_x=True))
    if "data.noise_std" in keys and runs["data.noise_std"].nunique() > 1:
        noise = wandb_adapter.flat_config_scatter("data.noise_std", title="final excess vs noise std", y=EXCESS)
        overview.append(noise)
    blocks = [
        wr.H1(sections.BEST),
        wr.P(summary["headline"]),
        wr.P(summary["note"]),
        wr.MarkdownBlock(summary["markdown"]),
        wr.H1(sections.ERROR_VS_K),
    ]
    for values, group in runs.groupby(keys, dropna=False, sort=True):
        name = group_label(keys, values)
        blocks += [
            wr.H2(name),
            wr.PanelGrid(
                runsets=[_runset(entity, project, sweep, name, group.run_id)],
                panels=[_curve_chart(HELD_OUT, f"{name}: squared error / d vs k")],
            ),
        ]
    blocks += [
        wr.H1(sections.LEARNING_CURVES),
        wr.P("All runs, grouped by what the sweep varied; the run table lists every run."),
        wr.PanelGrid(runsets=[everything], panels=overview),
    ]
    if any(c.startswith(f"eval/{DISTANCE}/") for c in runs):  # eval.algorithms
        blocks.append(wr.H1(sections.SIMILARITY))
        for values, group in runs.groupby(keys, dropna=False, sort=True):
            name = group_label(keys, values)
            chart = _curve_chart(HELD_OUT, f"{name}: each algorithm's distance from the model vs k", "similarity_chart")
            blocks.append(wr.PanelGrid(runsets=[_runset(entity, project, sweep, name, group.run_id)], panels=[chart]))
    if any(c.startswith(f"eval/{PROBE_R2}/") for c in runs):  # eval.probes
        blocks.append(wr.H1(sections.PROBES))
        for values, group in runs.groupby(keys, dropna=False, sort=True):
            name = group_label(keys, values)
            chart = _curve_chart(HELD_OUT, f"{name}: probe R² by layer, mean over k", "probe_chart", "layer")
            blocks.append(wr.PanelGrid(runsets=[_runset(entity, project, sweep, name, group.run_id)], panels=[chart]))
    for prefix, title in sections.SET_SECTIONS.items():
        sets = sorted(c.removeprefix("eval/").removesuffix(MEAN) for c in runs if _is_set_mean(c, prefix))
        if sets:
            bars = wr.BarPlot(
                title="model error, mean over k, per prompt set", metrics=[f"eval/{s}{MEAN}" for s in sets]
            )
            charts = [_curve_chart(s, f"{s}: squared error / d vs k") for s in sets]
            runset = _runset(entity, project, sweep, "sweep", picked, **grouped)
            blocks += [wr.H1(title), wr.PanelGrid(runsets=[runset], panels=[bars, *charts])]
    if TASK_POOL in keys and "eval/pretrain/model/error_mean" in runs:
        pool = [
            wandb_adapter.flat_config_scatter(
                TASK_POOL, title=f"{title}: model error vs task pool size", y=metric, log_x=True
            )
            for title, metric in (
                ("fresh tasks", "eval/model/error_mean"),
                ("pool tasks", "eval/pretrain/model/error_mean"),
            )
        ]
        blocks += [
            wr.H1(sections.TASK_POOL),
            wr.PanelGrid(runsets=[_runset(entity, project, sweep, "sweep", picked)], panels=pool),
        ]
    title = f"icl-lr sweep {sweep}" if sweep else f"icl-lr {project}"
    return wr.Report(
        entity=entity, project=project, title=title, description=f"grouped by {', '.join(keys)}", blocks=blocks
    )


MEAN = "/model/error_mean"


def _is_set_mean(column: str, prefix: str) -> bool:
    return column.startswith(f"eval/{prefix}") and column.endswith(MEAN)


def report_spec(report: wr.Report) -> dict:
    """The report as `Report.save` sends it to W&B (its upsertView variables, the spec as JSON text),
    built without a server: to review before `--report` publishes it."""
    with wandb_adapter.report_without_server():
        model = wandb_adapter.report_model(report)
    return {
        "entityName": model.project.entity_name,
        "projectName": model.project.name,
        "displayName": model.display_name,
        "description": model.description,
        "type": "runs",
        "spec": model.spec.model_dump_json(by_alias=True, exclude_none=True),
    }
