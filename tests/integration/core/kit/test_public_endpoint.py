"""Presigned download URLs name the address users reach the store by
(LORAMILL_S3_PUBLIC_ENDPOINT_URL), not the services' own, and work through it."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from core.kit.settings import get_settings
from core.kit.storage import get_storage, storage_for
from tests.conftest import StackInfo


def test_urls_are_signed_for_the_public_endpoint(stack: StackInfo) -> None:
    settings = get_settings()
    internal = urlsplit(stack.s3_endpoint_url)
    # the same store under another name, as a user outside compose's network reaches it
    public = f"http://localhost:{internal.port}"
    storage = get_storage()
    storage.put_bytes("tests/public-endpoint.txt", b"hello")
    outside = storage_for(settings.model_copy(update={"s3_public_endpoint_url": public}))
    url = outside.presigned_get("tests/public-endpoint.txt", 60, filename="a.txt")
    assert urlsplit(url).hostname == "localhost"
    assert httpx.get(url).content == b"hello"
    assert urlsplit(storage.presigned_get("tests/public-endpoint.txt", 60)).hostname == \
        internal.hostname  # without one: the services' own address
