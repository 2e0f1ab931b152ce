"""Security headers on every kind of response, and API docs served without a CDN."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from app.api.edge import max_body_bytes
from app.runtime import Runtime


def test_every_v1_response_is_no_store_and_nosniff(client: TestClient, runtime: Runtime) -> None:
    responses = {
        "401": client.get("/v1/subjects"),
        "404 route": client.get("/v1/nothing-here"),
        "405": client.put("/v1/verify"),
        "413": client.post(
            "/v1/verify",
            content=b" " * (max_body_bytes(runtime.settings) + 1),
            headers={"content-type": "application/json"},
        ),
    }
    for label, response in responses.items():
        assert response.headers["cache-control"] == "no-store", label
        assert response.headers["x-content-type-options"] == "nosniff", label
        assert "strict-transport-security" not in response.headers, label  # plain HTTP
    assert [r.status_code for r in responses.values()] == [401, 404, 405, 413]


def test_a_route_cannot_loosen_cache_control(client: TestClient) -> None:
    # The headers are replaced, not appended: one Cache-Control, ours.
    response = client.get("/v1/subjects")
    assert response.headers.get_list("cache-control") == ["no-store"]


def test_swagger_ui_and_redoc_load_only_this_services_assets(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200
        assert html.headers["content-type"].startswith("text/html")
        urls = re.findall(r"""(?:src|href|url)\s*[=:(]\s*['"]([^'"]+)['"]""", html.text)
        assets = [u for u in urls if u.endswith((".js", ".css", ".png"))]
        assert assets, page
        for url in urls:
            assert not url.startswith(("http:", "https:", "//")), (page, url)
        for asset in assets:
            fetched = client.get(asset)
            assert fetched.status_code == 200, asset
            assert len(fetched.content) > 1000, asset
    assert client.get("/openapi.json").json()["info"]["title"] == "wajah"


def test_missing_docs_assets_are_404_not_500(client: TestClient) -> None:
    for path in ("/docs/assets/nope.js", "/docs/assets/../static/redoc.standalone.js"):
        assert client.get(path).status_code == 404
