"""``loramill``: the command line for CI pipelines.

Exit codes: 0 succeeded, 1 the job failed (its error is printed), 2 usage or validation
error (a bad dataset prints its first problems by line; a file that cannot be read; the
API refused the request), 3 the job was cancelled, 4 timed out waiting (the job goes on),
5 cannot reach the server (for `--wait`: not for --max-outage seconds), 7 a download
failed (its URL refused or expired, the store unreachable, a sha256 that differs), 130 or
143 interrupted (Ctrl-C or SIGTERM: the job goes on unless --cancel-on-exit). Nothing
prints a traceback: an error of the CLI itself prints one line and exits 6.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from loramill import __version__, datasets, watch
from loramill.client import Client
from loramill.errors import (
    APIConnectionError,
    DownloadError,
    JobCancelledError,
    JobFailedError,
    LoramillError,
    WaitTimeoutError,
)
from loramill.types import FineTuningJob

OK, FAILED, USAGE, CANCELLED, TIMED_OUT, UNREACHABLE, INTERNAL, DOWNLOAD = range(8)
SIGNALLED = 128  # + the signal's number: 130 Ctrl-C, 143 SIGTERM


class UsageError(Exception):
    pass


class Interrupted(Exception):
    """SIGTERM (a CI runner cancelling the step), raised where the CLI is."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# The first matching kind decides the exit code; JobFailedError's text is
# "job ID failed: CODE: MESSAGE". APIError (any other API refusal) is a usage error.
EXIT_CODES: tuple[tuple[type[Exception], int, str], ...] = (
    (UsageError, USAGE, "error: "),
    (DownloadError, DOWNLOAD, "download failed: "),
    (JobFailedError, FAILED, ""),
    (JobCancelledError, CANCELLED, ""),
    (WaitTimeoutError, TIMED_OUT, "timed out: "),
    (APIConnectionError, UNREACHABLE, "error: "),
    (LoramillError, USAGE, "error: "),
)


def _out(args: argparse.Namespace, value: Any, text: str) -> None:
    if args.json:
        if is_dataclass(value) and not isinstance(value, type):
            value = getattr(value, "raw", None) or asdict(value)
        elif isinstance(value, list):
            value = [v if isinstance(v, dict) else getattr(v, "raw", None) or asdict(v)
                     for v in value]
        print(json.dumps(value, indent=2, default=str))
    else:
        print(text)


def _check_local(client: Client | None, path: Path) -> datasets.Report:
    """The server's verdict, found here: its grammar (the same code) and its limits (none
    without a client: every rule but the size limits)."""
    report = datasets.validate(path, client.files.limits() if client else None)
    if not report.ok:
        problems = "\n".join(f"  {p}" for p in report.problems)
        more = report.problem_count - len(report.problems)
        tail = f"\n  ... and {more} more" if more > 0 else ""
        noun = "problem" if report.problem_count == 1 else "problems"
        raise UsageError(f"{path} is not a valid fine-tuning dataset "
                         f"({report.problem_count} {noun}):\n{problems}{tail}")
    return report


def _file_id(client: Client, value: str, check: bool, key: str | None = None) -> str:
    """An existing file id, or a local path to upload first (with ``key``, an idempotency
    key of its own: a repeated command uploads it once, so its job body is the same)."""
    path = Path(value)
    if value.startswith("file-") and not path.exists():
        return value
    if not path.exists():
        raise UsageError(f"{value}: no such file (give a local .jsonl path or a file id)")
    if check:
        _check_local(client, path)
    return client.files.create(path, idempotency_key=key).id


# ----- commands ---------------------------------------------------------------------------


def files_upload(client: Client, args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if not args.no_check:
        _check_local(client, path)
    f = client.files.create(path)
    _out(args, f, f"{f.id}  {f.filename}  {f.bytes} bytes  {f.example_count} {f.format} "
                  "examples")
    return OK


def files_check(client: Client | None, args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    report = _check_local(client, path)
    _out(args, {"format": report.format, "examples": report.example_count,
                "lines": report.line_count, "tool_examples": report.tool_examples},
         f"{path}: {report.example_count} {report.format} examples, valid")
    return OK


def files_list(client: Client, args: argparse.Namespace) -> int:
    items = list(client.files.list())
    _out(args, items, "\n".join(f"{f.id}  {f.filename}  {f.bytes} bytes  {f.status}"
                                for f in items) or "(no files)")
    return OK


def files_get(client: Client, args: argparse.Namespace) -> int:
    f = client.files.retrieve(args.id)
    _out(args, f, f"{f.id}  {f.filename}  {f.bytes} bytes  {f.status}  sha256 {f.sha256}")
    return OK


def files_delete(client: Client, args: argparse.Namespace) -> int:
    client.files.delete(args.id)
    _out(args, {"id": args.id, "deleted": True}, f"deleted {args.id}")
    return OK


def _job_line(job: FineTuningJob) -> str:
    extra = f"  {job.fine_tuned_model}" if job.fine_tuned_model else ""
    return f"{job.id}  {job.status:<10} {job.model}{extra}"


def _published(client: Client, job: FineTuningJob) -> dict[str, Any] | None:
    """The adapter and version a succeeded job published (None before it did)."""
    if not job.fine_tuned_model:
        return None
    try:
        model = client.models.retrieve(job.fine_tuned_model)
    except LoramillError as exc:  # the job succeeded: say so even if this cannot be read
        print(f"note: could not read which version {job.id} published ({exc})",
              file=sys.stderr)
        return None
    if model.adapter is None:
        return None
    return {"adapter": model.adapter, "version": model.adapter_version,
            "model": job.fine_tuned_model}


def _left_running(client: Client, args: argparse.Namespace, job_id: str, why: str) -> None:
    """The wait stops but the job does not: say so and how to stop it, or (with
    --cancel-on-exit) cancel it."""
    if getattr(args, "cancel_on_exit", False):
        try:
            job = client.fine_tuning.jobs.cancel(job_id)
            print(f"{why}: cancelled {job_id} (--cancel-on-exit); it is {job.status}",
                  file=sys.stderr)
        except LoramillError as exc:
            print(f"{why}: could not cancel {job_id} ({exc}); cancel it with: "
                  f"loramill jobs cancel {job_id}", file=sys.stderr)
        return
    print(f"{why}: job {job_id} goes on without this wait; follow it with: loramill jobs "
          f"wait {job_id}, or cancel it with: loramill jobs cancel {job_id}", file=sys.stderr)


def _wait(client: Client, args: argparse.Namespace, job_id: str) -> int:
    progress = watch.Progress(sys.stderr, tty=sys.stderr.isatty(),
                              interval=args.progress_interval)
    # the wait loop backs off on its own and says so: a poll should not also retry
    # silently for a quarter of a minute first
    client._t.max_retries = min(client._t.max_retries, 1)
    try:
        job = watch.wait(client.fine_tuning.jobs, job_id, progress=progress,
                         timeout=args.timeout, poll=args.poll, outage_limit=args.max_outage)
    except WaitTimeoutError as exc:
        progress.close()
        _left_running(client, args, job_id, f"timed out: {exc}")
        return TIMED_OUT
    except (KeyboardInterrupt, Interrupted) as exc:
        progress.close()
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        _left_running(client, args, job_id, f"interrupted ({signal.Signals(signum).name})")
        return SIGNALLED + int(signum)
    finally:
        progress.close()
    published = _published(client, job)
    text = _job_line(job)
    if published:
        text += f"\npublished adapter {published['adapter']} v{published['version']}"
    if args.json:
        print(json.dumps({**job.raw, "published": published}, indent=2, default=str))
    else:
        print(text)
    return OK


def _job_fields(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    """``jobs create`` and ``jobs estimate``: the job's fields from the flags (a local
    path is checked and uploaded first)."""
    key = getattr(args, "idempotency_key", None)
    training = _file_id(client, args.training_file, not args.no_check,
                        f"{key}-training" if key else None)
    validation = (_file_id(client, args.validation_file, not args.no_check,
                           f"{key}-validation" if key else None)
                  if args.validation_file else None)
    lora = {k: v for k, v in (
        ("r", args.lora_r), ("alpha", args.lora_alpha), ("dropout", args.lora_dropout),
        ("target_modules", _targets(args.lora_target_modules))) if v is not None} or None
    return dict(
        model=args.model, training_file=training, validation_file=validation,
        n_epochs=args.epochs if args.epochs else "auto",
        batch_size=args.batch_size if args.batch_size else "auto",
        learning_rate_multiplier=(args.learning_rate_multiplier
                                  if args.learning_rate_multiplier else "auto"),
        suffix=args.suffix, seed=args.seed, lora=lora, method=args.method,
        beta=args.beta if args.beta else "auto", max_seq_len=args.max_seq_len,
        eval_every=args.eval_every, early_stopping_patience=args.early_stopping_patience,
        early_stopping_threshold=args.early_stopping_threshold,
        publish_checkpoint="best" if args.publish_best else None,
        integrations=[{"type": "wandb", "wandb": {"project": args.wandb_project}}]
        if args.wandb_project else None,
        metadata=_metadata(args.metadata),
    )


def _targets(value: str | None) -> str | list[str] | None:
    if value is None or value == "all-linear":
        return value
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise UsageError("--lora-target-modules: give module names, comma-separated "
                         "(e.g. q_proj,v_proj), or all-linear")
    return names


def _metadata(pairs: list[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    found = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--metadata {pair!r}: give KEY=VALUE")
        found[key] = value
    return found


def _duration(seconds: float | None) -> str:
    return "?" if seconds is None else watch.duration(seconds)


def jobs_estimate(client: Client, args: argparse.Namespace) -> int:
    found = client.fine_tuning.jobs.estimate(**_job_fields(client, args))
    lines = [f"{found.examples} examples, {found.tokens['total']:,} tokens "
             f"({found.tokens['counted']}), {found.total_steps} steps",
             f"GPU class {found.gpu_class}" + (
                 f", predicted peak memory {found.predicted_memory_gib} GiB a GPU"
                 if found.predicted_memory_gib is not None else "")]
    for d in found.durations:
        cost = f"  {d['cost']:.2f} {found.currency}" if d["cost"] is not None else ""
        basis = d["basis"] + (f", {d['measured_jobs']} jobs" if d["measured_jobs"] else "")
        lines.append(f"  {d['gpu_class']:<10} {_duration(d['seconds']):>8}  ({basis}){cost}")
    _out(args, found, "\n".join(lines))
    return OK


def jobs_create(client: Client, args: argparse.Namespace) -> int:
    job = client.fine_tuning.jobs.create(**_job_fields(client, args),
                                         idempotency_key=args.idempotency_key)
    if args.wait:
        print(f"created {job.id}", file=sys.stderr)
        return _wait(client, args, job.id)
    _out(args, job, _job_line(job))
    return OK


def jobs_wait(client: Client, args: argparse.Namespace) -> int:
    return _wait(client, args, args.id)


def _first(items: Any, limit: int, keep: Any = None) -> list[Any]:
    """The first ``limit`` items that ``keep`` (pages are fetched only as needed)."""
    found = []
    for item in items:
        if keep is None or keep(item):
            found.append(item)
            if len(found) >= limit:
                break
    return found


def jobs_list(client: Client, args: argparse.Namespace) -> int:
    statuses = set(args.status.split(",")) if args.status else None
    items = _first(client.fine_tuning.jobs.list(metadata=_metadata(args.metadata)),
                   args.limit, (lambda j: j.status in statuses) if statuses else None)
    _out(args, items, "\n".join(_job_line(j) for j in items) or "(no jobs)")
    return OK


def jobs_checkpoints(client: Client, args: argparse.Namespace) -> int:
    items = list(client.fine_tuning.jobs.checkpoints(args.id))
    _out(args, items, "\n".join(
        f"{c.id}  step {c.step_number}  {c.fine_tuned_model_checkpoint}" for c in items)
        or "(no checkpoints yet)")
    return OK


def jobs_results(client: Client, args: argparse.Namespace) -> int:
    """A job's result files (its per-step metrics CSV) into --dest."""
    job = client.fine_tuning.jobs.retrieve(args.id)
    files = job.raw.get("result_files") or []
    if not files:
        raise UsageError(f"job {args.id} has no result files (it is {job.status}; they "
                         "come with success)")
    dest = Path(args.dest or args.id)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for file_id in files:
        meta = client.files.retrieve(file_id)
        target = dest / meta.filename
        target.write_bytes(client.files.content(file_id))
        written.append(str(target))
    _out(args, {"job": args.id, "files": written}, "\n".join(written))
    return OK


def files_download(client: Client, args: argparse.Namespace) -> int:
    meta = client.files.retrieve(args.id)
    target = Path(args.dest or meta.filename)
    if target.is_dir():
        target = target / meta.filename
    target.write_bytes(client.files.content(args.id))
    _out(args, {"id": args.id, "path": str(target)}, f"{args.id} -> {target}")
    return OK


def jobs_get(client: Client, args: argparse.Namespace) -> int:
    job = client.fine_tuning.jobs.retrieve(args.id)
    text = _job_line(job)
    if job.error:
        text += f"\n  error: {job.error.get('code')}: {job.error.get('message')}"
    _out(args, job, text)
    return OK


def _action(name: str):  # type: ignore[no-untyped-def]
    def run(client: Client, args: argparse.Namespace) -> int:
        job = getattr(client.fine_tuning.jobs, name)(args.id)
        _out(args, job, _job_line(job))
        return OK
    return run


def jobs_events(client: Client, args: argparse.Namespace) -> int:
    jobs = client.fine_tuning.jobs
    if not args.follow:
        events = list(jobs.events(args.id))[::-1]
        _out(args, events, "\n".join(f"[{e.level}] {e.message}" for e in events))
        return OK
    seen: set[str] = set()
    while True:
        job = jobs.retrieve(args.id)  # read first: events up to the end still print
        for event in jobs.new_events(args.id, seen):
            print(json.dumps(asdict(event)) if args.json
                  else f"[{event.level}] {event.message}", flush=True)
        if job.done:  # the job's end decides the exit code, as for `jobs wait`
            return {"failed": FAILED, "cancelled": CANCELLED}.get(job.status, OK)
        time.sleep(args.poll)


def adapters_list(client: Client, args: argparse.Namespace) -> int:
    items = list(client.adapters.list())
    _out(args, items, "\n".join(f"{a.name}  latest v{a.latest_version}" for a in items)
         or "(no adapters)")
    return OK


def adapters_versions(client: Client, args: argparse.Namespace) -> int:
    items = list(client.adapters.versions(args.name))
    _out(args, items, "\n".join(f"v{v.version}  {v.fine_tuned_model}  job {v.fine_tuning_job_id}"
                                for v in items))
    return OK


def _alias_line(a: Any) -> str:
    before = f"  (was v{a.previous_version})" if a.previous_version is not None else ""
    return f"{a.model} -> v{a.version}{before}"


def adapters_aliases(client: Client, args: argparse.Namespace) -> int:
    items = client.adapters.aliases(args.name)
    _out(args, items, "\n".join(_alias_line(a) for a in items) or "(no aliases)")
    return OK


def adapters_promote(client: Client, args: argparse.Namespace) -> int:
    alias = client.adapters.promote(args.name, args.alias, args.version)
    _out(args, alias, _alias_line(alias))
    return OK


def adapters_rollback(client: Client, args: argparse.Namespace) -> int:
    alias = client.adapters.rollback(args.name, args.alias)
    _out(args, alias, _alias_line(alias))
    return OK


def adapters_unalias(client: Client, args: argparse.Namespace) -> int:
    client.adapters.delete_alias(args.name, args.alias)
    _out(args, {"adapter": args.name, "alias": args.alias, "deleted": True},
         f"alias {args.alias} of {args.name} deleted")
    return OK


def adapters_delete(client: Client, args: argparse.Namespace) -> int:
    row = client.adapters.delete_version(args.name, args.version)
    _out(args, row, f"deleted {args.name} v{args.version} and its files")
    return OK


def adapters_export(client: Client, args: argparse.Namespace) -> int:
    found = client.adapters.export(args.name, args.version, args.format)
    deadline = time.monotonic() + args.timeout if args.timeout else None
    while args.wait and found["status"] in ("queued", "running"):
        if deadline is not None and time.monotonic() > deadline:
            print(f"timed out: the export is still {found['status']}", file=sys.stderr)
            return TIMED_OUT
        time.sleep(2)
        found = client.adapters.get_export(args.name, args.version, args.format)
    if found["status"] == "failed":
        print(f"export failed: {found['error']['message']}", file=sys.stderr)
        return FAILED
    if found["status"] == "succeeded" and args.dest:
        client.adapters.download_export(args.name, args.version, args.format, args.dest)
        _out(args, found, f"{args.format} export of {args.name} v{args.version} in "
                          f"{args.dest} (sha256 verified)")
        return OK
    _out(args, found, f"{args.format} export of {args.name} v{args.version}: "
                      f"{found['status']}")
    return OK


def adapters_download(client: Client, args: argparse.Namespace) -> int:
    if "@" in args.name:  # adapter@alias: the version it points at now
        if args.job or args.version or args.version_flag:
            raise UsageError("ADAPTER@ALIAS names its version: give no --job or --version")
        dest = Path(args.dest or args.name.replace("@", "-"))
        client.models.download(args.name, dest)
        _out(args, {"model": args.name, "path": str(dest)},
             f"downloaded {args.name} to {dest} (sha256 verified)")
        return OK
    version = args.version_flag or args.version
    if args.job:  # exactly what that job published, whatever ran since
        if version:
            raise UsageError("give --job or a version, not both")
        job = client.fine_tuning.jobs.retrieve(args.job)
        published = _published(client, job)
        if published is None:
            raise UsageError(f"job {args.job} published no adapter (it is {job.status})")
        if published["adapter"] != args.name:
            raise UsageError(f"job {args.job} published {published['adapter']}, not "
                             f"{args.name}")
        version = published["version"]
    how = ""
    if not version:
        version = max(v.version for v in client.adapters.versions(args.name))
        how = " (the latest; --job JOB or --version N to pin one)"
    dest = Path(args.dest or f"{args.name}-v{version}")
    client.adapters.download(args.name, version, dest)
    _out(args, {"adapter": args.name, "version": version, "path": str(dest)},
         f"downloaded {args.name} v{version}{how} to {dest} (sha256 verified)")
    return OK


def models_download(client: Client, args: argparse.Namespace) -> int:
    dest = Path(args.dest or args.model.replace("/", "_").replace(":", "_"))
    client.models.download(args.model, dest)
    _out(args, {"model": args.model, "path": str(dest)},
         f"downloaded {args.model} to {dest} (sha256 verified)")
    return OK


def _endpoint_line(e: dict[str, Any]) -> str:
    return f"{e['id']}  {e['url']}  {','.join(e['event_types'])}"


def webhooks_create(client: Client, args: argparse.Namespace) -> int:
    made = client.webhooks.create(args.url, event_types=args.event_type, name=args.name)
    _out(args, made, f"{_endpoint_line(made)}\n"
                     f"signing secret (shown once): {made['signing_secret']}")
    return OK


def webhooks_list(client: Client, args: argparse.Namespace) -> int:
    items = list(client.webhooks.list())
    _out(args, items, "\n".join(_endpoint_line(e) for e in items)
         or "(no webhook endpoints)")
    return OK


def webhooks_delete(client: Client, args: argparse.Namespace) -> int:
    client.webhooks.delete(args.id)
    _out(args, {"id": args.id, "deleted": True}, f"deleted {args.id}")
    return OK


def webhooks_rotate(client: Client, args: argparse.Namespace) -> int:
    made = client.webhooks.rotate_secret(args.id, keep_old=args.keep_old)
    _out(args, made, f"new signing secret (shown once): {made['signing_secret']}")
    return OK


def webhooks_test(client: Client, args: argparse.Namespace) -> int:
    found = client.webhooks.test(args.id, args.event_type)
    _out(args, found, f"{args.event_type} sent: the endpoint answered {found['status_code']}")
    return OK if 200 <= found["status_code"] < 300 else FAILED


def webhooks_deliveries(client: Client, args: argparse.Namespace) -> int:
    items = list(client.webhooks.deliveries(args.id))
    _out(args, items, "\n".join(
        f"{d['id']}  {d['event_type']:<26} {d['status']:<9} attempts {d['attempts']}"
        f"{'  ' + d['last_error'] if d['last_error'] else ''}" for d in items)
        or "(no deliveries)")
    return OK


def integrations_list(client: Client, args: argparse.Namespace) -> int:
    items = client.integrations.list()
    _out(args, items, "\n".join(f"{i['type']}  key {i['key_hint']}" for i in items)
         or "(none)")
    return OK


def integrations_wandb(client: Client, args: argparse.Namespace) -> int:
    key = args.key or os.environ.get("WANDB_API_KEY")
    if not key:
        print("error: give --key or set WANDB_API_KEY", file=sys.stderr)
        return USAGE
    client.integrations.set_wandb(key, args.wandb_url)
    _out(args, {"type": "wandb", "set": True}, "W&B key set for your jobs")
    return OK


def models_list(client: Client, args: argparse.Namespace) -> int:
    items = client.models.list()
    _out(args, items, "\n".join(
        f"{m.id}  ({m.owned_by})" + (f"  {m.adapter} v{m.adapter_version}"
                                     if m.adapter else "") for m in items))
    return OK


# ----- operators (an admin key: --api-key, $LORAMILL_ADMIN_KEY or $LORAMILL_API_KEY) ------


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 60:.0f}m" if seconds >= 120 else f"{seconds:.0f}s"


def admin_queue(client: Client, args: argparse.Namespace) -> int:
    q = client.admin.queue()
    lines = [f"queued {q.totals['queued']}  running {q.totals['running']}  paused "
             f"{q.totals['paused']}  oldest queued {_ago(q.oldest_queued_age_seconds)}  "
             f"dispatched/min {q.rates['dispatched_per_minute']}  "
             f"completed/min {q.rates['completed_per_minute']}"]
    lines += [f"  {r['tenant_name']:<24} {r['gpu_class']:<8} queued {r['queued']:<4} "
              f"running {r['running']:<3} paused {r['paused']:<3} oldest "
              f"{_ago(r['oldest_queued_age_seconds'])}" for r in q.by_tenant]
    _out(args, q, "\n".join(lines))
    return OK


def admin_workers(client: Client, args: argparse.Namespace) -> int:
    items = client.admin.workers()
    _out(args, items, "\n".join(f"{w.id}  {w.gpu_class}  {w.state:<7} running "
                                f"{', '.join(w.running_jobs) or '-'}" for w in items)
         or "(no workers)")
    return OK


def admin_jobs(client: Client, args: argparse.Namespace) -> int:
    items = list(client.admin.jobs(status=args.status, tenant_id=args.tenant,
                                   older_than_seconds=args.older_than))
    _out(args, items, "\n".join(f"{_job_line(j)}  tenant {j.tenant_id}" for j in items)
         or "(no jobs)")
    return OK


def _admin_job_action(name: str):  # type: ignore[no-untyped-def]
    def run(client: Client, args: argparse.Namespace) -> int:
        extra = (args.priority,) if name == "set_priority" else ()
        job = getattr(client.admin, name)(args.id, *extra)
        _out(args, job, f"{_job_line(job)}  priority {job.raw.get('priority')}")
        return OK
    return run


def _tenant_line(t: Any) -> str:
    state = "suspended" if t.suspended_at else "active"
    return (f"{t.id}  {t.name}  {state}  running<={t.max_running_jobs} "
            f"queued<={t.max_queued_jobs}")


def admin_tenants(client: Client, args: argparse.Namespace) -> int:
    items = list(client.admin.tenants())
    _out(args, items, "\n".join(_tenant_line(t) for t in items) or "(no tenants)")
    return OK


def _quota_args(args: argparse.Namespace) -> dict[str, int | None]:
    return {name: getattr(args, name) for name in ("max_running_jobs", "max_queued_jobs",
                                                   "max_file_bytes", "storage_bytes")}


def admin_tenant_create(client: Client, args: argparse.Namespace) -> int:
    t = client.admin.create_tenant(args.name, **_quota_args(args))
    _out(args, t, _tenant_line(t))
    return OK


def admin_quotas(client: Client, args: argparse.Namespace) -> int:
    t = client.admin.set_quotas(args.tenant, **_quota_args(args))
    _out(args, t, _tenant_line(t))
    return OK


def _admin_tenant_action(name: str):  # type: ignore[no-untyped-def]
    def run(client: Client, args: argparse.Namespace) -> int:
        t = getattr(client.admin, name)(args.tenant)
        _out(args, t, _tenant_line(t))
        return OK
    return run


def admin_keys(client: Client, args: argparse.Namespace) -> int:
    items = client.admin.keys(args.tenant)
    _out(args, items, "\n".join(f"{k.id}  {k.prefix}...  {','.join(k.scopes)}"
                                f"{'  revoked' if k.revoked_at else ''}" for k in items)
         or "(no keys)")
    return OK


def admin_key_create(client: Client, args: argparse.Namespace) -> int:
    k = client.admin.create_key(args.tenant, name=args.name, scopes=args.scope)
    if not args.json:
        print(f"key {k.id} ({', '.join(k.scopes)}); the secret is shown once:",
              file=sys.stderr)
    _out(args, k, k.secret or "")
    return OK


def admin_key_revoke(client: Client, args: argparse.Namespace) -> int:
    k = client.admin.revoke_key(args.tenant, args.key)
    _out(args, k, f"revoked {k.id} ({k.prefix}...)")
    return OK


def admin_audit(client: Client, args: argparse.Namespace) -> int:
    items = list(client.admin.audit_log(target_id=args.target))[: args.limit]
    _out(args, items, "\n".join(
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(e.created_at))}  {e.actor}  "
        f"{e.action}  {e.target_type} {e.target_id}" for e in items) or "(nothing yet)")
    return OK


# ----- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # Accepted before or after the command; SUPPRESS keeps a subcommand's default from
    # overwriting a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output")
    common.add_argument("--api-key", default=argparse.SUPPRESS,
                        help="default: $LORAMILL_API_KEY")
    common.add_argument("--base-url", default=argparse.SUPPRESS,
                        help="default: $LORAMILL_BASE_URL")
    parser = argparse.ArgumentParser(prog="loramill", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[common])
    parser.add_argument("--version", action="version", version=f"loramill {__version__}",
                        help="print the CLI's version and exit")
    groups = parser.add_subparsers(dest="group", required=True)

    def command(sub: Any, name: str, fn: Any, help_: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_, parents=[common])
        p.set_defaults(fn=fn)
        return p

    files = groups.add_parser("files", help="datasets").add_subparsers(dest="cmd",
                                                                       required=True)
    p = command(files, "upload", files_upload, "check a JSONL file locally, then upload it")
    p.add_argument("path", help="the .jsonl dataset")
    p.add_argument("--no-check", action="store_true", help="skip the local check")
    p = command(files, "check", files_check,
                "check a JSONL file with the server's rules and limits, without uploading it")
    p.add_argument("path", help="the .jsonl dataset")
    p.add_argument("--offline", action="store_true",
                   help="do not ask the server for its limits: every rule but the size limits")
    p = command(files, "list", files_list, "list files, newest first")
    p.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    command(files, "get", files_get, "show a file").add_argument("id", help="a file id")
    p = command(files, "download", files_download,
                "download a file's content (a dataset, or a job's result file)")
    p.add_argument("id", help="a file id")
    p.add_argument("--dest", help="a path or directory (default: the file's name)")
    command(files, "delete", files_delete, "delete a file").add_argument("id", help="a file id")

    jobs = groups.add_parser("jobs", help="fine-tuning jobs").add_subparsers(dest="cmd",
                                                                             required=True)
    p = command(jobs, "create", jobs_create, "start a fine-tuning job")
    estimating = command(jobs, "estimate", jobs_estimate, "what a job would train, on "
                         "which GPU class, how long and at what cost (nothing is queued)")
    for q in (p, estimating):
        q.add_argument("--model", required=True, help="a base model, or one of your "
                       "fine-tuned or checkpoint models to continue from")
        q.add_argument("--training-file", required=True,
                       help="a local .jsonl path or a file id")
        q.add_argument("--validation-file", help="a local .jsonl path or a file id")
        q.add_argument("--epochs", type=int, help="default: auto, from the dataset size")
        q.add_argument("--batch-size", type=int, help="default: auto")
        q.add_argument("--learning-rate-multiplier", type=float, help="default: 1.0")
        q.add_argument("--method", choices=("supervised", "dpo"), default="supervised",
                       help="dpo: train on a preference file")
        q.add_argument("--beta", type=float, help="dpo only: how far from the base model")
        q.add_argument("--suffix", help="names the adapter the job publishes")
        q.add_argument("--seed", type=int, help="default: random")
        q.add_argument("--lora-r", type=int, help="LoRA rank (default 8)")
        q.add_argument("--lora-alpha", type=float, help="LoRA alpha (default 16)")
        q.add_argument("--lora-dropout", type=float, help="LoRA dropout (default 0.05)")
        q.add_argument("--lora-target-modules", metavar="NAMES",
                       help="modules to adapt, comma-separated (q_proj,v_proj), or "
                            "all-linear (the default)")
        q.add_argument("--metadata", action="append", metavar="KEY=VALUE",
                       help="a label on the job (repeat for several)")
        q.add_argument("--max-seq-len", type=int, help="longest sequence trained, in tokens")
        q.add_argument("--eval-every", type=int,
                       help="steps between validation losses (needs --validation-file)")
        q.add_argument("--early-stopping-patience", type=int,
                       help="stop after this many evaluations without improvement")
        q.add_argument("--early-stopping-threshold", type=float,
                       help="the improvement that counts (default 0)")
        q.add_argument("--publish-best", action="store_true",
                       help="publish the adapter at the best validation loss, not the last")
        q.add_argument("--wandb-project",
                       help="log the job's metrics to this Weights & Biases project")
        q.add_argument("--no-check", action="store_true",
                       help="skip the local dataset check")
    p.add_argument("--wait", action="store_true", help="wait for the job, with progress")
    p.add_argument("--idempotency-key", metavar="KEY",
                   help="a key of yours (e.g. the CI run's id): repeating the command with "
                        "it creates no second job")
    waiter = command(jobs, "wait", jobs_wait, "wait for a job to end")
    waiter.add_argument("id", help="a job id")
    for q in (p, waiter):
        q.add_argument("--timeout", type=float,
                       help="seconds to wait (then exit 4; the job goes on)")
        q.add_argument("--progress-interval", type=float, default=30.0, metavar="SECONDS",
                       help="without a terminal: a progress line at least this often "
                            "(default 30), and one on every status change")
        q.add_argument("--max-outage", type=float, default=600.0, metavar="SECONDS",
                       help="keep waiting through an API outage this long (default 600) "
                            "before exit 5")
        q.add_argument("--cancel-on-exit", action="store_true",
                       help="cancel the job if the wait ends early (--timeout, Ctrl-C, "
                            "SIGTERM)")
        q.add_argument("--poll", type=float, default=2.0, help=argparse.SUPPRESS)
    p = command(jobs, "list", jobs_list, "list jobs, newest first")
    p.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    p.add_argument("--status", help="only these statuses, comma-separated "
                   "(e.g. running,queued)")
    p.add_argument("--metadata", action="append", metavar="KEY=VALUE",
                   help="only jobs labelled so (repeat for several)")
    for name in ("get", "cancel", "pause", "resume"):
        fn = jobs_get if name == "get" else _action(name)
        command(jobs, name, fn, f"{name} a job").add_argument("id", help="a job id")
    command(jobs, "checkpoints", jobs_checkpoints,
            "a job's checkpoints (each a model to continue from or download)").add_argument(
        "id", help="a job id")
    p = command(jobs, "results", jobs_results,
                "download a job's result files (its per-step metrics CSV)")
    p.add_argument("id", help="a job id")
    p.add_argument("--dest", help="directory (default: the job id)")
    p = command(jobs, "events", jobs_events, "show a job's events (oldest first)")
    p.add_argument("id", help="a job id")
    p.add_argument("--follow", action="store_true",
                   help="keep printing until the job ends (exit code as for `jobs wait`)")
    p.add_argument("--poll", type=float, default=2.0, help=argparse.SUPPRESS)

    adapters = groups.add_parser("adapters", help="published adapters").add_subparsers(
        dest="cmd", required=True)
    command(adapters, "list", adapters_list, "list adapters")
    command(adapters, "versions", adapters_versions, "list versions").add_argument(
        "name", help="the adapter")
    p = command(adapters, "download", adapters_download,
                "download a version (sha256 checked against its manifest)")
    p.add_argument("name", help="an adapter, or ADAPTER@ALIAS for the version it points at")
    p.add_argument("version", type=int, nargs="?", help="the version (default: the latest)")
    p.add_argument("--version", dest="version_flag", type=int, metavar="N",
                   help="the version (as the positional VERSION)")
    p.add_argument("--job", help="the version this job published (not whatever is latest)")
    p.add_argument("--dest", help="directory (default: NAME-vN)")
    p = command(adapters, "export", adapters_export,
                "a version as a merged model or a GGUF LoRA adapter for llama.cpp")
    p.add_argument("name", help="the adapter")
    p.add_argument("version", type=int, help="the version")
    p.add_argument("--format", choices=("merged", "gguf"), required=True,
                   help="merged: the base with the adapter folded in; gguf: for llama.cpp")
    p.add_argument("--wait", action="store_true", help="until it is built")
    p.add_argument("--timeout", type=float, help="seconds to wait (exit 4 after)")
    p.add_argument("--dest", help="download it here once built (sha256 checked)")
    command(adapters, "aliases", adapters_aliases,
            "an adapter's aliases and the versions they point at").add_argument(
        "name", help="the adapter")
    p = command(adapters, "promote", adapters_promote,
                "point an alias (production, staging, any name) at a version")
    p.add_argument("name", help="the adapter")
    p.add_argument("alias", help="e.g. production")
    p.add_argument("version", type=int, help="the version it should point at")
    p = command(adapters, "rollback", adapters_rollback,
                "point an alias back at the version it pointed at before")
    p.add_argument("name", help="the adapter")
    p.add_argument("alias", help="e.g. production")
    p = command(adapters, "unalias", adapters_unalias, "delete an alias")
    p.add_argument("name", help="the adapter")
    p.add_argument("alias", help="e.g. staging")
    p = command(adapters, "delete", adapters_delete,
                "delete a version and its files (refused while an alias points at it)")
    p.add_argument("name", help="the adapter")
    p.add_argument("version", type=int, help="the version")

    models = groups.add_parser("models", help="models").add_subparsers(dest="cmd",
                                                                       required=True)
    command(models, "list", models_list, "base and fine-tuned models")
    p = command(models, "download", models_download,
                "download the adapter of a fine-tuned or checkpoint model (sha256 checked)")
    p.add_argument("model", help="ft:… id, or a checkpoint's ft:…:ckpt-step-N")
    p.add_argument("--dest", help="directory (default: the id, with / and : as _)")

    grouped = groups.add_parser(
        "integrations", help="credentials for jobs' integrations (Weights & Biases)"
    ).add_subparsers(dest="cmd", required=True)
    command(grouped, "list", integrations_list, "what is set (keys shown by their end)")
    p = command(grouped, "wandb", integrations_wandb,
                "set the W&B API key your jobs' runs log with")
    p.add_argument("--key", help="the W&B API key (default: $WANDB_API_KEY)")
    p.add_argument("--wandb-url", help="a self-hosted W&B server")

    hooks = groups.add_parser(
        "webhooks", help="endpoints that receive your jobs' ends (signed)").add_subparsers(
        dest="cmd", required=True)
    p = command(hooks, "create", webhooks_create, "register an endpoint (prints its secret)")
    p.add_argument("url", help="https://… that receives the events")
    p.add_argument("--event-type", action="append",
                   choices=("fine_tuning.job.succeeded", "fine_tuning.job.failed",
                            "fine_tuning.job.cancelled"),
                   help="repeat for several (default: all three)")
    p.add_argument("--name", default="", help="a name for it")
    command(hooks, "list", webhooks_list, "your endpoints")
    command(hooks, "delete", webhooks_delete, "delete an endpoint").add_argument(
        "id", help="the endpoint's id")
    p = command(hooks, "rotate-secret", webhooks_rotate, "a new signing secret")
    p.add_argument("id", help="the endpoint's id")
    p.add_argument("--keep-old", action="store_true",
                   help="the old secret signs too for 24 hours")
    p = command(hooks, "test", webhooks_test, "send one signed example event now")
    p.add_argument("id", help="the endpoint's id")
    p.add_argument("--event-type", default="fine_tuning.job.succeeded",
                   help="default: fine_tuning.job.succeeded")
    command(hooks, "deliveries", webhooks_deliveries,
            "an endpoint's delivery log, newest first").add_argument(
        "id", help="the endpoint's id")

    admin = groups.add_parser(
        "admin", help="operators: queue, workers, jobs of all tenants, tenants, audit log "
        "(an admin key: $LORAMILL_ADMIN_KEY)").add_subparsers(dest="cmd", required=True)
    command(admin, "queue", admin_queue, "the queue by tenant and GPU class")
    command(admin, "workers", admin_workers, "training workers: alive, lost, stopped")
    p = command(admin, "jobs", admin_jobs, "jobs of every tenant, newest first")
    p.add_argument("--status", help="e.g. failed or queued,running")
    p.add_argument("--tenant", help="a tenant id")
    p.add_argument("--older-than", type=int, metavar="SECONDS",
                   help="only jobs created longer ago than this")
    for name, help_ in (("requeue", "put a failed, running or queued job back in the queue"),
                        ("cancel", "cancel any tenant's job")):
        command(admin, name, _admin_job_action(name), help_).add_argument(
            "id", help="a job id")
    p = command(admin, "priority", _admin_job_action("set_priority"),
                "set a job's priority (-100..100, higher first)")
    p.add_argument("id", help="a job id")
    p.add_argument("priority", type=int, help="-100..100, higher first")
    command(admin, "tenants", admin_tenants, "list tenants")
    create = command(admin, "tenant-create", admin_tenant_create, "create a tenant")
    create.add_argument("name", help="the tenant's name")
    quotas = command(admin, "quotas", admin_quotas, "change a tenant's quotas")
    quotas.add_argument("tenant", help="a tenant id")
    for q in (create, quotas):
        for flag, text in (("--max-running-jobs", "jobs training at once"),
                           ("--max-queued-jobs", "unfinished jobs at once"),
                           ("--max-file-bytes", "the largest dataset, in bytes"),
                           ("--storage-bytes", "datasets and adapters in all, in bytes")):
            q.add_argument(flag, type=int, help=text)
    for name in ("suspend", "unsuspend"):
        command(admin, name, _admin_tenant_action(name),
                f"{name} a tenant (its keys stop or start working)").add_argument(
            "tenant", help="a tenant id")
    command(admin, "keys", admin_keys, "a tenant's keys (prefix only)").add_argument(
        "tenant", help="a tenant id")
    p = command(admin, "key-create", admin_key_create, "a new key for a tenant (printed once)")
    p.add_argument("tenant", help="a tenant id")
    p.add_argument("--name", default="", help="a label for the key")
    p.add_argument("--scope", action="append", help="repeat: read, files:write, jobs:write, "
                   "keys:write (default: all)")
    p = command(admin, "key-revoke", admin_key_revoke, "revoke a tenant's key")
    p.add_argument("tenant", help="a tenant id")
    p.add_argument("key", help="the key's id")
    p = command(admin, "audit", admin_audit, "what operators did, newest first")
    p.add_argument("--target", help="only actions on this job, tenant or key id")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    return parser


def _interrupt(signum: int, _frame: Any) -> None:
    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: usage errors exit 2, --help exits 0
        return int(exc.code or 0)
    for name, default in (("json", False), ("api_key", None), ("base_url", None)):
        if not hasattr(args, name):
            setattr(args, name, default)
    if args.group == "admin" and not args.api_key:
        args.api_key = os.environ.get("LORAMILL_ADMIN_KEY")  # else $LORAMILL_API_KEY
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        offline = getattr(args, "offline", False)  # needs no key and no server
        client = None if offline else Client(api_key=args.api_key, base_url=args.base_url)
        return int(args.fn(client, args))
    except (UsageError, LoramillError) as exc:
        code, prefix = next((code, prefix) for kind, code, prefix in EXIT_CODES
                            if isinstance(exc, kind))
        print(f"{prefix}{exc}", file=sys.stderr)
        return code
    except OSError as exc:  # a file that cannot be read or written
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return SIGNALLED + signal.SIGINT
    except Interrupted as exc:
        print(f"interrupted ({exc})", file=sys.stderr)
        return SIGNALLED + exc.signum
    except Exception as exc:  # a bug of ours: one line, never a traceback
        print(f"error: loramill failed unexpectedly ({type(exc).__name__}: {exc}); "
              "please report it", file=sys.stderr)
        return INTERNAL

if __name__ == "__main__":
    sys.exit(main())
