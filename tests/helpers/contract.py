"""Checks of responses against the contract: the upstream OpenAPI files in `../shared/specs`,
and the `{"code","message"}` shape of every error.

Each spec check skips the test when `../shared` is absent (a user's checkout has no copy),
and otherwise validates status, headers and body against the operation the request hit.
"""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.helpers import ROOT

SPECS = ROOT.parent / "shared" / "specs"


@functools.cache
def spec_validator(name: str) -> Any:
    """An openapi-core `OpenAPI` for `../shared/specs/<name>` (parsed once: that takes a
    while), or skip when it is absent."""
    path = SPECS / name
    if not path.exists():
        pytest.skip(f"{path} is not here (contract checks need ../shared)")
    from openapi_core import OpenAPI

    return OpenAPI.from_file_path(str(path))


def _validate(spec: str, response: httpx.Response, server: str, path: str,
              send_body: bool) -> None:
    from openapi_core.testing import MockRequest, MockResponse

    api = spec_validator(spec)
    args: dict[str, Any] = {}
    for key, value in httpx.QueryParams(urlsplit(str(response.request.url)).query).multi_items():
        args.setdefault(key, value)
    request = MockRequest(server, response.request.method.lower(), path, args=args,
                          data=(response.request.content or None) if send_body else None)
    content_type = response.headers.get("content-type", "").split(";")[0]
    data: bytes | str = response.content
    if content_type == "application/octet-stream":
        data = response.content.decode("latin-1")  # openapi-core wants binary as a str
    api.validate_response(request, MockResponse(
        data, status_code=response.status_code, headers=dict(response.headers),
        content_type=content_type or "application/json"))


def assert_execd_spec(response: httpx.Response, spec: str = "execd-api.yaml") -> None:
    """Validate an execd response reached through the gateway's `/<id>/44772/…` URI
    (against upstream's newest execd spec with `spec="head/execd-api.yaml"`)."""
    url_path = urlsplit(str(response.request.url)).path
    _validate(spec, response, "http://localhost:44772",
              "/" + url_path.split("/", 3)[3], send_body=False)


def assert_lifecycle_spec(response: httpx.Response, spec: str = "sandbox-lifecycle.yml") -> None:
    """Validate a Lifecycle API response (at the root or under `/v1`)."""
    path = urlsplit(str(response.request.url)).path
    _validate(spec, response, "http://localhost:8080",
              path if path.startswith("/v1/") else "/v1" + path, send_body=True)


def assert_egress_spec(response: httpx.Response) -> None:
    """Validate an egress API response (port 18080, reached through the gateway or the
    server proxy) against upstream's newest egress spec."""
    url_path = urlsplit(str(response.request.url)).path
    _validate("head/egress-api.yaml", response, "http://localhost:18080",
              url_path.split("/18080", 1)[1] or "/", send_body=True)


def assert_error(response: httpx.Response, status: int, code: str,
                 mentions: str | None = None) -> dict[str, str]:
    """An error answer: the status, exactly `{"code","message"}` with upstream's code, a
    message that is not blank and, with `mentions`, contains that text."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message"}, body
    assert body["code"] == code, body
    assert body["message"].strip(), body
    if mentions is not None:
        assert mentions in body["message"], body
    return dict(body)
