"""The API's own documentation: /docs and /redoc work without internet (their scripts
and styles come from the API, from a package's assets, not a CDN), and the OpenAPI
document says what the API does: a bearer key, the upload's multipart body, 400 (not
422) with the error envelope for bad input."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.conftest import StackInfo, TenantHandle

CHROMIUM = Path("/usr/bin/chromium")


def assets(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)=["']?([^"' >]+)""", html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_everything_from_the_api(stack: StackInfo, page: str) -> None:
    html = httpx.get(stack.api_url + page, timeout=30)
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    found = assets(html.text)
    assert any(a.endswith(".js") for a in found), found
    for url in found:
        assert not url.startswith(("http://", "https://", "//")), url  # nothing remote
        asset = httpx.get(stack.api_url + url, timeout=30)
        assert asset.status_code == 200 and len(asset.content) > 100, url


def test_the_openapi_document_has_the_key_the_body_and_the_real_errors(
        stack: StackInfo, tenant: TenantHandle) -> None:
    doc = httpx.get(stack.api_url + "/openapi.json", timeout=30).json()
    assert doc["components"]["securitySchemes"]["bearer"] == {
        **doc["components"]["securitySchemes"]["bearer"], "type": "http", "scheme": "bearer"}
    assert doc["security"] == [{"bearer": []}]
    assert doc["paths"]["/healthz"]["get"]["security"] == []  # no key needed there
    upload = doc["paths"]["/v1/files"]["post"]
    body = upload["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["file"]["format"] == "binary"
    assert set(body["required"]) == {"file", "purpose"}
    create = doc["paths"]["/v1/fine_tuning/jobs"]["post"]["responses"]
    assert create["400"]["content"]["application/json"]["schema"]["$ref"] == \
        "#/components/schemas/Error"
    # and the API does answer so: a 400 in that envelope where FastAPI would say 422
    answer = tenant.client.post("/v1/fine_tuning/jobs", json={"model": 7})
    assert answer.status_code == 400
    assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
    assert all("422" not in ops[m]["responses"] or m == "post"
               for ops in doc["paths"].values() for m in ops)
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def test_swagger_ui_and_redoc_render_offline_in_a_browser(stack: StackInfo) -> None:
    """Chromium with every request off the API's host refused: both pages still render
    the API (nothing they need lives elsewhere; ``refused`` lists what they tried)."""
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: `make test` installs Debian's chromium package "
                    "with apt-get when it can (root and a reachable package mirror)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is in the dev extras: make install")
    refused: list[str] = []

    def offline(route: object) -> None:
        url = route.request.url  # type: ignore[attr-defined]
        if url.startswith(stack.api_url):
            route.continue_()  # type: ignore[attr-defined]
        else:
            refused.append(url)
            route.abort()  # type: ignore[attr-defined]

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM),
                                     args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.route("**/*", offline)
        page.goto(f"{stack.api_url}/docs")
        page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
        assert "loramill" in page.inner_text(".swagger-ui .info .title")
        page.wait_for_selector("[data-path='/v1/fine_tuning/jobs']", timeout=30_000)
        page.goto(f"{stack.api_url}/redoc")
        page.wait_for_selector("h1", timeout=30_000)
        assert "loramill" in page.inner_text("h1")
        browser.close()
