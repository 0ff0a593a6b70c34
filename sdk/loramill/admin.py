"""``Client(...).admin``: the operators' endpoints under /v1/admin (admin keys only)."""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from typing import Any

from loramill._http import Transport
from loramill.types import ApiKey, AuditEntry, FineTuningJob, QueueSummary, Tenant, Worker

QUOTAS = ("max_running_jobs", "max_queued_jobs", "max_file_bytes", "storage_bytes")


def _quotas(given: dict[str, int | None]) -> dict[str, int]:
    unknown = sorted(set(given) - set(QUOTAS))
    if unknown:
        raise TypeError(f"unknown quota {', '.join(unknown)}; one of {', '.join(QUOTAS)}")
    return {k: v for k, v in given.items() if v is not None}


class Admin:
    def __init__(self, t: Transport):
        self._t = t

    # the queue and workers
    def queue(self) -> QueueSummary:
        return QueueSummary.of(self._t.request("GET", "/v1/admin/queue"))

    def workers(self) -> builtins.list[Worker]:
        return [Worker.of(d) for d in self._t.request("GET", "/v1/admin/workers")["data"]]

    # jobs of every tenant
    def jobs(self, *, status: str | builtins.list[str] | None = None,
             tenant_id: str | None = None, older_than_seconds: int | None = None,
             page_size: int = 100) -> Iterator[FineTuningJob]:
        params: dict[str, Any] = {"limit": page_size}
        if status:
            params["status"] = status if isinstance(status, str) else ",".join(status)
        if tenant_id:
            params["tenant_id"] = tenant_id
        if older_than_seconds is not None:
            params["older_than_seconds"] = older_than_seconds
        return (FineTuningJob.of(d) for d in self._t.pages("/v1/admin/jobs", params))

    def job(self, job_id: str) -> FineTuningJob:
        return FineTuningJob.of(self._t.request("GET", f"/v1/admin/jobs/{job_id}"))

    def requeue(self, job_id: str) -> FineTuningJob:
        return FineTuningJob.of(self._t.request("POST", f"/v1/admin/jobs/{job_id}/requeue"))

    def cancel(self, job_id: str) -> FineTuningJob:
        return FineTuningJob.of(self._t.request("POST", f"/v1/admin/jobs/{job_id}/cancel"))

    def set_priority(self, job_id: str, priority: int) -> FineTuningJob:
        return FineTuningJob.of(self._t.request(
            "POST", f"/v1/admin/jobs/{job_id}/priority", json={"priority": priority}))

    # tenants and their keys
    def tenants(self, *, page_size: int = 100) -> Iterator[Tenant]:
        return (Tenant.of(d) for d in self._t.pages("/v1/admin/tenants", {"limit": page_size}))

    def tenant(self, tenant_id: str) -> Tenant:
        return Tenant.of(self._t.request("GET", f"/v1/admin/tenants/{tenant_id}"))

    def create_tenant(self, name: str, **quotas: int | None) -> Tenant:
        body: dict[str, Any] = {"name": name}
        if given := _quotas(quotas):
            body["quotas"] = given
        return Tenant.of(self._t.request("POST", "/v1/admin/tenants", json=body))

    def set_quotas(self, tenant_id: str, **quotas: int | None) -> Tenant:
        return Tenant.of(self._t.request("POST", f"/v1/admin/tenants/{tenant_id}/quotas",
                                         json=_quotas(quotas)))

    def suspend(self, tenant_id: str) -> Tenant:
        return Tenant.of(self._t.request("POST", f"/v1/admin/tenants/{tenant_id}/suspend"))

    def unsuspend(self, tenant_id: str) -> Tenant:
        return Tenant.of(self._t.request("POST", f"/v1/admin/tenants/{tenant_id}/unsuspend"))

    def keys(self, tenant_id: str) -> builtins.list[ApiKey]:
        page = self._t.request("GET", f"/v1/admin/tenants/{tenant_id}/api_keys")
        return [ApiKey.of(d) for d in page["data"]]

    def create_key(self, tenant_id: str, *, name: str = "",
                   scopes: builtins.list[str] | None = None) -> ApiKey:
        """A new key of the tenant; its ``secret`` is in this result only."""
        body: dict[str, Any] = {"name": name}
        if scopes is not None:
            body["scopes"] = scopes
        return ApiKey.of(self._t.request("POST", f"/v1/admin/tenants/{tenant_id}/api_keys",
                                         json=body))

    def revoke_key(self, tenant_id: str, key_id: str) -> ApiKey:
        return ApiKey.of(self._t.request(
            "DELETE", f"/v1/admin/tenants/{tenant_id}/api_keys/{key_id}"))

    # what operators did
    def audit_log(self, *, target_id: str | None = None,
                  page_size: int = 100) -> Iterator[AuditEntry]:
        params: dict[str, Any] = {"limit": page_size}
        if target_id:
            params["target_id"] = target_id
        return (AuditEntry.of(d) for d in self._t.pages("/v1/admin/audit_log", params))
