"""Where a run's numbers go. The loop talks to a Tracker; each backend is one class.

LocalFiles always runs: JSON lines in the run directory (metrics.jsonl, curves.jsonl and
summary.json), readable without W&B. On resume it drops records past the restored step, so the
steps a killed run did after its last checkpoint are not counted twice.

WandbRun streams the same numbers to W&B, plus the error curves as tables and line charts and
the checkpoints as `model` artifacts. Without an API key it runs offline; if the server cannot be
reached it falls back to offline, so training never stops for W&B.
"""

import json
import logging
import netrc
import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from icl_lr.config import WANDB_MODES, WandbConfig

log = logging.getLogger("icl_lr")


class Tracker:
    """No-op base: every hook a backend may implement."""

    def log(self, metrics: dict, step: int) -> None: ...

    def log_curves(self, curves: dict, step: int) -> None:
        """curves: {predictor name: per-context-length errors [n]}."""

    def log_checkpoint(self, directory: Path, step: int, aliases: Sequence[str]) -> None: ...

    def finish(self, summary: dict) -> None: ...


def read_jsonl(path: Path) -> list:
    """The records of a JSON-lines file (metrics.jsonl, curves.jsonl); none if it does not exist."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


class LocalFiles(Tracker):
    def __init__(self, run_dir: Path, resume_step: int = 0):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.jsonl", "curves.jsonl"):
            path = self.run_dir / name
            kept = [r for r in read_jsonl(path) if r["step"] <= resume_step]
            path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def _append(self, name: str, record: dict) -> None:
        with open(self.run_dir / name, "a") as f:
            f.write(json.dumps(record) + "\n")

    def log(self, metrics: dict, step: int) -> None:
        self._append("metrics.jsonl", {"step": step, **metrics})

    def log_curves(self, curves: dict, step: int) -> None:
        self._append("curves.jsonl", {"step": step, **{k: [float(x) for x in v] for k, v in curves.items()}})

    def finish(self, summary: dict) -> None:
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


class Trackers(Tracker):
    """Fans every call out to several backends."""

    def __init__(self, trackers: Sequence[Tracker]):
        self.trackers = list(trackers)

    def log(self, metrics, step):
        for t in self.trackers:
            t.log(metrics, step)

    def log_curves(self, curves, step):
        for t in self.trackers:
            t.log_curves(curves, step)

    def log_checkpoint(self, directory, step, aliases):
        for t in self.trackers:
            t.log_checkpoint(directory, step, aliases)

    def finish(self, summary):
        for t in self.trackers:
            t.finish(summary)


def api_key_configured() -> bool:
    """True when W&B would find a key: WANDB_API_KEY, or a netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    """online | offline | disabled: WANDB_MODE wins over wandb.mode; 'auto' is online only with a key."""
    mode = os.environ.get("WANDB_MODE", mode)
    if mode not in WANDB_MODES:
        raise ValueError(f"WANDB_MODE must be one of {WANDB_MODES}, got {mode!r}")
    if mode == "auto":
        return "online" if api_key_configured() else "offline"
    return mode


class WandbRun(Tracker):
    """One W&B run per training run; `run_id` is kept in the run dir, so a resumed run continues it."""

    def __init__(self, settings: WandbConfig, config: dict, run_dir: Path, run_id: str):
        import wandb

        self.wandb = wandb
        self.log_checkpoints = settings.log_checkpoints
        run_dir = Path(run_dir).absolute()
        init_args = dict(
            project=settings.project,
            entity=settings.entity,
            group=settings.group,
            tags=list(settings.tags),
            job_type=settings.job_type,
            name=settings.name,
            config=config,
            dir=str(run_dir),
            id=run_id,
            resume="allow",
        )
        mode = resolve_mode(settings.mode)
        try:
            self.run = wandb.init(mode=mode, settings=wandb.Settings(init_timeout=settings.init_timeout), **init_args)
        except Exception as error:  # bad key, unreachable server: keep training, log offline
            if mode != "online":
                raise
            reason = " ".join(str(error).split())  # one line
            log.warning("W&B could not start online (%s: %s); logging offline instead", type(error).__name__, reason)
            mode = "offline"
            wandb.teardown()  # the failed attempt still holds the run id in wandb's service process
            self.run = wandb.init(mode=mode, **init_args)
        if mode == "offline":
            log.info("W&B is offline; upload later with: wandb sync %s", self.run.dir.rsplit("/files", 1)[0])
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        for key in ("train/loss", "eval/model/error_mean"):  # best value in the summary; sweep metrics stay last values
            self.run.define_metric(key, step_metric="step", summary="min")

    def log(self, metrics: dict, step: int) -> None:
        self.run.log({"step": step, **metrics})

    def log_curves(self, curves: dict, step: int) -> None:
        names = list(curves)
        ks = list(range(len(curves[names[0]])))
        table = self.wandb.Table(columns=["k", *names], data=[[k, *(float(curves[n][k]) for n in names)] for k in ks])
        chart = self.wandb.plot.line_series(
            xs=ks,
            ys=[[float(v) for v in curves[n]] for n in names],
            keys=names,
            title=f"squared error / d vs in-context examples (step {step})",
            xname="k",
        )
        self.run.log({"step": step, "eval/curves": table, "eval/curves_chart": chart})

    def log_checkpoint(self, directory: Path, step: int, aliases: Sequence[str]) -> None:
        if not self.log_checkpoints:
            return
        artifact = self.wandb.Artifact(f"model-{self.run.id}", type="model", metadata={"step": step})
        artifact.add_dir(str(directory))
        self.run.log_artifact(artifact, aliases=list(aliases))

    def finish(self, summary: dict) -> None:
        """Adds the run-level numbers; logged metrics already keep their last (or min) value."""
        for key, value in summary.items():
            if "/" not in key:
                self.run.summary[key] = value
        self.run.finish()
