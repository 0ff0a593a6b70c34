"""Multi-adapter serving through the gateway: many tenants' adapters on one base model.

Seeds ``--adapters`` (100) published adapter versions of one bench tenant on the tiny base
model (random LoRA weights, rank 16 on every linear layer: what a trained one weighs,
published the way the worker publishes: files under the adapter's prefix in the bucket,
sha256s in the version row), then drives the running stack's ``/v1/chat/completions``
with streamed requests (each generates exactly ``--tokens`` tokens), ``--concurrency``
(16) in flight, in two loads over the same number of requests:

  single   every request on one adapter (the baseline: no swapping at all)
  zipf     each request's adapter drawn Zipf(1.1) over all of them (a few hot, a long tail)

and measures, per run: throughput (generated tokens/s) of each and their ratio
(goal >= 0.8); time to first token p50/p99 under the Zipf load; the swap cost of an
adapter the engine holds (sequential requests, one on the baseline adapter, then one on one
of 8 other registered adapters, and so on: p50 of the second kind minus p50 of the first;
goal < 10 ms); and cold loads, as an adapter's first request minus its second: one never
served (fetched from the bucket, verified, registered: goal < 500 ms) and one pushed out
of the engine's registrations but still on the gateway's disk (goal < 150 ms), beside the
gateway's own measure of the same loads (loramill_adapter_load_seconds).
``--runs`` (3) runs; the medians are the result. Runs on a GPU machine the same way
(``make serve-install VLLM=vllm...``): it only talks to the API, the database and the bucket.

    make up && .venv/bin/python bench/serve.py [--adapters 100] [--runs 3]
Results are printed and written to bench/results/serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from core.kit.settings import load_settings, read_env_file

ROOT = Path(__file__).resolve().parent.parent
HOME = Path(os.environ.get("LORAMILL_HOME", ROOT / ".loramill"))
MODEL = "loramill/tiny-llama"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


# ----- seeding -----------------------------------------------------------------------------


def make_adapter_files(model_dir: Path, out: Path, seed: int) -> None:
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    model.save_pretrained(str(out), safe_serialization=True)


def seed_adapters(count: int, model_dir: Path, prefix: str) -> tuple[str, list[str]]:
    """The bench tenant (a new key) with ``count`` fine-tuned models named
    ``<prefix>-NNN`` (made if missing); their ids."""
    from sqlalchemy import select

    import core.tables  # noqa: F401  (every table, for the foreign keys)
    from core.adapters import repository as adapter_repo
    from core.adapters.models import AdapterVersion
    from core.files.models import File
    from core.jobs.models import FineTuningJob
    from core.kit import ids
    from core.kit.db import admin_scope
    from core.kit.storage import adapter_prefix, get_storage, sha256_of
    from core.tenants import repository as tenant_repo
    from core.tenants import service as tenant_service
    from core.tenants.scope import TenantId

    settings = load_settings()
    storage = get_storage()
    with admin_scope() as session:
        tenant = tenant_repo.get_by_name(session, "bench-serve") or \
            tenant_service.create_tenant(session, "bench-serve", settings)
        key = tenant_service.issue_key(session, tenant, name="bench").secret
        tenant_id = TenantId(tenant.id)
        existing = list(session.scalars(select(AdapterVersion.fine_tuned_model).where(
            AdapterVersion.tenant_id == tenant_id,
            AdapterVersion.fine_tuned_model.like(f"%:{prefix}-%")).order_by(
                AdapterVersion.fine_tuned_model)))
        if len(existing) >= count:
            return key, existing[:count]
        file_id = ids.new_id(ids.FILE)
        session.add(File(id=file_id, tenant_id=tenant_id, purpose="fine-tune",
                         filename="seed.jsonl", bytes=0, sha256="0" * 64,
                         object_key="none", status="processed", format="chat",
                         example_count=0, line_count=0))
        session.flush()
        models = list(existing)
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(len(existing), count):
                name = f"{prefix}-{i:03d}"
                files_dir = Path(tmp) / name
                make_adapter_files(model_dir, files_dir, seed=i)
                job_id = ids.new_id("ftjob")
                ft = f"ft:{MODEL}:{tenant_id}:{name}:{job_id}"
                session.add(FineTuningJob(
                    id=job_id, tenant_id=tenant_id, model=MODEL, training_file=file_id,
                    method={"type": "supervised"}, suffix=name, seed=i,
                    status="succeeded", fine_tuned_model=ft, result_files=[],
                    gpu_class="cpu"))
                session.flush()
                where = adapter_prefix(tenant_id, name, 1)
                files = []
                for path in sorted(files_dir.iterdir()):
                    storage.upload_file(path, where + path.name)
                    files.append({"name": path.name, "bytes": path.stat().st_size,
                                  "sha256": sha256_of(path)})
                adapter = adapter_repo.lock_or_create(session, tenant_id, name)
                session.add(AdapterVersion(
                    id=ids.new_id("adpv"), tenant_id=tenant_id, adapter_id=adapter.id,
                    version=1, job_id=job_id, base_model=MODEL, fine_tuned_model=ft,
                    object_prefix=where, files=files,
                    manifest={"adapter": name, "files": files}))
                models.append(ft)
        return key, sorted(models)


# ----- load ----------------------------------------------------------------------------------


async def one(client: httpx.AsyncClient, model: str, tokens: int) -> tuple[float, float, int]:
    """(time to first token, whole request, generated tokens) of one streamed request."""
    started = time.perf_counter()
    first = None
    generated = 0
    async with client.stream("POST", "/v1/chat/completions", json={
            "model": model, "messages": QUESTION, "max_tokens": tokens, "min_tokens": tokens,
            "ignore_eos": True, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"{model}: {response.status_code} {response.text[:300]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and first is None:
                first = time.perf_counter() - started
            if chunk.get("usage"):
                generated = chunk["usage"]["completion_tokens"]
    return first or 0.0, time.perf_counter() - started, generated


async def load(client: httpx.AsyncClient, models: list[str], concurrency: int,
               tokens: int) -> dict[str, float]:
    queue = list(models)
    ttfts: list[float] = []
    total = 0

    async def runner() -> None:
        nonlocal total
        while queue:
            ttft, _, generated = await one(client, queue.pop(), tokens)
            ttfts.append(ttft)
            total += generated

    started = time.perf_counter()
    await asyncio.gather(*(runner() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    ttfts.sort()
    return {"tokens_per_s": total / wall, "requests": len(models), "seconds": wall,
            "ttft_p50_ms": 1000 * ttfts[len(ttfts) // 2],
            "ttft_p99_ms": 1000 * ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.99))]}


async def seconds(client: httpx.AsyncClient, model: str, tokens: int) -> float:
    return (await one(client, model, tokens))[1]


async def first_minus_second(client: httpx.AsyncClient, models: list[str],
                             tokens: int) -> float:
    """The median extra time of an adapter's first request over its second (ms)."""
    extra = []
    for model in models:
        first = await seconds(client, model, tokens)
        extra.append(first - await seconds(client, model, tokens))
    return 1000 * statistics.median(extra)


def load_seconds(api: str) -> dict[str, tuple[float, float]]:
    """The gateway's own adapter-load histogram: source -> (sum of seconds, count)."""
    text = httpx.get(api + "/metrics", timeout=30).text
    found: dict[str, list[float]] = {}
    for line in text.splitlines():
        for part, index in (("_sum", 0), ("_count", 1)):
            if line.startswith(f"loramill_adapter_load_seconds{part}{{"):
                source = line.split('source="')[1].split('"')[0]
                found.setdefault(source, [0.0, 0.0])[index] = float(line.rsplit(" ", 1)[1])
    return {k: (v[0], v[1]) for k, v in found.items()}


def mean_ms(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]],
            source: str) -> float | None:
    total = after.get(source, (0.0, 0.0))[0] - before.get(source, (0.0, 0.0))[0]
    count = after.get(source, (0.0, 0.0))[1] - before.get(source, (0.0, 0.0))[1]
    return 1000 * total / count if count else None


def zipf_draws(n_models: int, n: int, rng: random.Random) -> list[int]:
    weights = [1 / (rank + 1) ** 1.1 for rank in range(n_models)]
    return rng.choices(range(n_models), weights=weights, k=n)


async def one_run(api: str, key: str, models: list[str], fresh: list[str],
                  args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(len(fresh))
    async with httpx.AsyncClient(base_url=api, timeout=300, headers={
            "Authorization": f"Bearer {key}"}, limits=httpx.Limits(max_connections=64)) as c:
        hot = models[0]
        await one(c, hot, args.tokens)  # the baseline adapter loaded

        # cold from the bucket: adapters this gateway never served (fresh ones every run)
        before = load_seconds(api)
        cold_storage = await first_minus_second(c, fresh, args.tokens)
        gateway_storage = mean_ms(before, load_seconds(api), "storage")

        single = await load(c, [hot] * args.requests, args.concurrency, args.tokens)
        draws = zipf_draws(len(models), args.requests, rng)
        zipf = await load(c, [models[i] for i in draws], args.concurrency, args.tokens)

        # swapping between adapters the engine holds, against staying on one: interleaved
        held = models[1:9]
        for m in held:
            await one(c, m, args.tokens)
        same, swapped = [], []
        for i in range(args.swaps):
            same.append(await seconds(c, hot, args.tokens))
            swapped.append(await seconds(c, held[i % len(held)], args.tokens))
        swap = 1000 * (statistics.median(swapped) - statistics.median(same))

        # cold from the gateway's disk: registered once, then pushed out of the engine by
        # more adapters than it keeps registered, asked again
        limit = load_settings().serving_max_loaded_adapters
        evicted = models[10:15]
        for m in evicted + models[20:20 + limit]:
            await one(c, m, args.tokens)
        before = load_seconds(api)
        cold_disk = await first_minus_second(c, evicted, args.tokens)
        gateway_disk = mean_ms(before, load_seconds(api), "disk")
    return {"single": single, "zipf": zipf,
            "ratio": zipf["tokens_per_s"] / single["tokens_per_s"],
            "request_ms": 1000 * statistics.median(same), "swap_ms": swap,
            "cold_storage_ms": cold_storage, "cold_disk_ms": cold_disk,
            "gateway_load_storage_ms": gateway_storage, "gateway_load_disk_ms": gateway_disk}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapters", type=int, default=100)
    parser.add_argument("--requests", type=int, default=192)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--swaps", type=int, default=24)
    args = parser.parse_args()
    env = read_env_file(HOME / "dev.env")
    settings = load_settings()
    model_dir = settings.models_dir / "tiny-llama"
    started = time.perf_counter()
    key, zipf_set = seed_adapters(args.adapters, model_dir, "bench")
    # adapters no gateway has served yet: new ones at every invocation
    key, fresh = seed_adapters(5 * args.runs, model_dir, f"cold{int(time.time())}")
    print(f"{len(zipf_set)} adapters, {len(fresh)} never served "
          f"(seeded in {time.perf_counter() - started:.0f}s)")
    runs = []
    for run in range(args.runs):
        # each run's cold adapters come after the Zipf set, never served before
        result = asyncio.run(one_run(env["LORAMILL_API_URL"], key, zipf_set,
                                     fresh[5 * run:5 * run + 5], args))
        runs.append(result)
        print(f"run {run + 1}: single {result['single']['tokens_per_s']:.0f} tok/s, zipf "
              f"{result['zipf']['tokens_per_s']:.0f} tok/s ({result['ratio']:.2f}x), "
              f"TTFT p50 {result['zipf']['ttft_p50_ms']:.0f} / p99 "
              f"{result['zipf']['ttft_p99_ms']:.0f} ms, swap {result['swap_ms']:+.1f} ms, "
              f"cold disk +{result['cold_disk_ms']:.0f} ms (gateway "
              f"{result['gateway_load_disk_ms'] or 0:.0f}), cold bucket "
              f"+{result['cold_storage_ms']:.0f} ms (gateway "
              f"{result['gateway_load_storage_ms'] or 0:.0f})", flush=True)

    def median(*path: str) -> float:
        values = []
        for r in runs:
            value: Any = r
            for part in path:
                value = value[part]
            if value is not None:
                values.append(float(value))
        return statistics.median(values) if values else float("nan")

    summary = {
        "adapters": args.adapters, "requests": args.requests, "concurrency": args.concurrency,
        "tokens_per_request": args.tokens, "runs": runs,
        "median": {
            "single_tokens_per_s": median("single", "tokens_per_s"),
            "zipf_tokens_per_s": median("zipf", "tokens_per_s"),
            "ratio": median("ratio"), "ttft_p50_ms": median("zipf", "ttft_p50_ms"),
            "ttft_p99_ms": median("zipf", "ttft_p99_ms"), "swap_ms": median("swap_ms"),
            "request_ms": median("request_ms"),
            "cold_disk_ms": median("cold_disk_ms"),
            "cold_storage_ms": median("cold_storage_ms"),
            "gateway_load_disk_ms": median("gateway_load_disk_ms"),
            "gateway_load_storage_ms": median("gateway_load_storage_ms")},
        "goals": {"ratio": ">= 0.8", "swap_ms": "< 10", "cold_disk_ms": "< 150",
                  "cold_storage_ms": "< 500"},
        "engine": settings.serving_engines,
    }
    print(json.dumps(summary["median"], indent=2))
    out = ROOT / "bench" / "results" / "serve.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
