"""Streaming multipart/form-data reader for uploads.

Starlette's form parser spools whole files before the endpoint runs; this reader hands
each chunk of the ``file`` part to a sink as it arrives, so a 200 MB upload is hashed,
validated and sent to S3 while it is still being received, and an oversized one is
refused before it is stored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from core.errors import InvalidRequest, UnsupportedMediaType

MAX_FIELD_BYTES = 4096
BATCH_BYTES = 1024 * 1024  # hand data to the worker thread in ~1 MiB batches


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    name: str | None = None
    filename: str | None = None
    value: bytearray = field(default_factory=bytearray)


@dataclass
class Form:
    fields: dict[str, str]
    filename: str | None
    file_seen: bool


async def stream_form(
    request: Request, file_field: str, on_file_start: Callable[[str | None], None],
    on_file_data: Callable[[bytes], None],
) -> Form:
    """Parse the request body; ``on_file_data`` runs in a worker thread with batches of
    the file part's bytes in order. Small form fields are returned in ``Form.fields``."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise UnsupportedMediaType(
            "uploads must be multipart/form-data with a 'file' part and a 'purpose' field"
        )
    fields: dict[str, str] = {}
    pending: list[bytes] = []
    buffered = [0]
    form = Form(fields=fields, filename=None, file_seen=False)
    part = _Part()
    header_name, header_value = bytearray(), bytearray()

    def part_begin() -> None:
        nonlocal part
        part = _Part()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def header_end() -> None:
        name = header_name.decode("latin-1").lower()
        part.headers[name] = header_value.decode("utf-8", "replace")
        header_name.clear()
        header_value.clear()

    def headers_finished() -> None:
        _, disp = parse_options_header(part.headers.get("content-disposition", ""))
        part.name = disp.get(b"name", b"").decode("utf-8", "replace") or None
        raw_filename = disp.get(b"filename")
        part.filename = raw_filename.decode("utf-8", "replace") if raw_filename else None
        if part.name == file_field:
            if form.file_seen:
                raise InvalidRequest("send exactly one 'file' part", param="file")
            form.file_seen = True
            form.filename = part.filename
            on_file_start(part.filename)

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

    parser = MultipartParser(params[b"boundary"], callbacks={
        "on_part_begin": part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": header_end,
        "on_headers_finished": headers_finished, "on_part_data": part_data,
        "on_part_end": part_end,
    })
    async for chunk in request.stream():
        try:
            parser.write(chunk)
        except MultipartParseError as exc:
            raise InvalidRequest(f"malformed multipart body: {exc}") from exc
        if buffered[0] >= BATCH_BYTES:
            batch, pending[:], buffered[0] = b"".join(pending), [], 0
            await run_in_threadpool(on_file_data, batch)
    request.state.body_done = True
    try:
        parser.finalize()
    except MultipartParseError as exc:
        raise InvalidRequest(f"malformed multipart body: {exc}") from exc
    if pending:
        await run_in_threadpool(on_file_data, b"".join(pending))
    return form


async def drain(request: Request, limit: int = 64 * 1024 * 1024) -> None:
    """Read (and drop) what is left of a refused body so the client sees our answer."""
    if getattr(request.state, "body_done", False):
        return
    seen = 0
    try:
        while seen <= limit:
            message = await request.receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return
    except Exception:  # the client went away; nothing to answer
        return
