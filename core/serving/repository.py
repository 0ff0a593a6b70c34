from __future__ import annotations

from datetime import date

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from core.serving.models import UsageDay
from core.tenants.scope import TenantId


def add(session: Session, tenant_id: TenantId, model: str, *, prompt_tokens: int,
        completion_tokens: int) -> None:
    """One request's tokens, added to today's row (created by the first request)."""
    stmt = insert(UsageDay).values(
        tenant_id=tenant_id, day=func.current_date(), model=model, requests=1,
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    session.execute(stmt.on_conflict_do_update(
        index_elements=["tenant_id", "day", "model"],
        set_={"requests": UsageDay.requests + 1,
              "prompt_tokens": UsageDay.prompt_tokens + stmt.excluded.prompt_tokens,
              "completion_tokens": UsageDay.completion_tokens
              + stmt.excluded.completion_tokens}))


def days(session: Session, tenant_id: TenantId, *, start: date | None, end: date | None,
         model: str | None) -> list[UsageDay]:
    stmt = select(UsageDay).where(UsageDay.tenant_id == tenant_id)
    if start is not None:
        stmt = stmt.where(UsageDay.day >= start)
    if end is not None:
        stmt = stmt.where(UsageDay.day <= end)
    if model is not None:
        stmt = stmt.where(UsageDay.model == model)
    return list(session.scalars(stmt.order_by(UsageDay.day, UsageDay.model)))
