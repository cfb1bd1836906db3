"""Reverse proxying to a TCP address: HTTP and WebSocket, streamed both ways.

A request body is streamed to the target as it arrives, and the response body back as it
comes, so server-sent events flow live and a large transfer runs in bounded memory. The
response keeps its framing: with `Content-Length` upstream, the same `Content-Length`
downstream; chunked stays chunked. Hop-by-hop headers are dropped in both directions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
from starlette.types import Message, Receive, Scope, Send
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from server.errors import BadGateway

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "trailers", "transfer-encoding", "upgrade", "proxy-connection"}
# Never forwarded into a sandbox: the lifecycle API key is for the server alone.
STRIPPED_REQUEST = {"host", "open-sandbox-api-key"}


def _hop_by_hop(headers: list[tuple[bytes, bytes]]) -> set[str]:
    names = set(HOP_BY_HOP)
    for key, value in headers:
        if key.lower() == b"connection":
            names |= {v.strip().lower() for v in value.decode("latin-1").split(",")}
    return names


def request_headers(scope: Scope) -> list[tuple[str, str]]:
    """The client's headers, less hop-by-hop ones and the API key, plus X-Forwarded-*."""
    raw: list[tuple[bytes, bytes]] = list(scope.get("headers", []))
    drop = _hop_by_hop(raw) | STRIPPED_REQUEST | {"x-forwarded-for", "x-forwarded-proto",
                                                  "x-forwarded-host"}
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw
               if k.decode("latin-1").lower() not in drop]
    original = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}
    client = scope.get("client") or ("", 0)
    chain = original.get("x-forwarded-for")
    headers.append(("x-forwarded-for", f"{chain}, {client[0]}" if chain else str(client[0])))
    headers.append(("x-forwarded-proto", original.get("x-forwarded-proto", scope.get("scheme",
                                                                                    "http"))))
    if "host" in original:
        headers.append(("x-forwarded-host", original.get("x-forwarded-host", original["host"])))
    return headers


def target_url(scheme: str, host: str, port: int, path: str, query: bytes) -> str:
    url = f"{scheme}://{host}:{port}{path or '/'}"
    if query:
        url += "?" + query.decode("latin-1")
    return url


class HttpForwarder:
    """Forwards HTTP requests with one shared connection pool."""

    def __init__(self) -> None:
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10.0),
                                         follow_redirects=False, trust_env=False)

    async def close(self) -> None:
        await self._client.aclose()

    async def forward(self, scope: Scope, receive: Receive, send: Send, *, host: str, port: int,
                      path: str) -> None:
        url = target_url("http", host, port, path, scope.get("query_string", b""))
        headers = request_headers(scope)
        names = {k.lower() for k, _ in scope["headers"]}
        has_body = b"content-length" in names or b"transfer-encoding" in names

        async def body() -> AsyncIterator[bytes]:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                if chunk:
                    yield chunk
                if not message.get("more_body", False):
                    return

        request = self._client.build_request(scope["method"], url, headers=headers,
                                             content=body() if has_body else None)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TransportError as error:
            raise BadGateway(f"Could not connect to the sandbox port {port} at {host}:{port}: "
                             f"{error or type(error).__name__}. Is a server listening on that "
                             "port inside the sandbox?") from error
        try:
            raw = [(k, v) for k, v in response.headers.raw]
            drop = _hop_by_hop(raw)
            out = [(k.lower(), v) for k, v in raw if k.decode("latin-1").lower() not in drop]
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": out})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


async def forward_websocket(scope: Scope, receive: Receive, send: Send, *, host: str, port: int,
                            path: str) -> None:
    """Accept the client's WebSocket once the target accepted, then relay frames."""
    url = target_url("ws", host, port, path, scope.get("query_string", b""))
    protocols = list(scope.get("subprotocols") or [])
    skip = {"host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version",
            "sec-websocket-extensions", "sec-websocket-protocol", "open-sandbox-api-key"}
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
               if k.decode("latin-1").lower() not in skip]
    first = await receive()
    if first["type"] != "websocket.connect":
        return
    try:
        upstream = await ws_connect(url, additional_headers=headers,
                                    subprotocols=protocols or None,  # type: ignore[arg-type]
                                    open_timeout=10, max_size=None, compression=None)
    except (OSError, InvalidHandshake, TimeoutError) as error:
        status = error.response.status_code if isinstance(error, InvalidStatus) else 502
        await send({"type": "websocket.http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        body = ('{"code":"GENERAL::UNKNOWN_ERROR","message":"Could not open a WebSocket to the '
                f'sandbox port {port}: {type(error).__name__}"}}').encode()
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})

    async def client_to_upstream() -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "websocket.disconnect":
                await upstream.close(code=message.get("code", 1000))
                return
            if message.get("bytes") is not None:
                await upstream.send(message["bytes"])
            elif message.get("text") is not None:
                await upstream.send(message["text"])

    async def upstream_to_client() -> None:
        try:
            async for data in upstream:
                if isinstance(data, bytes):
                    await send({"type": "websocket.send", "bytes": data})
                else:
                    await send({"type": "websocket.send", "text": data})
        except ConnectionClosed:
            pass
        code = upstream.close_code or 1000
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": code})

    tasks = [asyncio.create_task(client_to_upstream()), asyncio.create_task(upstream_to_client())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        await upstream.close()
