"""Dispatch benchmark (issue: jobs survive crashes; the queue is fair).

1. **Latency**: on the running local stack, create a job when the worker is idle and time
   creation → `running` (the claim, before the model loads); the job is then cancelled so
   the next one finds the worker free. p50/p99 over N jobs.
2. **Tick cost at scale**: in a scratch database on the same PostgreSQL, 100,000 queued
   jobs across 1,000 tenants and 50 free slots; time the dispatcher's tick (rolled back
   each time, so every tick sees the same queue) and record the plan of its main query.

    make up && .venv/bin/python bench/dispatch.py [--jobs 200] [--queued 100000]
Results: bench/results/dispatch.json and bench/results/dispatch_plan.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
HOME = Path(os.environ.get("LORAMILL_HOME", ROOT / ".loramill"))
RESULTS = ROOT / "bench" / "results"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def latency(jobs: int) -> dict[str, float]:
    from core.kit.settings import read_env_file

    env = read_env_file(HOME / "dev.env")
    client = httpx.Client(base_url=env["LORAMILL_API_URL"], timeout=60,
                          headers={"Authorization": f"Bearer {env['LORAMILL_API_KEY']}"})
    data = json.dumps({"prompt": "ping", "completion": "pong"}).encode() + b"\n"
    file_id = client.post("/v1/files", data={"purpose": "fine-tune"},
                          files={"file": ("p.jsonl", data)}).json()["id"]
    samples = []
    for i in range(jobs):
        t0 = time.perf_counter()
        job = client.post("/v1/fine_tuning/jobs", json={
            "model": "loramill/tiny-llama", "training_file": file_id}).json()
        while True:
            status = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"]
            if status != "queued":
                break
            time.sleep(0.005)
        samples.append(time.perf_counter() - t0)
        client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
        while client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "running":
            time.sleep(0.05)
        print(f"\r  latency {i + 1}/{jobs}: last {samples[-1] * 1000:.0f} ms", end="",
              flush=True)
    print()
    return {"jobs": jobs, "p50_ms": percentile(samples, 50) * 1000,
            "p99_ms": percentile(samples, 99) * 1000, "max_ms": max(samples) * 1000}


def tick_cost(queued: int, tenants: int) -> tuple[dict[str, float], str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import Session

    from core.kit import migrate
    from core.kit.db import normalize_url
    from core.kit.settings import load_settings
    from core.scheduling import repository as worker_repo
    from core.scheduling import service as scheduler

    settings = load_settings()
    base_url = settings.require_admin_database_url()  # creates a database: the admin role
    name = f"bench_dispatch_{uuid.uuid4().hex[:6]}"
    admin = create_engine(normalize_url(base_url.replace("/loramill?", "/postgres?")),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'create database "{name}"'))
    url = base_url.replace("/loramill?", f"/{name}?")
    try:
        migrate.upgrade(url)
        engine = create_engine(normalize_url(url))
        with engine.begin() as conn:
            conn.execute(text("""
                INSERT INTO tenants (id, name, max_running_jobs, max_queued_jobs,
                                     max_file_bytes, storage_bytes, created_at)
                SELECT 'tenant-' || lpad(i::text, 6, '0'), 'bench-' || i, 4, 1000000,
                       1 << 30, 1 << 40, now()
                FROM generate_series(1, :tenants) i"""), {"tenants": tenants})
            conn.execute(text("""
                INSERT INTO base_models (id, source_uri, architecture, params,
                                         context_length, gpu_class, enabled, created_at)
                VALUES ('bench/model', '/dev/null', 'LlamaForCausalLM', 1, 2048, 'gpu-80gb',
                        true, now())"""))
            conn.execute(text("""
                INSERT INTO files (id, tenant_id, filename, purpose, bytes, sha256,
                                   line_count, example_count, status, object_key, created_at)
                SELECT 'file-' || lpad(i::text, 6, '0'), 'tenant-' || lpad(i::text, 6, '0'),
                       'd.jsonl', 'fine-tune', 1, '', 1, 1, 'processed', 'k', now()
                FROM generate_series(1, :tenants) i"""), {"tenants": tenants})
            conn.execute(text("""
                INSERT INTO fine_tuning_jobs (id, tenant_id, model, training_file, method,
                    seed, status, priority, gpu_class, attempt, created_at, result_files)
                SELECT 'ftjob-' || lpad(g::text, 8, '0'), 'tenant-' || lpad(t::text, 6, '0'),
                       'bench/model', 'file-' || lpad(t::text, 6, '0'), '{}'::jsonb, 0,
                       'queued', (g % 3), 'gpu-80gb', 0,
                       now() - (g || ' milliseconds')::interval, '[]'::jsonb
                FROM generate_series(1, :queued) g, LATERAL (SELECT 1 + g % :tenants AS t) x
            """), {"queued": queued, "tenants": tenants})
            conn.execute(text("""
                INSERT INTO workers (id, hostname, gpu_class, capacity, started_at,
                                     last_heartbeat_at)
                VALUES ('bench-worker', 'bench', 'gpu-80gb', 50, now(), now())"""))
            conn.execute(text("ANALYZE"))
        timings = []
        for _ in range(30):
            with Session(engine) as session:
                t0 = time.perf_counter()
                picks = scheduler.dispatch_tick(session, settings)
                timings.append(time.perf_counter() - t0)
                session.rollback()
        assert len(picks) == 50, len(picks)
        with engine.connect() as conn:
            plan = "\n".join(row[0] for row in conn.execute(
                text("EXPLAIN (ANALYZE, BUFFERS) " + str(worker_repo.HEADS_SQL)),
                {"gpu_class": "gpu-80gb", "per_tenant": 50}))
        engine.dispose()
        return {"queued_jobs": queued, "tenants": tenants, "slots": 50,
                "tick_p50_ms": percentile(timings, 50) * 1000,
                "tick_p99_ms": percentile(timings, 99) * 1000}, plan
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'drop database if exists "{name}" with (force)'))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=1000)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    tick, plan = tick_cost(args.queued, args.tenants)
    print(f"tick with {args.queued:,} queued jobs / {args.tenants:,} tenants: "
          f"p50 {tick['tick_p50_ms']:.1f} ms, p99 {tick['tick_p99_ms']:.1f} ms")
    lat = latency(args.jobs)
    print(f"creation -> running over {lat['jobs']} jobs: p50 {lat['p50_ms']:.0f} ms, "
          f"p99 {lat['p99_ms']:.0f} ms")
    (RESULTS / "dispatch.json").write_text(json.dumps({"tick": tick, "latency": lat},
                                                      indent=2) + "\n")
    (RESULTS / "dispatch_plan.txt").write_text(plan + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
