"""The sweep's console: a line per run start and end (k/N, elapsed, ETA, best so far) and the table of its runs,
best first."""

import logging
import time

from icl_lr.fields import is_number
from icl_lr.run.sweep.process import Running
from icl_lr.train.progress import duration

log = logging.getLogger("icl_lr.run.sweep")


class Progress:
    """The runner's console: one line per run start and end with k/N, elapsed time, ETA (the mean duration
    of the runs ended so far, over the runs left, `workers` at a time) and the best result so far."""

    def __init__(self, count: int, workers: int, metric: str | None, goal: str):
        self.count, self.workers, self.metric, self.goal = count, workers, metric, goal
        self.started, self.durations, self.best = time.monotonic(), [], None

    def _clock(self, ended: int) -> str:
        elapsed = time.monotonic() - self.started
        line = f"elapsed {duration(elapsed)}"
        if self.durations:
            left = -(-(self.count - ended) // self.workers) * sum(self.durations) / len(self.durations)
            line += f", ETA {duration(left)}"
        return line

    def started_run(self, run: "Running", on: str) -> None:
        params = " ".join(f"{k}={v}" for k, v in run.params.items())
        log.info("[%d/%d] start %s%s: %s | %s", run.number, self.count, run.run_id, on, params, self._clock(0))

    def ended_run(self, run: "Running", value, returncode: int, ended: int) -> None:
        self.durations.append(time.monotonic() - run.started)
        if returncode == 0 and _is_result(value) and (self.best is None or self._better(value, self.best[0])):
            self.best = (value, run.run_id)
        result = f"{self.metric} {value:.4g}" if _is_result(value) else f"exit code {returncode}"
        best = f" | best so far {self.best[0]:.4g} ({self.best[1]})" if self.best else ""
        log.info(
            "[%d/%d] end %s: %s in %s | %s%s",
            run.number, self.count, run.run_id, result, duration(self.durations[-1]), self._clock(ended), best,
        )  # fmt: skip

    def _better(self, value, than) -> bool:
        return value > than if self.goal == "maximize" else value < than

    def table(self, results: list) -> str:
        """The runs of this call, the best first by the sweep's metric; failed runs last."""

        def key(result):
            value = result.get(self.metric)
            ok = result["exit_code"] == 0 and _is_result(value)
            return (not ok, (-value if self.goal == "maximize" else value) if ok else 0.0)

        ordered = sorted(results, key=key)
        names = sorted({k for r in results for k in r if k not in ("run_id", "exit_code", self.metric)})
        header = ["run_id", *names, self.metric or "metric", "exit_code"]
        rows = [[str(r.get(h, "")) if not _is_result(r.get(h)) else f"{r[h]:.4g}" for h in header] for r in ordered]
        widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
        direction = "higher" if self.goal == "maximize" else "lower"
        return f"the sweep's runs, best first by {self.metric} ({direction} is better):\n" + "\n".join(lines)


def _is_result(value) -> bool:
    """A number a run can be ranked by (NaN is not)."""
    return is_number(value) and value == value
