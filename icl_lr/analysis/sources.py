"""Runs found and read into pandas tables: one row per run, long tables of error curves and of histories.

Runs come from local run dirs (what train.py writes: .hydra/config.yaml, summary.json, metrics.jsonl,
curves.jsonl), from their offline W&B files alone, or from the W&B API (config, summary, history and
the last `eval/curves` and `eval/<set>/curves` tables). All give the same columns: `run_id`, `run_dir`
or `run_path`, the flattened config (`data.noise_std`, ...), `model_size` and the scalar summary
metrics (`eval/excess/mean`, ...); curves carry the prompt set they were scored on (`set`: held_out,
pretrain, sigma_<s>, ood/<condition>); the history holds every scalar logged, by step.
"""

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from icl_lr.fields import ConfigError, flatten
from icl_lr.records import code, wandb_adapter
from icl_lr.records.run_dir import RunDirLock, config_record, read_config_record, read_identity
from icl_lr.records.schema import (
    ATTENTION_DIR,
    BAYES,
    CURVES_FILE,
    EVAL_CONFIG_FILE,
    EVAL_MODEL_FILE,
    EVALUATED,
    HELD_OUT,
    HYDRA_CONFIG,
    METRICS_FILE,
    REFERENCE,
    SUMMARY_FILE,
    set_of,
    set_of_curves_key,
)
from icl_lr.records.tracking import read_jsonl
from icl_lr.run.config import sections
from icl_lr.train.config import RunConfig

CONFIG_PREFIXES = ("data.", "model.", "training.", "eval.", "seed")  # config columns that can define a group
CURVE_COLUMNS = ["run_id", "set", "step", "predictor", "k", "value"]  # predictor: an error curve, or metric/predictor
HISTORY_COLUMNS = ["run_id", "step", "metric", "value"]  # every scalar logged: train/..., eval/...
MODEL_SHAPE = {
    "model.n_layer": "L",
    "model.n_embd": "d",
    "model.n_head": "H",
    "model.n_loops": "x",
}  # model_size: those
# its family has (a looped model: 1L/64d/2H/12x)
log = logging.getLogger("analyze")


GROUP_CHOICES = ("data", "model", "training", "experiment")  # W&B's config also records the groups' choices


class RunTables(NamedTuple):
    runs: pd.DataFrame  # one row per run: config, status, summary
    curves: pd.DataFrame  # CURVE_COLUMNS: each set's last eval
    history: pd.DataFrame  # HISTORY_COLUMNS: every run's train and eval metrics, by step

    @classmethod
    def of(cls, rows: list, curve_rows: list, history_rows: list) -> "RunTables":
        """The tables; of a (step, metric) logged twice, the last value (a resumed run logs again the steps
        after its checkpoint, in a new W&B run folder or history rows of the same W&B run)."""
        history = pd.DataFrame(history_rows, columns=HISTORY_COLUMNS)
        history = history.drop_duplicates(["run_id", "step", "metric"], keep="last").reset_index(drop=True)
        return cls(pd.DataFrame(rows), pd.DataFrame(curve_rows, columns=CURVE_COLUMNS), history)


def _flatten(tree: dict) -> dict:
    """Dotted keys; a list becomes its JSON text, so it can be a table cell and a group key."""
    return {k: json.dumps(v) if isinstance(v, list) else v for k, v in flatten(tree).items()}


def _config_columns(config: dict) -> dict:
    """Flat config columns, the same from a run dir's nested config and W&B's flat one.

    W&B's group choices and code provenance are dropped (model_size stands for the model; the run dir's
    components.json is no config either), a sweep parameter's text
    ('null', '[0.1,0.5]') is read as YAML, and data.noise_std, ignored under a hierarchical noise
    prior, is NaN there: runs group by the noise prior they really had.
    """
    import yaml

    flat = {}
    choices = [k for k, v in config.items() if k in GROUP_CHOICES and not isinstance(v, dict)]
    choices += [k for k in config if k.startswith(code.WANDB_PREFIX)]
    for key, value in _flatten({k: v for k, v in config.items() if k not in choices}).items():
        if isinstance(value, str) and key.startswith(CONFIG_PREFIXES):
            parsed = yaml.safe_load(value)
            value = json.dumps(parsed) if isinstance(parsed, list) else value if isinstance(parsed, str) else parsed
        flat[key] = value
    if flat.get("data.noise_std_choices") is not None:
        flat["data.noise_std"] = float("nan")
    return flat


def summary_scalars(summary: dict) -> dict:
    """A summary's numbers and names (`excess_over`): W&B's own keys (_runtime, ...) and media (tables, charts)
    left out."""
    kept = {k: v for k, v in summary.items() if not k.startswith("_") and not (isinstance(v, dict) and "_type" in v)}
    return {k: v for k, v in _flatten(kept).items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}


def _defaults(columns: dict) -> RunConfig:
    """The defaults of the sections a run's components own (only the shared keys' where a component is
    not installed here)."""
    nested = {}
    for key, value in columns.items():
        section, _, name = key.partition(".")
        if section in ("data", "model") and name in ("task", "family", "encoding", "task_mixture"):
            nested.setdefault(section, {})[name] = value
    try:
        classes = sections(nested)
    except ConfigError:
        return RunConfig()
    return RunConfig(**{section: cls() for section, cls in classes.items()})


def _run_row(run_id: str, config: dict, summary: dict, **source) -> dict:
    """A run's row. A config key its record lacks (added to the code after the run started) gets its
    default, as a resumed run dir reads it (run_dir.differing_keys): runs group by what really varied."""
    columns = _config_columns(config)
    for key, value in config_record(_defaults(columns)).items():
        columns.setdefault(key, json.dumps(value) if isinstance(value, list) else value)
    size = "/".join(f"{columns[key]}{letter}" for key, letter in MODEL_SHAPE.items() if key in columns)
    reference = {REFERENCE: BAYES} if summary else {}  # a summary from before it was named: over Bayes
    return {"run_id": run_id, **source, **columns, "model_size": size, **reference, **summary_scalars(summary)}


def history_scalars(item: dict) -> dict:
    """A logged history row's metrics: the numbers, without `step`, W&B's own keys and media. W&B's reader
    flattens a table into `<key>._type`, `<key>.nrows`, ...: those go with it."""
    media = tuple(k.removesuffix("._type") + "." for k in item if k.endswith("._type"))
    return summary_scalars({k: v for k, v in item.items() if k != "step" and not k.startswith(media)})


def _history_rows(run_id: str, records) -> list:
    return [
        (run_id, record["step"], metric, float(value))
        for record in records
        if "step" in record
        for metric, value in history_scalars(record).items()
    ]


def _curve_rows(run_id: str, step: int, curves: dict, eval_set: str = HELD_OUT) -> list:
    return [
        (run_id, eval_set, step, name, k, float(e)) for name, errors in curves.items() for k, e in enumerate(errors)
    ]


def _last_curves(run_id: str, records: list) -> list:
    """Curve rows of each set's last eval, from curves.jsonl records."""
    last = {set_of(record): record for record in records}
    return [
        row
        for eval_set, record in last.items()
        for row in _curve_rows(
            run_id, record["step"], {k: v for k, v in record.items() if k not in ("step", "set")}, eval_set
        )
    ]


def _curve_tables(summary: dict) -> dict:
    """{set: table file reference} of a W&B summary's last curve tables: eval/curves, eval/<set>/curves."""
    return {
        set_of_curves_key(key): value["path"]
        for key, value in summary.items()
        if set_of_curves_key(key) and isinstance(value, dict) and value.get("path")
    }


def _read_json(path: Path):
    return json.loads(path.read_text())


def _local_run(run_dir: Path) -> tuple[dict, list, list] | None:
    """(row, curve rows, history rows) of one run dir; None (and a warning) when one of its files is damaged.

    The config is the one its latest start ran (run_config.json; older dirs: .hydra/config.yaml). Only a
    finished run's summary and curves count: a run without summary.json, or whose summary.json is older
    than its metrics (a resumed run that has not finished again), is listed with status `running` or
    `crashed` and no metrics.
    """
    from omegaconf import OmegaConf

    try:
        config = read_config_record(run_dir)
        if config is None:
            config = OmegaConf.to_container(OmegaConf.load(run_dir / HYDRA_CONFIG), resolve=True)
        summary = _read_json(run_dir / SUMMARY_FILE) if (run_dir / SUMMARY_FILE).exists() else None
        evals = read_jsonl(run_dir / CURVES_FILE)
        metrics = read_jsonl(run_dir / METRICS_FILE)
        last_step = max((r["step"] for r in metrics), default=None)
    except (OSError, ValueError, KeyError) as error:
        log.warning("skipping %s: a damaged file (%s: %s)", run_dir, type(error).__name__, error)
        return None
    run_id = read_identity(run_dir)["wandb_run_id"] or run_dir.name
    history_rows = _history_rows(run_id, metrics)
    if summary is not None and summary.get("step") == last_step:
        curve_rows = _last_curves(run_id, evals)
        return _run_row(run_id, config, summary, run_dir=str(run_dir), status="finished"), curve_rows, history_rows
    status = "running" if RunDirLock(run_dir).is_held() else "crashed"
    log.info("%s: %s at step %s, not in the aggregates", run_dir, status, last_step or 0)
    return _run_row(run_id, config, {}, run_dir=str(run_dir), status=status), [], history_rows


def _eval_dir(eval_dir: Path) -> tuple[dict, list, list] | None:
    """(row, curve rows, history rows) of one eval dir (python eval.py): the config it scored on, the model
    it read (`evaluated`: its source, with its step), its summary and curves; None when damaged."""
    try:
        config, model = (_read_json(eval_dir / name) for name in (EVAL_CONFIG_FILE, EVAL_MODEL_FILE))
        summary = _read_json(eval_dir / SUMMARY_FILE)
        evals = read_jsonl(eval_dir / CURVES_FILE)
    except (OSError, ValueError, KeyError) as error:
        log.warning("skipping %s: a damaged or unfinished eval dir (%s: %s)", eval_dir, type(error).__name__, error)
        return None
    run_id = str(eval_dir.resolve())
    scored = f"trajectory of {len(model['trajectory'])} steps" if "trajectory" in model else f"step {model['step']}"
    evaluated = {EVALUATED: f"{model['source']} ({scored})"}
    row = _run_row(run_id, config, summary, run_dir=str(eval_dir), status="finished", **evaluated)
    return row, _last_curves(run_id, evals), _history_rows(run_id, read_jsonl(eval_dir / METRICS_FILE))


def _reading(items, what: str, every: float = 2.0):
    """`items`, with a progress line every `every` seconds while they are read (and one at the end when
    there were such lines): W&B's API takes about a second a run, offline folders a fraction of one."""
    items = list(items) if not hasattr(items, "__len__") else items
    started = last = time.monotonic()
    for i, item in enumerate(items):
        if time.monotonic() - last >= every:
            last = time.monotonic()
            log.info("read %d of %d %s (%.0fs)", i, len(items), what, last - started)
        yield item
    if last > started:
        log.info("read %d %s in %.0fs", len(items), what, time.monotonic() - started)


def _once_per_run(readable: list) -> list:
    """The loaded runs of `readable` [(run dir, loaded run)], one per run id: a run dir copied whole (same
    id, never restarted) counts once, from the dir the id was given in (its identity's path), else from a
    finished copy; a warning names the others."""
    by_id = {}
    for run_dir, run in readable:
        by_id.setdefault(run[0]["run_id"], []).append((run_dir, run))
    kept = []
    for run_id, places in by_id.items():
        home = read_identity(places[0][0]).get("path")
        places.sort(key=lambda place: (str(place[0].resolve()) != home, place[1][0]["status"] != "finished"))
        kept.append(places[0][1])
        if len(places) > 1:
            copies = ", ".join(str(run_dir) for run_dir, _ in places[1:])
            log.warning("run %s is in %d run dirs: counted once, from %s (copies: %s)", run_id, len(places),
                        places[0][0], copies)  # fmt: skip
    return kept


def load_local(paths) -> RunTables:
    """Every run dir (one holding .hydra/config.yaml) at or below `paths`, each run once, and every eval
    dir (python eval.py's: its row names the model it scored, `evaluated`).

    `runs` has a `status` column: finished, running or crashed; only finished runs have a summary and
    curves; every run has its history so far.
    """
    run_dirs = sorted({p.parents[1] for path in map(Path, paths) for p in path.rglob(HYDRA_CONFIG)})
    eval_dirs = sorted({p.parent for path in map(Path, paths) for p in path.rglob(EVAL_MODEL_FILE)
                        if (p.parent / EVAL_CONFIG_FILE).exists()})  # fmt: skip
    if not run_dirs and not eval_dirs:
        raise FileNotFoundError(
            f"no run dirs (with .hydra/config.yaml) nor eval dirs (with {EVAL_MODEL_FILE}) under "
            f"{', '.join(map(str, paths))}"
        )
    readable = [(d, run) for d in _reading(run_dirs, "run dirs") if (run := _local_run(d)) is not None]
    loaded = _once_per_run(readable) + [run for d in eval_dirs if (run := _eval_dir(d)) is not None]
    if not any(row["status"] == "finished" for row, _, _ in loaded):
        raise FileNotFoundError(
            f"no finished runs among the {len(run_dirs)} run dirs under {', '.join(map(str, paths))}"
        )
    rows, curve_rows, history_rows = zip(*loaded, strict=True)
    return RunTables.of(list(rows), [r for rs in curve_rows for r in rs], [r for rs in history_rows for r in rs])


def attention_maps(runs: pd.DataFrame) -> dict:
    """{run id: (step, weights [layers, heads, T, T])}: each local run's last eval.attention maps."""
    maps, step = {}, lambda path: int(path.stem.removeprefix("step_"))
    for run_id, run_dir in zip(runs.run_id, runs.run_dir, strict=True):
        files = sorted(Path(run_dir).glob(f"{ATTENTION_DIR}/step_*.npz"), key=step) if isinstance(run_dir, str) else []
        if files:
            with np.load(files[-1]) as last:
                maps[run_id] = (step(files[-1]), last["weights"])
    return maps


def _table_curves(table: dict) -> dict:
    """{predictor: errors by k} from a W&B `eval/curves` table file."""
    return {name: [row[i] for row in table["data"]] for i, name in enumerate(table["columns"]) if name != "k"}


def load_wandb(project_path: str, sweep: str | None = None, state: str | None = "finished") -> RunTables:
    """Runs of `entity/project` from the W&B API (needs a key and the network)."""
    import wandb

    filters = {k: v for k, v in (("sweep", sweep), ("state", state)) if v}
    rows, curve_rows, history_rows = [], [], []
    try:
        api = wandb.Api()
    except wandb.errors.UsageError:  # no key: W&B's own message is a traceback's last line
        raise LookupError("--wandb needs a W&B API key: run `wandb login` or set WANDB_API_KEY") from None
    with tempfile.TemporaryDirectory() as downloads:
        for run in _reading(api.runs(project_path, filters=filters), f"runs of {project_path}"):
            config = {k: v for k, v in run.config.items() if not k.startswith("_")}
            summary = wandb_adapter.summary_dict(run)
            rows.append(_run_row(run.id, config, summary, run_path="/".join(run.path), url=run.url, status=run.state))
            history_rows += _history_rows(run.id, run.scan_history())
            for eval_set, path in _curve_tables(summary).items():
                with run.file(path).download(root=downloads, replace=True) as f:
                    curve_rows += _curve_rows(run.id, summary.get("step"), _table_curves(json.load(f)), eval_set)
    if not rows:
        raise LookupError(f"no runs in {project_path} matching {filters}")
    return RunTables.of(rows, curve_rows, history_rows)


def read_wandb_file(run_folder: Path) -> dict:
    """State, config and summary of a local W&B run folder (offline-run-*)."""
    return wandb_adapter.read_run_folder(run_folder, summary=True)


def read_wandb_records(run_folder: Path) -> list[dict]:
    """Every record of a local W&B run folder, in the order written: {"type": "history", "history": {...}}, ..."""
    return wandb_adapter.read_run_folder(run_folder)


def load_wandb_files(paths) -> RunTables:
    """Runs that exist only as local W&B files (offline, not synced), at or below `paths`.

    A run resumed several times has several folders with one id: the last one holds its final state,
    and their history rows, in order, its history.
    """
    folders = sorted({p for path in map(Path, paths) for p in path.rglob("offline-run-*") if p.is_dir()})
    if not folders:
        raise FileNotFoundError(f"no W&B run folders (offline-run-*) under {', '.join(map(str, paths))}")
    by_name = {}  # a run dir copied whole carries its W&B folders along: one start, counted once
    for folder in folders:
        by_name.setdefault(folder.name, []).append(folder)
    for name, copies in by_name.items():
        if len(copies) > 1:
            log.warning("W&B folder %s is in %d places: read once, from %s", name, len(copies), copies[0].parent)
    starts = {}  # names start with the start time: in order, each id's folders from first to last start
    for name in sorted(by_name):
        starts.setdefault(name.rsplit("-", 1)[-1], []).append(by_name[name][0])
    rows, curve_rows, history_rows = [], [], []
    for run_id, run_folders in _reading(list(starts.items()), "runs' W&B folders"):
        record = read_wandb_file(run_folders[-1])
        config = {k: v for k, v in record["config"].items() if not k.startswith("_")}
        summary = record["summary"]
        status = {"finished": "finished"}.get(record.get("state"), "crashed")
        rows.append(_run_row(run_id, config, summary, run_dir=str(run_folders[-1]), status=status))
        for folder in run_folders:
            items = [r["history"]["item"] for r in read_wandb_records(folder) if r["type"] == "history"]
            history_rows += _history_rows(run_id, items)
        for eval_set, path in _curve_tables(summary).items() if status == "finished" else ():
            curves = _table_curves(json.loads((run_folders[-1] / "files" / path).read_text()))
            curve_rows += _curve_rows(run_id, summary.get("step"), curves, eval_set)
    return RunTables.of(rows, curve_rows, history_rows)
