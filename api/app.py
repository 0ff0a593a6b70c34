"""The loramill API: OpenAI-compatible files and fine-tuning endpoints, and more."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from api import errors, idempotency, openapi
from api.edge import EdgeMiddleware
from api.idempotency import IdempotencyMiddleware
from api.request_ids import RequestIdMiddleware
from api.routes import (
    adapters,
    admin,
    files,
    health,
    inference,
    integrations,
    jobs,
    keys,
    models,
    ops,
    webhooks,
)
from core.kit import logs, metrics
from core.kit.process import mark_clean_exit
from core.kit.settings import get_settings
from core.kit.storage import get_storage
from core.serving.gateway import Gateway


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    logs.configure()  # when a server runs the app; importing it configures nothing
    metrics.announce_build()
    # the threads that run blocking work; the database pools are sized against them
    anyio.to_thread.current_default_thread_limiter().total_tokens = (
        get_settings().api_threads)
    app.state.gateway = Gateway(get_settings(), get_storage)
    try:
        yield
    finally:
        await app.state.gateway.aclose()
    mark_clean_exit()  # the local stack's status tells a stop from a crash


def create_app() -> FastAPI:
    # /docs (Swagger UI) and /redoc from assets shipped in the fastapi-offline package:
    # FastAPI's defaults load them from a CDN, and are blank without internet
    app = FastAPIOffline(
        static_url="/docs-assets",
        lifespan=lifespan,
        title="loramill",
        version="0.1.0",
        description="Managed LoRA/QLoRA fine-tuning, wire-compatible with OpenAI's "
        "fine-tuning and files API.",
    )
    errors.install(app)
    idempotency.install(app)
    app.add_middleware(IdempotencyMiddleware)
    app.add_middleware(EdgeMiddleware)  # refuse bad URLs and bodies before anything parses them
    app.add_middleware(RequestIdMiddleware)  # outermost: every answer gets an id
    for module in (health, files, jobs, models, adapters, inference, integrations, keys,
                   admin, ops):
        app.include_router(module.router)
    app.include_router(jobs.estimates)
    app.include_router(webhooks.router, prefix=webhooks.PREFIX)
    # the same API under a shorter name, kept out of the schema (one surface, two paths)
    app.include_router(webhooks.router, prefix=webhooks.SHORT_PREFIX, include_in_schema=False)
    openapi.install(app)
    return app


app = create_app()
