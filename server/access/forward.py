"""Reverse proxying to a sandbox's port: HTTP and WebSocket, streamed both ways.

Connections come from the runtime (`connections.py`): the proxy never dials an address.

A request body is streamed to the target as it arrives, and the response body back as it
comes, so server-sent events flow live and a large transfer runs in bounded memory. The
response keeps its framing: with `Content-Length` upstream, the same `Content-Length`
downstream; chunked stays chunked. Hop-by-hop headers are dropped in both directions.

The proxy is transparent: the path goes out exactly as it came in (percent-escapes kept),
nothing the client did not send is added except `X-Forwarded-*`, and a client that leaves
mid-stream closes the upstream stream too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable

import httpx
from starlette.types import Message, Receive, Scope, Send
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from opensandbox_emulator.runtimes.failures import RuntimeFailure
from opensandbox_emulator.server.access.connections import (
    Connect,
    SandboxNetwork,
    SandboxTransport,
)
from opensandbox_emulator.server.errors import BadGateway, send_error
from opensandbox_emulator.server.shutdown import MESSAGE as SHUTDOWN_MESSAGE
from opensandbox_emulator.server.shutdown import shutdown_of
from opensandbox_emulator.tasks import until_first_ends

log = logging.getLogger("opensandbox.access")
# httpx logs every request at INFO: one line per proxied request, on top of the access log.
logging.getLogger("httpx").setLevel(logging.WARNING)

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "trailers", "transfer-encoding", "upgrade", "proxy-connection"}
# Never forwarded into a sandbox: the lifecycle API key and a secured sandbox's access
# token are for the server alone.
STRIPPED_REQUEST = {"host", "open-sandbox-api-key", "opensandbox-secure-access"}
# Response headers the front server (uvicorn) sets itself; copying the sandbox's too would
# send each twice. Like nginx, the proxy's own win.
STRIPPED_RESPONSE = {"date", "server"}
GOING_AWAY = 1001  # the WebSocket close code of a server that is stopping
WEBSOCKET_HANDSHAKE = {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
                       "sec-websocket-protocol", "sec-websocket-accept"}


class ClientGone(Exception):
    """The client disconnected while its request body was still being forwarded."""


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
    scheme = {"ws": "http", "wss": "https"}.get(scope.get("scheme", "http"),
                                                scope.get("scheme", "http"))
    headers.append(("x-forwarded-proto", original.get("x-forwarded-proto", scheme)))
    if "host" in original:
        headers.append(("x-forwarded-host", original.get("x-forwarded-host", original["host"])))
    return headers


def target_url(scheme: str, host: str, port: int, raw_path: str, query: bytes) -> str:
    """The upstream URL; `raw_path` is still percent-encoded, so `%2F` and `%3F` in a path
    segment reach the sandbox as they were sent."""
    url = f"{scheme}://{host}:{port}{raw_path or '/'}"
    if query:
        url += "?" + query.decode("latin-1")
    return url


def _bare_client(network: SandboxNetwork) -> httpx.AsyncClient:
    # No cap on connections: each proxied request holds one upstream connection for as
    # long as it lasts, and a capped pool (httpx's default is 100) would make the next
    # request wait, without a timeout, for a long-lived stream to end.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64,
                          keepalive_expiry=30)
    client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10.0),
                               transport=SandboxTransport(network, limits),
                               follow_redirects=False, trust_env=False)
    # httpx adds Accept, Accept-Encoding, Connection and User-Agent to every request by
    # default. A proxy must not: an Accept-Encoding the client never sent would get it a
    # compressed body it did not ask for.
    for name in list(client.headers):
        del client.headers[name]
    return client


class HttpForwarder:
    """Forwards HTTP requests with one shared connection pool, whose connections the
    runtime opens (`connect(sandbox_id, port)`)."""

    def __init__(self, connect: Connect) -> None:
        self.network = SandboxNetwork(connect)
        self._client = _bare_client(self.network)

    async def close(self) -> None:
        await self._client.aclose()

    def forget(self, sandbox_id: str) -> None:
        self.network.forget(sandbox_id)

    async def forward(self, scope: Scope, receive: Receive, send: Send, *, sandbox_id: str,
                      port: int, path: str) -> None:
        """Forward the request to `port` of `sandbox_id` at `path` (still
        percent-encoded). The application sees `Host: 127.0.0.1:<port>`, as if the client
        were inside the sandbox, whatever the runtime connected to."""
        url = target_url("http", self.network.route(sandbox_id), port, path,
                         scope.get("query_string", b""))
        headers = request_headers(scope)
        headers.append(("host", f"127.0.0.1:{port}"))
        names = {k.lower() for k, _ in scope["headers"]}
        has_body = b"content-length" in names or b"transfer-encoding" in names
        body_read = asyncio.Event()
        if not has_body:
            body_read.set()

        async def body() -> AsyncIterator[bytes]:
            try:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise ClientGone()
                    chunk = message.get("body", b"")
                    if chunk:
                        yield chunk
                    if not message.get("more_body", False):
                        return
            finally:
                body_read.set()

        request = self._client.build_request(scope["method"], url, headers=headers,
                                             content=body() if has_body else None)
        try:
            response = await self._client.send(request, stream=True)
        except ClientGone:
            return
        except httpx.ConnectError as error:
            raise BadGateway(str(error) or f"Could not connect to port {port} inside the "
                             "sandbox. Is a server listening on that port?") from error
        except httpx.TransportError as error:
            raise BadGateway(f"Port {port} of the sandbox did not answer: "
                             f"{error or type(error).__name__}. Is a server listening on that "
                             "port inside the sandbox?") from error
        try:
            # A stopping server cuts the response (the client sees it cut short): the
            # sandbox behind it is about to go.
            await _race(self._relay(response, send), _client_left(body_read, receive),
                        shutdown_of(scope).wait())
        finally:
            await response.aclose()

    @staticmethod
    async def _relay(response: httpx.Response, send: Send) -> None:
        raw = list(response.headers.raw)
        drop = _hop_by_hop(raw) | STRIPPED_RESPONSE
        out = [(k.lower(), v) for k, v in raw if k.decode("latin-1").lower() not in drop]
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": out})
        try:
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.TransportError as error:
            # Cut short upstream (the app died, the sandbox was deleted). Returning without
            # the final body message makes the server drop the client's connection, so the
            # client sees a truncated response (no last chunk, or too few bytes) rather than
            # one that looks complete.
            log.warning("%s %s: the sandbox cut its response short (%s); dropping the "
                        "client's connection", response.request.method, response.request.url,
                        error or type(error).__name__)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _client_left(body_read: asyncio.Event, receive: Receive) -> None:
    """Return once the client disconnects. The ASGI server drops what is sent to a gone
    client without an error, so without this an endless stream would be read forever."""
    await body_read.wait()
    while (await receive())["type"] != "http.disconnect":
        pass


async def _race(work: Awaitable[None], *stops: Awaitable[None]) -> None:
    """Run `work` until it finishes or one of `stops` does; errors of `work` propagate."""
    work_task = asyncio.ensure_future(work)
    stop_tasks = [asyncio.ensure_future(stop) for stop in stops]
    try:
        await asyncio.wait({work_task, *stop_tasks}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work_task, *stop_tasks):
            if not task.done():
                task.cancel()
        for task in (*stop_tasks, work_task):
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def forward_websocket(scope: Scope, receive: Receive, send: Send, *, connect: Connect,
                            sandbox_id: str, port: int, path: str) -> None:
    """Accept the client's WebSocket once the target accepted, then relay frames. The
    handshake goes over a connection from `connect`, addressed to `127.0.0.1:<port>`."""
    url = target_url("ws", "127.0.0.1", port, path, scope.get("query_string", b""))
    protocols = list(scope.get("subprotocols") or [])
    headers = [(k, v) for k, v in request_headers(scope)
               if k.lower() not in WEBSOCKET_HANDSHAKE]
    first = await receive()
    if first["type"] != "websocket.connect":
        return
    try:
        sock = await connect(sandbox_id, port)
    except RuntimeFailure as failure:
        await send_error(scope, send, BadGateway(failure.message))
        return
    try:
        upstream = await ws_connect(url, additional_headers=headers,
                                    subprotocols=protocols or None,  # type: ignore[arg-type]
                                    open_timeout=10, max_size=None, compression=None,
                                    user_agent_header=None, proxy=None, sock=sock)
    except InvalidStatus as error:
        # The application refused the upgrade: pass its answer on as it was.
        refused = error.response
        drop = _hop_by_hop([(k.lower().encode(), v.encode()) for k, v in
                            refused.headers.raw_items()]) | STRIPPED_RESPONSE | {"content-length"}
        out = [(k.lower().encode("latin-1"), v.encode("latin-1"))
               for k, v in refused.headers.raw_items() if k.lower() not in drop]
        await send({"type": "websocket.http.response.start", "status": refused.status_code,
                    "headers": out})
        await send({"type": "websocket.http.response.body", "body": bytes(refused.body or b"")})
        return
    except (OSError, InvalidHandshake, TimeoutError) as error:
        sock.close()
        await send_error(scope, send, BadGateway(
            f"Could not open a WebSocket to port {port} of the sandbox: "
            f"{error or type(error).__name__}. Is a server listening on that port inside the "
            "sandbox?"))
        return
    await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})

    async def client_to_upstream() -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "websocket.disconnect":
                await upstream.close(code=_sendable(message.get("code")),
                                     reason=message.get("reason") or "")
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
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": _sendable(upstream.close_code),
                        "reason": upstream.close_reason or ""})

    async def server_stopping() -> None:
        await shutdown_of(scope).wait()
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": GOING_AWAY, "reason": SHUTDOWN_MESSAGE})

    try:
        await until_first_ends(client_to_upstream(), upstream_to_client(), server_stopping())
    finally:
        await upstream.close()


def _sendable(code: int | None) -> int:
    """A close code that may go on the wire: 1005 (none given) and 1006 (dropped) are only
    ever reported, never sent."""
    return 1000 if code in (None, 1005, 1006) else code
