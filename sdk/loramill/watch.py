"""Waiting for a job from the CLI: progress a person or a CI log can follow, through API
outages, until the job ends, the wait times out, or the CLI is told to stop.

Progress goes to stderr (stdout stays for the result, ``--json`` included). On a terminal
it is a live bar (tqdm); otherwise plain lines: one for every status change and every
event message, and one every ``interval`` seconds saying where the job is — so a CI log
shows a line at least that often however long the job and however often its worker
reports. The ETA is the server's ``estimated_finish``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import IO, Any

from loramill.errors import (
    APIConnectionError,
    JobCancelledError,
    JobFailedError,
    RateLimitError,
    ServerError,
    WaitTimeoutError,
)
from loramill.types import FineTuningJob, JobEvent

# an API that is down, restarting or overloaded: worth waiting for
OUTAGE = (APIConnectionError, ServerError, RateLimitError)


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """What is printed while waiting; ``clock`` is wall time (the server's ETA is)."""

    def __init__(self, stream: IO[str], *, tty: bool, interval: float,
                 clock: Callable[[], float] = time.time):
        self.stream, self.tty, self.interval, self.clock = stream, tty, interval, clock
        self.status: str | None = None
        self.since = clock()  # when the job entered its status (as far as we saw)
        self.metrics: dict[str, Any] = {}
        self.estimated_finish: int | None = None
        self.last_line = 0.0
        self.bar: Any = None

    # ----- what the poll loop reports ---------------------------------------------------

    def job(self, job: FineTuningJob) -> None:
        self.estimated_finish = job.estimated_finish
        if job.status != self.status:
            was, self.status, self.since = self.status, job.status, self.clock()
            self.say(f"{job.id}: {job.status}" + (f" (was {was})" if was else ""))
            self.last_line = self.clock()
        self._refresh()

    def event(self, event: JobEvent) -> None:
        if event.type == "metrics" and event.data:
            self.metrics = event.data
            self._refresh()
        else:
            self.say(f"[{event.level}] {event.message}")

    def tick(self) -> None:
        """Called after every poll: a line when ``interval`` has passed since the last."""
        if self.tty or self.clock() - self.last_line < self.interval:
            return
        self.say(self.summary())
        self.last_line = self.clock()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # ----- printing ---------------------------------------------------------------------

    def eta(self) -> str:
        if self.estimated_finish is None:
            return ""
        return f", ETA {duration(self.estimated_finish - self.clock())}"

    def summary(self) -> str:
        waited = duration(self.clock() - self.since)
        m = self.metrics
        if self.status == "running" and m.get("total_steps"):
            step, total = m.get("step", 0), m["total_steps"]
            loss = f", loss {m['train_loss']:.4f}" if m.get("train_loss") is not None else ""
            return f"running: step {step}/{total} ({100 * step // total}%){loss}{self.eta()}"
        if self.status == "running":
            return f"running for {waited}, no step finished yet{self.eta()}"
        return f"{self.status} for {waited}"

    def say(self, line: str) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(self.clock()))
        text = line if self.tty else f"[{stamp}] {line}"
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def _refresh(self) -> None:
        if not self.tty or not self.metrics.get("total_steps"):
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.metrics["total_steps"], file=self.stream, unit="step",
                            dynamic_ncols=True, leave=True)
        self.bar.n = self.metrics.get("step", 0)
        loss = self.metrics.get("train_loss")
        self.bar.set_postfix_str(
            (f"loss {loss:.4f}" if loss is not None else "") + self.eta(), refresh=False)
        self.bar.refresh()


class Outage:
    """Rides out an unreachable or failing API: backs off, says so once, gives up only
    after ``limit`` seconds of failures in a row."""

    def __init__(self, limit: float, say: Callable[[str], None],
                 sleep: Callable[[float], None] = time.sleep):
        self.limit, self.say, self.sleep = limit, say, sleep
        self.started: float | None = None
        self.failures = 0

    def failed(self, exc: Exception, job_id: str) -> None:
        now = time.monotonic()
        if self.started is None:
            self.started = now
            self.say(f"the API is not answering ({exc}); retrying for up to "
                     f"{duration(self.limit)} — the job goes on meanwhile")
        if now - self.started >= self.limit:
            raise APIConnectionError(
                f"the API did not answer for {duration(now - self.started)} ({exc}); the job "
                f"may still be running: check it with `loramill jobs get {job_id}`") from exc
        self.failures += 1
        self.sleep(min(30.0, 2.0 ** min(self.failures, 5)))

    def answered(self) -> None:
        if self.started is not None:
            self.say(f"the API answers again (after {duration(time.monotonic() - self.started)})")
        self.started, self.failures = None, 0


def wait(jobs: Any, job_id: str, *, progress: Progress, timeout: float | None,
         poll: float, outage_limit: float) -> FineTuningJob:
    """Poll until the job ends (JobFailedError / JobCancelledError when it did not
    succeed), WaitTimeoutError after ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    seen: set[str] = set()
    outage = Outage(outage_limit, progress.say)
    job: FineTuningJob | None = None
    while True:
        try:
            job = jobs.retrieve(job_id)
            events = list(jobs.new_events(job_id, seen))
        except OUTAGE as exc:
            if job is not None and deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(job, timeout or 0) from exc
            outage.failed(exc, job_id)
            continue
        outage.answered()
        for event in events:
            progress.event(event)
        progress.job(job)
        if job.done:
            if job.status == "failed":
                raise JobFailedError(job)
            if job.status == "cancelled":
                raise JobCancelledError(job)
            return job
        progress.tick()
        if deadline is not None and time.monotonic() >= deadline:
            raise WaitTimeoutError(job, timeout or 0)
        time.sleep(poll if deadline is None else
                   max(0.0, min(poll, deadline - time.monotonic())))
