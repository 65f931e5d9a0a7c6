"""W&B tracking, checked on the run files wandb itself writes offline (read back with wandb's schema)."""

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import FAST, ROOT, RunFile, assert_trees_equal, final_state, no_key_env, run_id_of, train_cli
from icl_lr.analysis import sources
from icl_lr.records.tracking import read_jsonl
from icl_lr.train.loop import train

SECRET = "0123456789abcdef0123456789abcdef01234567"  # a well-formed but bogus W&B API key


def offline_run_files(run_dir: Path) -> list:
    """The run files of a run dir's offline W&B runs, oldest first."""
    return [RunFile.load(d) for d in sorted((run_dir / "wandb").glob("offline-run-*"))]


def rows_with(history: list, key: str) -> dict:
    return {row["step"]: row for row in history if key in row}


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """One default-mode run on a machine without a key: W&B must go offline by itself."""
    run_dir = tmp_path_factory.mktemp("tracked")
    result = train_cli(run_dir, "wandb.group=g1", "wandb.tags=[a,b]", "wandb.name=tiny-run", wandb=True)
    return run_dir, result.stdout + result.stderr


def test_without_a_key_the_run_is_offline_with_a_sync_hint(tracked_run):
    run_dir, output = tracked_run
    (offline,) = list((run_dir / "wandb").glob("offline-run-*"))
    assert f"upload later with: wandb sync {offline}" in output
    assert "Run summary" not in output and "Run history" not in output  # W&B's end-of-run dump: in W&B only
    assert len([line for line in output.splitlines() if "artifact" in line]) <= 2  # a line per checkpoint


def test_the_run_file_is_read_as_wandbs_own_command_reads_it(tracked_run):
    """wandb_adapter.read_run_folder (wandb-core's reader, called directly) prints what `wandb leet inspect`
    prints, records and summary, on the folder and on its .wandb file."""
    from icl_lr.records.wandb_adapter import read_run_folder

    (folder,) = (tracked_run[0] / "wandb").glob("offline-run-*")
    wandb_cli = [str(Path(sys.executable).with_name("wandb")), "leet", "inspect"]
    inspect = lambda *args: subprocess.run([*wandb_cli, *args], check=True, capture_output=True, text=True).stdout
    records = [json.loads(line) for line in inspect("--json", str(folder)).splitlines()]
    assert read_run_folder(folder) == read_run_folder(next(folder.glob("*.wandb"))) == records
    assert any(r["type"] == "history" for r in records)
    assert read_run_folder(folder, summary=True) == json.loads(inspect("--summary", "--json", str(folder)))


def test_run_file_records_identity_and_the_resolved_config(tracked_run):
    run_dir, _ = tracked_run
    (record,) = offline_run_files(run_dir)
    assert record.run_id == run_id_of(run_dir)
    assert (record.project, record.group, record.name, record.job_type) == ("icl-lr", "g1", "tiny-run", "train")
    assert record.tags == ["a", "b"]
    assert record.config_value("data.n_dims") == 3 and record.config_value("model.n_embd") == 32
    assert record.config_value("training.steps") == 40 and record.config_value("wandb.mode") == "auto"
    assert record.exit_code == 0


def test_history_and_summary_match_the_local_metrics(tracked_run):
    run_dir, _ = tracked_run
    (record,) = offline_run_files(run_dir)
    local = read_jsonl(run_dir / "metrics.jsonl")
    train_rows = rows_with(record.history, "train/loss")
    assert sorted(train_rows) == [10, 20, 30, 40]
    for row in (r for r in local if "train/loss" in r):
        for key in ("train/loss", "train/grad_norm", "train/lr"):
            assert train_rows[row["step"]][key] == pytest.approx(row[key], rel=1e-6)
    assert "train/steps_per_second" in train_rows[40]
    eval_rows = rows_with(record.history, "eval/excess/mean")
    local_evals = {r["step"]: r for r in local if "eval/excess/mean" in r}
    assert sorted(eval_rows) == sorted(local_evals) == [20, 40]
    for step, row in local_evals.items():
        for key in ("eval/excess/mean", "eval/model/error_k3", "eval/bayes/error_k6", "eval/excess/error_k1"):
            assert eval_rows[step][key] == pytest.approx(row[key], rel=1e-6)
    # the summary keeps the last value of every metric, and the best (min) of loss and model error
    assert record.summary["eval/excess/mean"] == pytest.approx(local_evals[40]["eval/excess/mean"], rel=1e-6)
    assert record.summary["train/loss"] == pytest.approx(train_rows[40]["train/loss"], rel=1e-6)
    assert record.summary["best/train/loss"] == pytest.approx(min(r["train/loss"] for r in train_rows.values()))
    assert record.summary["best/eval/model/error_mean"] == pytest.approx(
        min(r["eval/model/error_mean"] for r in local_evals.values()), rel=1e-6
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert record.summary["step"] == summary["step"] == 40 and record.summary["n_params"] == summary["n_params"]


def test_one_summary_schema_in_run_dirs_and_wandb_files(tracked_run, tmp_path):
    """summary.json and W&B's summary (read by W&B's own reader) hold the same numbers; analyze.py loads
    the same tables from the run dir as from its offline W&B files alone (copied away from the run dir)."""
    import shutil

    run_dir, _ = tracked_run
    only_wandb = tmp_path / "wandb"
    shutil.copytree(run_dir / "wandb", only_wandb)
    (folder,) = (run_dir / "wandb").glob("offline-run-*")
    local = json.loads((run_dir / "summary.json").read_text())
    from_wandb = sources.summary_scalars(sources.read_wandb_file(folder)["summary"])
    assert from_wandb.pop("excess_over") == local.pop("excess_over") == "bayes"  # what the excess is over
    assert from_wandb == pytest.approx(local, rel=1e-9)
    runs, curves, history = sources.load_local([run_dir])
    wandb_runs, wandb_curves, wandb_history = sources.load_wandb_files([only_wandb])
    pd.testing.assert_frame_equal(
        runs.drop(columns="run_dir"), wandb_runs.drop(columns="run_dir"), check_like=True, check_dtype=False
    )
    pd.testing.assert_frame_equal(curves, wandb_curves)
    assert_same_history(history, wandb_history)
    assert len(history) > 40 and set(history.step) == {10, 20, 30, 40}


def assert_same_history(local: pd.DataFrame, from_wandb: pd.DataFrame) -> None:
    key = ["run_id", "step", "metric"]
    pd.testing.assert_frame_equal(
        local.sort_values(key).reset_index(drop=True), from_wandb.sort_values(key).reset_index(drop=True)
    )


def test_error_curves_are_logged_as_tables(tracked_run):
    run_dir, _ = tracked_run
    (record,) = offline_run_files(run_dir)
    files_dir = next((run_dir / "wandb").glob("offline-run-*")) / "files"
    logged = rows_with(record.history, "eval/curves.path")
    local = {r["step"]: r for r in read_jsonl(run_dir / "curves.jsonl")}
    assert sorted(logged) == sorted(local) == [20, 40]
    for step, row in logged.items():
        table = json.loads((files_dir / row["eval/curves.path"]).read_text())
        assert table["columns"][0] == "k"
        assert sorted(table["columns"][1:]) == ["3nn", "averaging", "bayes", "least_squares", "model"]
        values = np.asarray(table["data"])
        np.testing.assert_array_equal(values[:, 0], np.arange(8))
        for column, name in enumerate(table["columns"][1:], start=1):
            np.testing.assert_allclose(values[:, column], local[step][name], rtol=1e-6)
        assert row["eval/curves_chart_table._type"] == "table-file"


def test_checkpoints_are_model_artifacts_with_aliases(tracked_run):
    run_dir, _ = tracked_run
    (record,) = offline_run_files(run_dir)
    models = [a for a in record.artifacts if a["type"] == "model"]
    assert [a["name"] for a in models] == [f"model-{record.run_id}"] * 2
    assert set(models[0]["aliases"]) == {"latest", "step-20", "best"}  # the first eval is the best so far
    assert {"latest", "step-40"} <= set(models[1]["aliases"]) <= {"latest", "step-40", "best"}
    checkpoint = run_dir / "checkpoints" / "latest" / "40"
    on_disk = {str(p.relative_to(checkpoint)) for p in checkpoint.rglob("*") if p.is_file()}
    assert set(models[1]["files"]) == on_disk and "default/_METADATA" in on_disk


def test_resumed_run_continues_the_same_wandb_run(tmp_path):
    first_start = train_cli(tmp_path, "training.steps=20", wandb=True)
    resumed = train_cli(tmp_path, wandb=True)  # same dir, 40 steps: resumes from the step-20 checkpoint
    assert "Metadata file does not exist" not in resumed.stdout + resumed.stderr  # a quiet resume
    for console in (first_start, resumed):  # W&B's own lines stay off: the run's log says what they would
        lines = (console.stdout + console.stderr).splitlines()
        assert [line for line in lines if line.startswith("wandb:")] == []
        assert sum("upload later with: wandb sync" in line for line in lines) == 1
    first, second = offline_run_files(tmp_path)
    assert first.run_id == second.run_id == run_id_of(tmp_path)
    assert sorted(rows_with(first.history, "train/loss")) == [10, 20]
    assert sorted(rows_with(second.history, "train/loss")) == [30, 40]  # nothing logged twice
    # analyze reads the two W&B run folders as one run: the same history as the run dir's metrics.jsonl
    assert_same_history(sources.load_local([tmp_path]).history, sources.load_wandb_files([tmp_path]).history)


def test_init_from_a_checkpoint_starts_from_its_params(fast_config, tmp_path):
    """At a learning rate of 1e-20 no update survives float32 rounding: the run must end with the source's params."""
    source = fast_config("training.steps=20")
    train(source, tmp_path / "source")
    start = tmp_path / "source" / "checkpoints" / "latest" / "20"
    cfg = fast_config("training.steps=10", "training.learning_rate=1e-20", "seed=7", f"init_from={start}")
    train(cfg, tmp_path / "started")
    assert_trees_equal(final_state(cfg, tmp_path / "started").params, final_state(source, tmp_path / "source").params)


def test_auto_mode_finds_a_key_only_wandb_settings_hold_and_an_unreachable_server_falls_back_to_offline(tmp_path):
    """No WANDB_API_KEY, no netrc: the key is in W&B's own settings file, which W&B reads and so must
    `wandb.mode=auto`; the server cannot be reached, so the run goes offline and loses nothing."""
    settings_dir = tmp_path / "wandb-settings"
    settings_dir.mkdir()
    (settings_dir / "settings").write_text(f"[default]\napi_key = {SECRET}\n")
    env = no_key_env(WANDB_CONFIG_DIR=str(settings_dir), WANDB_BASE_URL="http://127.0.0.1:9")
    run_dir = tmp_path / "run"
    result = train_cli(run_dir, "wandb.init_timeout=1", env=env)
    output = result.stdout + result.stderr
    assert "W&B could not start online" in output and "logging offline instead" in output  # auto chose online
    (record,) = offline_run_files(run_dir)
    assert sorted(rows_with(record.history, "train/loss")) == [10, 20, 30, 40]  # training lost nothing
    assert json.loads((run_dir / "summary.json").read_text())["step"] == 40
    assert SECRET not in output
    leaks = [p for p in run_dir.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaks, f"the API key was written to {leaks}"


@pytest.mark.slow  # the suite's cover: test_sweeps.py's agent runs under WANDB_DIR
def test_wandb_dir_is_honoured(tmp_path):
    result = train_cli(tmp_path / "run", "training.steps=20", env=no_key_env(WANDB_DIR=str(tmp_path / "elsewhere")))
    assert list((tmp_path / "elsewhere" / "wandb").glob("offline-run-*")) and not (tmp_path / "run" / "wandb").exists()
    assert str(tmp_path / "elsewhere" / "wandb" / "offline-run-") in result.stdout + result.stderr  # the sync hint


@pytest.mark.parametrize(
    "reference, reason",
    [("wrong-width", "shape"), ("nobody/nothing/model-x:best", "cannot start from nobody/nothing/model-x:best")],
)
def test_a_bad_init_from_fails_before_training_in_one_line(fast_config, tmp_path, reference, reason):
    if reference == "wrong-width":  # a real checkpoint of another model width
        train(fast_config("training.steps=20", "model.n_embd=16"), tmp_path / "source")
        reference = str(tmp_path / "source" / "checkpoints" / "latest" / "20")
    command = [sys.executable, str(ROOT / "train.py"), *FAST, f"init_from={reference}", f"hydra.run.dir={tmp_path}/r"]
    env = no_key_env(WANDB_MODE="disabled")  # the public API (what a run without W&B falls back to) has no key here
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "][ERROR] - " in line]
    assert result.returncode == 2 and len(errors) == 1 and "config error: init_from: cannot start from" in errors[0]
    assert "Traceback" not in result.stdout + result.stderr and not (tmp_path / "r" / "metrics.jsonl").exists()


def test_a_terminal_shows_a_live_bar_that_never_breaks_a_log_line(tmp_path):
    """On a terminal, one bar line redrawn after each dispatch and cleared before each log line; in a pipe
    (the test above, a log file, a batch job) none."""
    leader, follower = pty.openpty()
    command = [sys.executable, str(ROOT / "train.py"), *FAST, f"hydra.run.dir={tmp_path}", "wandb.mode=disabled"]
    process = subprocess.Popen(command, cwd=ROOT, env=no_key_env(), stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the run has ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert process.wait(timeout=300) == 0
    console = b"".join(chunks).decode().replace("\r\n", "\n")
    assert "] 40/40 | " in console and "[########################] 40/40" in console
    frames = re.findall(r"\r\x1b\[K\[[#.]{24}\] (\d+)/40", console)
    assert [int(f) for f in frames] == [10, 20, 30, 40]  # one frame per dispatch of 10 steps
    for line in console.split("\n"):  # as a terminal shows it, every log line starts clean: the bar was cleared
        if "[icl_lr][INFO]" in line:
            assert re.match(r"\[\d{4}-\d\d-\d\d ", line.split("\r\x1b[K")[-1]), repr(line)
    assert "\x1b[K" not in train_cli(tmp_path / "piped", "training.steps=20").stderr


@pytest.mark.unit
def test_wandbs_older_mode_names_are_its_modes(monkeypatch):
    """WANDB_MODE=dryrun is W&B's offline and run its online; the environment wins over wandb.mode."""
    from icl_lr.records.tracking import resolve_mode

    for older, mode in (("dryrun", "offline"), ("run", "online")):
        monkeypatch.setenv("WANDB_MODE", older)
        assert resolve_mode("disabled") == mode
    monkeypatch.delenv("WANDB_MODE")
    assert resolve_mode("dryrun") == "offline"
