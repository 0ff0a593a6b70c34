"""The operators' dashboard at /ops: server-rendered pages over the same services as
/v1/admin, refreshed in place by a few lines of JS. Sign-in takes an admin key and keeps
it in an HttpOnly, SameSite=Strict cookie scoped to /ops; the pages only read."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from api.deps import AdminUoW, principal_for
from core.jobs import state as jobstate
from core.jobs.state import JobStatus
from core.kit.errors import AuthenticationFailed, NotFound
from core.kit.orm import utcnow
from core.kit.settings import get_settings
from core.ops import service as ops
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


def _signed_in(request: Request, uow: AdminUoW) -> bool:
    token = request.cookies.get(COOKIE, "")
    if not keys.is_well_formed(token):
        return False
    try:
        return principal_for(uow.session, token).is_admin
    except AuthenticationFailed:
        return False


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
        return _page(request, "missing", {"job_id": job_id}, 404)
    points = ops.metric_events(uow.session, job_id)
    last = points[-1] if points else {}
    return _page(request, "job", {
        "job": job, "tenant": ops.get_tenant(uow.session, job.tenant_id),
        "chart": loss_chart(points), "last": last,
        "progress": 1.0 if job.status == JobStatus.SUCCEEDED
        else ops.progress(last.get("step", 0), last.get("total_steps")),
        "events": ops.recent_events(uow.session, job_id),
    })


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
