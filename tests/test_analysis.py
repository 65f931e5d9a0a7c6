"""analyze.py on real tiny runs: a Hydra multirun over model width, noise and seed, offline."""

import base64
import html
import json
import logging
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from plotly.offline import get_plotlyjs

from helpers import FAST, ROOT, held_out_curves, no_key_env, run_id_of
from icl_lr.analysis import html_report, sections, sources, tables
from icl_lr.cli import analyze
from icl_lr.records import schema
from icl_lr.records.tracking import read_jsonl


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """8 runs: 2 widths x 2 noise levels x 2 seeds, from one `python train.py -m` (Hydra multirun); 40 steps,
    evals at 20 and 40."""
    sweep_dir = tmp_path_factory.mktemp("multirun")
    command = [
        sys.executable,
        "train.py",
        "-m",
        *FAST,
        "model.n_embd=16,32",
        "data.noise_std=0,0.5",
        "seed=0,1",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    result = subprocess.run(command, cwd=ROOT, env=no_key_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


def per_run_files(sweep_dir: Path) -> list:
    """(config overrides, summary, last curves) of each run, read straight from its files."""
    runs = []
    for run_dir in sorted(p for p in sweep_dir.iterdir() if p.name.isdigit()):
        overrides = dict(
            line.removeprefix("- ").lstrip("+").split("=", 1)  # data./model. keys as add-or-set (++)
            for line in (run_dir / ".hydra" / "overrides.yaml").read_text().splitlines()
        )
        summary = json.loads((run_dir / "summary.json").read_text())
        curves = held_out_curves(run_dir)
        runs.append((overrides, summary, curves))
    return runs


def test_multirun_makes_one_run_dir_and_wandb_run_per_job(sweep_dir):
    run_dirs = [p for p in sweep_dir.iterdir() if p.name.isdigit()]
    assert len(run_dirs) == 8
    assert len({run_id_of(d) for d in run_dirs}) == 8
    assert all(json.loads((d / "summary.json").read_text())["step"] == 40 for d in run_dirs)


def test_runs_table_has_the_config_and_summary_of_every_run(sweep_dir):
    runs, curves, _ = sources.load_local([sweep_dir])
    assert len(runs) == 8 and tables.group_keys(runs) == ["model_size", "data.noise_std"]
    assert set(runs.model_size) == {"1L/16d/2H", "1L/32d/2H"}
    by_dir = runs.set_index("run_dir")
    for run_dir in by_dir.index:
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
        assert by_dir.loc[run_dir, "eval/excess/mean"] == summary["eval/excess/mean"]
        assert by_dir.loc[run_dir, "n_params"] == summary["n_params"]
    assert len(curves) == 8 * 5 * 8  # runs x predictors x context lengths


def test_aggregates_over_seeds_equal_the_per_run_numbers(sweep_dir):
    runs, curves, _ = sources.load_local([sweep_dir])
    keys = tables.group_keys(runs)
    aggregate = tables.aggregate_runs(runs, keys, ["eval/excess/mean"]).set_index(["model_size", "data.noise_std"])
    curve_stats = tables.aggregate_curves(runs, curves, keys).set_index(
        ["model_size", "data.noise_std", "predictor", "k"]
    )
    files = per_run_files(sweep_dir)
    for width, size in ((16, "1L/16d/2H"), (32, "1L/32d/2H")):
        for noise in (0.0, 0.5):
            group = [
                (s, c) for o, s, c in files if o["model.n_embd"] == str(width) and float(o["data.noise_std"]) == noise
            ]
            values = np.array([s["eval/excess/mean"] for s, _ in group])
            row = aggregate.loc[(size, noise)]
            assert (
                row.n == 2
                and row["mean"] == pytest.approx(values.mean())
                and row["std"] == pytest.approx(values.std(ddof=1))
            )
            low, high = scipy.stats.t.interval(0.95, len(values) - 1, values.mean(), scipy.stats.sem(values))
            assert (row.ci_low, row.ci_high, row.ci_method) == (pytest.approx(low), pytest.approx(high), "t")
            for k in (0, 3, 7):
                model_errors = [c["model"][k] for _, c in group]
                assert curve_stats.loc[(size, noise, "model", k), "mean"] == pytest.approx(np.mean(model_errors))


@pytest.mark.parametrize("n", [2, 3, 5, 29])
def test_a_mean_over_few_seeds_gets_a_student_t_interval(n):
    """At n = 3 the bootstrap's interval is the seeds' min-max; Student-t's is wider, as scipy computes it."""
    values = np.random.default_rng(n).normal(0.75, 0.002, size=n)
    low, high, method = tables.mean_interval(values)
    want = scipy.stats.t.interval(0.95, n - 1, loc=values.mean(), scale=scipy.stats.sem(values))
    assert method == "t" and (low, high) == (pytest.approx(want[0], rel=1e-12), pytest.approx(want[1], rel=1e-12))
    if n == 3:
        assert high - low > values.max() - values.min()


def test_one_run_has_no_interval_and_many_seeds_a_bootstrap_one():
    low, high, method = tables.mean_interval(np.array([0.5]))
    assert np.isnan(low) and np.isnan(high) and method == ""
    values = np.random.default_rng(0).normal(size=tables.BOOTSTRAP_FROM)
    low, high, method = tables.mean_interval(values)
    want = scipy.stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=scipy.stats.sem(values))
    assert method == "bootstrap" and high - low == pytest.approx(want[1] - want[0], rel=0.2)


def test_the_summary_puts_the_best_first_and_marks_overlapping_intervals():
    aggregate = pd.DataFrame(
        [  # (group, mean, low, high, method, n)
            ("a", 0.30, 0.25, 0.35, "t", 3),
            ("b", 0.10, 0.05, 0.15, "t", 3),
            ("c", 0.13, 0.12, 0.20, "t", 3),
            ("d", 0.50, np.nan, np.nan, "", 1),
        ],
        columns=["g", "mean", "ci_low", "ci_high", "ci_method", "n"],
    ).assign(metric="eval/excess/mean", std=0.0)
    summary = tables.summary_table(aggregate, ["g"], ["eval/excess/mean"])
    assert list(summary.g) == ["b", "c", "a", "d"] and list(summary["rank"]) == [1, 2, 3, 4]
    assert list(summary.verdict) == ["best", "overlaps best", "", "no interval (n=1)"]
    assert summary["eval/excess/mean"][0] == "0.1000 [0.0500, 0.1500] (t, n=3)"
    assert summary["eval/excess/mean"][3] == "0.5000 (n=1)"
    assert "lower is better" in tables.summary_note(["eval/excess/mean"])
    accuracy = aggregate.assign(metric="eval/accuracy")
    assert list(tables.summary_table(accuracy, ["g"], ["eval/accuracy"]).g) == ["d", "a", "c", "b"]


def test_excesses_over_different_references_are_never_ranked_as_one_and_unmeasured_groups_not_at_all():
    """Runs of three tasks: each task's excess is over its own reference, so each is ranked among its own; a
    group without the headline metric (accuracy of a regression) is listed unranked."""
    aggregate = pd.DataFrame(
        [  # (task, its reference, mean excess)
            ("linear_regression", "bayes", 0.011),
            ("noisy_linear", "bayes", 0.020),
            ("decision_tree", "xgboost", -0.168),
            ("linear_classification", "logistic_regression", -0.011),
        ],
        columns=["data.task", "excess_over", "mean"],
    ).assign(metric="eval/excess/mean", std=0.0, ci_low=np.nan, ci_high=np.nan, ci_method="", n=1)
    runs = aggregate[["data.task", "excess_over"]]
    within = tables.compared_within(runs, "eval/excess/mean")
    assert within == ["excess_over"] and tables.compared_within(runs, "eval/model/error_mean") == []
    summary = tables.summary_table(aggregate, ["data.task", "excess_over"], ["eval/excess/mean"], within)
    best = summary[summary.verdict == "best"]
    assert list(best["data.task"]) == ["linear_regression", "linear_classification", "decision_tree"]
    assert list(summary["rank"]) == [1, 2, 1, 1]
    headline = sections.headline(summary, ["data.task", "excess_over"], "eval/excess/mean")
    assert headline.count("Best: ") == 3 and "data.task=decision_tree, excess_over=xgboost" in headline
    assert "ranked within each excess_over" in tables.summary_note(["eval/excess/mean"], within)
    accuracy = aggregate.assign(metric="eval/accuracy", mean=[np.nan, np.nan, np.nan, 0.85])
    ranked = tables.summary_table(accuracy, ["data.task"], ["eval/accuracy"])
    assert list(ranked["data.task"])[0] == "linear_classification" and list(ranked.verdict)[1:] == ["not measured"] * 3
    assert ranked["rank"].isna().sum() == 3


def test_reading_many_runs_says_how_far_it_got(caplog):
    caplog.set_level(logging.INFO, logger="analyze")
    assert list(sources._reading(range(3), "runs", every=0)) == [0, 1, 2]
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" (")[0] for line in lines[:3]] == ["read 0 of 3 runs", "read 1 of 3 runs", "read 2 of 3 runs"]
    assert lines[3].startswith("read 3 runs in ")
    caplog.clear()
    assert list(sources._reading(range(3), "runs")) == [0, 1, 2] and not caplog.records  # quick: no lines


def test_bootstrap_interval_is_the_spread_of_the_mean():
    values = np.random.default_rng(1).normal(3.0, 2.0, size=400)
    low, high = tables.bootstrap_interval(values)
    assert low < values.mean() < high
    assert high - low == pytest.approx(2 * 1.96 * values.std(ddof=1) / np.sqrt(400), rel=0.15)
    assert tables.bootstrap_interval(np.full(5, 0.25)) == (0.25, 0.25)
    assert all(np.isnan(tables.bootstrap_interval(np.array([1.0]))))


def test_cli_writes_tables_markdown_and_plots(sweep_dir, tmp_path):
    out = tmp_path / "analysis"
    assert analyze.main([str(sweep_dir), "--out", str(out), "--format", "csv", "parquet"]) == 0
    aggregate = pd.read_csv(out / "aggregate.csv")
    pd.testing.assert_frame_equal(aggregate, pd.read_parquet(out / "aggregate.parquet"), check_dtype=False)
    assert len(pd.read_csv(out / "runs.csv")) == 8
    assert set(aggregate.metric) >= {"eval/excess/mean", "eval/model/error_k3", "n_params"}
    markdown = (out / "summary.md").read_text()
    assert (
        "model_size" in markdown and "data.noise_std" in markdown and markdown.count("(t, n=2)") == 8
    )  # 4 groups x 2 metrics
    assert markdown.startswith("Sorted by eval/excess/mean (lower is better).")
    for plot in ("error_vs_context.png", "eval_vs_step.png", "excess_vs_model_size.png", "excess_vs_noise_std.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_filters_and_refuses_bad_input(sweep_dir, tmp_path, caplog):
    out = tmp_path / "filtered"
    assert analyze.main([str(sweep_dir), "--out", str(out), "--where", "data.noise_std=0.5", "--no-plots"]) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 4 and set(runs["data.noise_std"]) == {0.5}
    assert analyze.main([str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert analyze.main([str(sweep_dir), "--out", str(out), "--group-by", "data.nosie_std"]) == 2
    assert analyze.main([str(sweep_dir), "--out", str(out), "--where", "nosie=1"]) == 2
    assert "unknown column(s) data.nosie_std" in caplog.text
    for bad in (["--sweep", "abc"], [str(sweep_dir), "--report"], [str(sweep_dir), "--html", "--no-plots"]):
        with pytest.raises(SystemExit) as exit_info:
            analyze.main(bad)
        assert exit_info.value.code == 2


def test_runs_group_by_the_noise_prior_they_really_had():
    """A sweep draws data.noise_std even where data.noise_std_choices overrides it: that value is NaN."""
    model = {"n_layer": 1, "n_embd": 8, "n_head": 1}
    hierarchical = {"data": {"noise_std": 0.5, "noise_std_choices": [0.1, 1.0]}, "model": model}
    fixed = {"data": {"noise_std": 0.5, "noise_std_choices": None}, "model": model}
    from_sweep = {"data.noise_std": 0.25, "data.noise_std_choices": "[0.1,1.0]", "model": "gpt2_tiny"}
    from_sweep |= {f"model.{k}": v for k, v in model.items()}  # W&B's flat config, a sweep's text values
    runs = pd.DataFrame([sources._run_row(str(i), c, {}) for i, c in enumerate([hierarchical, fixed, from_sweep])])
    assert (
        np.isnan(runs["data.noise_std"][0]) and runs["data.noise_std"][1] == 0.5 and np.isnan(runs["data.noise_std"][2])
    )
    assert list(runs["data.noise_std_choices"].fillna("null")) == ["[0.1, 1.0]", "null", "[0.1, 1.0]"]
    assert "model" not in runs and list(runs.model_size) == ["1L/8d/1H"] * 3


def test_a_key_older_runs_lack_counts_as_its_default(sweep_dir, tmp_path):
    """A run from before a config key existed (training.precision, here) groups with runs that have the
    key at its default, rather than making the key look swept."""
    import shutil

    older = tmp_path / "older"
    shutil.copytree(sweep_dir / "0", older)
    config = (older / ".hydra" / "config.yaml").read_text()
    (older / ".hydra" / "config.yaml").write_text(config.replace("  precision: fp32\n", ""))
    assert "precision" not in (older / ".hydra" / "config.yaml").read_text()
    runs, _, _ = sources.load_local([sweep_dir, older])
    assert list(runs["training.precision"].unique()) == ["fp32"]
    assert "training.precision" not in tables.group_keys(runs)


def test_history_is_every_scalar_of_the_metrics_files(sweep_dir):
    _, _, history = sources.load_local([sweep_dir])
    expected = []
    for run_dir in sorted(p for p in sweep_dir.iterdir() if p.name.isdigit()):
        run_id = run_id_of(run_dir)
        for record in read_jsonl(run_dir / "metrics.jsonl"):
            expected += [(run_id, record["step"], k, v) for k, v in record.items() if k != "step"]
    assert len(expected) > 8 * 4 * 3  # 4 train rows and 2 evals per run, several metrics each
    table = pd.DataFrame(expected, columns=sources.HISTORY_COLUMNS)
    key = ["run_id", "step", "metric"]
    pd.testing.assert_frame_equal(
        history.sort_values(key).reset_index(drop=True), table.sort_values(key).reset_index(drop=True)
    )


def test_a_step_logged_twice_keeps_its_last_value():
    """A resumed run logs the steps after its checkpoint again (W&B keeps both rows): the last one counts."""
    history = [("a", 10, "train/loss", 2.0), ("a", 20, "train/loss", 1.5), ("a", 20, "train/loss", 1.4)]
    loaded = sources.RunTables.of([], [], history)
    assert list(loaded.history.itertuples(index=False, name=None)) == [history[0], history[2]]


def test_learning_curves_aggregate_each_step_over_seeds(sweep_dir):
    runs, _, history = sources.load_local([sweep_dir])
    keys = tables.group_keys(runs)
    stats = tables.aggregate_history(runs, history, keys).set_index([*keys, "metric", "step"])
    assert sorted(stats.index.get_level_values("step").unique()) == [20, 40]
    group = runs[(runs["model.n_embd"] == 32) & (runs["data.noise_std"] == 0.5)]
    values = history[history.run_id.isin(group.run_id) & (history.metric == "eval/excess/mean") & (history.step == 20)]
    row = stats.loc[("1L/32d/2H", 0.5, "eval/excess/mean", 20)]
    assert row.n == 2 and row["mean"] == pytest.approx(values.value.mean())


def test_html_report_holds_every_plot_and_table(sweep_dir, tmp_path):
    out = tmp_path / "analysis"
    assert analyze.main([str(sweep_dir), "--out", str(out), "--html"]) == 0
    page = (out / "report.html").read_text()
    assert page.count(get_plotlyjs()) == 1  # Plotly's JavaScript inlined once
    rest = page.replace(get_plotlyjs(), "")
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", rest)  # nothing loaded from elsewhere
    assert rest.count("Plotly.newPlot(") == 2  # interactive: error vs k, learning curves
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 4
    for png in pngs:  # each plot, embedded byte for byte
        assert f"data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}" in page
    assert f"python analyze.py {sweep_dir} --out {out} --html" in page
    assert "<th>model_size</th><td>1L/16d/2H, 1L/32d/2H</td>" in page
    assert "<th>data.noise_std</th><td>0, 0.5</td>" in page
    aggregate = pd.read_csv(out / "aggregate.csv")
    keys = ["model_size", "data.noise_std"]
    cells = tables.summary_table(aggregate, keys, list(schema.HEADLINE))
    shown = html_tables(page)
    assert len(shown) == 4  # summary, what varies, aggregate, runs
    assert shown[0][0] == ["rank", "verdict", *keys, *schema.HEADLINE]
    assert shown[0][1:] == cells.astype(str).to_numpy().tolist()  # the best first, as summary_table ranks
    excess = aggregate[aggregate.metric == schema.EXCESS].sort_values("mean")
    assert [row[2:4] for row in shown[0][1:]] == excess[keys].map(tables.config_text).to_numpy().tolist()
    best_row = re.search(r'<tr class="best">(.*?)</tr>', page).group(1)
    assert f"<td>{html.escape(cells.iloc[0][schema.EXCESS])}</td>" in best_row
    assert "lower is better" in page and html.escape(f"{schema.EXCESS} {cells.iloc[0][schema.EXCESS]}") in page
    runs = pd.read_csv(out / "runs.csv")
    assert shown[3][0][:2] == ["run_id", "run_dir"] and {row[0] for row in shown[3][1:]} == set(runs.run_id)
    assert len(shown[2]) == 1 + len(aggregate)  # a header row and every aggregate row


def test_the_report_of_wandb_runs_is_the_same_and_links_each_run_to_its_page(sweep_dir, tmp_path):
    """From the runs' W&B files (as from the W&B API: the same tables) the same summary; a run id that has a
    W&B URL (runs read through the API carry one) links to its page."""
    from_dirs, from_wandb = tmp_path / "dirs", tmp_path / "wandb"
    assert analyze.main([str(sweep_dir), "--out", str(from_dirs), "--html"]) == 0
    assert analyze.main(["--wandb-files", str(sweep_dir), "--out", str(from_wandb), "--html"]) == 0
    dirs_page, wandb_page = ((out / "report.html").read_text() for out in (from_dirs, from_wandb))
    assert html_tables(dirs_page)[0] == html_tables(wandb_page)[0]  # the summary, best first
    runs = pd.read_csv(from_dirs / "runs.csv")
    links = {run_id: f"https://wandb.ai/team/icl-lr/runs/{run_id}" for run_id in runs.run_id[:2]}
    summary = pd.DataFrame({"rank": [1], "verdict": ["best"], "g": ["a"], "m": ["0.1 (n=1)"]})
    page_file = tmp_path / "linked.html"
    html_report.write_report(page_file, "cmd", ["src"], {"g": ["a"]}, {"finished": 8}, summary, "note", {}, {},
                             {"runs": runs}, links)  # fmt: skip
    page = page_file.read_text()
    for run_id in runs.run_id:
        assert (f'<a href="https://wandb.ai/team/icl-lr/runs/{run_id}">{run_id}</a>' in page) == (run_id in links)


def test_the_report_renders_in_a_real_browser_without_errors_or_fetches(sweep_dir, tmp_path):
    """Headless Chromium opens report.html with every host unreachable: the Plotly figures render (their SVG
    is in the DOM), the console has no errors, nothing failed to load."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on this machine (.ci/run installs Debian's)")
    out = tmp_path / "analysis"
    assert analyze.main([str(sweep_dir), "--out", str(out), "--html"]) == 0
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    command += ["--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=10000", "--dump-dom"]
    opened = subprocess.run([*command, (out / "report.html").as_uri()], capture_output=True, text=True, timeout=120)
    dom = opened.stdout
    assert dom.count('class="main-svg"') >= 2 * 2  # each Plotly figure draws two SVG layers
    assert dom.count('class="scatterlayer') >= 2 and "Which config is best" in dom
    console = [line for line in opened.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    assert "Failed to load" not in opened.stderr and "ERR_NAME_NOT_RESOLVED" not in opened.stderr


def html_tables(page: str) -> list:
    """The cells of each <table> of a page, row by row."""

    class Tables(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tables, self.in_cell = [], False

        def handle_starttag(self, tag, attrs):
            if tag == "table":
                self.tables.append([])
            elif tag == "tr":
                self.tables[-1].append([])
            elif tag in ("td", "th"):
                self.tables[-1][-1].append("")
                self.in_cell = True

        def handle_endtag(self, tag):
            if tag in ("td", "th"):
                self.in_cell = False

        def handle_data(self, data):
            if self.in_cell:
                self.tables[-1][-1][-1] += data.strip()

    parser = Tables()
    parser.feed(page)
    return parser.tables


def test_wandb_report_has_a_panel_per_group_and_metric(sweep_dir):
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    from icl_lr.analysis import wandb_report

    runs, _, history = sources.load_local([sweep_dir])
    keys = tables.group_keys(runs)
    told = {"headline": "Best: ...", "note": "Sorted by ...", "markdown": "| table |"}
    report = wandb_report.build_report("team", "icl-lr", "swp123", runs, keys, told)
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    per_group, overview = grids[:-1], grids[-1]
    filters = lambda runset: [(f.key.name, f.value) for f in expr.string_to_filterexpr_list(runset.filters)]  # noqa: E731
    everything = overview.runsets[0]
    assert filters(everything) == [("State", "finished"), ("Sweep", "swp123")]
    config_keys = ["model.n_layer", "model.n_embd", "model.n_head", "data.noise_std"]
    assert everything.groupby == [f"config.{k}.value" for k in config_keys]  # flat keys, as W&B stores them
    lines = [p for p in overview.panels if isinstance(p, wr.LinePlot)]
    assert [p.y for p in lines] == [[m] for m in schema.LEARNING_CURVES] and {p.x for p in lines} == {"step"}
    assert set(schema.LEARNING_CURVES) <= set(history.metric)
    (parallel,) = [p for p in overview.panels if isinstance(p, wr.ParallelCoordinatesPlot)]
    assert [c.metric.name for c in parallel.columns] == [*config_keys, "eval/excess/mean"]
    scatter = {p.title: (p.x, p.y) for p in overview.panels if isinstance(p, wr.ScatterPlot)}  # W&B's: report_spec
    assert scatter == {
        "final excess vs model size": ("n_params", "eval/excess/mean"),
        "final excess vs noise std": (wr.Config("data.noise_std"), "eval/excess/mean"),
    }
    assert all(c in runs for c in ("n_params", "eval/excess/mean"))
    groups = {tuple(sorted(ids)) for _, ids in runs.groupby(["model.n_embd", "data.noise_std"]).run_id}
    assert len(per_group) == len(groups) == 4
    for grid in per_group:
        (runset,) = grid.runsets
        (chart,) = grid.panels
        assert chart.query == {"summaryTable": {"tableKey": "eval/curves_chart_table"}}
        assert chart.chart_name == "wandb/lineseries/v0"
        values = dict(filters(runset))
        assert values["Sweep"] == "swp123" and len(values["ID"]) == 2  # a group's two seeds
        groups.discard(tuple(sorted(values["ID"])))
    assert not groups  # one grid for each group
    (folder,) = (sweep_dir / "0" / "wandb").glob("offline-run-*")
    logged = sources.read_wandb_file(folder)["summary"]
    assert logged["eval/curves_chart_table"]["_type"] == "table-file"  # the table the charts read, as W&B holds it
    assert all(f"summary:{m}" in everything.pinned_columns for m in ("eval/excess/mean", "eval/model/error_mean"))
    assert not any(isinstance(b, wr.H1) and "distribution" in b.text for b in report.blocks)  # no OOD metrics here


def test_the_wandb_report_keeps_parity_with_report_html(sweep_dir, tmp_path):
    """The same sections in the same order, the same headline sentence, the same summary table."""
    out, spec_file = tmp_path / "analysis", tmp_path / "report.json"
    assert analyze.main([str(sweep_dir), "--out", str(out), "--html", "--report-spec", str(spec_file)]) == 0
    page = (out / "report.html").read_text()
    html_sections = [html.unescape(t) for t in re.findall(r"<h[23]>(.*?)</h[23]>", page)]
    html_sections = [t for t in html_sections if t not in ("What varies", "Figures", "Tables")]
    spec = json.loads(spec_file.read_text())["spec"]
    blocks = json.loads(spec)["blocks"]
    wandb_sections = [b["children"][0]["text"] for b in blocks if b.get("type") == "heading" and b.get("level") == 1]
    assert html_sections == wandb_sections == ["Which config is best", "Error vs k per group", "Learning curves"]
    headline = html.unescape(re.search(r'<p class="headline">(.*?)</p>', page).group(1))
    assert headline.startswith("Best: model_size=") and headline in spec
    assert (out / "summary.md").read_text().split("\n\n", 1)[1].strip() in spec.replace("\\n", "\n")


def logged_config_paths(run_folder) -> set:
    """Where W&B keeps each config value a run logged: a key `k` as {"k": {"value": ...}}, the path `k.value`."""
    return {f"{key}.value" for key in sources.read_wandb_file(run_folder)["config"]}


def spec_config_paths(spec: dict) -> set:
    """Every config path a serialised report reads: run-set grouping, table columns, panel axes."""
    paths = set()

    def visit(node):
        if isinstance(node, dict):
            if node.get("section") == "config":
                paths.add(node["name"])
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)
        elif isinstance(node, str) and node.startswith("config:"):
            paths.add(node.removeprefix("config:"))

    visit(json.loads(spec["spec"]))
    return paths


def test_the_report_as_wandb_receives_it_reads_config_paths_the_runs_have(sweep_dir, tmp_path):
    spec_file = tmp_path / "report.json"
    assert (
        analyze.main([str(sweep_dir), "--out", str(tmp_path / "a"), "--no-plots", "--report-spec", str(spec_file)]) == 0
    )
    spec = json.loads(spec_file.read_text())
    assert (spec["entityName"], spec["projectName"], spec["type"]) == ("ENTITY", "icl-lr", "runs")
    paths = spec_config_paths(spec)
    assert {"model.n_embd.value", "data.noise_std.value"} <= paths  # grouping, columns, scatter, parallel axes
    for run_dir in (p for p in sweep_dir.iterdir() if p.name.isdigit()):
        (folder,) = (run_dir / "wandb").glob("offline-run-*")
        assert paths <= logged_config_paths(folder), paths - logged_config_paths(folder)
    spec_text = spec["spec"]
    for key in ("model.n_embd", "data.noise_std"):  # each place a config key is read, in the flat form
        assert f'"section":"config","name":"{key}.value"' in spec_text
        assert f'"accessor":"config:{key}.value"' in spec_text
    assert '"xAxis":"config:data.noise_std.value"' in spec_text


def test_analyze_says_which_algorithm_best_matches_the_model_and_what_each_layer_holds(tmp_path):
    """A run with eval.algorithms and eval.probes: its similarity and probe curves in curves.jsonl; analyze's
    tables (each algorithm's mean over k >= 1, the closest first; each probe's R² by layer), figures and
    report sections; the W&B charts those sections read, as W&B wrote them."""
    result = subprocess.run(
        [sys.executable, "train.py", *FAST, "eval.algorithms=true", "eval.algorithm_steps=[1,4]", "eval.probes=true",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT, env=no_key_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (last,) = [r for r in read_jsonl(tmp_path / "run" / "curves.jsonl") if r["step"] == 40]
    names = ["gd_1", "gd_4", "newton_1", "newton_4", "preconditioned_gd", "online_gd"]
    assert {f"similarity_mse/{n}" for n in names} <= set(last) and {f"{n}" for n in names} <= set(last)
    out, spec_file = tmp_path / "analysis", tmp_path / "report.json"
    assert analyze.main([str(tmp_path / "run"), "--out", str(out), "--html", "--report-spec", str(spec_file)]) == 0
    table = pd.read_csv(out / "algorithm_similarity.csv")
    baselines = ["bayes", "least_squares", "averaging", "3nn"]  # compared by predictions and residuals
    assert list(table["rank"]) == list(range(1, 11)) and sorted(table.algorithm) == sorted(names + baselines)
    assert table.similarity_mse.is_monotonic_increasing
    for row in table.itertuples():
        assert row.similarity_mse == pytest.approx(np.mean(last[f"similarity_mse/{row.algorithm}"][1:]), rel=1e-5)
        assert -1 <= row.similarity_residual_cos <= 1
        assert -1 <= row.similarity_grad_cos <= 1 if row.algorithm in names else np.isnan(row.similarity_grad_cos)
    assert (out / "similarity_vs_context.png").exists()
    page = (out / "report.html").read_text()
    assert "which algorithm best matches the model" in page
    html_sections = [html.unescape(t) for t in re.findall(r"<h3>(.*?)</h3>", page)]
    blocks = json.loads(json.loads(spec_file.read_text())["spec"])["blocks"]
    wandb_sections = [b["children"][0]["text"] for b in blocks if b.get("type") == "heading" and b.get("level") == 1]
    assert html_sections == [
        "Error vs k per group", "Learning curves", "Which algorithm the model matches",
        "What each layer holds (linear probes)",
    ]  # fmt: skip
    assert wandb_sections == ["Which config is best", *html_sections]  # the W&B report's, in the same order
    (folder,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    logged = sources.read_wandb_file(folder)["summary"]
    for chart in ("similarity_chart", "probe_chart"):  # what those sections chart
        assert logged[f"eval/curves_{chart}_table"]["_type"] == "table-file"
        assert f'"value":"eval/curves_{chart}_table"' in json.loads(spec_file.read_text())["spec"]

    layers = 1 + 1  # FAST's one block and the trunk's input
    targets = ["w", "xty", "ls_w", "gd_prediction", "ls_prediction"]
    probes = pd.read_csv(out / "probe_r2.csv")
    assert list(dict.fromkeys(probes.target)) == targets and list(probes.layer) == list(range(layers)) * len(targets)
    for row in probes.itertuples():
        assert row.mean == pytest.approx(np.nanmean(last[f"probe_r2/{row.target}/layer_{row.layer}"]), rel=1e-6)
    assert np.isnan(last["probe_r2/xty/layer_0"][0])  # X^T y of no points does not vary: no R²
    assert (out / "probe_r2_by_layer.png").exists()
    chart = json.loads((folder / "files" / logged["eval/curves_probe_chart_table"]["path"]).read_text())
    rows = [dict(zip(chart["columns"], row, strict=True)) for row in chart["data"]]
    sent = {(row["lineKey"], row["step"]): row["lineVal"] for row in rows}  # W&B's chart: R² by layer, the same means
    assert sent == pytest.approx({(row.target, row.layer): row.mean for row in probes.itertuples()})


def train_runs(tmp_path, runs: dict) -> None:
    """`python train.py FAST overrides` into tmp_path/<name> for each {name: overrides}."""
    for name, overrides in runs.items():
        result = subprocess.run(
            [sys.executable, "train.py", *FAST, *overrides, f"hydra.run.dir={tmp_path / name}"],
            cwd=ROOT, env=no_key_env(), capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]


def test_a_classification_run_records_its_metric_and_reference(tmp_path):
    """Accuracy curves of the model and every baseline, the excess over logistic regression (named in the
    summary, W&B's included), analyze's accuracy figure."""
    train_runs(tmp_path, {"classification": ["data.task=linear_classification"]})
    summary = json.loads((tmp_path / "classification" / "summary.json").read_text())
    (last,) = [r for r in read_jsonl(tmp_path / "classification" / "curves.jsonl") if r["step"] == 40]
    assert summary["excess_over"] == "logistic_regression"
    excess = np.mean(np.asarray(last["model"]) - np.asarray(last["logistic_regression"]))
    assert summary["eval/excess/mean"] == pytest.approx(excess, rel=1e-5)
    assert {"accuracy/model", "accuracy/logistic_regression", "accuracy/3nn"} <= set(last)
    assert all(0 <= a <= 1 for a in last["accuracy/model"]) and "eval/accuracy/model_k3" in summary
    (folder,) = (tmp_path / "classification" / "wandb").glob("offline-run-*")
    logged = sources.read_wandb_file(folder)["summary"]
    assert (
        logged["excess_over"] == "logistic_regression"
        and logged["eval/accuracy/model_k3"] == summary["eval/accuracy/model_k3"]
    )

    out = tmp_path / "analysis"
    assert analyze.main([str(tmp_path / "classification"), "--out", str(out)]) == 0
    assert (out / "accuracy_vs_context.png").exists()


@pytest.mark.slow  # the suite's cover of a mixture: its sets and Bayes weights (test_tasks.py)
def test_a_task_mixture_records_a_set_per_class_and_analyze_a_panel_each(tmp_path):
    train_runs(tmp_path, {"mixture": ["data.task=mixture", "data.task_mixture=[linear_regression,quadratic]"]})
    sets = {r.get("set") for r in read_jsonl(tmp_path / "mixture" / "curves.jsonl")}
    assert sets == {"held_out", "task_linear_regression", "task_quadratic"}
    mixture = json.loads((tmp_path / "mixture" / "summary.json").read_text())
    assert mixture["excess_over"] == "bayes" and "eval/task_quadratic/bayes_quadratic/error_k3" in mixture
    out = tmp_path / "analysis"
    assert analyze.main([str(tmp_path / "mixture"), "--out", str(out)]) == 0
    assert (out / "error_per_task_class.png").exists()
