"""The operators' dashboard at /ops: server-rendered pages over the same services as
/v1/admin, refreshed in place by a few lines of JS. Sign-in takes an admin key and keeps
it in an HttpOnly, SameSite=Strict cookie scoped to /ops (so another site cannot post a
form here). Actions — cancel, requeue, priority, suspend — go through a confirmation page
and are audited under the signed-in key, as the admin API's are; the page they return to
shows the audit entry."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from api.deps import AdminUoW, principal_for
from core.audit import service as audit
from core.audit.models import AuditEntry
from core.jobs import state as jobstate
from core.jobs.state import JobStatus
from core.kit.errors import AuthenticationFailed, InvalidRequest, LoramillError, NotFound
from core.kit.orm import utcnow
from core.kit.queue import wake_dispatcher
from core.kit.settings import get_settings
from core.ops import service as ops
from core.serving import engines as serving_engines
from core.tenants import keys

router = APIRouter(prefix="/ops", include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent.parent / "templates")
COOKIE = "loramill_ops"
SESSION_SECONDS = 12 * 3600


def _ago(when: datetime | None) -> str:
    if when is None:
        return "—"
    seconds = max(int((utcnow() - when).total_seconds()), 0)
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    if seconds < 172800:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m ago"
    return f"{seconds // 86400}d ago"


templates.env.filters["ago"] = _ago


def _page(request: Request, name: str, context: dict[str, Any],
          status_code: int = 200) -> Response:
    context = {"signed_in": True, "now_text": utcnow().strftime("%H:%M:%S UTC"), **context}
    return templates.TemplateResponse(request, f"ops/{name}.html", context,
                                      status_code=status_code)


def _operator(request: Request, uow: AdminUoW) -> str | None:
    """The signed-in operator's audit name (``key:<id>``, as the admin API's), or None."""
    token = request.cookies.get(COOKIE, "")
    if not keys.is_well_formed(token):
        return None
    try:
        principal = principal_for(uow.session, token)
    except AuthenticationFailed:
        return None
    return f"key:{principal.key_id}" if principal.is_admin else None


def _signed_in(request: Request, uow: AdminUoW) -> bool:
    return _operator(request, uow) is not None


def _login_redirect() -> RedirectResponse:
    return RedirectResponse("/ops/login", status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> Response:
    return _page(request, "login", {"error": None, "signed_in": False})


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, uow: AdminUoW,
          key: Annotated[str, Form(max_length=200)] = "") -> Response:
    key = key.strip()
    error = None
    if not keys.is_well_formed(key):
        error = "That is not a loramill key (they look like lm-sk-…)."
    else:
        try:
            if not principal_for(uow.session, key).is_admin:
                error = "That is a tenant key; the dashboard needs an admin key."
        except AuthenticationFailed as exc:
            error = f"Sign-in refused: {exc.message}."
    if error:
        return _page(request, "login", {"error": error, "signed_in": False}, 401)
    response = RedirectResponse("/ops", status_code=303)
    response.set_cookie(COOKIE, key, max_age=SESSION_SECONDS, path="/ops", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


@router.post("/logout")
def logout() -> Response:
    response = _login_redirect()
    response.delete_cookie(COOKIE, path="/ops")
    return response


@router.get("", response_class=HTMLResponse)
def overview(request: Request, uow: AdminUoW) -> Response:
    if not _signed_in(request, uow):
        return _login_redirect()
    session = uow.session
    worker_views = ops.workers(session, get_settings(), limit=50)
    return _page(request, "overview", {
        "queue": ops.queue_summary(session),
        "queued": ops.queued_jobs(session, limit=100),
        "rate_minutes": int(ops.RATE_WINDOW.total_seconds() // 60),
        "workers": worker_views,
        "alive": sum(w.state == "alive" for w in worker_views),
        "running": ops.running_jobs(session),
        "failures": ops.recent_finished(session, [JobStatus.FAILED]),
        "finished": ops.recent_finished(session, sorted(jobstate.TERMINAL)),
    })


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job_id: str, request: Request, uow: AdminUoW) -> Response:
    if not _signed_in(request, uow):
        return _login_redirect()
    try:
        job = ops.get_job(uow.session, job_id)
    except NotFound:
        return _page(request, "missing", {"what": f"job {job_id}"}, 404)
    points = ops.metric_events(uow.session, job_id)
    last = points[-1] if points else {}
    return _page(request, "job", {
        "done": _entry(uow, request.query_params.get("done", ""), job_id),
        "actions": _job_actions(job),
        "job": job, "tenant": ops.get_tenant(uow.session, job.tenant_id),
        "chart": loss_chart(points), "last": last,
        "progress": 1.0 if job.status == JobStatus.SUCCEEDED
        else ops.progress(last.get("step", 0), last.get("total_steps")),
        "events": ops.recent_events(uow.session, job_id),
    })


# ----- actions: a confirmation page, then the change, audited -----------------------------

JOB_ACTIONS = {  # action -> (button, what it does)
    "cancel": ("Cancel the job", "stops it at its next step; nothing it trains after "
               "counts, no adapter is published"),
    "requeue": ("Put it back in the queue", "a failed job gets another attempt; a running "
                "or queued one goes back to the end of its tenant's queue"),
    "priority": ("Set the priority", "higher runs first among the tenant's queued jobs "
                 "(-100 to 100)"),
}
TENANT_ACTIONS = {
    "suspend": ("Suspend the tenant", "its keys stop working at once; its jobs stay as "
                "they are"),
    "unsuspend": ("Unsuspend the tenant", "its keys work again"),
}


def _entry(uow: AdminUoW, entry_id: str, target_id: str) -> AuditEntry | None:
    """The audit entry an action wrote (shown on the page it returns to), if it is one
    about this page's job or tenant."""
    found = uow.session.get(AuditEntry, entry_id) if entry_id else None
    return found if found is not None and found.target_id == target_id else None


def _show_done(uow: AdminUoW, page: str, target_id: str) -> RedirectResponse:
    """Back to the job's or tenant's page, naming the audit entry the action just wrote."""
    (entry,), _ = audit.page(uow.session, after=None, limit=1, target_id=target_id)
    return RedirectResponse(f"/ops/{page}/{target_id}?done={entry.id}", status_code=303)


def _job_actions(job: Any) -> list[str]:
    if job.status in jobstate.TERMINAL:
        return ["requeue"] if job.status == JobStatus.FAILED else []
    return ["cancel", "requeue", "priority"]


def _priority(raw: str | None) -> int | None:
    try:
        return int(raw) if raw not in (None, "") else None
    except ValueError:
        return None


@router.get("/jobs/{job_id}/{action}", response_class=HTMLResponse)
def confirm_job_action(job_id: str, action: str, request: Request, uow: AdminUoW) -> Response:
    if not _signed_in(request, uow):
        return _login_redirect()
    if action not in JOB_ACTIONS:
        return _page(request, "missing", {"what": f"action {action!r}"}, 404)
    try:
        job = ops.get_job(uow.session, job_id)
    except NotFound:
        return _page(request, "missing", {"what": f"job {job_id}"}, 404)
    return _confirm(request, "job", job.id, action, job=job,
                    priority=_priority(request.query_params.get("priority")))


@router.post("/jobs/{job_id}/{action}", response_class=HTMLResponse)
def do_job_action(job_id: str, action: str, request: Request, uow: AdminUoW,
                  priority: Annotated[str, Form(max_length=10)] = "") -> Response:
    actor = _operator(request, uow)
    if actor is None:
        return _login_redirect()
    if action not in JOB_ACTIONS:
        return _page(request, "missing", {"what": f"action {action!r}"}, 404)
    try:
        if action == "cancel":
            ops.cancel(uow.session, actor, job_id)
        elif action == "requeue":
            ops.requeue(uow.session, actor, job_id)
            uow.after_commit(wake_dispatcher)
        else:
            value = _priority(priority)
            if value is None:
                raise InvalidRequest("give the priority as a whole number, -100 to 100",
                                         param="priority")
            ops.set_priority(uow.session, actor, job_id, value)
    except NotFound:
        return _page(request, "missing", {"what": f"job {job_id}"}, 404)
    except LoramillError as exc:
        job = ops.get_job(uow.session, job_id)
        return _confirm(request, "job", job_id, action, job=job, error=exc.message,
                        priority=_priority(priority), status_code=exc.status_code)
    return _show_done(uow, "jobs", job_id)


@router.get("/tenants/{tenant_id}/{action}", response_class=HTMLResponse)
def confirm_tenant_action(tenant_id: str, action: str, request: Request,
                          uow: AdminUoW) -> Response:
    if not _signed_in(request, uow):
        return _login_redirect()
    if action not in TENANT_ACTIONS:
        return _page(request, "missing", {"what": f"action {action!r}"}, 404)
    try:
        tenant = ops.get_tenant(uow.session, tenant_id)
    except NotFound:
        return _page(request, "missing", {"what": f"tenant {tenant_id}"}, 404)
    return _confirm(request, "tenant", tenant.id, action, tenant=tenant)


@router.post("/tenants/{tenant_id}/{action}", response_class=HTMLResponse)
def do_tenant_action(tenant_id: str, action: str, request: Request,
                     uow: AdminUoW) -> Response:
    actor = _operator(request, uow)
    if actor is None:
        return _login_redirect()
    if action not in TENANT_ACTIONS:
        return _page(request, "missing", {"what": f"action {action!r}"}, 404)
    try:
        ops.set_suspended(uow.session, actor, tenant_id, action == "suspend")
    except NotFound:
        return _page(request, "missing", {"what": f"tenant {tenant_id}"}, 404)
    return _show_done(uow, "tenants", tenant_id)


def _confirm(request: Request, kind: str, target: str, action: str, *,
             error: str | None = None, status_code: int = 200, **context: Any) -> Response:
    button, effect = (JOB_ACTIONS if kind == "job" else TENANT_ACTIONS)[action]
    return _page(request, "confirm", {
        "kind": kind, "target": target, "action": action, "button": button,
        "effect": effect, "error": error, **context}, status_code)


# ----- finding things: jobs, tenants, the audit log, serving --------------------------------


@router.get("/jobs", response_class=HTMLResponse)
def jobs_search(request: Request, uow: AdminUoW) -> Response:
    if not _signed_in(request, uow):
        return _login_redirect()
    q = request.query_params
    job_id, tenant, status = (q.get("id", "").strip(), q.get("tenant", "").strip(),
                              q.get("status", "").strip())
    error, found = None, None
    try:
        found = ops.search_jobs(uow.session, job_id=job_id, tenant=tenant,
                                status=[s for s in status.split(",") if s] or None)
    except LoramillError as exc:
        error = exc.message
    if found and job_id and len(found.jobs) == 1:
        return RedirectResponse(f"/ops/jobs/{found.jobs[0].id}", status_code=303)
    return _page(request, "jobs", {"found": found, "error": error, "id": job_id,
                                   "tenant": tenant, "status": status,
                                   "statuses": jobstate.STATUSES},
                 400 if error else 200)


@router.get("/tenants", response_class=HTMLResponse)
def tenants(request: Request, uow: AdminUoW) -> Response:
    if not _signed_in(request, uow):
        return _login_redirect()
    items, more = ops.tenants_page(uow.session, after=request.query_params.get("after"),
                                   limit=100)
    return _page(request, "tenants", {"tenants": items, "more": more})


@router.get("/tenants/{tenant_id}", response_class=HTMLResponse)
def tenant_page(tenant_id: str, request: Request, uow: AdminUoW) -> Response:
    if not _signed_in(request, uow):
        return _login_redirect()
    try:
        view = ops.tenant_view(uow.session, tenant_id)
    except NotFound:
        return _page(request, "missing", {"what": f"tenant {tenant_id}"}, 404)
    return _page(request, "tenant", {
        "view": view, "done": _entry(uow, request.query_params.get("done", ""), tenant_id)})


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, uow: AdminUoW) -> Response:
    if not _signed_in(request, uow):
        return _login_redirect()
    target = request.query_params.get("target", "").strip() or None
    entries, more = audit.page(uow.session, after=request.query_params.get("after"),
                               limit=100, target_id=target)
    return _page(request, "audit", {"entries": entries, "more": more, "target": target})


@router.get("/serving", response_class=HTMLResponse)
def serving_page(request: Request, uow: AdminUoW) -> Response:
    if not _signed_in(request, uow):
        return _login_redirect()
    settings = get_settings()
    rows = []
    for model, urls in sorted(settings.serving_engines.items()):
        status = serving_engines.read_status(settings.redis_url, model) or {}
        rows.append({"model": model, "urls": [urls] if isinstance(urls, str) else urls,
                     "state": status.get("state", "unknown"),
                     "reason": status.get("reason", "")})
    return _page(request, "serving", {"engines": rows})


# ----- the loss curve as inline SVG ----------------------------------------------------

WIDTH, HEIGHT, PAD, LEFT = 640, 260, 40, 64  # LEFT: room for the loss labels


def loss_chart(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Polylines for training and validation loss against step, scaled to the SVG box."""
    series = {
        name: [(float(p["step"]), float(p[name])) for p in points
               if p.get(name) is not None and p.get("step") is not None]
        for name in ("train_loss", "valid_loss")
    }
    every = [pt for line in series.values() for pt in line]
    if not every:
        return {"empty": True, "width": WIDTH, "height": HEIGHT}
    x_lo, x_hi = min(x for x, _ in every), max(x for x, _ in every)
    y_lo, y_hi = min(y for _, y in every), max(y for _, y in every)
    x_span, y_span = (x_hi - x_lo) or 1.0, (y_hi - y_lo) or 1.0

    def place(x: float, y: float) -> str:
        px = LEFT + (x - x_lo) / x_span * (WIDTH - LEFT - PAD)
        py = HEIGHT - PAD - (y - y_lo) / y_span * (HEIGHT - 2 * PAD)
        return f"{px:.1f},{py:.1f}"

    return {
        "empty": False, "width": WIDTH, "height": HEIGHT, "pad": PAD, "left": LEFT,
        "lines": {name: " ".join(place(x, y) for x, y in line)
                  for name, line in series.items() if line},
        "counts": {name: len(line) for name, line in series.items()},
        "x": (int(x_lo), int(x_hi)), "y": (round(y_lo, 4), round(y_hi, 4)),
    }
