"""Aggregate runs into tables, plots and reports.

  python analyze.py outputs/sweep-local-abc123            # local run dirs (train.py's outputs), any depth
  python analyze.py outputs/sweep-local-abc123 --html     # ... and one self-contained report.html
  python analyze.py --wandb-files outputs/                 # offline W&B run folders alone (no run dir files)
  python analyze.py --wandb my-team/icl-lr --sweep 9x2k   # runs of a W&B project (needs a key and network)
  python analyze.py --wandb my-team/icl-lr --sweep 9x2k --report   # ... and a W&B report of the sweep
  python analyze.py outputs/sweep-local-abc123 --report-spec report.json   # that report, serialised, no server

Runs are grouped by what the sweep varied (config keys that differ between runs, the model's shape
as `model_size`), and every metric is aggregated over the seeds of a group: mean, std and the 95%
interval of the mean (Student-t; the bootstrap from 30 seeds; none for one run). Writes to --out:
runs.csv (one row per run: config and summary),
curves.csv (each curve's value per run, predictor and context length k, last eval: errors, and for
binned outputs ce/<predictor> cross-entropies and coverage/<p>), history.csv (every scalar each run
logged, by step), aggregate.csv, curve_aggregate.csv and history_aggregate.csv (the statistics), summary.md (a Markdown
table), and PNG plots: error vs k per group with the baselines (and cross-entropy vs k for binned
outputs); eval error vs step per group with seed bands; final excess error vs model size and vs noise
std when those vary; the OOD conditions (ood_vs_context.png) and the noise levels (error_per_sigma.png)
a panel each, when the runs scored them; error vs task pool size with dMMSE and ridge, on pool and on
fresh tasks (error_vs_task_pool.png), when the pool size varies. Of runs with a trajectory (training.trajectory
or eval.predictions): the loss, error and LLC by step (by_step.csv, loss_and_llc.png), the closest predictor at
each evaluated step (phases.csv, phase_changes.csv) and the essential dynamics of their predictions
(dynamics.csv, dynamics_variance.csv, essential_dynamics.png).
"""

import argparse
import importlib.util
import json
import logging
import shlex
import sys
from pathlib import Path

from icl_lr.analysis import plots, sections, sources, tables, trajectories
from icl_lr.records import schema

SET_FIGURES = {"ood/": "ood_vs_context.png", "sigma_": "error_per_sigma.png", "task_": "error_per_task_class.png"}
log = logging.getLogger("analyze")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "paths", nargs="*", type=Path, help="run dirs or folders holding them (e.g. outputs/, multirun/<date>/)"
    )
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="load runs from the W&B API instead of local dirs")
    parser.add_argument(
        "--wandb-files",
        action="store_true",
        help="read the paths' local W&B run folders (offline-run-*, through W&B's own reader) instead of run dirs",
    )
    parser.add_argument("--sweep", metavar="ID", help="with --wandb: only the runs of this sweep")
    parser.add_argument(
        "--state", default="finished", help="with --wandb: run state to keep; 'any' keeps all (default: finished)"
    )
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep runs whose column KEY equals VALUE, e.g. --where data.n_dims=5 (repeatable)",
    )
    parser.add_argument(
        "--group-by",
        action="append",
        metavar="KEY",
        help="group by these columns instead of the ones the runs vary in (repeatable)",
    )
    parser.add_argument(
        "--metrics",
        nargs="+",
        metavar="NAME",
        help=f"summary metrics for summary.md (default: {' '.join(schema.HEADLINE)}); aggregate.csv: all eval/ metrics",
    )
    parser.add_argument("--out", type=Path, default=Path("analysis"), help="output folder (default: analysis/)")
    parser.add_argument(
        "--format", nargs="+", choices=["csv", "parquet"], default=["csv"], help="table file formats (default: csv)"
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=2000,
        metavar="N",
        help="bootstrap resamples for the 95%% interval, where a group has 30 seeds or more (default 2000)",
    )
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.add_argument(
        "--html", action="store_true", help="also write report.html: the plots, tables and groups in one file"
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="with --wandb: save a W&B report of the runs (the sweep) and print its URL",
    )
    parser.add_argument(
        "--report-spec",
        type=Path,
        metavar="FILE",
        help="write the W&B report as --report would send it (JSON), without a server: to review it first",
    )
    args = parser.parse_args(argv)
    if bool(args.paths) == bool(args.wandb):
        parser.error("give run dirs, or --wandb ENTITY/PROJECT (not both)")
    if args.sweep and not args.wandb:
        parser.error("--sweep needs --wandb; for local sweeps pass outputs/sweep-<id>")
    if args.report and not args.wandb:
        parser.error("--report needs --wandb ENTITY/PROJECT (a report lives on the W&B server); offline: --html")
    if args.html and args.no_plots:
        parser.error("--html needs the plots: drop --no-plots")
    if args.wandb and args.wandb.count("/") != 1:
        parser.error(f"--wandb takes ENTITY/PROJECT, got {args.wandb!r}")
    optional = [  # (asked for, the option, the package it needs, the extra that installs it)
        ("parquet" in args.format, "--format parquet", "pyarrow", "parquet"),
        (args.report or args.report_spec, "--report and --report-spec", "wandb_workspaces", "report"),
    ]
    for asked, option, module, extra in optional:
        if asked and importlib.util.find_spec(module) is None:
            parser.error(f"{option} need {module}: pip install 'icl-lr[{extra}]'")
    return args


def load(args) -> sources.RunTables:
    if args.wandb:
        return sources.load_wandb(args.wandb, args.sweep, None if args.state == "any" else args.state)
    if args.wandb_files:
        return sources.load_wandb_files(args.paths)
    return sources.load_local(args.paths)


def write_plots(named: dict, keys, args, attention: dict) -> dict:
    """The PNG figures that the runs' metrics allow, from the written tables `named` and the runs' attention
    maps (sources.attention_maps): {path: caption}."""
    aggregate, curve_stats = named["aggregate"], named["curve_aggregate"]
    out, curves, figures = args.out, named["curves"], {}
    plots.plot_error_curves(curve_stats, keys, out / "error_vs_context.png")
    figures[out / "error_vs_context.png"] = (
        "squared error / d vs k per group, the model (95% band) beside the baselines"
    )
    if curve_stats.predictor.str.startswith("ce/").any():
        plots.plot_error_curves(curve_stats, keys, out / "ce_vs_context.png", metric="ce")
        figures[out / "ce_vs_context.png"] = "cross-entropy of the y bin vs k per group, binned outputs"
    if curve_stats.predictor.str.startswith("accuracy/").any():
        plots.plot_error_curves(curve_stats, keys, out / "accuracy_vs_context.png", metric="accuracy")
        figures[out / "accuracy_vs_context.png"] = f"{plots.YLABELS['accuracy']} vs k per group, classification"
    if "algorithm_similarity" in named:
        plots.plot_error_curves(curve_stats, keys, out / "similarity_vs_context.png", metric=schema.DISTANCE)
        figures[out / "similarity_vs_context.png"] = (
            "each algorithm's mean squared difference from the model's predictions vs k (algorithm_similarity.csv)"
        )
    if "probe_r2" in named:
        plots.plot_probe_r2(named["probe_r2"], keys, out / "probe_r2_by_layer.png")
        figures[out / "probe_r2_by_layer.png"] = (
            "held-out R² of each layer's linear probe for each target, mean over k (probe_r2.csv)"
        )
    for run_id, (step, weights) in attention.items():
        path = out / f"attention_{run_id}.png"
        plots.plot_attention(weights, path)
        figures[path] = (
            f"run {run_id}'s attention at step {step}, mean over the held-out prompts: a row per layer, a column "
            "per head, query down, key across (square-root colour scale)"
        )
    history_stats, reference = named["history_aggregate"], tables.references(named["runs"])
    if not history_stats.empty:
        plots.plot_history(history_stats, keys, out / "eval_vs_step.png", reference)
        figures[out / "eval_vs_step.png"] = f"held-out error (mean over k) and excess over {reference} vs training step"
    for prefix, name in SET_FIGURES.items():
        title = sections.SET_SECTIONS[prefix]
        if sets := _sets(curves, prefix):
            plots.plot_sets(curve_stats, keys, sets, out / name, title)
            figures[out / name] = f"{title}: error vs k, a panel each"
    if "task_pool" in named:
        plots.plot_error_vs_task_pool(named["task_pool"], keys, out / "error_vs_task_pool.png")
        figures[out / "error_vs_task_pool.png"] = (
            "error vs task pool size, on pool and fresh tasks (the table task_pool.csv)"
        )
    runs = named["runs"]
    if "model_size" in keys and runs.model_size.nunique() > 1:
        order = list(runs.groupby("model_size").n_params.first().sort_values().index)
        path = out / "excess_vs_model_size.png"
        plots.plot_metric(aggregate, "eval/excess/mean", "model_size", keys, path, order, reference)
        figures[path] = f"final excess over {reference} (mean over k) vs model size"
    if "data.noise_std" in keys and runs["data.noise_std"].nunique() > 1:
        path = out / "excess_vs_noise_std.png"
        plots.plot_metric(aggregate, "eval/excess/mean", "data.noise_std", keys, path, reference=reference)
        figures[path] = f"final excess over {reference} (mean over k) vs label noise std"
    return figures


def _sets(curves, prefix: str) -> list[str]:
    return [s for s in curves.set.unique() if s.startswith(prefix)]  # in the order the runs logged them


def interactive_figures(named: dict, keys, attention: dict) -> dict:
    """report.html's Plotly figures, as write_plots's PNGs: {section title: HTML fragment}."""
    from icl_lr.analysis import interactive

    curve_stats, curves, history_stats = named["curve_aggregate"], named["curves"], named["history_aggregate"]
    shown = {sections.ERROR_VS_K: interactive.error_vs_k(curve_stats, keys, title=sections.ERROR_VS_K)}
    if not history_stats.empty:
        shown[sections.LEARNING_CURVES] = interactive.learning_curves(
            history_stats, keys, tables.references(named["runs"])
        )
    if "algorithm_similarity" in named:
        shown[sections.SIMILARITY] = interactive.error_vs_k(curve_stats, keys, schema.DISTANCE, sections.SIMILARITY)
    if "probe_r2" in named:
        shown[sections.PROBES] = interactive.probe_r2(named["probe_r2"], keys, sections.PROBES)
    for run_id, (step, weights) in attention.items():
        title = f"{sections.ATTENTION}: run {run_id}, step {step}"
        shown[title] = interactive.attention_maps(weights, title)
    for prefix, title in sections.SET_SECTIONS.items():
        if sets := _sets(curves, prefix):
            shown[title] = interactive.sets_vs_k(curve_stats, keys, sets, title)
    if "task_pool" in named:
        shown[sections.TASK_POOL] = interactive.task_pool(named["task_pool"], keys)
    return shown


def trajectory_parts(finished, named: dict, out: Path, with_plots: bool) -> dict:
    """Of the runs with a trajectory (training.trajectory or eval.predictions): the algorithm phases and the
    essential dynamics (icl_lr/analysis/trajectories.py), their tables added to `named`, the figure written;
    returns {part title: {"lines", "figures", "tables"}} (report.html's sections.TRAJECTORY; none without such runs)."""
    traced = trajectories.trajectory_runs(finished) if "run_dir" in finished else []
    parts = {}
    by_step = trajectories.by_step_table(traced)
    if len(by_step):
        named["by_step"] = by_step
        figures = {}
        if with_plots:
            path = out / "loss_and_llc.png"
            plots.plot_by_step(by_step, {run_id: trajectories.label(run_id) for run_id, _ in traced}, path)
            figures[path] = "training loss, held-out error and the LLC (eval.llc, ± its standard error) by step"
        parts[sections.BY_STEP] = {"lines": [], "figures": figures, "tables": {}}
    found_phases, changes = trajectories.phase_tables(traced)
    if len(found_phases):
        named["phases"], named["phase_changes"] = found_phases, changes
        shown = {"where the closest predictor changes": changes, "the closest predictor at every step": found_phases}
        parts[sections.PHASES] = {"lines": trajectories.phase_lines(found_phases, changes), "tables": shown}
    found = trajectories.dynamics_of(traced)
    if found:
        named["dynamics"], variance = trajectories.dynamics_tables(found)
        named["dynamics_variance"] = variance
        lines = [
            f"prompt set {i} ({rows.runs.iloc[0]}): "
            + ", ".join(f"{r.component} {r.explained_variance_ratio:.1%}" for r in rows.itertuples())
            + " of the variance of the predictions over the checkpoints"
            for i, rows in variance.groupby("prompt_set")
        ]
        figures = {}
        if with_plots:
            path = out / "essential_dynamics.png"
            plots.plot_dynamics(found, {run_id: trajectories.label(run_id) for run_id, _ in traced}, path)
            figures[path] = (
                "each run's predictions on the first eval.predictions held-out prompts at every checkpoint, in the "
                "first two principal components of all checkpoints (dynamics.csv); crosses: the baselines' predictions"
            )
        parts[sections.DYNAMICS] = {"lines": lines, "figures": figures, "tables": {"explained variance": variance}}
    return parts


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        loaded = tables.apply_filters(load(args), args.where)
    except (FileNotFoundError, LookupError) as error:
        log.error("analyze: %s", error)
        return 2
    runs = loaded.runs
    finished = runs[runs.status == "finished"]  # runs.csv lists every run; only finished ones are aggregated
    if finished.empty:
        log.error("analyze: no finished runs left after --where %s", " ".join(args.where))
        return 2
    keys = args.group_by or tables.group_keys(finished)
    headline_metrics = args.metrics or list(schema.HEADLINE)
    within = tables.compared_within(finished, headline_metrics[0]) if headline_metrics[0] in finished else []
    keys += [k for k in within if k not in keys]  # excesses over different references: never one ranking
    missing = [k for k in [*keys, *(args.metrics or [])] if k not in runs]
    if missing:
        log.error("analyze: unknown column(s) %s; runs.csv lists them all", ", ".join(missing))
        return 2
    metrics = [c for c in finished if c.startswith("eval/") and not c.endswith(schema.REFERENCE)]
    metrics += ["n_params"] * ("n_params" in finished)  # a training run's; eval dirs alone have none
    aggregate = tables.aggregate_runs(finished, keys, metrics, args.bootstrap)
    curve_stats = tables.aggregate_curves(finished, loaded.curves, keys, args.bootstrap)
    groups = finished.groupby(keys, dropna=False).ngroups
    log.info("%d finished runs (of %d) in %d groups by %s", len(finished), len(runs), groups, ", ".join(keys))

    args.out.mkdir(parents=True, exist_ok=True)
    history_stats = tables.aggregate_history(finished, loaded.history, keys, n_resamples=args.bootstrap)
    named = {
        **loaded._asdict(),
        "aggregate": aggregate,
        "curve_aggregate": curve_stats,
        "history_aggregate": history_stats,
    }
    if loaded.curves.predictor.str.startswith(f"{schema.DISTANCE}/").any():
        named["algorithm_similarity"] = tables.algorithm_similarity(curve_stats, keys)
    if loaded.curves.predictor.str.startswith(f"{schema.PROBE_R2}/").any():
        named["probe_r2"] = tables.probe_r2(finished, loaded.curves, keys, args.bootstrap)
    if tables.TASK_POOL in keys and (loaded.curves.set == "pretrain").any():
        named["task_pool"] = tables.task_pool_stats(finished, loaded.curves, keys, args.bootstrap)
    over_steps = trajectory_parts(finished, named, args.out, not args.no_plots)
    written = [path for part in over_steps.values() for path in part.get("figures", {})]
    for name, table in named.items():
        for fmt in args.format:
            path = args.out / f"{name}.{fmt}"
            table.to_csv(path, index=False) if fmt == "csv" else table.to_parquet(path, index=False)
            written.append(path)
    summary = tables.summary_table(aggregate, keys, headline_metrics, within)
    markdown = summary.to_markdown(index=False)
    note = tables.summary_note(headline_metrics, within)
    (args.out / "summary.md").write_text(note + "\n\n" + markdown + "\n")
    written.append(args.out / "summary.md")
    attention = sources.attention_maps(finished) if "run_dir" in finished else {}
    figures = {} if args.no_plots else write_plots(named, keys, args, attention)
    written += figures
    if args.html:
        from icl_lr.analysis import html_report

        varied = {k: sorted(finished[k].map(tables.config_text).unique()) for k in keys}
        tables_shown = {"aggregate: every eval metric": aggregate, "runs: config and summary": runs}
        if "algorithm_similarity" in named:
            tables_shown = {"which algorithm best matches the model": named["algorithm_similarity"], **tables_shown}
        links = dict(zip(runs.run_id, runs.url, strict=True)) if "url" in runs else {}
        evals = finished[finished[schema.EVALUATED].notna()] if schema.EVALUATED in finished else finished.iloc[:0]
        shown = [schema.EVALUATED, *[k for k in keys if k != schema.EVALUATED], schema.REFERENCE, *schema.HEADLINE]
        eval_figures = {
            Path(row.run_dir) / "error_vs_context.png": f"{row[schema.EVALUATED]}: "
            + ", ".join(f"{k}={tables.config_text(row[k])}" for k in keys if k != schema.EVALUATED)
            for _, row in evals.iterrows()
            if (Path(row.run_dir) / "error_vs_context.png").exists()
        }
        html_report.write_report(
            args.out / "report.html",
            "python analyze.py " + shlex.join(argv),
            [args.wandb] if args.wandb else list(map(str, args.paths)),
            varied,
            runs.status.value_counts().to_dict(),
            summary,
            note,
            interactive_figures(named, keys, attention),
            figures,
            tables_shown,
            links,
            evals[[c for c in shown if c in evals]],
            eval_figures,
            over_steps,
        )
        written.append(args.out / "report.html")
    print(note + "\n" + markdown)
    for part in over_steps.values():
        print("\n".join(part["lines"]))
    print("wrote " + ", ".join(map(str, written)))
    if args.report or args.report_spec:
        from icl_lr.analysis import wandb_report

        entity, project = args.wandb.split("/") if args.wandb else runs_project(finished)
        headline = sections.headline(summary, keys, headline_metrics[0])
        told = {"headline": headline, "note": note, "markdown": markdown}
        report = wandb_report.build_report(entity, project, args.sweep, finished, keys, told)
        if args.report_spec:
            args.report_spec.write_text(json.dumps(wandb_report.report_spec(report), indent=2) + "\n")
            print(f"wrote {args.report_spec} (the W&B report as --report would send it)")
        if args.report:
            report.save()
            print(f"W&B report: {report.url}")
    return 0


def runs_project(runs) -> tuple[str, str]:
    """(entity, project) that local runs logged to, from their wandb.* config ("ENTITY" where unset)."""
    entity, project = (runs[key].dropna().unique() for key in ("wandb.entity", "wandb.project"))
    return (entity[0] if len(entity) else "ENTITY"), (project[0] if len(project) else "icl-lr")


def run_cli() -> None:
    """`python analyze.py` and `icl-lr-analyze`."""
    sys.exit(main())


if __name__ == "__main__":
    run_cli()
