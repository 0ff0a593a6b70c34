"""The layout's rules hold (issue 12): import-linter's contracts (pyproject.toml: core
never imports api, worker or devstack; the training recipe imports nothing of the
service; api never imports the worker; core/kit knows no domain; no import cycles), and
the plain check a reviewer would run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def test_import_contracts_are_kept() -> None:
    binary = Path(sys.executable).parent / "lint-imports"
    if not binary.exists():
        pytest.skip("import-linter is not installed (it is in the dev extra)")
    result = subprocess.run([str(binary)], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_core_never_reaches_up() -> None:
    reaching = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
                for path in sorted((ROOT / "core").rglob("*.py"))
                for n, line in enumerate(path.read_text().splitlines(), 1)
                if re.search(r"^\s*(from (worker|api|devstack)\b|import (worker|api|devstack)\b)",
                             line)]
    assert reaching == []


def test_the_api_imports_no_ml_library() -> None:
    """The API (and the scheduler's code it shares) runs without torch: an API image
    needs none of the training stack (estimates load only a tokenizer, lazily)."""
    heavy = ("torch", "transformers", "peft", "bitsandbytes", "wandb", "gguf", "vllm")
    done = subprocess.run([sys.executable, "-c", "import sys, api.app, worker.celery_app; "
                           f"print(sorted(m for m in {heavy!r} if m in sys.modules))"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
