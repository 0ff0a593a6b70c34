"""ORM models, one file per table. Importing this package registers all of them."""

from core.models.adapter import Adapter, AdapterVersion
from core.models.api_key import ApiKey
from core.models.audit import AuditEntry
from core.models.base import Base
from core.models.base_model import BaseModel
from core.models.checkpoint import JobCheckpoint
from core.models.file import File
from core.models.idempotency_key import IdempotencyKey
from core.models.job import FineTuningJob
from core.models.job_event import JobEvent
from core.models.tenant import Tenant
from core.models.worker import Worker

__all__ = [
    "Adapter", "AdapterVersion", "ApiKey", "AuditEntry", "Base", "BaseModel", "File",
    "FineTuningJob", "IdempotencyKey", "JobCheckpoint", "JobEvent", "Tenant", "Worker",
]
