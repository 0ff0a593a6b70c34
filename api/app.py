"""The loramill API: OpenAI-compatible files and fine-tuning endpoints, and more."""

from __future__ import annotations

from fastapi import FastAPI

from api import errors
from api.idempotency import IdempotencyMiddleware
from api.limits import BodyLimitMiddleware
from api.request_ids import RequestIdMiddleware
from api.routes import adapters, files, health, jobs, keys, models
from core import logs


def create_app() -> FastAPI:
    logs.configure()
    app = FastAPI(
        title="loramill",
        version="0.1.0",
        description="Managed LoRA/QLoRA fine-tuning, wire-compatible with OpenAI's "
        "fine-tuning and files API.",
    )
    errors.install(app)
    app.add_middleware(IdempotencyMiddleware)
    app.add_middleware(BodyLimitMiddleware)  # refuse before anything reads the body
    app.add_middleware(RequestIdMiddleware)  # outermost: every answer gets an id
    for module in (health, files, jobs, models, adapters, keys):
        app.include_router(module.router)
    return app


app = create_app()
