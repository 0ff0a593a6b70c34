"""The engines behind the gateway: vLLM OpenAI-compatible servers, one or more replicas
per base model (settings.serving_engines), and the adapters this gateway has registered
with each. An adapter is sent to its home replica (rendezvous hashing on its id), so it
is registered on one replica only; when that replica does not answer, the next one in
its order takes the request.

Adapters are registered at run time (``POST /v1/load_lora_adapter``, the engine started
with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``) under their version id, from the gateway's
verified local copy. At most ``serving_max_loaded_adapters`` are registered per engine;
the least recently used is unregistered to make room. An engine that restarted has
forgotten its adapters: it answers 404 for one, and the gateway registers it again and
retries once, so a restart is recovered on demand.

Whoever supervises an engine (the local stack) records its state in Redis; when an engine
does not answer, the gateway's 503 says why (still starting, or could not start and the
reason) instead of only "not reachable".
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import httpx
import redis

from core.kit.errors import LoramillError, ServiceUnavailable, Unprocessable
from core.kit.settings import Settings

log = logging.getLogger("loramill.serving")
STATUS_KEY = "serving:engine:{}"


class EngineUnavailable(ServiceUnavailable):
    code = "engine_unavailable"


class EngineError(LoramillError):
    """The engine answered with a server error."""

    status_code = 502
    type = "server_error"
    code = "engine_error"


def record_status(redis_url: str, base_model: str, state: str, reason: str = "") -> None:
    """Written by an engine's supervisor: starting | ready | failed | stopped, and why."""
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.set(STATUS_KEY.format(base_model), json.dumps({"state": state, "reason": reason}))
    finally:
        client.close()


def read_status(redis_url: str | None, base_model: str) -> dict[str, str] | None:
    if not redis_url:
        return None
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        raw = client.get(STATUS_KEY.format(base_model))
    except redis.RedisError:
        return None
    finally:
        client.close()
    return json.loads(raw) if raw else None


class Engine:
    def __init__(self, base_model: str, url: str, settings: Settings,
                 client: httpx.AsyncClient):
        self.base_model = base_model
        self.url = url.rstrip("/")
        self.settings = settings
        self.client = client
        self.max_loaded = max(1, settings.serving_max_loaded_adapters)
        self.loaded: OrderedDict[str, None] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}

    # ----- adapters ----------------------------------------------------------------------

    async def ensure_loaded(self, name: str, path: str) -> bool:
        """Register adapter ``name`` (files at ``path``) unless it is; True if it was now."""
        if name in self.loaded:
            self.loaded.move_to_end(name)
            return False
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if name in self.loaded:
                return False
            response = await self._call("POST", "/v1/load_lora_adapter",
                                        json={"lora_name": name, "lora_path": path})
            # "already loaded": another gateway (or our earlier life) registered it
            if response.status_code >= 500:
                raise EngineError(
                    f"the engine for {self.base_model} could not load the adapter: "
                    f"{engine_message(response)}")
            if response.status_code >= 400 and "already" not in response.text:
                # the adapter itself does not fit this engine (a rank above its
                # --max-lora-rank, modules it cannot serve): the caller's model, not a fault
                raise Unprocessable(
                    f"this model's adapter cannot be served by the engine for "
                    f"{self.base_model}: {engine_message(response)}",
                    param="model", code="adapter_not_servable")
            self.loaded[name] = None
        while len(self.loaded) > self.max_loaded:
            oldest, _ = self.loaded.popitem(last=False)
            await self._unload(oldest)
        return True

    def registered(self, name: str) -> bool:
        return name in self.loaded

    def forget(self, name: str) -> None:
        """The engine does not know ``name`` (it restarted): register it again next time."""
        self.loaded.pop(name, None)

    async def _unload(self, name: str) -> None:
        with suppress(EngineUnavailable):
            await self._call("POST", "/v1/unload_lora_adapter", json={"lora_name": name})

    # ----- requests ----------------------------------------------------------------------

    async def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return await self._call("POST", path, json=body)

    @asynccontextmanager
    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[httpx.Response]:
        try:
            async with self.client.stream("POST", self.url + path, json=body,
                                          timeout=self._timeout()) as response:
                yield response
        except httpx.TransportError as exc:
            raise self.unavailable(exc) from exc

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self.client.request(method, self.url + path, timeout=self._timeout(),
                                             **kwargs)
        except httpx.TransportError as exc:
            raise self.unavailable(exc) from exc

    def _timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.settings.serving_timeout_seconds,
                             connect=self.settings.serving_connect_seconds)

    def unavailable(self, exc: Exception | None = None) -> EngineUnavailable:
        status = read_status(self.settings.redis_url, self.base_model)
        if status and status.get("state") == "failed":
            why = f"it could not start: {status.get('reason') or 'no reason recorded'}"
        elif status and status.get("state") == "starting":
            why = "it is starting; retry in a minute"
        elif status and status.get("state") == "stopped":
            why = "it was stopped"
        else:
            why = f"it is not reachable ({type(exc).__name__ if exc else 'no answer'})"
        log.warning("engine for %s at %s unavailable: %s", self.base_model, self.url, why)
        error = EngineUnavailable(
            f"the serving engine for {self.base_model} is unavailable: {why}",
            code="engine_unavailable")
        error.headers = {"Retry-After": "10"}
        return error


def engine_message(response: httpx.Response) -> str:
    """The engine's error message (vLLM answers OpenAI's error envelope)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message", ""))[:500]
    if isinstance(body, dict) and "message" in body:
        return str(body["message"])[:500]
    return response.text[:500]




def by_affinity(key: str, urls: list[str]) -> list[str]:
    """The replicas in the order a request for ``key`` tries them: rendezvous hashing, so
    each adapter has one home replica (where it stays registered), homes spread evenly,
    and a replica that goes away moves only its own adapters, each to its next choice."""
    def weight(url: str) -> bytes:
        return hashlib.sha256(f"{key}\n{url}".encode()).digest()
    return sorted(urls, key=weight, reverse=True)


class Engines:
    """The engines of one gateway process: one or more replicas per base model."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
        self.replicas: dict[str, dict[str, Engine]] = {}
        for base, urls in settings.serving_engines.items():
            listed = [urls] if isinstance(urls, str) else list(urls)
            self.replicas[base] = {url: Engine(base, url, settings, self.client)
                                   for url in listed}
        self._turn = itertools.count()

    def for_base(self, base_model: str, adapter: str | None) -> list[Engine]:
        """The replicas to try, in order: an adapter's home first; base-model requests
        take turns."""
        replicas = self.replicas.get(base_model)
        if not replicas:
            raise EngineUnavailable(
                f"no serving engine is configured for {base_model}; operators list engines "
                "in LORAMILL_SERVING_ENGINES (docs/serving.md)", code="model_not_served")
        urls = list(replicas)
        if adapter is not None:
            return [replicas[url] for url in by_affinity(adapter, urls)]
        start = next(self._turn) % len(urls)
        return [replicas[url] for url in urls[start:] + urls[:start]]

    async def aclose(self) -> None:
        await self.client.aclose()
