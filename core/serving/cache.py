"""The gateway's local adapter cache: a published version's files, fetched from object
storage once, each checked against the sha256 its version row recorded at publication,
and handed to the engine by path.

A version lands in ``<cache>/<version id>/`` only whole and verified: files are written
into a temporary directory beside it and renamed into place, so a crash mid-download
leaves nothing an engine could load. A file whose bytes do not match is refused (and
logged): a tampered or corrupted object in the bucket is never served. The cache is
bounded in bytes; the least recently used versions go first (a directory's mtime is its
last use). Several API processes may share one cache directory. The cache is trusted once
written, like the engine's own disk: whoever can write there can change what is served.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from core.kit.errors import LoramillError
from core.kit.storage import ObjectMismatch, ObjectMissing, Storage

log = logging.getLogger("loramill.serving")

# what vLLM reads of an adapter; the manifest is ours and stays in the bucket
ENGINE_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


class AdapterIntegrityError(LoramillError):
    """A stored adapter file's bytes are not the ones published: refused, never served."""

    status_code = 500
    type = "server_error"
    code = "adapter_integrity_failed"


@dataclass(frozen=True)
class CachedAdapter:
    path: Path
    hit: bool  # already on local disk (no object storage read)


class AdapterCache:
    def __init__(self, root: Path, max_bytes: int):
        self.root = root
        self.max_bytes = max_bytes
        self._lock = threading.Lock()  # one fetch of a version at a time
        self._fetching: dict[str, threading.Lock] = {}

    def get(self, storage: Storage, version_id: str, prefix: str,
            files: list[dict[str, object]]) -> CachedAdapter:
        """The version's directory, fetched and verified if it is not here yet."""
        target = self.root / version_id
        if target.is_dir():
            _touch(target)
            return CachedAdapter(target, hit=True)
        with self._lock:
            lock = self._fetching.setdefault(version_id, threading.Lock())
        with lock:
            if target.is_dir():  # another request fetched it meanwhile
                return CachedAdapter(target, hit=True)
            self._fetch(storage, target, prefix, files)
        self._trim(keep=target)
        return CachedAdapter(target, hit=False)

    def _fetch(self, storage: Storage, target: Path, prefix: str,
               files: list[dict[str, object]]) -> None:
        wanted = [f for f in files if f["name"] in ENGINE_FILES]
        if not any(f["name"] == "adapter_config.json" for f in wanted):
            raise AdapterIntegrityError(
                f"adapter version {target.name} has no adapter_config.json in its manifest")
        try:
            storage.materialize(prefix, wanted, target)
        except ObjectMismatch as exc:
            log.error("adapter file %s: sha256 %s, published %s; refused", exc.key,
                      exc.found, exc.recorded)
            raise AdapterIntegrityError(
                f"the stored adapter file {exc.name} does not match the sha256 it was "
                "published with; it is not served. The operators were told (logged)"
            ) from exc
        except ObjectMissing as exc:
            log.error("adapter file %s is missing from the bucket", exc.key)
            raise AdapterIntegrityError(
                f"the stored adapter file {exc.name} is missing; it cannot be served. The "
                "operators were told (logged)") from exc

    def _trim(self, keep: Path) -> None:
        """Remove least recently used versions until the cache fits its bound."""
        entries = []
        for path in self.root.iterdir():
            if path.is_dir() and not path.name.startswith("."):
                size = sum(f.stat().st_size for f in path.iterdir())
                entries.append((path.stat().st_mtime, size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries, key=lambda e: e[0]):
            if total <= self.max_bytes:
                break
            if path != keep:
                shutil.rmtree(path, ignore_errors=True)
                total -= size


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)
