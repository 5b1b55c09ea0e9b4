"""What a long-running loop needs from its process: a stop flag for signals and a progress line."""

from __future__ import annotations

import os
import signal
import sys
import time

from orders_dlq.logs import log


class StopFlag:
    """SIGINT/SIGTERM ask the loop to finish its work and stop; a second Ctrl+C kills at once."""

    def __init__(self):
        self.requested = False
        self.signal_name = ""

    def install(self) -> StopFlag:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, _frame):
        if self.requested and signum == signal.SIGINT:
            log.warning("second interrupt: exiting immediately")
            os._exit(130)
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        log.info("%s received: finishing in-flight work, then stopping (Ctrl+C again to kill)", self.signal_name)

    def __bool__(self):
        return self.requested


class Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal; redrawn at most 10 times a second."""

    def __init__(self, total: int | None, label: str):
        self.total = total
        self.label = label
        self.enabled = sys.stderr.isatty()
        self.started = self._last = time.monotonic()

    def update(self, done: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        rate = done / max(now - self.started, 1e-9)
        if self.total:
            filled = int(30 * done / self.total)
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total}"
        else:
            bar = f"{done}"
        sys.stderr.write(f"\r{self.label} {bar} {rate:,.0f}/s ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
