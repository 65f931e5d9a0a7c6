"""Where a run's numbers go. The loop talks to a Tracker; each backend is one class.

LocalFiles always runs: JSON lines in the run directory (metrics.jsonl, curves.jsonl and
summary.json), readable without W&B. On resume it drops records past the restored step, so the
steps a killed run did after its last checkpoint are not counted twice.
"""

import json
from pathlib import Path
from typing import Sequence


class Tracker:
    """No-op base: every hook a backend may implement."""

    def log(self, metrics: dict, step: int) -> None: ...

    def log_curves(self, curves: dict, step: int) -> None:
        """curves: {predictor name: per-context-length errors [n]}."""

    def log_checkpoint(self, directory: Path, step: int, aliases: Sequence[str]) -> None: ...

    def finish(self, summary: dict) -> None: ...


def _read_records(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


class LocalFiles(Tracker):
    def __init__(self, run_dir: Path, resume_step: int = 0):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.jsonl", "curves.jsonl"):
            path = self.run_dir / name
            kept = [r for r in _read_records(path) if r["step"] <= resume_step]
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
