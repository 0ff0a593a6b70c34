"""The repository's own entry points: the compose file and the Makefile's help."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import ROOT


def test_docker_compose_file_is_valid() -> None:
    if shutil.which("docker") and subprocess.run(
        ["docker", "compose", "version"], capture_output=True).returncode == 0:
        cmd = ["docker", "compose", "config", "-q"]
    elif shutil.which("docker-compose"):
        cmd = ["docker-compose", "config", "-q"]
    else:
        pytest.skip("neither 'docker compose' nor 'docker-compose' is installed")
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_make_help_lists_the_readme_commands() -> None:
    out = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True).stdout
    for target in ("demo", "test", "up", "down", "bench", "lint"):
        assert f"make {target}" in out



def test_the_image_copies_every_package_the_project_installs() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]
                ["include"]]
    dockerfile = (ROOT / "infra" / "Dockerfile").read_text()
    missing = [p for p in packages if f"COPY {p} ./{p}" not in dockerfile]
    assert packages and missing == [], missing
