from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.base_models.models import BaseModel


def get(session: Session, model_id: str) -> BaseModel | None:
    return session.get(BaseModel, model_id)


def get_enabled(session: Session, model_id: str) -> BaseModel | None:
    return session.scalars(
        select(BaseModel).where(BaseModel.id == model_id, BaseModel.enabled.is_(True))
    ).one_or_none()


def list_enabled(session: Session) -> list[BaseModel]:
    return list(session.scalars(
        select(BaseModel).where(BaseModel.enabled.is_(True)).order_by(BaseModel.id)
    ))


def upsert(session: Session, model: BaseModel) -> BaseModel:
    merged = session.merge(model)
    session.flush()
    return merged
