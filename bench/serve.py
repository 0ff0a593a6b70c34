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
(goal >= 0.8), time to first token p50/p99, the swap cost of an adapter the engine holds
(sequential requests alternating over 8 registered adapters, p50 latency minus the
single-adapter p50; goal < 10 ms), and cold loads: the first request on an adapter never
served (fetched from the bucket, verified, registered: goal < 500 ms over a warm request)
and on one evicted from the engine but still on the gateway's disk (goal < 150 ms).
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
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    model.save_pretrained(str(out), safe_serialization=True)


def seed_adapters(count: int, model_dir: Path) -> tuple[str, list[str]]:
    """A bench tenant (key) with ``count`` fine-tuned models; their ids."""
    from sqlalchemy import select

    from core.adapters import repository as adapter_repo
    from core.adapters.models import AdapterVersion
    from core.adapters.service import sha256_of
    from core.files.models import File
    from core.jobs.models import FineTuningJob
    from core.kit import ids
    from core.kit.db import admin_scope
    from core.kit.storage import adapter_prefix, get_storage
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
            AdapterVersion.tenant_id == tenant_id).order_by(AdapterVersion.fine_tuned_model)))
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
                name = f"bench-{i:03d}"
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
                prefix = adapter_prefix(tenant_id, name, 1)
                files = []
                for path in sorted(files_dir.iterdir()):
                    storage.upload_file(path, prefix + path.name)
                    files.append({"name": path.name, "bytes": path.stat().st_size,
                                  "sha256": sha256_of(path)})
                adapter = adapter_repo.lock_or_create(session, tenant_id, name)
                session.add(AdapterVersion(
                    id=ids.new_id("adpv"), tenant_id=tenant_id, adapter_id=adapter.id,
                    version=1, job_id=job_id, base_model=MODEL, fine_tuned_model=ft,
                    object_prefix=prefix, files=files, aliases=[],
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


async def sequential_p50(client: httpx.AsyncClient, models: list[str], tokens: int) -> float:
    times = [(await one(client, m, tokens))[1] for m in models]
    return 1000 * statistics.median(times)


def zipf_draws(n_models: int, n: int, rng: random.Random) -> list[int]:
    weights = [1 / (rank + 1) ** 1.1 for rank in range(n_models)]
    return rng.choices(range(n_models), weights=weights, k=n)


async def one_run(api: str, key: str, models: list[str], args: argparse.Namespace,
                  run: int) -> dict[str, Any]:
    rng = random.Random(run)
    async with httpx.AsyncClient(base_url=api, timeout=300, headers={
            "Authorization": f"Bearer {key}"}, limits=httpx.Limits(max_connections=64)) as c:
        hot = models[0]
        await one(c, hot, args.tokens)  # the baseline adapter loaded
        warm = await sequential_p50(c, [hot] * 20, args.tokens)

        # cold from the bucket: adapters this gateway never served (a fresh set per run)
        fresh = models[len(models) - (run + 1) * 5: len(models) - run * 5]
        cold_storage = [1000 * (await one(c, m, args.tokens))[1] - warm for m in fresh]

        single = await load(c, [hot] * args.requests, args.concurrency, args.tokens)
        draws = zipf_draws(len(models), args.requests, rng)
        zipf = await load(c, [models[i] for i in draws], args.concurrency, args.tokens)

        # swap between adapters the engine holds
        held = models[:8]
        for m in held:
            await one(c, m, args.tokens)
        swap = await sequential_p50(c, held * 3, args.tokens) - warm

        # cold from the gateway's disk: registered once, evicted by more than the engine
        # holds, asked again
        limit = load_settings().serving_max_loaded_adapters
        evicted = models[10:15]
        for m in evicted + models[20:20 + limit]:
            await one(c, m, args.tokens)
        cold_disk = [1000 * (await one(c, m, args.tokens))[1] - warm for m in evicted]
    return {"single": single, "zipf": zipf, "ratio": zipf["tokens_per_s"]
            / single["tokens_per_s"], "warm_request_ms": warm, "swap_ms": swap,
            "cold_storage_ms": statistics.median(cold_storage),
            "cold_disk_ms": statistics.median(cold_disk)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapters", type=int, default=100)
    parser.add_argument("--requests", type=int, default=192)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    env = read_env_file(HOME / "dev.env")
    settings = load_settings()
    model_dir = settings.models_dir / "tiny-llama"
    started = time.perf_counter()
    key, models = seed_adapters(args.adapters + 5 * args.runs, model_dir)
    print(f"seeded {len(models)} adapters in {time.perf_counter() - started:.0f}s")
    zipf_set, fresh = models[:args.adapters], models[args.adapters:]
    runs = []
    for run in range(args.runs):
        # each run's cold adapters come after the Zipf set, never served before
        result = asyncio.run(one_run(env["LORAMILL_API_URL"], key, zipf_set + fresh,
                                     args, run))
        runs.append(result)
        print(f"run {run + 1}: single {result['single']['tokens_per_s']:.0f} tok/s, zipf "
              f"{result['zipf']['tokens_per_s']:.0f} tok/s ({result['ratio']:.2f}x), "
              f"TTFT p50 {result['zipf']['ttft_p50_ms']:.0f} / p99 "
              f"{result['zipf']['ttft_p99_ms']:.0f} ms, swap {result['swap_ms']:+.1f} ms, "
              f"cold disk {result['cold_disk_ms']:.0f} ms, cold bucket "
              f"{result['cold_storage_ms']:.0f} ms", flush=True)

    def median(*path: str) -> float:
        values = []
        for r in runs:
            value: Any = r
            for part in path:
                value = value[part]
            values.append(float(value))
        return statistics.median(values)

    summary = {
        "adapters": args.adapters, "requests": args.requests, "concurrency": args.concurrency,
        "tokens_per_request": args.tokens, "runs": runs,
        "median": {
            "single_tokens_per_s": median("single", "tokens_per_s"),
            "zipf_tokens_per_s": median("zipf", "tokens_per_s"),
            "ratio": median("ratio"), "ttft_p50_ms": median("zipf", "ttft_p50_ms"),
            "ttft_p99_ms": median("zipf", "ttft_p99_ms"), "swap_ms": median("swap_ms"),
            "warm_request_ms": median("warm_request_ms"),
            "cold_disk_ms": median("cold_disk_ms"),
            "cold_storage_ms": median("cold_storage_ms")},
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
