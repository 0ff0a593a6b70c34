"""A function called every few seconds on a thread of its own, until stopped: the job's
lease heartbeat and the worker's slot heartbeat. It runs in a copy of the caller's
context, so its log lines carry the same ids (a job's, for the lease); a failed call is
logged and tried again next time, unless it raises ``Stop``."""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable

log = logging.getLogger("loramill.worker")


class Stop(Exception):
    """Raised by the ticking function: stop ticking."""


class Ticker:
    def __init__(self, name: str, every: float, tick: Callable[[], None], *,
                 at_once: bool = False):
        self.name, self.every, self._tick, self._at_once = name, every, tick, at_once
        self.stopped = threading.Event()  # set when it stopped: asked to, or by Stop
        self._asked = threading.Event()
        self._thread = threading.Thread(target=contextvars.copy_context().run,
                                        args=(self._run,), name=name, daemon=True)

    def _run(self) -> None:
        try:
            if self._at_once:
                self._call()
            while not self._asked.wait(self.every):
                self._call()
        except Stop:
            pass
        finally:
            self.stopped.set()

    def _call(self) -> None:
        try:
            self._tick()
        except Stop:
            raise
        except Exception:  # a database blip: try again next time
            log.warning("%s failed; trying again in %.0fs", self.name, self.every,
                        exc_info=True)

    def start(self) -> Ticker:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5) -> None:
        self._asked.set()
        self._thread.join(timeout=timeout)
