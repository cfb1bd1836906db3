"""The last resort for a bug: `500 {"code","message"}`, `Connection: close`, the request id,
one log line naming it, and the traceback only at debug level.

The bug is a real one of an ASGI app written for the purpose (the server has none to
offer on purpose), behind the same `UnexpectedErrors` and `RequestIdMiddleware` the
server's apps sit behind.
"""

from __future__ import annotations

import logging

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from opensandbox_emulator.server.middleware import RequestIdMiddleware
from opensandbox_emulator.server.unexpected import UnexpectedErrors


async def buggy(scope: Scope, receive: Receive, send: Send) -> None:
    raise ZeroDivisionError("a bug")


@pytest.mark.anyio
async def test_a_bug_is_one_log_line_and_a_500_that_closes(
        caplog: pytest.LogCaptureFixture) -> None:
    app = RequestIdMiddleware(UnexpectedErrors(buggy))
    caplog.set_level(logging.INFO, logger="opensandbox.errors")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://localhost") as client:
        response = await client.get("/anything", headers={"X-Request-ID": "req-42"})
    assert response.status_code == 500
    assert response.json() == {"code": "GENERAL::UNKNOWN_ERROR", "message": response.json()[
        "message"]}
    assert "req-42" in response.json()["message"]
    assert "ZeroDivisionError" in response.json()["message"]
    assert response.headers["connection"] == "close"
    assert response.headers["x-request-id"] == "req-42"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "req-42" in errors[0].getMessage()
    assert errors[0].exc_info is None  # no traceback at INFO

    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="opensandbox.errors")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://localhost") as client:
        generated = await client.get("/anything")
    request_id = generated.headers["x-request-id"]
    assert request_id in generated.json()["message"]
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert debug and debug[0].exc_info is not None and request_id in debug[0].getMessage()
