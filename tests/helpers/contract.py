"""Checks of responses against the upstream OpenAPI files in `../shared/specs`.

Each check skips the test when `../shared` is absent (a user's checkout has no copy), and
otherwise validates status, headers and body against the operation the request hit.
"""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.conftest import spec_validator


@functools.cache
def _spec(name: str) -> Any:
    return spec_validator(name)  # parsing a spec takes a while: once per spec


def _validate(spec: str, response: httpx.Response, server: str, path: str,
              send_body: bool) -> None:
    from openapi_core.testing import MockRequest, MockResponse

    api = _spec(spec)
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


def assert_execd_spec(response: httpx.Response) -> None:
    """Validate an execd response reached through the gateway's `/<id>/44772/…` URI."""
    url_path = urlsplit(str(response.request.url)).path
    _validate("execd-api.yaml", response, "http://localhost:44772",
              "/" + url_path.split("/", 3)[3], send_body=False)


def assert_lifecycle_spec(response: httpx.Response, spec: str = "sandbox-lifecycle.yml") -> None:
    """Validate a Lifecycle API response (at the root or under `/v1`)."""
    path = urlsplit(str(response.request.url)).path
    _validate(spec, response, "http://localhost:8080",
              path if path.startswith("/v1/") else "/v1" + path, send_body=True)
