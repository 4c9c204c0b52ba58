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
    """The lock of one run directory. Within one process it is shared: a second Trainer on the
    same directory (a notebook retrying after an error) takes it again; it is freed when every
    holder has released it, or when the process ends."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._held = False

    def acquire(self) -> None:
        """Take the lock, or raise a UserError naming the process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = self.path.resolve()
        if key not in _HELD:
            _HELD[key] = [_lock_file(self.path), 0]
        _HELD[key][1] += 1
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        key = self.path.resolve()
        _HELD[key][1] -= 1
        if _HELD[key][1] == 0:
            file = _HELD.pop(key)[0]
            file.truncate(0)  # a clean exit leaves no holder to report
            file.close()


# Run directories this process holds: the open lock file and how many holders share it.
_HELD: dict[Path, list] = {}


def _lock_file(path: Path):
    """The lock file, opened and exclusively locked by this process."""
    file = open(path, "a+")  # noqa: SIM115 (held open for as long as the lock is held)
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        holder = file.read().strip() or "another process"
        file.close()
        raise UserError(
            f"{path.parent}: this run directory is in use by {holder}; wait for that run to end, "
            f"or give this one another trainer.run_dir"
        ) from None
    file.seek(0)
    previous = file.read().strip()
    if previous:  # the kernel freed it, so its holder is gone (killed, or exited)
        print(f"olmolab: {path}: taking over the lock left by {previous}, which no longer runs", file=sys.stderr)
    file.seek(0)
    file.truncate()
    file.write(describe_this_process())
    file.flush()
    return file


def describe_this_process() -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    return f"process {os.getpid()} on {socket.gethostname()} (since {started})\n"
