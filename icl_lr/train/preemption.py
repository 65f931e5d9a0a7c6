"""SIGTERM, what SLURM (and most schedulers) send before they kill or requeue a job, and Ctrl-C (SIGINT),
as requests to stop at the next safe point.

The loop answers them between dispatches: a checkpoint at the current step, W&B told (preempting, for
SIGTERM) and finished, the run dir's lock released, so the same command resumes there, on this host or
another; no signal lands inside a checkpoint save. Outside the loop, where there is nothing to save, and
at a second Ctrl-C, the start stops at once.
"""

import signal
import threading


class NonFiniteLoss(RuntimeError):
    """Training diverged: the message names the step and the learning rate. The run stops alone, recorded as
    failed; the other runs of its program go on."""


class Preempted(RuntimeError):
    """The run stopped on SIGTERM; the message is one line and says how to go on."""

    exit_code = 128 + signal.SIGTERM


class StopRequest:
    """The stop signal received (SIGTERM or SIGINT), if any; `watched` while a loop answers it."""

    def __init__(self):
        self.signal, self.watched = None, False

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def preempted(self) -> bool:
        """Whether the request is SIGTERM's (W&B is then told the run is preempting)."""
        return self.signal == signal.SIGTERM

    def install(self) -> "StopRequest":
        """This request receives the process's SIGTERMs, and its SIGINTs unless they are ignored (a job
        started in the background); from the main thread only, as Python allows."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._receive)
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                signal.signal(signal.SIGINT, self._receive)
        return self

    def _receive(self, signum, frame) -> None:
        again = self.signal == signum == signal.SIGINT  # a second Ctrl-C does not wait
        self.signal = signum
        if not self.watched or again:
            self.stop("before training started: nothing to save" if not self.watched else "again")

    def stop(self, where: str) -> None:
        """Raises what the received signal asks for: Preempted for SIGTERM, KeyboardInterrupt for SIGINT."""
        if self.signal == signal.SIGINT:
            raise KeyboardInterrupt(where)
        raise Preempted(f"SIGTERM {where}; start the same command again to resume")
