"""A live progress bar on a terminal: one line redrawn after every dispatch, cleared before each log line.

Shown only when stderr is a terminal (never in a log file, a pipe or a batch job's output), by the process
that writes the run's records.
"""

import logging
import sys

WIDTH = 24  # characters of the bar itself


def duration(seconds: float) -> str:
    """h:mm:ss, as progress lines and ETAs show a time."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class LiveBar(logging.Filter):
    """Draws `[#####.....] step/total | steps/s | ETA` on stderr; as a filter on the run's logger it clears
    the bar before a record is printed, so log lines never start mid-bar."""

    def __init__(self, logger: logging.Logger, enabled: bool):
        super().__init__()
        self.logger, self.enabled, self.drawn = logger, enabled and sys.stderr.isatty(), False
        if self.enabled:
            logger.addFilter(self)

    def draw(self, step: int, total: int, rate: float | None, eta: str | None) -> None:
        if not self.enabled:
            return
        filled = WIDTH * step // max(total, 1)
        text = f"[{'#' * filled}{'.' * (WIDTH - filled)}] {step}/{total}"
        if rate:
            text += f" | {rate:.0f} steps/s | ETA {eta}"
        sys.stderr.write("\r\x1b[K" + text)
        sys.stderr.flush()
        self.drawn = True

    def clear(self) -> None:
        if self.drawn:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.drawn = False

    def filter(self, record: logging.LogRecord) -> bool:
        self.clear()
        return True

    def __enter__(self):
        return self

    def __exit__(self, *error) -> None:
        self.clear()
        if self.enabled:
            self.logger.removeFilter(self)
