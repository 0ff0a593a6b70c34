"""worker demand: the number an autoscaler reads

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 10:00:00

``loramill_worker_demand(gpu_class)``: the work that needs a training worker of that class
now — its queued and running jobs, and its adapter exports queued or running within the
hour an export stays recoverable (core/adapters/exports.py STALE; older ones wait to be
asked for again and need no worker). Jobs reach Redis only once a worker has a free slot,
so this, not the broker's queue length, is the demand signal: KEDA's PostgreSQL scaler
calls it (infra/helm/loramill), and the API's /metrics reports it.

SECURITY DEFINER, so the app role (held to row-level security, seeing no tenant's rows
without a tenant) gets the count across tenants and nothing else; EXECUTE is revoked from
PUBLIC and granted to the app role by ``loramill-server migrate`` (core/kit/migrate.py).
"""
from collections.abc import Sequence

from alembic import op

revision: str = '0017'
down_revision: str | None = '0016'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("""
        CREATE FUNCTION loramill_worker_demand(p_gpu_class text) RETURNS bigint
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
        AS $$
          SELECT (SELECT count(*) FROM public.fine_tuning_jobs j
                  WHERE j.gpu_class = p_gpu_class AND j.status IN ('queued', 'running'))
               + (SELECT count(*) FROM public.adapter_exports e
                  JOIN public.adapter_versions v ON v.id = e.version_id
                  JOIN public.base_models b ON b.id = v.base_model
                  WHERE b.gpu_class = p_gpu_class AND e.status IN ('queued', 'running')
                    AND coalesce(e.started_at, e.created_at) > now() - interval '1 hour')
        $$""")
    op.execute("REVOKE ALL ON FUNCTION loramill_worker_demand(text) FROM PUBLIC")


def downgrade() -> None:
    op.execute("DROP FUNCTION loramill_worker_demand(text)")
