"""Schemathesis hooks for tests/integration/test_fuzz.py.

- ``openai_error_envelope``: every error uses the OpenAI envelope.
- ``map_case``: one generated case in three is made hostile, the same way on every run
  (chosen by a hash of the case): every string of its path, query and JSON body gets a NUL
  byte, every integer a value past 64 bits. Random generation alone almost never produces
  these. (Lone surrogates cannot be sent: schemathesis encodes bodies as UTF-8 text;
  tests/integration/api/test_edge_inputs.py sends them as raw JSON escapes.)
- ``hostile_inputs_refused``: such a case must be answered with a 4xx.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import schemathesis

HOSTILE_HEADER = "X-Fuzz-Hostile"
HOSTILE_LOG = "hostile-cases.txt"
STRINGS = ("nul\x00byte", "\x00")
INTEGERS = (2**31, 2**63, 2**64 + 1, -(2**63) - 1, 10**30)


def _poison(value: Any, seed: int) -> tuple[Any, bool]:
    if isinstance(value, bool):
        return value, False
    if isinstance(value, int):
        return INTEGERS[seed % len(INTEGERS)], True
    if isinstance(value, str):
        return STRINGS[seed % len(STRINGS)], True
    if isinstance(value, dict):
        changed = False
        out = {}
        for i, (key, item) in enumerate(value.items()):
            out[key], hit = _poison(item, seed + i)
            changed |= hit
        return out, changed
    if isinstance(value, list):
        pairs = [_poison(item, seed + i) for i, item in enumerate(value)]
        return [p for p, _ in pairs], any(hit for _, hit in pairs)
    return value, False


@schemathesis.hook
def map_case(ctx: Any, case: Any) -> Any:
    fingerprint = json.dumps([case.operation.label, case.path_parameters, case.query,
                              case.body if isinstance(case.body, dict | list) else None],
                             default=str, sort_keys=True)
    seed = zlib.crc32(fingerprint.encode())
    if seed % 3:
        return case
    hit = False
    if case.path_parameters:
        case.path_parameters, changed = _poison(case.path_parameters, seed)
        hit |= changed
    declared = {parameter.name for parameter in case.operation.query}
    if case.query and declared & set(case.query):  # undeclared parameters are ignored
        poisoned, changed = _poison({k: v for k, v in case.query.items() if k in declared},
                                    seed)
        case.query = {**case.query, **poisoned}
        hit |= changed
    if isinstance(case.body, dict | list):
        case.body, changed = _poison(case.body, seed)
        hit |= changed
    if hit:
        case.headers = {**(case.headers or {}), HOSTILE_HEADER: "1"}
        with open(HOSTILE_LOG, "a") as log:  # in the run's directory: the test counts them
            log.write(case.operation.label + "\n")
    return case


@schemathesis.check
def hostile_inputs_refused(ctx: Any, response: Any, case: Any) -> None:
    if (case.headers or {}).get(HOSTILE_HEADER) and not 400 <= response.status_code < 500:
        raise AssertionError(f"a hostile input was answered {response.status_code}, not a "
                             f"4xx: {str(response.text)[:300]}")


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
