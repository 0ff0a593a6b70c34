"""One tenant cannot hurt another (hardening issue): tenant A runs 200 concurrent clients,
creating jobs and listing them as fast as they can, for 30 s, while tenant B polls its job
list once a second. The baseline, in the same run, is B polling with nobody else on the
API. Reported: A's answers by status (no 5xx; 429s once A is past its limits), and B's
latency, alone and under A's load (aim: p99 < 250 ms, no error).

    make up && .venv/bin/python bench/api_load.py [--clients 200] [--seconds 30] [--runs 3]
Results are printed and written to bench/results/api_load.json.

A runs in a process of its own (asyncio + httpx), so measuring B does not compete with it
for the interpreter; on a 2-core machine the client, the API, PostgreSQL and Redis share
the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx

from core.kit.settings import read_env_file

ROOT = Path(__file__).resolve().parent.parent
HOME = Path(os.environ.get("LORAMILL_HOME", ROOT / ".loramill"))
CHAT = {"messages": [{"role": "user", "content": "What is the capital of France?"},
                     {"role": "assistant", "content": "Paris."}]}


def new_tenant(api: str, admin_key: str, prefix: str) -> str:
    """A fresh tenant and its key, through the admin API."""
    admin = {"Authorization": f"Bearer {admin_key}"}
    tenant = httpx.post(f"{api}/v1/admin/tenants", headers=admin, timeout=30,
                        json={"name": f"{prefix}-{uuid.uuid4().hex[:8]}"}).json()
    key = httpx.post(f"{api}/v1/admin/tenants/{tenant['id']}/api_keys", headers=admin,
                     json={"name": "bench"}, timeout=30).json()
    secret: str = key["secret"]
    return secret


def upload(api: str, key: str) -> str:
    data = (json.dumps(CHAT) + "\n").encode() * 3
    response = httpx.post(f"{api}/v1/files", headers={"Authorization": f"Bearer {key}"},
                          data={"purpose": "fine-tune"}, files={"file": ("a.jsonl", data)},
                          timeout=30)
    response.raise_for_status()
    file_id: str = response.json()["id"]
    return file_id


async def _hammer(api: str, key: str, file_id: str, clients: int,
                  seconds: float) -> dict[str, int]:
    counts: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=api, limits=limits, timeout=60,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        async def one(i: int) -> None:
            while time.monotonic() < deadline:
                try:
                    if i % 2:
                        response = await client.get("/v1/fine_tuning/jobs",
                                                    params={"limit": 5})
                    else:
                        response = await client.post("/v1/fine_tuning/jobs", json={
                            "model": "loramill/tiny-llama", "training_file": file_id})
                    code = str(response.status_code)
                    if response.status_code == 429:
                        code += " " + response.json()["error"]["code"]
                    counts[code] += 1
                except httpx.HTTPError as exc:
                    counts[type(exc).__name__] += 1

        await asyncio.gather(*(one(i) for i in range(clients)))
    return dict(counts)


def hammer(api: str, key: str, file_id: str, clients: int, seconds: float,
           out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    out.put(asyncio.run(_hammer(api, key, file_id, clients, seconds)))


def poll(api: str, key: str, seconds: float) -> tuple[list[float], Counter[str]]:
    """B: one request a second; latencies in ms and statuses (or transport errors)."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    with httpx.Client(base_url=api, timeout=30,
                      headers={"Authorization": f"Bearer {key}"}) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            try:
                response = client.get("/v1/fine_tuning/jobs", params={"limit": 10})
                statuses[str(response.status_code)] += 1
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1
            latencies.append((time.perf_counter() - started) * 1000)
            time.sleep(max(0.0, 1.0 - (time.perf_counter() - started)))
    return latencies, statuses


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 1)

    return {"n": len(ordered), "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "max_ms": round(ordered[-1], 1)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    env = read_env_file(HOME / "dev.env")
    api, admin_key = env["LORAMILL_API_URL"], env["LORAMILL_ADMIN_KEY"]
    runs = []
    for run in range(1, args.runs + 1):
        a_key, b_key = new_tenant(api, admin_key, "load-a"), new_tenant(api, admin_key, "b")
        file_id = upload(api, a_key)
        upload(api, b_key)
        alone, alone_status = poll(api, b_key, 10)  # the baseline: B with the API to itself
        results: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
        load = multiprocessing.Process(target=hammer, args=(api, a_key, file_id, args.clients,
                                                            args.seconds, results))
        load.start()
        time.sleep(1)  # A's clients are connected and busy
        loaded, loaded_status = poll(api, b_key, args.seconds - 2)
        a_counts = results.get(timeout=args.seconds + 120)
        load.join(timeout=30)
        server_errors = sum(n for code, n in a_counts.items() if code.startswith("5"))
        entry = {
            "run": run, "a": a_counts, "a_requests": sum(a_counts.values()),
            "a_server_errors": server_errors,
            "b_alone": summary(alone), "b_under_load": summary(loaded),
            "b_errors": sum(n for code, n in (alone_status + loaded_status).items()
                            if code != "200"),
        }
        runs.append(entry)
        print(json.dumps(entry))
    p99s = [r["b_under_load"]["p99_ms"] for r in runs]
    result = {
        "clients": args.clients, "seconds": args.seconds, "runs": runs,
        "b_p99_under_load_ms_median": statistics.median(p99s),
        "b_p99_alone_ms_median": statistics.median(r["b_alone"]["p99_ms"] for r in runs),
        "a_server_errors_total": sum(r["a_server_errors"] for r in runs),
        "cpu_count": os.cpu_count(),
    }
    out = ROOT / "bench" / "results" / "api_load.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
