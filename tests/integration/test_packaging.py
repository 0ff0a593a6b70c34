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



def test_the_images_copy_every_package_the_project_installs() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]
                ["include"]]
    for name in ("Dockerfile.api", "Dockerfile.worker"):
        dockerfile = (ROOT / "infra" / name).read_text()
        missing = [p for p in packages if f"COPY {p} ./{p}" not in dockerfile]
        assert packages and missing == [], (name, missing)


def test_the_gpu_profile_gives_each_worker_one_gpu_a_home_and_its_class_queue() -> None:
    """Read without Docker: every worker of the gpu profile reserves one GPU no other
    worker reserves, has a home and metrics port of its own, and listens on the queue of
    the class it announces (never the cpu one)."""
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    workers = {name: s for name, s in compose["services"].items()
               if "gpu" in s.get("profiles", [])}
    assert len(workers) >= 2
    devices, homes, ports = [], set(), set()
    for name, service in workers.items():
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"], name
        devices += device["device_ids"]
        env = service["environment"]
        homes.add(env["LORAMILL_HOME"])
        assert env["CUDA_VISIBLE_DEVICES"] == "0", name  # its one GPU, as the container sees it
        ports.add(env["LORAMILL_METRICS_PORT"])
        queue = service["command"][service["command"].index("-Q") + 1]
        gpu_class = env["LORAMILL_GPU_CLASS"]
        assert queue == f"train-{gpu_class}" and "cpu" not in queue, (name, queue)
        assert service["build"] == {"context": ".", "dockerfile": "infra/Dockerfile.worker",
                                    "args": {"VARIANT": "cuda"}}, name  # CUDA PyTorch
    assert len(devices) == len(set(devices)) == len(workers)
    assert len(homes) == len(ports) == len(workers)
