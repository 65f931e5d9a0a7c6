"""Where a run's numbers go. The loop talks to a Tracker; each backend is one class.

LocalFiles always runs: JSON lines in the run directory (metrics.jsonl, curves.jsonl and
summary.json), readable without W&B. On resume it drops records past the restored step, so the
steps a killed run did after its last checkpoint are not counted twice.

WandbRun streams the same numbers to W&B, plus the error curves as tables and line charts and
the checkpoints as `model` artifacts; its summary equals summary.json. Without credentials it runs
offline; if the server cannot be reached it falls back to offline, so training never stops for W&B.
Its files go to the run dir's wandb/, or under $WANDB_DIR when that is set.
"""

import contextlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from icl_lr.fields import ConfigError, flatten, one_line
from icl_lr.records.config import WANDB_MODES, WandbConfig
from icl_lr.records.run_dir import started_by_agent, write_atomic
from icl_lr.records.schema import (
    CURVES_FILE,
    DISTANCE,
    HELD_OUT,
    METRICS_FILE,
    SUMMARY_FILE,
    arrays_file,
    curves_key,
    is_error_curve,
    probe_r2_by_layer,
)

log = logging.getLogger("icl_lr")
# W&B's own console lines stay off (its end-of-run summary, "Adding directory to artifact" per checkpoint, the
# offline notice): the run logs its own one line for each of these; warnings and errors still show.
QUIET = {"quiet": True, "show_info": False}


class Image(NamedTuple):
    """A grey image for the dashboards: pixels [rows, columns] uint8, and its caption."""

    pixels: np.ndarray
    caption: str


class Table(NamedTuple):
    """A table for the dashboards: its column names and rows (a value per column)."""

    columns: list
    rows: list


class Tracker:
    """No-op base: every hook a backend may implement."""

    def log(self, metrics: dict, step: int) -> None: ...

    def log_curves(self, curves: dict, step: int, eval_set: str = HELD_OUT) -> None:
        """curves: {predictor name: per-context-length errors [n]}; `eval_set`: the prompt set's name
        (schema.HELD_OUT, train_set, pretrain, sigma_0.5, ood/skewed)."""

    def log_checkpoint(self, directory: Path, step: int, aliases: Sequence[str]) -> None: ...

    def log_arrays(self, analysis: str, arrays: dict, step: int) -> None:
        """An analysis's arrays at `step`: {name: array} (icl_lr/train/analyses/)."""

    def log_figures(self, figures: dict, step: int) -> None:
        """Figures for the dashboards at `step`: {key: Image or Table}."""

    def preempting(self) -> None:
        """The run is about to stop on SIGTERM, at a checkpoint, to be resumed."""

    def download_checkpoint(self, reference: str) -> Path:
        """The files of a W&B `model` artifact (init_from), through the public API."""
        import wandb

        return Path(wandb.Api().artifact(reference, type="model").download())

    def finish(self, summary: dict) -> None: ...

    def stopped(self, error: Exception) -> None:
        """The run stopped on `error` (its loss no longer finite) while the other runs of its pack go on."""


def read_jsonl(path: Path) -> list:
    """The records of a JSON-lines file (metrics.jsonl, curves.jsonl); none if it does not exist. A last
    line cut short (a kill or a full disk mid-write) is left out with a warning; damage elsewhere raises."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            if number < len(lines):
                raise ValueError(f"{path}: line {number} of {len(lines)} is damaged ({line[:40]!r})") from None
            log.warning("%s: its last line is cut short (%r); left out", path, line[:60])
    return records


class LocalFiles(Tracker):
    def __init__(self, run_dir: Path, resume_step: int = 0):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for name in (METRICS_FILE, CURVES_FILE):
            path = self.run_dir / name
            kept = [r for r in read_jsonl(path) if r["step"] <= resume_step]
            path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        for path in self.run_dir.glob("*/step_*.npz"):  # the analyses' arrays
            if int(path.stem.removeprefix("step_")) > resume_step:
                path.unlink()

    def _append(self, name: str, record: dict) -> None:
        with open(self.run_dir / name, "a") as f:
            f.write(json.dumps(record) + "\n")

    def log(self, metrics: dict, step: int) -> None:
        self._append(METRICS_FILE, {"step": step, **metrics})

    def log_curves(self, curves: dict, step: int, eval_set: str = HELD_OUT) -> None:
        """One curves.jsonl record per set and eval."""
        self._append(
            CURVES_FILE, {"step": step, "set": eval_set, **{k: [float(x) for x in v] for k, v in curves.items()}}
        )

    def log_arrays(self, analysis: str, arrays: dict, step: int) -> None:
        """<analysis>/step_<step>.npz (schema.arrays_file), written whole or not at all."""
        if not arrays:
            return
        path = self.run_dir / arrays_file(analysis, step)
        path.parent.mkdir(exist_ok=True)
        with open(path.with_suffix(".part"), "wb") as f:
            np.savez(f, **arrays)
        os.replace(path.with_suffix(".part"), path)

    def finish(self, summary: dict) -> None:
        write_atomic(self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")


class Trackers(Tracker):
    """Fans every call out to several backends."""

    def __init__(self, trackers: Sequence[Tracker]):
        self.trackers = list(trackers)

    def log(self, metrics, step):
        for t in self.trackers:
            t.log(metrics, step)

    def log_curves(self, curves, step, eval_set=HELD_OUT):
        for t in self.trackers:
            t.log_curves(curves, step, eval_set)

    def log_checkpoint(self, directory, step, aliases):
        for t in self.trackers:
            t.log_checkpoint(directory, step, aliases)

    def log_arrays(self, analysis, arrays, step):
        for t in self.trackers:
            t.log_arrays(analysis, arrays, step)

    def log_figures(self, figures, step):
        for t in self.trackers:
            t.log_figures(figures, step)

    def preempting(self):
        for t in self.trackers:
            t.preempting()

    def download_checkpoint(self, reference):
        return (self.trackers or [Tracker()])[-1].download_checkpoint(reference)  # W&B's, when it is one

    def finish(self, summary):
        for t in self.trackers:
            t.finish(summary)

    def stopped(self, error):
        for t in self.trackers:
            t.stopped(error)


WANDB_MODE_ALIASES = {"dryrun": "offline", "run": "online"}  # W&B's older names, which it still accepts


def resolve_mode(mode: str) -> str:
    """online | offline | disabled: WANDB_MODE wins over wandb.mode; 'auto' is online only when W&B
    itself finds credentials (an API key in the environment, its settings file or netrc, or an
    identity-token file), asked without ever prompting."""
    mode = os.environ.get("WANDB_MODE", mode)
    mode = WANDB_MODE_ALIASES.get(mode, mode)
    if mode not in WANDB_MODES:
        choices = ", ".join((*WANDB_MODES, *WANDB_MODE_ALIASES))
        raise ConfigError(f"WANDB_MODE (in the environment) must be one of {choices}, got {mode!r}")
    if mode == "auto":
        import wandb

        return "online" if wandb.login(prompt=False, verify=False) else "offline"
    return mode


def flat_config(config: dict, choices: dict) -> dict:
    """The run's config for W&B: dotted keys (`training.learning_rate`), as sweeps and Hydra overrides
    name them, and the config groups' choices (`model: gpt2_small`).

    Flat, because `wandb agent` hands W&B a parameter file that wandb.init merges over the config: a
    nested `model` section would be replaced by the sweep's `model: gpt2_small` (wandb issue #5477).
    """
    return flatten(config) | choices


def leave_parents_service():
    """Starts W&B's service in this process rather than joining the one named by WANDB_SERVICE, which W&B sets for
    the children of a process that uses it: a run of a child killed by SIGKILL stays open in a parent's service,
    which then refuses the resumed run's id ("run ID ... is in use")."""
    token = os.environ.get("WANDB_SERVICE", "")
    if token and token.split("-")[1:2] != [str(os.getpid())]:  # "<version>-<pid of its process>-unix|tcp-..."
        del os.environ["WANDB_SERVICE"]


class WandbRun(Tracker):
    """One W&B run per training run; `run_id` is kept in the run dir, so a resumed run continues it.

    A context manager: leaving it by an exception finishes the W&B run as failed (exit code 1), so a
    failed job of a Hydra multirun never leaves its run open for the next job's wandb.init.
    """

    def __init__(self, settings: WandbConfig, mode: str, config: dict, run_dir: Path, run_id: str):
        """`mode`: online or offline, as `resolve_mode` says."""
        import wandb

        self.wandb = wandb
        self.log_checkpoints, self.service_gone = settings.log_checkpoints, False
        # In a sweep W&B takes the project, entity and run id from the environment alone (the agent's): the
        # run dir's own id goes there (a copied or restarted dir has a new one), read afresh by W&B.
        # An agent's variables exported in a shell, without an agent, would file the run under that sweep.
        in_sweep, agent_variables = started_by_agent(), ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH")
        stray = [] if in_sweep else [os.environ.pop(name) for name in agent_variables if name in os.environ]
        if stray or (in_sweep and os.environ.get("WANDB_RUN_ID") != run_id):
            if in_sweep:
                os.environ["WANDB_RUN_ID"] = run_id
            wandb.teardown()  # W&B read its environment when it first started in this process
        files_dir = os.environ.get("WANDB_DIR") or str(Path(run_dir).absolute())
        init_args = dict(
            project=None if in_sweep else settings.project,
            entity=None if in_sweep else settings.entity,
            group=settings.group,
            tags=list(settings.tags),
            job_type=settings.job_type,
            name=settings.name,
            config=config,
            dir=files_dir,
            id=None if in_sweep else run_id,
            resume="allow",
            reinit="create_new",  # the runs of a pack are W&B runs of one process, side by side
        )
        leave_parents_service()
        wandb.setup()  # W&B's console settings are set once per process, at its setup: quieten them after it
        wandb.termsetup(wandb.Settings(**QUIET), None)
        try:
            self.run = wandb.init(
                mode=mode, settings=wandb.Settings(init_timeout=settings.init_timeout, **QUIET), **init_args
            )
        except Exception as error:  # bad key, unreachable server: keep training, log offline
            if mode != "online":
                raise
            reason = one_line(error, None)
            log.warning("W&B could not start online (%s: %s); logging offline instead", type(error).__name__, reason)
            mode = "offline"
            wandb.teardown()  # the failed attempt still holds the run id in wandb's service process
            self.run = wandb.init(mode=mode, settings=wandb.Settings(**QUIET), **init_args)
        self.mode = mode
        if mode == "offline":
            log.info("W&B is offline; upload later with: wandb sync %s", self.run.dir.rsplit("/files", 1)[0])
        else:
            log.info("W&B run: %s", self.run.url)
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if error is not None and self.run is not None:  # KeyboardInterrupt and SIGTERM included
            self._send(self.run.finish, exit_code=getattr(error, "exit_code", 1))
            if self.service_gone:  # W&B's own exit hook would fail on the lost connection, with a traceback
                with contextlib.suppress(ConnectionError, OSError):
                    self.wandb.teardown()
            self.run = None

    def _send(self, call, *args, **kwargs) -> None:
        """`call(*args, **kwargs)`, a call to W&B's service, while the service is there. It may go away mid-run: a
        scheduler (SLURM) sends its SIGTERM to every process of the job, and the service shuts down at once, with
        its unwritten records. Said once; training and the stop go on on the run dir's records."""
        if self.service_gone:
            return
        try:
            call(*args, **kwargs)
        except (ConnectionError, OSError) as error:
            log.warning("W&B's service is gone (%s; under SLURM it gets the job's SIGTERM too): its records from "
                        "here on are lost; the run dir's are complete", type(error).__name__)  # fmt: skip
            self.service_gone = True

    def stopped(self, error: Exception) -> None:
        """The W&B run is finished as failed (exit code 1), as a run alone is when it raises `error`."""
        self.__exit__(type(error), error, None)

    def preempting(self) -> None:
        """W&B marks the run preempting: a sweep's controller requeues it, and it resumes under its id."""
        self._send(self.run.mark_preempting)

    def log(self, metrics: dict, step: int) -> None:
        self._send(self.run.log, {"step": step, **metrics})

    def log_curves(self, curves: dict, step: int, eval_set: str = HELD_OUT) -> None:
        """A table eval/<set>/curves (eval/curves for the held-out set) and its chart of the error curves; with
        similarity curves (eval.algorithms), a chart of each algorithm's distance from the model too
        (`<key>_similarity_chart`); with probe curves (eval.probes), a chart of their R² by layer
        (`<key>_probe_chart`)."""
        names = list(curves)
        ks = list(range(len(curves[names[0]])))
        table = self.wandb.Table(columns=["k", *names], data=[[k, *(float(curves[n][k]) for n in names)] for k in ks])
        key = curves_key(eval_set)
        charts = {
            f"{key}_chart": ([n for n in names if is_error_curve(n)], "squared error / d"),
            f"{key}_similarity_chart": (
                [n for n in names if n.startswith(f"{DISTANCE}/")],
                "distance from the model / d",
            ),
        }
        logged = {"step": step, key: table}
        for chart_key, (shown, what) in charts.items():
            if shown:
                logged[chart_key] = self.wandb.plot.line_series(
                    xs=ks,
                    ys=[[float(v) for v in curves[n]] for n in shown],
                    keys=[n.removeprefix(f"{DISTANCE}/") for n in shown],
                    title=f"{eval_set}: {what} vs in-context examples (step {step})",
                    xname="k",
                )
        by_layer = probe_r2_by_layer(curves)
        if by_layer:
            logged[f"{key}_probe_chart"] = self.wandb.plot.line_series(
                xs=list(range(max(len(r2) for r2 in by_layer.values()))),
                ys=list(by_layer.values()),
                keys=list(by_layer),
                title=f"{eval_set}: probe R² by layer, mean over k (step {step})",
                xname="layer",
            )
        self._send(self.run.log, logged)

    def log_figures(self, figures: dict, step: int) -> None:
        """Each figure under its key, as a W&B Image or Table, in one record."""
        media = {
            key: self.wandb.Image(f.pixels, caption=f.caption)
            if isinstance(f, Image)
            else self.wandb.Table(columns=list(f.columns), data=f.rows)
            for key, f in figures.items()
        }
        if media:
            self._send(self.run.log, {"step": step, **media})

    def log_checkpoint(self, directory: Path, step: int, aliases: Sequence[str]) -> None:
        if not self.log_checkpoints or self.service_gone:
            return
        artifact = self.wandb.Artifact(f"model-{self.run.id}", type="model", metadata={"step": step})
        artifact.add_dir(str(directory))
        self._send(self.run.log_artifact, artifact, aliases=list(aliases))

    def download_checkpoint(self, reference: str) -> Path:
        """A `model` artifact's files, used by this run (lineage on the dashboard) when online."""
        if self.mode == "online":
            return Path(self.run.use_artifact(reference, type="model").download())
        return super().download_checkpoint(reference)

    def finish(self, summary: dict) -> None:
        """The summary holds exactly the local summary.json's numbers (and W&B's own media and _keys)."""
        self._send(self.run.summary.update, summary)
        self._send(self.run.finish)
        self.run = None
