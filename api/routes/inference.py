"""OpenAI's inference endpoints, answered by the engines behind the gateway
(core/serving/gateway.py, docs/serving.md), and the usage they add up per tenant."""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.deps import CurrentTenant, UoW
from core.serving import service
from core.serving.gateway import Gateway
from core.tenants.scope import TenantId

router = APIRouter(prefix="/v1", tags=["inference"])


MAX_N = 16  # choices per request: one request may not take a shared engine's whole batch


class Sampling(BaseModel):
    """What a request may ask of the engine: OpenAI's parameters and a few of vLLM's
    sampling extensions. Anything else is refused: vLLM's server also takes fields that
    are the operator's business (a chat template of the caller's, scheduling priority,
    KV-transfer parameters, request ids), which no tenant may set. Values are checked by
    the engine (its 400s come back with its message)."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="a base model, one of your fine-tuned models, or one of "
                       "their checkpoint models")
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1, le=MAX_N)
    temperature: Any = None
    top_p: Any = None
    frequency_penalty: Any = None
    presence_penalty: Any = None
    logit_bias: Any = None
    seed: Any = None
    stop: Any = None
    user: Any = None
    logprobs: Any = None  # a bool for chat, a count for completions: the engine checks
    # vLLM's sampling extensions
    top_k: Any = None
    min_p: Any = None
    repetition_penalty: Any = None
    min_tokens: Any = None
    ignore_eos: Any = None


class ChatCompletionRequest(Sampling):
    """OpenAI's chat completion body."""

    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    top_logprobs: Any = None
    response_format: Any = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None


class CompletionRequest(Sampling):
    """OpenAI's (legacy) completion body."""

    prompt: str | list[str] | list[int] | list[list[int]]
    echo: Any = None
    suffix: Any = None
    best_of: Any = None


class UsageObject(BaseModel):
    object: Literal["usage"] = "usage"
    date: date
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class UsageList(BaseModel):
    object: Literal["list"] = "list"
    data: list[UsageObject]


def gateway(request: Request) -> Gateway:
    found: Gateway = request.app.state.gateway
    return found


async def _answer(request: Request, endpoint: str, tenant_id: TenantId, uow: UoW,
                  body: dict[str, Any]) -> Any:
    # the model is resolved in one short transaction: no pooled connection waits on
    # the engine
    target = await run_in_threadpool(uow.peek, service.resolve, tenant_id, body["model"])
    if body.get("stream"):
        events = await gateway(request).open_stream(endpoint, tenant_id, target, body)
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    return await gateway(request).complete(endpoint, tenant_id, target, body)


@router.post("/chat/completions")
async def chat_completions(request: Request, payload: ChatCompletionRequest,
                           tenant_id: CurrentTenant, uow: UoW) -> Any:
    """A chat completion from a base model or a fine-tuned model (its adapter loaded on
    demand); ``stream: true`` answers server-sent events."""
    return await _answer(request, "chat", tenant_id, uow, payload.model_dump(exclude_unset=True))


@router.post("/completions")
async def completions(request: Request, payload: CompletionRequest, tenant_id: CurrentTenant,
                      uow: UoW) -> Any:
    """A text completion of ``prompt`` (no chat template)."""
    return await _answer(request, "completions", tenant_id, uow,
                         payload.model_dump(exclude_unset=True))


@router.get("/usage", response_model=UsageList)
def get_usage(tenant_id: CurrentTenant, uow: UoW, start_date: date | None = None,
              end_date: date | None = None, model: str | None = None) -> UsageList:
    """Inference usage per model and UTC day: requests, prompt and completion tokens."""
    rows = service.usage(uow.session, tenant_id, start=start_date, end=end_date, model=model)
    return UsageList(data=[UsageObject(
        date=r.day, model=r.model, requests=r.requests, prompt_tokens=r.prompt_tokens,
        completion_tokens=r.completion_tokens,
        total_tokens=r.prompt_tokens + r.completion_tokens) for r in rows])
