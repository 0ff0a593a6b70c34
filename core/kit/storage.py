"""Object storage: one boto3 factory and one service (retries and timeouts set once).

Keys are always built here from ids (design.md §8), never from user-supplied names.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from boto3.exceptions import Boto3Error
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from core.kit.errors import ServiceUnavailable
from core.kit.settings import Settings, get_settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger("loramill.storage")
MIN_PART_BYTES = 5 * 1024 * 1024
S3_ERRORS = (BotoCoreError, ClientError, Boto3Error)  # Boto3Error: managed transfers
# A name that goes into an object key (an adapter's, from a job's suffix): a letter or
# digit first, then letters, digits, '-', '_' and single dots followed by more; so never
# '.', '..', a leading '-' or a '/'. At most NAME_MAX characters.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$"
NAME_MAX = 64


def file_key(tenant_id: str, file_id: str) -> str:
    return f"tenants/{tenant_id}/files/{file_id}.jsonl"


def result_file_key(tenant_id: str, file_id: str) -> str:
    return f"tenants/{tenant_id}/files/{file_id}.csv"


def checkpoint_prefix(tenant_id: str, job_id: str, step: int) -> str:
    return f"tenants/{tenant_id}/jobs/{job_id}/checkpoints/step-{step}/"


def adapter_prefix(tenant_id: str, adapter_name: str, version: int) -> str:
    return f"tenants/{tenant_id}/adapters/{adapter_name}/v{version}/"


def staging_root(tenant_id: str, job_id: str) -> str:
    return f"tenants/{tenant_id}/jobs/{job_id}/staging/"


def staging_prefix(tenant_id: str, job_id: str, lease_token: str) -> str:
    """Where a publishing job uploads its adapter before the version exists: copied into
    place with the version's row, and removed either way (by the scheduler's storage
    clean-up when S3 was down at the time)."""
    return f"{staging_root(tenant_id, job_id)}{lease_token}/"


# The media type of the part being uploaded by this thread (S3's UploadPart takes no
# ContentType parameter, so it is set as a header before signing). Object stores that
# compress what they sniff as text (SeaweedFS does, per part) are told what it is.
_part_type = threading.local()


def _part_content_type(request: Any, **_: Any) -> None:
    content_type = getattr(_part_type, "value", None)
    if content_type:
        request.headers["Content-Type"] = content_type


class ObjectMismatch(Exception):
    """A stored object whose bytes are not the ones recorded (tampered or corrupted)."""

    def __init__(self, key: str, name: str, found: str, recorded: str):
        super().__init__(f"{key}: sha256 {found}, recorded {recorded}")
        self.key, self.name, self.found, self.recorded = key, name, found, recorded


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` as (bucket, ``some/prefix/``)."""
    rest = uri.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix.rstrip("/") + "/" if prefix else ""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entries(paths: list[Path]) -> list[dict[str, Any]]:
    """What a manifest records of each file: name, bytes, sha256."""
    return [{"name": p.name, "bytes": p.stat().st_size, "sha256": sha256_of(p)} for p in paths]


def make_client(settings: Settings, endpoint: str | None = None) -> S3Client:
    client = boto3.client(
        "s3",
        endpoint_url=endpoint or settings.require_s3_endpoint(),
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key,
        region_name=settings.s3_region,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 4, "mode": "standard"},
            connect_timeout=5,
            # S3 checks integrity itself (SigV4 payload hash); skip extra CRC passes
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            read_timeout=60,
            signature_version="s3v4",
        ),
    )
    client.meta.events.register("before-sign.s3.UploadPart", _part_content_type)
    return client


class StorageUnavailable(ServiceUnavailable):
    """What the tenant sees names no endpoint, bucket, key or upload id: those go to the
    log (with the request or job id of the line)."""

    def __init__(self, action: str, exc: Exception):
        log.warning("object storage %s failed: %s", action, exc)
        super().__init__(
            f"object storage is unavailable ({action} failed); nothing was stored, please "
            "retry",
            code="storage_unavailable",
        )


class ObjectMissing(StorageUnavailable):
    """A recorded object that is not in the bucket (deleted or never there): storage
    answered, the object is gone. A StorageUnavailable, for callers that treat both alike."""

    def __init__(self, key: str, name: str, cause: Exception):
        super().__init__("download", cause)
        self.key, self.name = key, name


class Storage:
    def __init__(self, client: S3Client, bucket: str, public: S3Client | None = None):
        self.client = client
        self.bucket = bucket
        # presigned URLs are signed for the address their users reach the store by
        # (LORAMILL_S3_PUBLIC_ENDPOINT_URL), which may not be the services' own
        self.public = public or client

    def ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else {}
        self._call("upload", self.client.put_object, Bucket=self.bucket, Key=key, Body=data,
                   **extra)

    def iter_object(self, key: str, chunk_bytes: int = 1024 * 1024) -> Iterator[bytes]:
        response = self._call("download", self.client.get_object, Bucket=self.bucket, Key=key)
        yield from response["Body"].iter_chunks(chunk_bytes)

    def download_verified(self, prefix: str, entries: Sequence[Mapping[str, Any]],
                          directory: Path) -> None:
        """Each entry's object (``prefix + name``) into ``directory``, its sha256 taken as
        it is written and checked against the entry's: :class:`ObjectMismatch` when they
        differ, :class:`ObjectMissing` when there is no such object (the file stays:
        callers write into a directory they discard on error)."""
        directory.mkdir(parents=True, exist_ok=True)
        for entry in entries:
            name = str(entry["name"])
            digest = hashlib.sha256()
            try:
                with (directory / name).open("wb") as out:
                    for chunk in self.iter_object(prefix + name):
                        digest.update(chunk)
                        out.write(chunk)
            except StorageUnavailable as exc:
                cause = exc.__cause__
                if isinstance(cause, ClientError) and cause.response.get("Error", {}).get(
                        "Code") in ("NoSuchKey", "404"):
                    raise ObjectMissing(prefix + name, name, cause) from cause
                raise
            if digest.hexdigest() != entry["sha256"]:
                raise ObjectMismatch(prefix + name, name, digest.hexdigest(),
                                     str(entry["sha256"]))

    def materialize(self, prefix: str, entries: Sequence[Mapping[str, Any]],
                    target: Path) -> Path:
        """``target`` holding each entry's object, every sha256 checked, or nothing: the
        files land in a temporary directory beside it, renamed into place only when all
        are there and verified (so a crash or a bad byte leaves no half directory, and
        two processes filling it at once both end with the same one)."""
        if target.is_dir():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            self.download_verified(prefix, entries, staging)
            try:
                os.rename(staging, target)
            except OSError:
                if not target.is_dir():  # else another process put the same files there
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def delete(self, key: str) -> None:
        self._call("delete", self.client.delete_object, Bucket=self.bucket, Key=key)

    def delete_quietly(self, *keys: str) -> None:
        """Clean-up after a failure: never masks the error being handled."""
        for key in keys:
            try:
                self.delete(key)
            except StorageUnavailable:
                log.warning("could not delete %s; left behind", key)

    def copy(self, source: str, key: str) -> None:
        self._call("copy", self.client.copy, CopySource={"Bucket": self.bucket, "Key": source},
                   Bucket=self.bucket, Key=key)

    def list_keys(self, prefix: str) -> list[str]:
        def pages() -> list[str]:
            keys: list[str] = []
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(obj["Key"] for obj in page.get("Contents", []))
            return keys

        found: list[str] = self._call("list", pages)
        return found

    def abort_stale_uploads(self, prefix: str, older_than: timedelta) -> list[str]:
        """Abort multipart uploads under ``prefix`` begun more than ``older_than`` ago: those
        whose own abort failed (S3 was down then). Returns their keys."""
        cutoff = datetime.now(UTC) - older_than
        found = self._call("list", self.client.list_multipart_uploads, Bucket=self.bucket,
                           Prefix=prefix)
        aborted = []
        for upload in found.get("Uploads", []):
            if upload["Initiated"] < cutoff:
                self._call("abort", self.client.abort_multipart_upload, Bucket=self.bucket,
                           Key=upload["Key"], UploadId=upload["UploadId"])
                aborted.append(upload["Key"])
        return aborted

    def upload_file(self, path: Path, key: str) -> None:
        self._call("upload", self.client.upload_file, Filename=str(path), Bucket=self.bucket,
                   Key=key)

    def download_file(self, key: str, path: Path) -> None:
        self._call("download", self.client.download_file, Bucket=self.bucket, Key=key,
                   Filename=str(path))

    def presigned_get(self, key: str, expires_in: int, filename: str | None = None) -> str:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        url: str = self.public.generate_presigned_url("get_object", Params=params,
                                                      ExpiresIn=expires_in)
        return url

    def writer(self, key: str, part_bytes: int,
               content_type: str | None = None) -> MultipartWriter:
        return MultipartWriter(self, key, max(part_bytes, MIN_PART_BYTES), content_type)

    def _call(self, action: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except S3_ERRORS as exc:
            raise StorageUnavailable(action, exc) from exc


class MultipartWriter:
    """Streams an object to S3 in parts; nothing is visible until :meth:`complete`.

    Parts go up on a background thread while the caller keeps producing the next one;
    at most ``MAX_IN_FLIGHT`` parts are buffered, so memory stays bounded.
    """

    MAX_IN_FLIGHT = 4

    def __init__(self, storage: Storage, key: str, part_bytes: int,
                 content_type: str | None = None):
        self.storage = storage
        self.key = key
        self.part_bytes = part_bytes
        self.content_type = content_type
        self._buffer: list[bytes] = []  # joined once per part: one copy of each byte
        self._buffered = 0
        self._futures: list[Future[dict[str, Any]]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._upload_id: str | None = None

    def write(self, data: bytes) -> None:
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered >= self.part_bytes:
            self._flush_part()

    def _flush_part(self) -> None:
        client, bucket = self.storage.client, self.storage.bucket
        if self._upload_id is None:
            extra = {"ContentType": self.content_type} if self.content_type else {}
            created = self.storage._call(
                "upload", client.create_multipart_upload, Bucket=bucket, Key=self.key, **extra
            )
            self._upload_id = created["UploadId"]
            self._pool = ThreadPoolExecutor(max_workers=self.MAX_IN_FLIGHT,
                                            thread_name_prefix="s3-part")
        assert self._pool is not None
        in_flight = [f for f in self._futures if not f.done()]
        if len(in_flight) >= self.MAX_IN_FLIGHT:
            in_flight[0].result()  # back-pressure; raises if that part failed
        number = len(self._futures) + 1
        body = self._take()
        self._futures.append(self._pool.submit(self._upload_part, number, body))

    def _take(self) -> bytes:
        body = b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        return body

    def _upload_part(self, number: int, body: bytes) -> dict[str, Any]:
        _part_type.value = self.content_type
        try:
            part = self.storage._call(
                "upload", self.storage.client.upload_part, Bucket=self.storage.bucket,
                Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=body,
            )
        finally:
            _part_type.value = None
        return {"ETag": part["ETag"], "PartNumber": number}

    def complete(self) -> None:
        if self._upload_id is None:  # small object: one plain PUT
            self.storage.put_bytes(self.key, self._take(), self.content_type)
            return
        if self._buffer:
            self._flush_part()
        try:
            parts = [f.result() for f in self._futures]
        except BaseException:
            self.abort()
            raise
        self._shutdown()
        self.storage._call(
            "upload", self.storage.client.complete_multipart_upload,
            Bucket=self.storage.bucket, Key=self.key, UploadId=self._upload_id,
            MultipartUpload={"Parts": parts},
        )

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def abort(self) -> None:
        self._buffer.clear()
        self._buffered = 0
        self._shutdown()
        if self._upload_id is None:
            return
        # an abandoned upload is invisible and expires; never mask the real error
        with contextlib.suppress(*S3_ERRORS):
            self.storage.client.abort_multipart_upload(
                Bucket=self.storage.bucket, Key=self.key, UploadId=self._upload_id
            )
        self._upload_id = None


@lru_cache(maxsize=1)
def get_storage() -> Storage:
    return storage_for(get_settings())


def storage_for(settings: Settings) -> Storage:
    public = settings.s3_public_endpoint_url
    return Storage(make_client(settings), settings.s3_bucket,
                   make_client(settings, public) if public else None)
