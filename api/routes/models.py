from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import CurrentTenant, JobsWriter, UoW
from api.schemas.adapters import DownloadFile, DownloadObject
from api.schemas.common import ListPage, ts
from core.adapters import repository as adapter_repo
from core.adapters import service as adapter_service
from core.adapters.models import AdapterVersion
from core.base_models import repository as model_repo
from core.base_models.models import BaseModel as BaseModelRow
from core.kit.errors import InvalidRequest, NotFound
from core.kit.storage import get_storage
from core.lineage import service as lineage
from core.serving import service as serving

router = APIRouter(prefix="/v1/models", tags=["models"])


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # loramill extensions
    architecture: str | None = None
    context_length: int | None = None
    gpu_class: str | None = None
    renders_tools: bool | None = None  # its chat template renders tools and tool calls
    chat_template: bool | None = None  # it has one (chat and preference data need it)
    parent: str | None = None
    adapter: str | None = None
    adapter_version: int | None = None
    checkpoint_step: int | None = None  # a checkpoint model (ft:…:ckpt-step-N)
    fine_tuning_job_id: str | None = None

    @classmethod
    def of_fine_tuned(cls, v: AdapterVersion, model_id: str | None = None) -> ModelObject:
        """A fine-tuned model, or an ``adapter@alias`` (``model_id``) naming one."""
        return cls(id=model_id or v.fine_tuned_model, created=ts(v.created_at) or 0,
                   owned_by=v.tenant_id, parent=v.base_model,
                   adapter=v.manifest.get("adapter"), adapter_version=v.version,
                   fine_tuning_job_id=v.job_id)

    @classmethod
    def of_base(cls, m: BaseModelRow) -> ModelObject:
        return cls(
            id=m.id, created=ts(m.created_at) or 0, owned_by="loramill",
            architecture=m.architecture, context_length=m.context_length,
            gpu_class=m.gpu_class, renders_tools=m.renders_tools,
            chat_template=m.has_chat_template,
        )


@router.get("", response_model=ListPage[ModelObject])
def list_models(tenant_id: CurrentTenant, uow: UoW) -> ListPage[ModelObject]:
    """The enabled base models, the caller's aliases (``adapter@alias``), then its
    fine-tuned models (newest first)."""
    base = [ModelObject.of_base(m) for m in model_repo.list_enabled(uow.session)]
    aliases = [ModelObject.of_fine_tuned(v, f"{name}@{alias.name}")
               for name, alias, v in adapter_repo.all_aliases(uow.session, tenant_id)]
    tuned = [ModelObject.of_fine_tuned(v)
             for v in adapter_repo.fine_tuned_models(uow.session, tenant_id)]
    return ListPage.of(base + aliases + tuned, False)


@router.get("/{model_id:path}/download", response_model=DownloadObject)
def download_model(model_id: str, tenant_id: CurrentTenant, uow: UoW) -> DownloadObject:
    """Presigned downloads of the adapter behind a fine-tuned model (its version's files
    and manifest) or a checkpoint model (the checkpoint's adapter files), with sha256s."""
    found = lineage.source(uow.session, tenant_id, model_id)
    if found is None:
        if model_repo.get_enabled(uow.session, model_id) is not None:
            raise InvalidRequest(f"{model_id} is a base model; only fine-tuned and "
                                 "checkpoint models have adapters to download",
                                 param="model", code="not_an_adapter")
        raise NotFound(f"no model with id {model_id!r}", param="model")
    expires, files = adapter_service.download_urls(get_storage(), found.object_prefix,
                                                   found.files)
    return DownloadObject(
        adapter=found.version.manifest.get("adapter") if found.version else None,
        version=found.version.version if found.version else None, model=model_id,
        checkpoint_step=found.checkpoint.step if found.checkpoint else None,
        expires_at=expires, files=[DownloadFile.model_validate(f) for f in files])


@router.get("/{model_id:path}", response_model=ModelObject)
def get_model(model_id: str, tenant_id: CurrentTenant, uow: UoW) -> ModelObject:
    model = model_repo.get_enabled(uow.session, model_id)
    if model is not None:
        return ModelObject.of_base(model)
    found = lineage.source(uow.session, tenant_id, model_id)
    if found is None:
        raise NotFound(f"no model with id {model_id!r}", param="model")
    if found.version is not None:
        return ModelObject.of_fine_tuned(found.version, model_id)
    row = found.checkpoint
    assert row is not None
    return ModelObject(id=model_id, created=ts(row.created_at) or 0, owned_by=tenant_id,
                       parent=found.base_model, checkpoint_step=row.step,
                       fine_tuning_job_id=row.job_id)


class DeletedModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True


@router.delete("/{model_id:path}", response_model=DeletedModel)
def delete_model(model_id: str, tenant_id: JobsWriter, uow: UoW) -> DeletedModel:
    """Delete a fine-tuned model (OpenAI's semantics): it is no longer listed or callable.
    The adapter version behind it stays downloadable through /v1/adapters."""
    serving.delete_model(uow.session, tenant_id, model_id)
    return DeletedModel(id=model_id)
