"""A started run's process, as the local runner and the agents hold it: its exit code (a packed run's own, from
its pack's), its death with the process that started it, the wait for an earlier writer of its run dir, and
the wait for the first of several to end."""

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

from icl_lr.records.run_dir import RunDirError, RunDirLock, is_alive
from icl_lr.records.schema import SUMMARY_FILE

log = logging.getLogger("icl_lr.run.sweep")
CONSOLE = "console.log"  # a sweep run's output (stdout and stderr), in its run dir


class Running(NamedTuple):
    """A started run, as the runner and the agents follow it to its end."""

    process: subprocess.Popen
    run_id: str
    proposal: object  # the engine's SweepRun proposal
    params: dict
    run_dir: Path
    slot: int
    number: int  # k of k/N
    started: float  # time.monotonic() at its start
    packed: bool = False  # one of the runs of a pack (one process for several runs)

    @property
    def returncode(self) -> int:
        """The run's exit code: its process's; a run of a pack whose process ran to its end (0, or 1 when one
        of its runs stopped alone) has 0 when it finished (its summary.json), else 1."""
        code = self.process.returncode
        return packed_exit_code(self.run_dir, code) if self.packed else code


def packed_exit_code(run_dir: Path, pack_code: int) -> int:
    """A packed run's own exit code from its pack process's: where the pack ran to its end (0, or 1 when one of
    its runs stopped alone), 0 for a run that finished (its summary.json), else 1; otherwise the pack's."""
    if pack_code in (0, 1):
        return 0 if (Path(run_dir) / SUMMARY_FILE).exists() else 1
    return pack_code


_PR_SET_PDEATHSIG = 1  # prctl(2)
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None  # loaded before any fork


def die_with_parent(parent: int) -> None:
    """In a run's process before it execs: SIGTERM when the runner or agent `parent` that started it dies, however
    it dies (SIGKILL too), so the run checkpoints and stops (exit 143) instead of training on unrecorded; the next
    agent resumes it. A parent already gone before the call: the run does not start. Only a prctl call here:
    nothing that could take a lock another thread held at the fork."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(128 + signal.SIGTERM)


WRITER_WAIT = 600  # seconds an agent waits for a run's earlier process to save and end before it resumes the run


def wait_for_writer(run_dir: Path) -> None:
    """Waits while a live process of this host still writes `run_dir` (the process of an agent that died, saving
    its checkpoint as it stops), so the run resumes from that checkpoint, or is recorded as the finished run it
    is, rather than being refused as in use. Another host's lock is the run's own start to judge (a requeued
    SLURM job takes its own over). A writer still there after WRITER_WAIT: RunDirError, the claim left to the
    next agent, never a failed result."""
    lock = RunDirLock(run_dir)
    pid, host, _ = lock.holder()
    if pid is None or host != socket.gethostname() or not is_alive(pid):
        return
    log.info("run dir %s is still written by process %s, the run's earlier process: waiting for it to end", run_dir,
             pid)  # fmt: skip
    deadline = time.monotonic() + WRITER_WAIT
    while is_alive(pid) and lock.holder()[0] == pid:
        if time.monotonic() > deadline:
            raise RunDirError(f"run dir {run_dir} is still written by process {pid} after {WRITER_WAIT} s; its run "
                              "is left to the next agent")  # fmt: skip
        time.sleep(0.5)


def wait_for_one(running: list) -> Running:
    """The first of the running runs to end (polled: each run is its own process)."""
    while True:
        for run in running:
            if run.process.poll() is not None:
                return run
        time.sleep(0.5)
