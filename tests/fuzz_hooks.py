"""Schemathesis hooks for tests/test_fuzz.py: every error must use the OpenAI envelope."""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.check
def openai_error_envelope(ctx: Any, response: Any, case: Any) -> None:
    if response.status_code < 400:
        return
    body = response.json()
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
        raise AssertionError(f"{response.status_code} without the OpenAI error envelope: "
                             f"{str(body)[:300]}")
    if not isinstance(error["message"], str) or not error["message"]:
        raise AssertionError("error.message must be a non-empty string")
