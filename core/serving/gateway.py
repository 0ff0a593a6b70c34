"""The inference gateway: a resolved request (core.serving.service.Target) goes to its base
model's engine, with the tenant's adapter fetched, verified and registered first; the
engine's answer comes back with the caller's model id in it, and its tokens are added
to the tenant's usage.

Streaming answers are relayed chunk by chunk (server-sent events). The engine is always
asked for usage on every chunk (vLLM's ``continuous_usage_stats``), so a stream the
client drops half-way still counts what was generated; the caller sees usage only where
OpenAI shows it (the last chunk, when ``stream_options.include_usage`` is set).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx

from core.kit import metrics
from core.kit.db import tenant_scope
from core.kit.errors import InvalidRequest, LoramillError, Unprocessable
from core.kit.settings import Settings
from core.kit.storage import Storage
from core.serving import service
from core.serving.cache import AdapterCache
from core.serving.engines import (
    Engine,
    EngineError,
    Engines,
    EngineUnavailable,
    engine_message,
)
from core.serving.service import Target
from core.tenants.scope import TenantId

log = logging.getLogger("loramill.serving")

PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
# what vLLM adds to OpenAI's objects; dropped when empty, so answers look like OpenAI's
ENGINE_EXTRAS = ("prompt_logprobs", "prompt_token_ids", "prompt_text", "kv_transfer_params",
                 "ec_transfer_params", "metrics", "token_ids", "routed_experts",
                 "stop_reason", "reasoning")


def _tidy(obj: dict[str, Any], model: str) -> dict[str, Any]:
    """The engine's answer or chunk, naming the caller's model, without vLLM's empty
    extensions."""
    obj["model"] = model
    for holder in (obj, *(obj.get("choices") or ())):
        for part in (holder, holder.get("message"), holder.get("delta")):
            if isinstance(part, dict):
                for key in ENGINE_EXTRAS:
                    if key in part and part[key] is None:
                        del part[key]
    return obj


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def take(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)


class Gateway:
    def __init__(self, settings: Settings, storage_factory: Any):
        self.settings = settings
        self.engines = Engines(settings)
        self.cache = AdapterCache(settings.adapter_cache_dir, settings.serving_cache_bytes)
        self._storage_factory = storage_factory  # called lazily: no S3 client until needed

    def storage(self) -> Storage:
        storage: Storage = self._storage_factory()
        return storage

    async def aclose(self) -> None:
        await self.engines.aclose()

    # ----- the adapter ---------------------------------------------------------------------

    async def _prepare(self, engine: Engine, target: Target) -> None:
        """The target's adapter on local disk (verified) and registered with the engine."""
        if target.version_id is None:
            return
        started = time.perf_counter()
        cached = await anyio.to_thread.run_sync(
            self.cache.get, self.storage(), target.version_id, target.object_prefix,
            target.files)
        metrics.ADAPTER_CACHE.labels("hit" if cached.hit else "miss").inc()
        if not engine.registered(target.version_id):  # once, not on every request
            self._check_rank(target, cached.path)
        if await engine.ensure_loaded(target.version_id, str(cached.path)):
            source = "disk" if cached.hit else "storage"
            metrics.ADAPTER_LOADS.labels(source).inc()
            metrics.ADAPTER_LOAD_SECONDS.labels(source).observe(time.perf_counter() - started)

    def _check_rank(self, target: Target, path: Path) -> None:
        """An adapter of a higher rank than the engines serve (their --max-lora-rank) is
        the caller's model's limit, said as such, not an engine failure."""
        try:
            config = json.loads((path / "adapter_config.json").read_text())
            ranks = [int(config.get("r") or 0),
                     *(int(r) for r in (config.get("rank_pattern") or {}).values())]
        except (OSError, ValueError, TypeError, AttributeError):
            return  # the engine will say what is wrong with it
        limit = self.settings.serving_max_lora_rank
        if max(ranks) > limit:
            raise Unprocessable(
                f"{target.model} has LoRA rank {max(ranks)}; the engines serve ranks up to "
                f"{limit}. Train with lora.r <= {limit}, or ask the operators to raise "
                "LORAMILL_SERVING_MAX_LORA_RANK (and the engines' --max-lora-rank)",
                param="model", code="adapter_not_servable")

    async def _send(self, target: Target, path: str, payload: dict[str, Any],
                    stack: AsyncExitStack | None) -> httpx.Response:
        """One request to the target's engine: its adapter's home replica, else the next
        one that answers."""
        replicas = self.engines.for_base(target.base_model, target.version_id)
        for engine in replicas:
            try:
                return await self._send_to(engine, target, path, payload, stack)
            except EngineUnavailable as exc:
                if engine is replicas[-1]:
                    raise
                log.warning("engine replica %s unavailable (%s); trying the next one",
                            engine.url, exc.message)
        raise AssertionError("unreachable")

    async def _send_to(self, engine: Engine, target: Target, path: str,
                       payload: dict[str, Any], stack: AsyncExitStack | None,
                       ) -> httpx.Response:
        """One request to one engine; if it no longer knows the adapter (it restarted),
        register it again and retry once."""
        for attempt in (1, 2):
            await self._prepare(engine, target)
            if stack is None:
                response = await engine.post(path, payload)
            else:
                response = await stack.enter_async_context(engine.stream(path, payload))
            if response.status_code == 404 and target.version_id and attempt == 1:
                await response.aread()
                log.info("engine %s forgot adapter %s (restarted?); loading it again",
                         engine.url, target.version_id)
                engine.forget(target.version_id)
                continue
            if response.status_code >= 400:
                await response.aread()
                raise _engine_refusal(response)
            return response
        raise AssertionError("unreachable")

    # ----- requests ------------------------------------------------------------------------

    async def complete(self, endpoint: str, tenant_id: TenantId, target: Target,
                       body: dict[str, Any]) -> dict[str, Any]:
        """A whole answer (``stream`` false)."""
        payload = {**body, "model": target.engine_model}
        started = time.perf_counter()
        status = "error"
        try:
            response = await self._send(target, PATHS[endpoint], payload, None)
            answer = _tidy(response.json(), target.model)
            usage = Usage()
            usage.take(answer.get("usage"))
            await self._record(tenant_id, target, usage)
            elapsed = time.perf_counter() - started
            if usage.completion_tokens and elapsed > 0:
                metrics.INFERENCE_TOKENS_PER_SECOND.labels(target.kind).observe(
                    usage.completion_tokens / elapsed)
            status = "ok"
            return answer
        finally:
            metrics.INFERENCE_REQUESTS.labels(endpoint, target.kind, status).inc()

    async def open_stream(self, endpoint: str, tenant_id: TenantId, target: Target,
                          body: dict[str, Any]) -> AsyncIterator[bytes]:
        """The engine's stream, opened (so a refusal is an HTTP error, not a broken
        stream), as server-sent events for the caller."""
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise InvalidRequest("stream_options must be an object", param="stream_options")
        wants_usage = bool(options.get("include_usage"))
        payload = {**body, "model": target.engine_model, "stream_options": {
            **options, "include_usage": True, "continuous_usage_stats": True}}
        stack = AsyncExitStack()
        started = time.perf_counter()
        try:
            response = await self._send(target, PATHS[endpoint], payload, stack)
        except BaseException:
            await stack.aclose()
            metrics.INFERENCE_REQUESTS.labels(endpoint, target.kind, "error").inc()
            raise
        return self._relay(endpoint, tenant_id, target, response, stack, started, wants_usage)

    async def _relay(self, endpoint: str, tenant_id: TenantId, target: Target,
                     response: httpx.Response, stack: AsyncExitStack, started: float,
                     wants_usage: bool) -> AsyncIterator[bytes]:
        usage = Usage()
        first: float | None = None
        status = "error"
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    yield b"data: [DONE]\n\n"
                    continue
                chunk = json.loads(data)
                if "error" in chunk and "choices" not in chunk:
                    yield f"data: {json.dumps(chunk)}\n\n".encode()
                    continue
                usage.take(chunk.get("usage"))
                _tidy(chunk, target.model)
                if chunk.get("choices"):
                    if first is None:
                        first = time.perf_counter()
                        metrics.INFERENCE_TTFT.labels(target.kind).observe(first - started)
                    chunk.pop("usage", None)
                elif not wants_usage:
                    continue  # the usage-only chunk, which the caller did not ask for
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            status = "ok"
        except httpx.TransportError as exc:
            log.warning("engine stream for %s broke: %s", target.model, exc)
            error = {"error": {"message": "the serving engine stopped answering mid-stream",
                               "type": "server_error", "param": None,
                               "code": "engine_unavailable"}}
            yield f"data: {json.dumps(error)}\n\n".encode()
        finally:
            metrics.INFERENCE_REQUESTS.labels(endpoint, target.kind, status).inc()
            if first is not None and usage.completion_tokens > 1:
                decode = time.perf_counter() - first
                if decode > 0:
                    metrics.INFERENCE_TOKENS_PER_SECOND.labels(target.kind).observe(
                        (usage.completion_tokens - 1) / decode)
            # a client that went away cancels us: the engine's stream is still closed (it
            # stops generating) and what was generated is still counted
            with anyio.CancelScope(shield=True):
                await stack.aclose()
                await self._record(tenant_id, target, usage)

    async def _record(self, tenant_id: TenantId, target: Target, usage: Usage) -> None:
        def write() -> None:
            with tenant_scope(tenant_id) as session:
                service.record_usage(session, tenant_id, target.model,
                                     prompt_tokens=usage.prompt_tokens,
                                     completion_tokens=usage.completion_tokens)
        try:
            await anyio.to_thread.run_sync(write)
        except Exception:
            log.exception("usage of a %s request could not be recorded", target.model)


def _engine_refusal(response: httpx.Response) -> LoramillError:
    message = engine_message(response)
    if response.status_code < 500:
        return InvalidRequest(message or f"the engine refused the request "
                              f"({response.status_code})", code="invalid_request")
    return EngineError(f"the serving engine failed: {message}")
