"""A sweep's results.jsonl: each run's result appended as it ends, and the sweeps engine's records of the
sweep's earlier runs read back from it."""

import json
from pathlib import Path

from icl_lr.records.tracking import read_jsonl
from icl_lr.run.sweep.process import Running
from icl_lr.run.sweep.spec import sweeps


def engine_record(run_dir: Path, name: str, config: dict, returncode: int):
    """The sweeps engine's record of an ended run: its config, state, summary and history."""
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    history = read_jsonl(run_dir / "metrics.jsonl")
    state = sweeps.RunState.finished if returncode == 0 else sweeps.RunState.failed
    # by alias: under pydantic 2 the engine's models ignore the field names (summary_metrics, history)
    return sweeps.SweepRun(name=name, state=state, config=config, summaryMetrics=summary, sampledHistory=history)


def previous_runs(results_file: Path) -> list:
    """The sweeps engine's records of a resumed sweep's runs, from its results.jsonl."""
    runs = []
    for result in read_jsonl(results_file):
        run_dir = Path(result["run_dir"])
        config = {key: {"value": value} for key, value in result["params"].items()}
        runs.append(engine_record(run_dir, result["run_id"], config, result["exit_code"]))
    return runs


def recorded(run: Running, metric: str | None, results_file: Path) -> tuple:
    """(the engine's record, the result) of an ended run, its result appended to results_file."""
    returncode = run.returncode
    record = engine_record(run.run_dir, run.run_id, run.proposal.config, returncode)
    result = {"run_id": run.run_id, **run.params, metric: record.summary_metrics.get(metric), "exit_code": returncode}
    append_result(results_file, result | {"params": run.params, "run_dir": str(run.run_dir)})
    return record, result


def append_result(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(result) + "\n")
