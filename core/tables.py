"""Every domain's tables, on one metadata: what Alembic compares the migrations with
(migrations/env.py). Importing this registers all of them."""

from core.adapters.models import Adapter, AdapterAlias, AdapterExport, AdapterVersion
from core.audit.models import AuditEntry
from core.base_models.models import BaseModel
from core.checkpoints.models import JobCheckpoint
from core.files.models import File
from core.idempotency.models import IdempotencyKey
from core.jobs.models import FineTuningJob, JobEvent
from core.kit.orm import Base
from core.scheduling.models import Worker
from core.serving.models import UsageDay
from core.tenants.models import ApiKey, Tenant
from core.webhooks.models import WebhookDelivery, WebhookEndpoint

__all__ = [
    "Adapter", "AdapterAlias", "AdapterExport", "AdapterVersion", "ApiKey", "AuditEntry",
    "Base", "BaseModel", "File", "FineTuningJob", "IdempotencyKey", "JobCheckpoint",
    "JobEvent", "Tenant", "UsageDay", "WebhookDelivery", "WebhookEndpoint", "Worker",
]
