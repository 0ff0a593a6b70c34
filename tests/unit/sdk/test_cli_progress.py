"""The CLI's progress in a CI log (no terminal), whatever the job's length and however
often its worker reports; and its arguments, each with help text."""

from __future__ import annotations

import argparse
import io
import itertools

import loramill.cli as cli
import pytest
from loramill.types import FineTuningJob, JobEvent
from loramill.watch import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def job(status: str, estimated_finish: float | None = None) -> FineTuningJob:
    return FineTuningJob.of({"id": "ftjob-1", "status": status, "model": "m",
                             "training_file": "file-1", "created_at": 0,
                             "estimated_finish": estimated_finish})


def metrics(step: int, total: int) -> JobEvent:
    return JobEvent.of({"id": f"ev-{step}", "created_at": 0, "level": "info",
                        "message": f"step {step}", "type": "metrics",
                        "data": {"step": step, "total_steps": total, "train_loss": 1.5}})


@pytest.mark.parametrize("total, seconds_per_step, reports_every",
                         [(100, 0.5, 1), (2999, 0.2, 7), (5000, 1.0, 50), (150, 60.0, 10)])
def test_a_line_at_least_every_interval_whatever_the_job(
        total: int, seconds_per_step: float, reports_every: int) -> None:
    """A line every 30 s of the job (and one per status change), for short and long jobs
    and for workers that report rarely — where the old step-modulo rule printed one line
    or none for most lengths."""
    clock, out = Clock(), io.StringIO()
    progress = Progress(out, tty=False, interval=30, clock=clock)
    progress.job(job("queued"))
    clock.now += 45
    progress.tick()
    finish = clock.now + total * seconds_per_step
    progress.job(job("running", finish))
    stamps, printed = [clock.now], out.getvalue().count("\n")
    started, reported = clock.now, 0
    while reported < total:  # the CLI polls every 2 s; the worker reports every N steps
        clock.now += 2
        step = min(total, int((clock.now - started) / seconds_per_step))
        due = (step // reports_every) * reports_every if step < total else total
        if due > reported:
            reported = due
            progress.event(metrics(due, total))
        progress.tick()
        if out.getvalue().count("\n") > printed:
            printed = out.getvalue().count("\n")
            stamps.append(clock.now)
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("ftjob-1: queued")
    assert any(line.endswith("queued for 45s") for line in lines)
    assert any(line.endswith("running (was queued)") for line in lines)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert max(gaps, default=0) <= 32, gaps  # the interval, and at most one poll more
    duration = total * seconds_per_step
    assert len(lines) >= duration // 30  # so a 10-minute job shows ~20 lines
    progress_lines = [line for line in lines if "step " in line]
    if progress_lines:
        assert "loss 1.5000" in progress_lines[-1] and "ETA" in progress_lines[-1]


def test_the_eta_is_the_servers() -> None:
    clock, out = Clock(), io.StringIO()
    progress = Progress(out, tty=False, interval=0, clock=clock)
    progress.job(job("running", clock.now + 90))
    progress.event(metrics(10, 100))
    progress.tick()
    assert "ETA 1m30s" in out.getvalue().splitlines()[-1]
    clock.now += 60  # the CLI started late does not matter: 30 s are left, says the server
    progress.tick()
    assert "ETA 30s" in out.getvalue().splitlines()[-1]


def test_every_argument_has_help() -> None:
    missing = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif action.help is None and not isinstance(action, argparse._HelpAction):
                missing.append(f"{path}: {'/'.join(action.option_strings) or action.dest}")

    walk(cli.build_parser(), "loramill")
    assert missing == []


def test_version_and_exit_codes_documented(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("loramill 0.")
    for code in ("0 succeeded", "1 the job failed", "2 usage", "3 the job was cancelled",
                 "4 timed out", "5 cannot reach", "7 a download", "130 or", "exits 6"):
        assert code in (cli.__doc__ or "").replace("\n", " "), code


def test_a_terminal_gets_a_live_bar_with_the_loss_and_the_servers_eta() -> None:
    clock, out = Clock(), io.StringIO()
    progress = Progress(out, tty=True, interval=30, clock=clock)
    progress.job(job("running", clock.now + 125))
    for step in (10, 20, 30):
        progress.event(metrics(step, 100))
    progress.event(JobEvent.of({"id": "m", "created_at": 0, "level": "info",
                                "message": "Checkpoint saved", "type": "message"}))
    progress.close()
    text = out.getvalue()
    assert "30/100" in text and "loss 1.5000" in text and "ETA 2m05s" in text
    assert "Checkpoint saved" in text  # messages print above the bar
    assert "\r" in text  # redrawn in place, not a line per update
