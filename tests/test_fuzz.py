"""Schemathesis against our own /openapi.json with a tenant key (every operation) and with
an admin key (the /v1/admin operations), a bounded number of examples each. No 5xx,
responses conform to the schema, and every error uses the OpenAI envelope
(tests/fuzz_hooks.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.db import admin_scope
from core.keys import FILES_WRITE, JOBS_WRITE, READ
from core.services import tenants as tenant_service
from core.settings import get_settings
from tests.conftest import ROOT, StackInfo


def schemathesis(stack: StackInfo, key: str, tmp_path: Path, *options: str) -> str:
    binary = Path(sys.executable).parent / "schemathesis"
    if not binary.exists() and shutil.which("schemathesis") is None:
        pytest.skip("schemathesis is not installed (it is in the dev extra)")
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks",
           "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [str(binary), "run", f"{stack.api_url}/openapi.json",
         "-H", f"Authorization: Bearer {key}",
         "--checks", "not_a_server_error,response_schema_conformance,openai_error_envelope",
         "--max-examples", "10", "--generation-deterministic", "--request-timeout", "30",
         "--no-color", *options],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    summary = result.stdout[-4000:]
    assert result.returncode == 0, summary
    assert "passed" in summary
    return summary


def test_schemathesis_finds_no_server_errors(stack: StackInfo, tmp_path: Path) -> None:
    with admin_scope() as session:
        tenant = tenant_service.create_tenant(session, "fuzz", get_settings())
        # no keys:write, so the fuzzer cannot revoke its own key halfway through
        key = tenant_service.issue_key(session, tenant, scopes=[READ, FILES_WRITE,
                                                                 JOBS_WRITE]).secret
    schemathesis(stack, key, tmp_path)


def test_schemathesis_on_the_admin_api(stack: StackInfo, tmp_path: Path) -> None:
    with admin_scope() as session:
        key = tenant_service.issue_key(session, None, admin=True, name="fuzz").secret
    summary = schemathesis(stack, key, tmp_path, "--include-path-regex", "^/v1/admin/")
    selected = re.search(r"Selected: (\d+)/\d+", summary)
    tested = re.search(r"Tested: (\d+)", summary)
    assert selected and tested and int(tested[1]) == int(selected[1]) >= 15, summary
