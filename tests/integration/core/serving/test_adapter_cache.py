"""The gateway's adapter cache against the real bucket, no engine needed: a version lands
whole and verified, a tampered or missing file is refused by name, and nothing half is
left in the cache directory."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from core.kit.storage import get_storage
from core.serving.cache import AdapterCache, AdapterIntegrityError
from tests.conftest import StackInfo

FILES = {"adapter_config.json": b'{"r": 8}', "adapter_model.safetensors": b"weights" * 100}


def published(prefix: str) -> list[dict[str, object]]:
    storage = get_storage()
    for name, body in FILES.items():
        storage.put_bytes(prefix + name, body)
    return [{"name": n, "bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()}
            for n, b in FILES.items()]


def test_a_version_lands_whole_and_verified(stack: StackInfo, tmp_path: Path) -> None:
    cache = AdapterCache(tmp_path, 10**9)
    files = published("tests/cache/v1/")
    got = cache.get(get_storage(), "adpv-1", "tests/cache/v1/", files)
    assert not got.hit and {p.name: p.read_bytes() for p in got.path.iterdir()} == FILES
    assert cache.get(get_storage(), "adpv-1", "tests/cache/v1/", files).hit


@pytest.mark.parametrize(("damage", "words"), [("tamper", "does not match the sha256"),
                                               ("delete", "is missing")])
def test_a_damaged_file_is_refused_by_name_and_leaves_nothing(
        stack: StackInfo, tmp_path: Path, damage: str, words: str) -> None:
    prefix = f"tests/cache/{damage}/"
    files = published(prefix)
    storage = get_storage()
    if damage == "tamper":
        storage.put_bytes(prefix + "adapter_model.safetensors", b"other bytes")
    else:
        storage.delete(prefix + "adapter_model.safetensors")
    with pytest.raises(AdapterIntegrityError) as refused:
        AdapterCache(tmp_path, 10**9).get(storage, "adpv-x", prefix, files)
    assert f"adapter_model.safetensors {words}" in refused.value.message
    assert list(tmp_path.iterdir()) == []
