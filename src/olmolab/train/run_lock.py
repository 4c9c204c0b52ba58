"""One trainer per run directory: an exclusive `flock` on `RUN_DIR/.lock`.

Two trainers writing one run directory corrupt it (one dies mid-save, metrics.jsonl gets
duplicated, out-of-order rows), so the first to start holds the lock until it exits. The lock is
the kernel's: it goes with the process, so one left by a killed trainer is free at once and the
next trainer takes it over. The file itself only tells the second trainer who holds it.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from pathlib import Path

from olmolab.errors import UserError

LOCK_FILE = ".lock"


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._file = None  # a file object: should its owner vanish without release(), closing frees the lock

    def acquire(self) -> None:
        """Take the lock, or raise a UserError naming the process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+")  # noqa: SIM115 (held open for as long as the lock is held)
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            raise UserError(
                f"{self.path.parent}: this run directory is in use by {holder}; wait for that run to end, "
                f"or give this one another trainer.run_dir"
            ) from None
        file.seek(0)
        previous = file.read().strip()
        if previous:  # the kernel freed it, so its holder is gone (killed, or exited)
            print(f"olmolab: {self.path}: taking over the lock left by {previous}, which no longer runs",
                  file=sys.stderr)
        file.seek(0)
        file.truncate()
        file.write(describe_this_process())
        file.flush()
        self._file = file

    def release(self) -> None:
        if self._file is None:
            return
        self._file.truncate(0)  # a clean exit leaves no holder to report
        self._file.close()
        self._file = None


def describe_this_process() -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    return f"process {os.getpid()} on {socket.gethostname()} (since {started})\n"
