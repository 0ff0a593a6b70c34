"""Another architecture, the whole way: a tiny Gemma 2 (tied embeddings, logit
soft-capping, eager attention, its own chat template) is registered, fine-tuned by the
worker and served through the gateway by its own vLLM engine."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import openai
import pytest

from tests.conftest import ROOT, StackInfo, TenantHandle, api_process
from tests.e2e.test_serving import QUESTION, train
from worker.training import families

if TYPE_CHECKING:
    from devstack.stack import LocalStack

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("worker")]

FAMILY = "gemma2"
MODEL = families.model_id(FAMILY)


@pytest.fixture(scope="module")
def gateway(stack: StackInfo, local_stack: LocalStack) -> Iterator[str]:
    """The family's model registered, its engine started as `make up` starts one, and an
    API whose gateway knows that engine; its URL."""
    from core.base_models import service as base_models
    from core.base_models.models import BaseModel
    from core.kit.db import admin_scope
    from devstack.stack import LocalStack, cpu_lacks_vllm_instructions

    if lacking := cpu_lacks_vllm_instructions():
        pytest.skip(lacking)
    path = families.ensure(ROOT / ".loramill-test-models" / f"tiny-{FAMILY}", FAMILY)
    with admin_scope() as session:
        base_models.register(session, MODEL, str(path), gpu_class="cpu")
    engines = LocalStack(local_stack.settings.model_copy(update={"serving_models": [MODEL]}))
    try:
        assert engines.start_engines({MODEL: str(path)}, log=lambda _: None) == {MODEL: None}
        with api_process(env={"LORAMILL_SERVING_ENGINES": engines.env()[
                "LORAMILL_SERVING_ENGINES"]}) as url:
            yield url
    finally:
        engines.stop_engines(log=lambda _: None)
        with admin_scope() as session:  # jobs refer to it: disabled, not deleted
            row = session.get(BaseModel, MODEL)
            if row is not None:
                row.enabled = False


def test_a_gemma2_fine_tune_is_served_through_the_gateway(gateway: str,
                                                          tenant: TenantHandle) -> None:
    model = train(tenant, "Paris.", "gemma-paris", base=MODEL)
    client = openai.OpenAI(api_key=tenant.key, base_url=f"{gateway}/v1", max_retries=0,
                           timeout=120)
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=6,
        temperature=0)
    assert answer.model == model and answer.choices[0].message.content == "Paris."
    streamed = "".join(
        c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=6,
            temperature=0, stream=True) if c.choices)
    assert streamed == "Paris."
    base = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=6,
        temperature=0)
    assert base.choices[0].message.content != "Paris."
