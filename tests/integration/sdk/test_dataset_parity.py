"""SDK parity: every file of the shared corpus (tests/corpus/datasets) gets the same
verdict and the same messages from the server's upload and from the SDK and the CLI as a
user installs them (``pip install ./sdk`` into a clean virtual environment: no server
packages, none of this checkout's). The SDK takes its limits from the server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, StackInfo, TenantHandle

CORPUS = sorted((ROOT / "tests" / "corpus" / "datasets").glob("*.jsonl"))
SDK_CHECK = """
import json, sys
import loramill
from loramill import datasets
client = loramill.Client()
limits = client.files.limits()
out = {}
for path in sys.argv[1:]:
    report = datasets.validate(path, limits)
    out[path] = {"ok": report.ok, "format": report.format, "examples": report.example_count,
                 "summary": report.summary()}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def sdk_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("sdk")
    venv, source = home / "venv", home / "sdk"  # a copy: the build leaves the checkout alone
    shutil.copytree(ROOT / "sdk", source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                             str(source)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    yield venv


def env_for(stack: StackInfo, tenant: TenantHandle) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LORAMILL_", "PYTHON"))}
    return {**env, "LORAMILL_BASE_URL": stack.api_url, "LORAMILL_API_KEY": tenant.key}


def test_the_sdk_installs_without_ml_or_server_packages(sdk_venv: Path) -> None:
    probe = ("import importlib.util, json, loramill; "
             "print(json.dumps({m: importlib.util.find_spec(m) is not None for m in "
             "['torch', 'fastapi', 'sqlalchemy', 'transformers', 'orjson', 'msgspec']}))")
    out = subprocess.run([str(sdk_venv / "bin" / "python"), "-c", probe], capture_output=True,
                         text=True, check=True, cwd="/", timeout=60).stdout
    assert json.loads(out) == {"torch": False, "fastapi": False, "sqlalchemy": False,
                               "transformers": False, "orjson": False, "msgspec": True}
    cli = subprocess.run([str(sdk_venv / "bin" / "loramill"), "--help"], capture_output=True,
                         text=True, timeout=60)
    assert cli.returncode == 0 and "Exit codes" in cli.stdout


def test_server_sdk_and_cli_give_one_verdict_and_the_same_messages(
        stack: StackInfo, tenant: TenantHandle, sdk_venv: Path) -> None:
    env = env_for(stack, tenant)
    local = json.loads(subprocess.run(
        [str(sdk_venv / "bin" / "python"), "-c", SDK_CHECK, *map(str, CORPUS)], env=env,
        cwd="/", capture_output=True, text=True, check=True, timeout=120).stdout)
    verdicts = {}
    for path in CORPUS:
        response = tenant.client.post("/v1/files", data={"purpose": "fine-tune"},
                                      files={"file": (path.name, path.read_bytes())})
        sdk = local[str(path)]
        assert response.status_code in (200, 400), (path.name, response.text)
        server_ok = response.status_code == 200
        assert sdk["ok"] == server_ok == path.name.startswith("ok-"), (path.name, sdk)
        if server_ok:
            body = response.json()
            assert (sdk["format"], sdk["examples"]) == (body["format"],
                                                        body["example_count"]), path.name
        else:
            assert response.json()["error"]["message"] == (
                f"{path.name} is not a valid fine-tuning dataset: {sdk['summary']}")

        cli = subprocess.run([str(sdk_venv / "bin" / "loramill"), "files", "check", str(path)],
                             env=env, cwd="/", capture_output=True, text=True, timeout=60)
        assert "Traceback" not in cli.stderr + cli.stdout, cli.stderr
        assert cli.returncode == (0 if server_ok else 2), (path.name, cli.stderr)
        if not server_ok:
            listed = [line.strip() for line in cli.stderr.splitlines()[1:]]
            shown = sdk["summary"].split(": ", 1)[1].split(" (and ")[0]
            assert "; ".join(p for p in listed if not p.startswith("...")) == shown
        verdicts[path.name] = server_ok
    assert sum(verdicts.values()) >= 7 and len(verdicts) - sum(verdicts.values()) >= 15


def test_the_cli_reads_no_file_it_cannot_and_prints_no_traceback(
        stack: StackInfo, tenant: TenantHandle, sdk_venv: Path, tmp_path: Path) -> None:
    env = env_for(stack, tenant)
    unreadable = tmp_path / "secret.jsonl"
    unreadable.write_text("{}")
    unreadable.chmod(0)
    for target in (str(tmp_path), str(unreadable), str(tmp_path / "missing.jsonl")):
        cli = subprocess.run([str(sdk_venv / "bin" / "loramill"), "files", "upload", target],
                             env=env, cwd="/", capture_output=True, text=True, timeout=60)
        assert "Traceback" not in cli.stderr, cli.stderr
        assert cli.returncode == 2 and cli.stderr.startswith("error: "), cli.stderr


def test_an_offline_check_needs_no_key_and_differs_only_in_the_size_limits(
        sdk_venv: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LORAMILL_", "PYTHON"))}
    env["LORAMILL_BASE_URL"] = "http://127.0.0.1:1"  # nothing there: it must not be asked
    for path in CORPUS:
        cli = subprocess.run([str(sdk_venv / "bin" / "loramill"), "files", "check",
                              "--offline", str(path)], env=env, cwd="/", capture_output=True,
                             text=True, timeout=60)
        assert "Traceback" not in cli.stderr
        # over the server's limits on line length and nesting
        limited = path.name in ("bad-long-line.jsonl", "bad-deep.jsonl")
        if limited:  # other problems may remain, never the limit's
            assert cli.returncode in (0, 2) and "limit" not in cli.stderr, cli.stderr
        else:
            assert cli.returncode == (0 if path.name.startswith("ok-") else 2), cli.stderr
