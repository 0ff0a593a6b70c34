"""Streaming multipart/form-data reader for uploads.

Starlette's form parser spools whole files before the endpoint runs; this reader hands
each chunk of the ``file`` part to a sink as it arrives, so a 200 MB upload is hashed,
validated and sent to S3 while it is still being received, and an oversized one is
refused before it is stored.

It is strict, and every refusal is answered at once (:func:`refuse`): exactly one file
part; a bounded number of small fields; bounded part headers; a filename that is UTF-8
text (``filename*``, which RFC 7578 forbids, is refused); the closing boundary present; the
whole body within the limit the caller gives.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import anyio
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from core.kit.errors import InvalidRequest, LoramillError, UnsupportedMediaType

MAX_FIELDS = 16  # form fields besides the file
MAX_FIELD_BYTES = 4096  # each
MAX_PART_HEADER_BYTES = 8192  # all header lines of one part
# what a form may add to its file's bytes: fields, part headers, boundaries
FORM_OVERHEAD = (MAX_FIELDS + 1) * (MAX_FIELD_BYTES + MAX_PART_HEADER_BYTES + 512)
BATCH_BYTES = 1024 * 1024  # hand data to the worker thread in ~1 MiB batches
DRAIN_BYTES = 64 * 1024 * 1024  # read at most this much of a refused body ...
DRAIN_SECONDS = 10.0  # ... for at most this long, then close the connection
_EXTENDED_PARAM = re.compile(rb";\s*[A-Za-z-]+\*\s*=")


class Body:
    """The request body as it arrives (Starlette's stream, which knows when the last part
    has come, so a refusal never waits for more body than there is)."""

    def __init__(self, request: Request):
        self._stream = request.stream()
        self.done = False
        self.seen = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            self.seen += len(chunk)
            if chunk:
                yield chunk
        self.done = True

    async def drain(self) -> bool:
        """Read and drop the rest of a refused body, within bounds; whether it ended (so
        the connection can carry the next request)."""
        start = self.seen
        with anyio.move_on_after(DRAIN_SECONDS):
            try:
                async for _ in self.chunks():
                    if self.seen - start > DRAIN_BYTES:
                        return False
            except ClientDisconnect:
                return False
        return self.done


async def refuse(body: Body, error: LoramillError) -> LoramillError:
    """Make ``error`` the answer to a request whose body may still be arriving: read what is
    left if that is quick, else answer now and close the connection."""
    if not body.done and not await body.drain():
        error.headers = {**(error.headers or {}), "Connection": "close"}
    return error


@dataclass
class _Part:
    headers: dict[str, bytes] = field(default_factory=dict)
    header_bytes: int = 0
    name: str | None = None
    filename: str | None = None
    value: bytearray = field(default_factory=bytearray)


@dataclass
class Form:
    fields: dict[str, str]
    filename: str | None
    file_seen: bool


def _malformed(exc: MultipartParseError) -> InvalidRequest:
    return InvalidRequest(f"malformed multipart body: {exc}", code="invalid_multipart")


def _text(raw: bytes | None, what: str) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"the {what} is not valid UTF-8", param="file") from None


async def stream_form(
    body: Body, content_type_header: str, file_field: str,
    on_file_start: Callable[[str | None], object], on_file_data: Callable[[bytes], None], *,
    max_body_bytes: int, too_large: Callable[[], LoramillError],
) -> Form:
    """Parse the body; ``on_file_data`` runs in a worker thread with batches of the file
    part's bytes in order. Small form fields are returned in ``Form.fields``."""
    content_type, params = parse_options_header(content_type_header)
    if content_type != b"multipart/form-data" or not params.get(b"boundary"):
        raise UnsupportedMediaType(
            "uploads must be multipart/form-data with a 'file' part and a 'purpose' field"
        )
    fields: dict[str, str] = {}
    pending: list[bytes] = []
    buffered = [0]
    form = Form(fields=fields, filename=None, file_seen=False)
    part = _Part()
    header_name, header_value = bytearray(), bytearray()
    ended = [False]
    parts = [0]

    def part_begin() -> None:
        nonlocal part
        part = _Part()
        parts[0] += 1
        if parts[0] > MAX_FIELDS + 1:
            raise InvalidRequest(f"an upload has one 'file' part and at most {MAX_FIELDS} "
                                 "other fields")

    def header_data(target: bytearray) -> Callable[[bytes, int, int], None]:
        def add(data: bytes, start: int, end: int) -> None:
            target.extend(data[start:end])
            part.header_bytes += end - start
            if part.header_bytes > MAX_PART_HEADER_BYTES:
                raise InvalidRequest(f"the headers of a form part are longer than "
                                     f"{MAX_PART_HEADER_BYTES} bytes")
        return add

    def header_end() -> None:
        part.headers[header_name.decode("latin-1").lower()] = bytes(header_value)
        header_name.clear()
        header_value.clear()

    def headers_finished() -> None:
        raw = part.headers.get("content-disposition", b"")
        if _EXTENDED_PARAM.search(raw):
            raise InvalidRequest("form parts must not use extended parameters such as "
                                 "filename* (RFC 7578): send the name in filename, as UTF-8",
                                 param="file")
        _, disposition = parse_options_header(raw)
        part.name = _text(disposition.get(b"name"), "form field name") or None
        part.filename = _text(disposition.get(b"filename"), "filename")
        if part.name == file_field:
            if form.file_seen:
                raise InvalidRequest("send exactly one 'file' part", param="file")
            form.file_seen = True
            form.filename = part.filename
            on_file_start(part.filename)
        elif len(fields) >= MAX_FIELDS:
            raise InvalidRequest(f"an upload has at most {MAX_FIELDS} form fields besides "
                                 "the file")

    def part_data(data: bytes, start: int, end: int) -> None:
        if part.name == file_field:
            pending.append(data[start:end])
            buffered[0] += end - start
        else:
            part.value += data[start:end]
            if len(part.value) > MAX_FIELD_BYTES:
                raise InvalidRequest(
                    f"form field {part.name!r} is longer than {MAX_FIELD_BYTES} bytes",
                    param=part.name,
                )

    def part_end() -> None:
        if part.name and part.name != file_field:
            fields[part.name] = part.value.decode("utf-8", "replace")

    def end() -> None:
        ended[0] = True

    parser = MultipartParser(params[b"boundary"], callbacks={
        "on_part_begin": part_begin, "on_header_field": header_data(header_name),
        "on_header_value": header_data(header_value), "on_header_end": header_end,
        "on_headers_finished": headers_finished, "on_part_data": part_data,
        "on_part_end": part_end, "on_end": end,
    })
    async for chunk in body.chunks():
        if body.seen > max_body_bytes:
            raise too_large()
        try:
            parser.write(chunk)
        except MultipartParseError as exc:
            raise _malformed(exc) from exc
        if buffered[0] >= BATCH_BYTES:
            batch, pending[:], buffered[0] = b"".join(pending), [], 0
            await run_in_threadpool(on_file_data, batch)
    try:
        parser.finalize()
    except MultipartParseError as exc:
        raise _malformed(exc) from exc
    if not ended[0]:
        raise InvalidRequest("the multipart body ends without its closing boundary "
                             "('--' + boundary + '--'); the upload may have been cut short",
                             code="invalid_multipart")
    if pending:
        await run_in_threadpool(on_file_data, b"".join(pending))
    return form
