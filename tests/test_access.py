"""Sandbox access over raw HTTP: how clients reach a sandbox's execd and application ports.

Every path into a sandbox is exercised the same way: the gateway by URI, the gateway by the
`OpenSandbox-Ingress-To` header, and the server proxy route at the root and under `/v1`.
Application ports are served by `tests/helpers/sandbox_app.py` (or `python3 -m http.server`)
running inside a real sandbox. The application-port tests (those on `app_server`) run on both
runtimes: `[fake]`, a container with a network of its own, and `[docker]`, a container
reached at its bridge address (or, for an application bound to the container's loopback,
through the runtime's relay). The rest test the access layer itself, on the fake runtime.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.helpers.app_sandboxes import app_sandbox_body, free_port, host_volume, wait_until_served
from tests.helpers.routes import ROUTES, route, ws_url
from tests.helpers.servers import ServerProcess, create_body, launch

EXECD = 44772


def raw_request(url: str, method: str = "GET", headers: dict[str, str] | None = None,
                body: bytes | None = None) -> tuple[int, list[tuple[str, str]], bytes]:
    """One request with exactly the given headers (plus Host), nothing added by a client
    library; returns the status, the response headers in order and the body."""
    parsed = httpx.URL(url)
    connection = http.client.HTTPConnection(parsed.host, parsed.port, timeout=30)
    try:
        target = parsed.raw_path.decode()
        connection.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", f"{parsed.host}:{parsed.port}")
        for key, value in (headers or {}).items():
            connection.putheader(key, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


def header_values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name.lower()]


def assert_error(response: httpx.Response, status: int, code_part: str = "") -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message"}, body
    assert code_part in body["code"], body
    assert body["message"], body
    return body  # type: ignore[no-any-return]


def start_sandbox(client: httpx.Client, body: dict[str, Any]) -> str:
    response = client.post("/v1/sandboxes", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def wait_for_state(client: httpx.Client, sandbox_id: str, state: str) -> None:
    deadline = time.monotonic() + 20
    current = None
    while time.monotonic() < deadline:
        current = client.get(f"/v1/sandboxes/{sandbox_id}").json()["status"]["state"]
        if current == state:
            return
        time.sleep(0.05)
    raise AssertionError(f"sandbox {sandbox_id} stayed {current}, never {state}")


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def app_server(execd_server: ServerProcess) -> ServerProcess:
    """The server of the application-port tests: each runs on both runtimes."""
    return execd_server


@pytest.fixture
def app_http(app_server: ServerProcess) -> Iterator[httpx.Client]:
    with app_server.client() as client:
        yield client


@pytest.fixture(scope="module")
def app(app_server: ServerProcess) -> Iterator[tuple[str, int]]:
    """(sandbox id, port) of a sandbox running the helper app server, shared by the module's
    tests on the same runtime."""
    port = free_port()
    with app_server.client() as client:
        sandbox_id = start_sandbox(client, app_sandbox_body(port, image=app_server.image))
        wait_until_served(f"{app_server.gateway_url}/{sandbox_id}/{port}/echo")
        yield sandbox_id, port
        client.delete(f"/v1/sandboxes/{sandbox_id}")


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = launch({"execd": {"access_token": True}}, tmp_path_factory.mktemp("tokens"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def header_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = launch({"gateway": {"mode": "header"}}, tmp_path_factory.mktemp("header"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def key_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = launch({"server": {"api_key": "sekret"}}, tmp_path_factory.mktemp("apikey"))
    yield running
    running.stop()


# --- endpoints -------------------------------------------------------------------------------


def test_uri_mode_endpoint_ends_in_the_port(server: ServerProcess, http: httpx.Client,
                                             sandbox_id: str) -> None:
    for port in (EXECD, 18080, 8080, 1, 65535):
        response = http.get(f"/v1/sandboxes/{sandbox_id}/endpoints/{port}")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body.pop("endpoint") == f"127.0.0.1:{server.gateway_port}/{sandbox_id}/{port}"
        # The egress API's endpoint carries the sandbox's egress token, no other one a header.
        assert list(body.get("headers", {})) == (["OPENSANDBOX-EGRESS-AUTH"]
                                                  if port == 18080 else [])
    for port in (0, 65536):
        assert_error(http.get(f"/v1/sandboxes/{sandbox_id}/endpoints/{port}"), 400,
                     "INVALID_PORT")
    assert_error(http.get(f"/v1/sandboxes/{uuid.uuid4()}/endpoints/{EXECD}"), 404, "NOT_FOUND")


def test_direct_endpoint_uses_the_host_the_client_used(server: ServerProcess,
                                                       http: httpx.Client,
                                                       sandbox_id: str) -> None:
    # Names the Host check lets through: loopback ones (tests/test_access_guards.py has
    # the configured ones).
    for host, expected in (("app.localhost:9000", "app.localhost"),
                           ("[::1]:9000", "[::1]"), ("localhost", "localhost")):
        response = http.get(f"/v1/sandboxes/{sandbox_id}/endpoints/8080",
                            headers={"Host": host})
        assert response.json() == {
            "endpoint": f"{expected}:{server.gateway_port}/{sandbox_id}/8080"}, host


def test_server_proxy_endpoint_uses_the_host_header(server: ServerProcess, http: httpx.Client,
                                                    sandbox_id: str) -> None:
    response = http.get(f"/v1/sandboxes/{sandbox_id}/endpoints/{EXECD}",
                        params={"use_server_proxy": "true"})
    assert response.json() == {
        "endpoint": f"127.0.0.1:{server.port}/sandboxes/{sandbox_id}/proxy/{EXECD}"}
    response = http.get(f"/v1/sandboxes/{sandbox_id}/endpoints/8080",
                        params={"use_server_proxy": "true"},
                        headers={"Host": "app.localhost:9000"})
    assert response.json() == {
        "endpoint": f"app.localhost:9000/sandboxes/{sandbox_id}/proxy/8080"}


def test_endpoint_gives_a_working_execd_address(server: ServerProcess, http: httpx.Client,
                                                sandbox_id: str) -> None:
    for use_proxy in ("false", "true"):
        endpoint = http.get(f"/v1/sandboxes/{sandbox_id}/endpoints/{EXECD}",
                            params={"use_server_proxy": use_proxy}).json()
        assert "headers" not in endpoint  # tokens are off by default
        response = httpx.get(f"http://{endpoint['endpoint']}/ping")
        assert response.status_code == 200, response.text


def test_header_mode_endpoint_and_both_routings(header_server: ServerProcess) -> None:
    with header_server.client() as client:
        sandbox_id = start_sandbox(client, create_body())
        endpoint = client.get(f"/v1/sandboxes/{sandbox_id}/endpoints/{EXECD}").json()
        assert endpoint == {"endpoint": f"127.0.0.1:{header_server.gateway_port}",
                            "headers": {"OpenSandbox-Ingress-To": f"{sandbox_id}-{EXECD}"}}
        by_header = httpx.get(f"http://{endpoint['endpoint']}/ping", headers=endpoint["headers"])
        assert by_header.status_code == 200, by_header.text
        by_uri = httpx.get(f"{header_server.gateway_url}/{sandbox_id}/{EXECD}/ping")
        assert by_uri.status_code == 200, by_uri.text
        proxied = client.get(f"/v1/sandboxes/{sandbox_id}/endpoints/{EXECD}",
                             params={"use_server_proxy": True}).json()
        assert proxied == {
            "endpoint": f"127.0.0.1:{header_server.port}/sandboxes/{sandbox_id}/proxy/{EXECD}"}
        client.delete(f"/v1/sandboxes/{sandbox_id}")


def test_uri_mode_gateway_also_routes_by_header(server: ServerProcess, sandbox_id: str) -> None:
    response = httpx.get(f"{server.gateway_url}/ping",
                         headers={"OpenSandbox-Ingress-To": f"{sandbox_id}-{EXECD}"})
    assert response.status_code == 200, response.text


# --- /ping -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ROUTES)
def test_ping_is_an_empty_200_with_content_length_zero(server: ServerProcess, sandbox_id: str,
                                                       kind: str) -> None:
    base, headers = route(server, sandbox_id, EXECD, kind)
    status, response_headers, body = raw_request(base + "/ping", headers=headers)
    assert status == 200
    assert body == b""
    assert header_values(response_headers, "content-length") == ["0"]
    assert header_values(response_headers, "transfer-encoding") == []


# --- execd access tokens ---------------------------------------------------------------------


def test_execd_token_rules(token_server: ServerProcess) -> None:
    with token_server.client() as client:
        first = start_sandbox(client, create_body())
        second = start_sandbox(client, create_body())
        endpoint = client.get(f"/v1/sandboxes/{first}/endpoints/{EXECD}").json()
        token = endpoint["headers"]["X-EXECD-ACCESS-TOKEN"]
        assert token and endpoint["endpoint"].endswith(f"/{first}/{EXECD}")
        proxied = client.get(f"/v1/sandboxes/{first}/endpoints/{EXECD}",
                             params={"use_server_proxy": "true"}).json()
        assert proxied["headers"] == {"X-EXECD-ACCESS-TOKEN": token}
        other_token = client.get(f"/v1/sandboxes/{second}/endpoints/{EXECD}").json()[
            "headers"]["X-EXECD-ACCESS-TOKEN"]
        assert other_token != token
        # Only the execd port carries a token.
        assert "headers" not in client.get(f"/v1/sandboxes/{first}/endpoints/8080").json()

        for kind in ROUTES:
            base, headers = route(token_server, first, EXECD, kind)
            missing = assert_error(httpx.get(base + "/ping", headers=headers), 401)
            assert "X-EXECD-ACCESS-TOKEN" in missing["message"]
            assert f"/v1/sandboxes/{first}/endpoints/{EXECD}" in missing["message"]
            for wrong in ("nope", other_token):
                assert_error(httpx.get(base + "/ping",
                                       headers={**headers, "X-EXECD-ACCESS-TOKEN": wrong}), 401)
            good = httpx.get(base + "/ping", headers={**headers, "X-EXECD-ACCESS-TOKEN": token})
            assert good.status_code == 200, (kind, good.text)
            assert good.content == b""
        # The endpoint as handed out works as is.
        for body in (endpoint, proxied):
            response = httpx.get(f"http://{body['endpoint']}/ping", headers=body["headers"])
            assert response.status_code == 200, response.text
        # Other ports need no token: nothing listens on 1, so the answer is 502, not 401.
        base, _ = route(token_server, first, 1, "gateway-uri")
        assert_error(httpx.get(base + "/"), 502)
        for sandbox_id in (first, second):
            client.delete(f"/v1/sandboxes/{sandbox_id}")


# --- application ports: what is forwarded ----------------------------------------------------


@pytest.mark.parametrize("kind", ROUTES)
def test_query_string_and_encoded_path_are_forwarded(app_server: ServerProcess,
                                                     app: tuple[str, int], kind: str) -> None:
    base, headers = route(app_server, *app, kind)
    for target in ("/echo?path=/tmp/a%20b&x=1&x=2", "/echo/a%20b%3Fc%2Fd?q=%26&r=%2F",
                   "/echo/", "/echo//double/"):
        status, _, body = raw_request(base + target, headers=headers)
        assert status == 200
        assert httpx.Response(200, content=body).json()["path"] == target


@pytest.mark.parametrize("kind", ROUTES)
def test_request_headers_forwarded_with_hop_by_hop_and_api_key_dropped(
        app_server: ServerProcess, app: tuple[str, int], kind: str) -> None:
    base, headers = route(app_server, *app, kind)
    sent = {**headers, "Connection": "keep-alive, X-Hop", "X-Hop": "drop me",
            "Keep-Alive": "timeout=5", "TE": "trailers", "Proxy-Authorization": "Basic eA==",
            "OPEN-SANDBOX-API-KEY": "secret-key", "X-Custom": "kept",
            "X-Forwarded-For": "10.1.2.3"}
    status, _, body = raw_request(base + "/echo", headers=sent)
    assert status == 200
    echo = httpx.Response(200, content=body).json()
    received: dict[str, list[str]] = {}
    for key, value in echo["headers"]:
        received.setdefault(key.lower(), []).append(value)
    for dropped in ("x-hop", "keep-alive", "te", "proxy-authorization", "open-sandbox-api-key",
                    "opensandbox-ingress-to"):
        assert dropped not in received, (dropped, received)
    assert received.get("connection", ["keep-alive"]) == ["keep-alive"]
    assert received["x-custom"] == ["kept"]
    assert received["x-forwarded-for"] == ["10.1.2.3, 127.0.0.1"]
    assert received["x-forwarded-proto"] == ["http"]
    front_port = app_server.gateway_port if kind.startswith("gateway") else app_server.port
    assert received["x-forwarded-host"] == [f"127.0.0.1:{front_port}"]
    # Nothing the client did not send: no user agent, no Accept-Encoding of our own.
    for added in ("user-agent", "accept-encoding", "accept"):
        assert added not in received, (added, received)
    assert received["host"] == [f"127.0.0.1:{app[1]}"]


@pytest.mark.parametrize("kind", ROUTES)
def test_response_headers_drop_hop_by_hop_and_are_not_doubled(
        app_server: ServerProcess, app: tuple[str, int], kind: str) -> None:
    base, headers = route(app_server, *app, kind)
    status, response_headers, _ = raw_request(base + "/echo?hop=1", headers=headers)
    assert status == 200
    names = [k.lower() for k, _ in response_headers]
    for dropped in ("x-resp-hop", "keep-alive", "proxy-authenticate", "trailer"):
        assert dropped not in names, response_headers
    assert header_values(response_headers, "x-resp-kept") == ["yes"]
    assert header_values(response_headers, "connection") in ([], ["keep-alive"])
    for single in ("date", "server", "content-length", "content-type"):
        assert names.count(single) == 1, (single, response_headers)


@pytest.mark.parametrize("kind", ROUTES)
def test_framing_is_kept(app_server: ServerProcess, app: tuple[str, int], kind: str) -> None:
    base, headers = route(app_server, *app, kind)
    status, fixed_headers, body = raw_request(base + "/fixed?size=300000", headers=headers)
    assert status == 200 and body == b"x" * 300000
    assert header_values(fixed_headers, "content-length") == ["300000"]
    assert header_values(fixed_headers, "transfer-encoding") == []
    status, chunked_headers, body = raw_request(base + "/chunked?n=4", headers=headers)
    assert status == 200 and body == b"chunk 0\nchunk 1\nchunk 2\nchunk 3\n"
    assert header_values(chunked_headers, "transfer-encoding") == ["chunked"]
    assert header_values(chunked_headers, "content-length") == []


@pytest.mark.parametrize("kind", ROUTES)
def test_stream_reaches_the_client_before_it_ends(app_server: ServerProcess, app: tuple[str, int],
                                                  kind: str) -> None:
    """The app holds its stream open until told to finish; told only once the client has
    the first chunk. A buffering proxy would deliver nothing until the app's 20 s limit."""
    base, headers = route(app_server, *app, kind)
    gate = uuid.uuid4().hex
    with httpx.stream("GET", f"{base}/gate?id={gate}", headers=headers, timeout=30) as response:
        chunks = response.iter_bytes()
        first = next(chunks)
        assert first == b"first\n"
        httpx.get(f"{base}/release?id={gate}", headers=headers).raise_for_status()
        rest = b"".join(chunks)
    assert rest == b"released\n"


@pytest.mark.parametrize("kind", ["gateway-uri", "proxy"])
def test_client_leaving_a_stream_closes_it_upstream(app_server: ServerProcess,
                                                    app: tuple[str, int], kind: str) -> None:
    base, headers = route(app_server, *app, kind)
    name = uuid.uuid4().hex
    with httpx.stream("GET", f"{base}/forever?id={name}", headers=headers,
                      timeout=30) as response:
        chunks = response.iter_bytes()  # kept: dropping it would close the connection
        assert next(chunks).startswith(b"tick")
        assert name in httpx.get(f"{base}/open", headers=headers).json()
    deadline = time.monotonic() + 10
    while name in httpx.get(f"{base}/open", headers=headers).json():
        assert time.monotonic() < deadline, ("the upstream stream outlived its client:\n"
                                             + "".join(app_server.output[-30:]))
        time.sleep(0.05)


@pytest.mark.parametrize("kind", ["gateway-uri", "proxy-v1"])
def test_uploads_stream_through(app_server: ServerProcess, app: tuple[str, int], kind: str) -> None:
    base, headers = route(app_server, *app, kind)
    block = os.urandom(1 << 20)
    digest = hashlib.sha256(block * 8).hexdigest()

    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            yield block

    def framing(echo: dict[str, Any]) -> tuple[str | None, str | None]:
        seen = {k.lower(): v for k, v in echo["headers"]}
        return seen.get("content-length"), seen.get("transfer-encoding")

    chunked = httpx.post(f"{base}/echo", content=chunks(), headers=headers, timeout=60).json()
    assert (chunked["body_bytes"], chunked["body_sha256"]) == (8 << 20, digest)
    assert framing(chunked) == (None, "chunked")
    fixed = httpx.put(f"{base}/echo", content=block * 8, headers=headers, timeout=60).json()
    assert (fixed["method"], fixed["body_sha256"]) == ("PUT", digest)
    assert framing(fixed) == (str(8 << 20), None)


@pytest.mark.parametrize("kind", ["gateway-uri", "proxy"])
def test_many_open_streams_do_not_starve_other_requests(app_server: ServerProcess,
                                                        app: tuple[str, int], kind: str) -> None:
    """More long-lived streams than a default connection pool holds (100) stay open, each
    gets its first chunk, and a plain request still goes through."""
    base, headers = route(app_server, *app, kind)
    url = httpx.URL(base)
    names = [uuid.uuid4().hex for _ in range(110)]
    sockets = []
    try:
        for name in names:
            sock = socket.create_connection((url.host, url.port), timeout=15)
            sockets.append(sock)
            request = (f"GET {url.raw_path.decode().rstrip('/')}/gate?id={name} HTTP/1.1\r\n"
                       f"Host: {url.host}:{url.port}\r\n")
            request += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
            sock.sendall(request.encode())
        for sock in sockets:
            received = b""
            while b"first" not in received:
                chunk = sock.recv(4096)
                assert chunk, "stream closed before its first chunk"
                received += chunk
        response = httpx.get(base + "/echo", headers=headers, timeout=15)
        assert response.status_code == 200
    finally:
        with httpx.Client(headers=headers, timeout=15) as client:
            for name in names:
                client.get(f"{base}/release?id={name}")
        for sock in sockets:
            sock.close()


def test_proxy_route_shapes_and_methods(app_server: ServerProcess, app: tuple[str, int]) -> None:
    sandbox_id, port = app
    for prefix in ("", "/v1"):
        base = f"{app_server.url}{prefix}/sandboxes/{sandbox_id}/proxy/{port}"
        for suffix, seen in (("", "/"), ("/", "/"), ("/echo", "/echo"), ("/echo/x/y", "/echo/x/y")):
            response = httpx.get(base + suffix)
            assert response.status_code == 200, (suffix, response.text)
            assert response.json()["path"] == seen
        for method in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
            response = httpx.request(method, base + "/echo")
            assert response.status_code == 200, (method, response.text)
            assert response.json()["method"] == method
        get = httpx.get(base + "/fixed?size=1234")
        head = httpx.head(base + "/fixed?size=1234")
        assert head.status_code == 200
        assert head.content == b""
        assert head.headers["content-length"] == get.headers["content-length"] == "1234"
    # A port glued to more characters is not the proxy route.
    response = httpx.get(f"{app_server.url}/sandboxes/{sandbox_id}/proxy/{port}abc")
    assert_error(response, 404)


@pytest.mark.parametrize("bind", ["127.0.0.1", "0.0.0.0"])
def test_http_server_entrypoint_serves_a_file(app_server: ServerProcess, bind: str) -> None:
    """The common recipe: a sandbox whose entrypoint is `python3 -m http.server <port>`,
    listening on the sandbox's loopback only or on every interface."""
    port = free_port()
    content = os.urandom(300_000)
    with tempfile.TemporaryDirectory() as directory, app_server.client() as client:
        Path(directory, "data.bin").write_bytes(content)
        body = create_body(app_server,
                           entrypoint=["python3", "-m", "http.server", str(port),
                                       "--bind", bind, "--directory", "/srv/data"],
                           volumes=[host_volume("data", directory, "/srv/data")])
        sandbox_id = start_sandbox(client, body)
        try:
            wait_until_served(f"{app_server.gateway_url}/{sandbox_id}/{port}/")
            for kind in ROUTES:
                base, headers = route(app_server, sandbox_id, port, kind)
                response = httpx.get(base + "/data.bin", headers=headers)
                assert response.status_code == 200, (kind, response.text)
                assert response.content == content
                assert response.headers["content-length"] == str(len(content))
            for use_proxy in ("false", "true"):
                endpoint = client.get(f"/v1/sandboxes/{sandbox_id}/endpoints/{port}",
                                      params={"use_server_proxy": use_proxy}).json()
                assert httpx.get(f"http://{endpoint['endpoint']}/data.bin").content == content
        finally:
            client.delete(f"/v1/sandboxes/{sandbox_id}")


# --- WebSocket -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ROUTES)
def test_websocket_echo(app_server: ServerProcess, app: tuple[str, int], kind: str) -> None:
    base, headers = route(app_server, *app, kind)
    big = os.urandom(200_000)
    sent = {**headers, "OPEN-SANDBOX-API-KEY": "secret-key", "X-Custom": "kept"}
    target = "/ws?hello=1&p=a%2Fb"
    with ws_connect(ws_url(base) + target, additional_headers=sent,
                    subprotocols=["echo.v1"], open_timeout=10) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "echo.v1"
        hello = json.loads(ws.recv(timeout=10))
        assert hello["path"] == target
        received = {k.lower(): v for k, v in hello["headers"]}
        assert received["host"] == f"127.0.0.1:{app[1]}"
        assert received["x-custom"] == "kept"
        assert received["x-forwarded-proto"] == "http"
        assert received["x-forwarded-for"] == "127.0.0.1"
        assert "open-sandbox-api-key" not in received
        assert "opensandbox-ingress-to" not in received
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        ws.send(big)
        assert ws.recv(timeout=10) == big
        ws.ping().wait(10)


@pytest.mark.parametrize("kind", ["gateway-header", "proxy"])
def test_websocket_refused_by_the_app_is_passed_on(app_server: ServerProcess, app: tuple[str, int],
                                                   kind: str) -> None:
    base, headers = route(app_server, *app, kind)
    with pytest.raises(InvalidStatus) as rejected:
        ws_connect(ws_url(base) + "/not-ws", additional_headers=headers, open_timeout=10)
    assert rejected.value.response.status_code == 403
    assert rejected.value.response.body == b"no websocket here"


# --- errors and states -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ROUTES)
def test_unknown_sandbox_is_404(server: ServerProcess, kind: str) -> None:
    base, headers = route(server, str(uuid.uuid4()), EXECD, kind)
    body = assert_error(httpx.get(base + "/ping", headers=headers), 404, "NOT_FOUND")
    assert "not found" in body["message"].lower()
    base, headers = route(server, str(uuid.uuid4()), 8000, kind)
    assert_error(httpx.post(base + "/x", headers=headers, content=b"abc"), 404)
    with pytest.raises(InvalidStatus) as rejected:
        ws_connect(ws_url(base) + "/ws", additional_headers=headers, open_timeout=10)
    assert rejected.value.response.status_code == 404


@pytest.mark.parametrize("kind", ROUTES)
def test_port_where_nothing_listens_is_502(app_server: ServerProcess, app: tuple[str, int],
                                           kind: str) -> None:
    base, headers = route(app_server, app[0], free_port(), kind)
    body = assert_error(httpx.get(base + "/anything?x=1", headers=headers), 502)
    assert "listening" in body["message"]
    with pytest.raises(InvalidStatus) as rejected:
        ws_connect(ws_url(base) + "/ws", additional_headers=headers, open_timeout=10)
    assert rejected.value.response.status_code == 502


def test_bad_routes_and_ports(server: ServerProcess, sandbox_id: str) -> None:
    assert_error(httpx.get(f"{server.gateway_url}/ping"), 404, "ROUTE")
    assert_error(httpx.get(f"{server.gateway_url}/ping",
                           headers={"OpenSandbox-Ingress-To": "no-port-here"}), 404, "ROUTE")
    for port in (0, 70000):
        assert_error(httpx.get(f"{server.gateway_url}/{sandbox_id}/{port}/ping"), 400, "PORT")
        assert_error(httpx.get(f"{server.url}/sandboxes/{sandbox_id}/proxy/{port}/ping"), 400,
                     "PORT")


def test_paused_sandbox_answers_503_until_resumed(app_server: ServerProcess,
                                                  app_http: httpx.Client) -> None:
    port = free_port()
    sandbox_id = start_sandbox(app_http, app_sandbox_body(port, image=app_server.image))
    try:
        wait_until_served(f"{app_server.gateway_url}/{sandbox_id}/{port}/echo")
        assert app_http.post(f"/v1/sandboxes/{sandbox_id}/pause").status_code == 202
        for kind in ROUTES:
            for target_port, path in ((EXECD, "/ping"), (port, "/echo")):
                base, headers = route(app_server, sandbox_id, target_port, kind)
                body = assert_error(httpx.get(base + path, headers=headers), 503, "PAUSED")
                assert "resume" in body["message"]
        wait_for_state(app_http, sandbox_id, "Paused")
        base, headers = route(app_server, sandbox_id, port, "proxy")
        with pytest.raises(InvalidStatus) as rejected:
            ws_connect(ws_url(base) + "/ws", open_timeout=10)
        assert rejected.value.response.status_code == 503
        assert app_http.post(f"/v1/sandboxes/{sandbox_id}/resume").status_code == 202
        for kind in ROUTES:
            for target_port, path in ((EXECD, "/ping"), (port, "/echo")):
                base, headers = route(app_server, sandbox_id, target_port, kind)
                response = httpx.get(base + path, headers=headers, timeout=20)
                assert response.status_code == 200, (kind, path, response.text)
    finally:
        app_http.delete(f"/v1/sandboxes/{sandbox_id}")


def test_sandbox_whose_entrypoint_ended_is_not_reachable(server: ServerProcess,
                                                         http: httpx.Client) -> None:
    sandbox_id = start_sandbox(http, create_body(entrypoint=["true"]))
    try:
        wait_for_state(http, sandbox_id, "Terminated")
        for kind in ROUTES:
            base, headers = route(server, sandbox_id, EXECD, kind)
            body = assert_error(httpx.get(base + "/ping", headers=headers), 503)
            assert "Terminated" in body["message"]
    finally:
        http.delete(f"/v1/sandboxes/{sandbox_id}")


def test_deleted_sandbox_is_404(server: ServerProcess, http: httpx.Client) -> None:
    sandbox_id = start_sandbox(http, create_body())
    assert httpx.get(f"{server.gateway_url}/{sandbox_id}/{EXECD}/ping").status_code == 200
    assert http.delete(f"/v1/sandboxes/{sandbox_id}").status_code == 204
    for kind in ROUTES:
        for port in (EXECD, 8080):
            base, headers = route(server, sandbox_id, port, kind)
            assert_error(httpx.get(base + "/ping", headers=headers), 404, "NOT_FOUND")


def test_stream_cut_by_deleting_the_sandbox_is_not_a_clean_end(app_server: ServerProcess,
                                                               app_http: httpx.Client) -> None:
    """A stream must not outlive the sandbox it reads from, and a stream cut short upstream
    must not look complete downstream (no final chunk)."""
    port = free_port()
    sandbox_id = start_sandbox(app_http, app_sandbox_body(port, image=app_server.image))
    base, _ = route(app_server, sandbox_id, port, "proxy")
    wait_until_served(base + "/echo")
    deleted = threading.Event()
    cut = False
    with httpx.stream("GET", f"{base}/forever?id=x", timeout=30) as response:
        chunks = response.iter_bytes()
        assert next(chunks).startswith(b"tick")

        def delete() -> None:
            app_http.delete(f"/v1/sandboxes/{sandbox_id}")
            deleted.set()

        threading.Thread(target=delete, daemon=True).start()
        try:
            for _ in chunks:
                pass
        except httpx.HTTPError:
            cut = True
    assert deleted.wait(20)
    assert cut, "the proxy ended a truncated stream as if it were complete"


# --- the API key -----------------------------------------------------------------------------


def test_proxy_route_is_exempt_from_the_api_key(key_server: ServerProcess) -> None:
    assert_error(httpx.get(f"{key_server.url}/v1/sandboxes"), 401, "MISSING_API_KEY")
    keyed = {"OPEN-SANDBOX-API-KEY": "sekret"}
    with key_server.client(headers=keyed) as client:
        port = free_port()
        sandbox_id = start_sandbox(client, app_sandbox_body(port))
        try:
            assert_error(httpx.get(f"{key_server.url}/v1/sandboxes/{sandbox_id}/endpoints/"
                                   f"{EXECD}"), 401, "MISSING_API_KEY")
            wait_until_served(f"{key_server.gateway_url}/{sandbox_id}/{port}/echo")
            for kind in ROUTES:
                base, headers = route(key_server, sandbox_id, EXECD, kind)
                assert httpx.get(base + "/ping", headers=headers).status_code == 200, kind
                base, headers = route(key_server, sandbox_id, port, kind)
                echo = httpx.get(base + "/echo", headers={**headers, **keyed}).json()
                assert "open-sandbox-api-key" not in {k.lower() for k, _ in echo["headers"]}
                with ws_connect(ws_url(base) + "/ws", additional_headers={**headers, **keyed},
                                open_timeout=10) as ws:
                    ws.send("x")
                    assert ws.recv(timeout=10) == "x"
        finally:
            client.delete(f"/v1/sandboxes/{sandbox_id}")
