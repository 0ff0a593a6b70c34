"""Serving's business rules: which model a tenant may call and what serves it, deleting a
fine-tuned model, and the usage each call adds to its tenant's account."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy.orm import Session

from core.adapters import repository as adapter_repo
from core.base_models import repository as model_repo
from core.kit.errors import InvalidRequest, NotFound, PermissionDenied
from core.kit.orm import utcnow
from core.lineage import service as lineage
from core.serving import repository
from core.serving.models import UsageDay
from core.tenants.scope import TenantId

log = logging.getLogger("loramill.serving")


@dataclass(frozen=True)
class Target:
    """What answers a request for ``model``: the base model's engine, with or without one
    of the tenant's adapters (a published version, its files and their sha256s)."""

    model: str  # the id the caller asked for, echoed in every answer
    base_model: str
    version_id: str | None = None  # the adapter's name at the engine
    object_prefix: str = ""
    files: list[dict[str, Any]] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return "fine_tuned" if self.version_id else "base"

    @property
    def engine_model(self) -> str:
        return self.version_id or self.base_model


def _not_found(model: str) -> NotFound:
    # OpenAI's words and code, so its clients recognise the error
    return NotFound(f"The model '{model}' does not exist or you do not have access to it.",
                    param="model", code="model_not_found")


def resolve(session: Session, tenant_id: TenantId, model: str) -> Target:
    """An enabled base model, or one of this tenant's fine-tuned or checkpoint models or
    ``adapter@alias`` names (another tenant's is not found: row-level security and the
    filters both say so)."""
    base = model_repo.get_enabled(session, model)
    if base is not None:
        return Target(model=model, base_model=base.id)
    found = lineage.source(session, tenant_id, model)
    if found is None or model_repo.get_enabled(session, found.base_model) is None:
        raise _not_found(model)
    if found.checkpoint is not None and not found.files:
        raise InvalidRequest(
            f"checkpoint model {model} was saved before checkpoints recorded their files' "
            "sha256s, so it cannot be checked and is not served; use the job's fine-tuned "
            "model", param="model", code="checkpoint_not_servable")
    row = found.version or found.checkpoint
    assert row is not None
    return Target(model=model, base_model=found.base_model, version_id=row.id,
                  object_prefix=found.object_prefix, files=list(found.files))


def delete_model(session: Session, tenant_id: TenantId, model: str) -> None:
    """OpenAI's ``DELETE /v1/models/{model}``: the fine-tuned model is no longer listed or
    callable. The adapter version it names stays (downloads, lineage); when it was
    deleted is kept on it."""
    if model_repo.get(session, model) is not None:
        raise PermissionDenied(f"{model} is a base model; only fine-tuned models can be "
                               "deleted", code="model_not_deletable")
    version = adapter_repo.by_fine_tuned_model(session, tenant_id, model, for_update=True)
    if version is None:
        raise _not_found(model)
    version.model_deleted_at = utcnow()
    log.info("fine-tuned model %s deleted (adapter version %s)", model, version.id)


def record_usage(session: Session, tenant_id: TenantId, model: str, *, prompt_tokens: int,
                 completion_tokens: int) -> None:
    repository.add(session, tenant_id, model, prompt_tokens=prompt_tokens,
                   completion_tokens=completion_tokens)


def usage(session: Session, tenant_id: TenantId, *, start: date | None, end: date | None,
          model: str | None) -> list[UsageDay]:
    return repository.days(session, tenant_id, start=start, end=end, model=model)
