"""A sandbox's network, on both runtimes: ports of its own, and a way out.

Two sandboxes listen on the same port at once, and every way of reaching a port (the
gateway by URI and by header, the server proxy, the endpoints the API hands out) reaches
each one's own. Outbound traffic reaches a host outside: a network namespace this test
builds (the tests' "internet"), which stands for the world.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.app_sandboxes import host_volume, wait_until_served
from tests.helpers.frames import split_frames
from tests.helpers.servers import ServerProcess, create_body, execd_url, new_sandbox
from tests.helpers.test_internet import InternetUnavailable, TestInternet

PORT = 8000


@pytest.fixture(scope="session")
def server(execd_server: ServerProcess) -> ServerProcess:
    """Every test of this module runs on both runtimes."""
    return execd_server


def route(server: ServerProcess, sandbox_id: str, port: int, kind: str) -> tuple[str, dict]:
    if kind == "gateway-uri":
        return f"{server.gateway_url}/{sandbox_id}/{port}", {}
    if kind == "gateway-header":
        return server.gateway_url, {"OpenSandbox-Ingress-To": f"{sandbox_id}-{port}"}
    return f"{server.url}/sandboxes/{sandbox_id}/proxy/{port}", {}


def test_two_sandboxes_serve_their_own_content_on_the_same_port(server: ServerProcess,
                                                                 tmp_path: Path) -> None:
    sandboxes: dict[str, str] = {}
    try:
        for name in ("first", "second"):
            content = tmp_path / name
            content.mkdir()
            (content / "whoami.txt").write_text(name)
            os.chmod(content, 0o755)
            body = create_body(server, entrypoint=[
                "python3", "-m", "http.server", str(PORT), "--bind", "127.0.0.1",
                "--directory", "/srv/site"], volumes=[host_volume("site", content, "/srv/site")])
            response = httpx.post(f"{server.url}/v1/sandboxes", json=body, timeout=60)
            assert response.status_code == 202, response.text
            sandboxes[name] = response.json()["id"]
        for name, sandbox_id in sandboxes.items():
            wait_until_served(f"{server.gateway_url}/{sandbox_id}/{PORT}/whoami.txt")
            for kind in ("gateway-uri", "gateway-header", "proxy"):
                base, headers = route(server, sandbox_id, PORT, kind)
                response = httpx.get(f"{base}/whoami.txt", headers=headers, timeout=30)
                assert (response.status_code, response.text) == (200, name), kind
            for use_proxy in ("false", "true"):
                endpoint = httpx.get(f"{server.url}/v1/sandboxes/{sandbox_id}/endpoints/{PORT}",
                                     params={"use_server_proxy": use_proxy}, timeout=30).json()
                response = httpx.get(f"http://{endpoint['endpoint']}/whoami.txt",
                                     headers=endpoint.get("headers") or {}, timeout=30)
                assert response.text == name, endpoint
    finally:
        for sandbox_id in sandboxes.values():
            httpx.delete(f"{server.url}/v1/sandboxes/{sandbox_id}", timeout=60)


def test_ports_are_per_sandbox_in_header_mode_too(start_server: object,
                                                  server: ServerProcess) -> None:
    """The gateway in `header` mode hands out header endpoints; each still reaches its own."""
    header = start_server(like=server, gateway={"mode": "header"})  # type: ignore[operator]
    ids = []
    try:
        for name in ("one", "two"):
            script = (f"import http.server as h\nclass H(h.BaseHTTPRequestHandler):\n"
                      f"    def do_GET(self):\n        self.send_response(200)\n"
                      f"        self.send_header('Content-Length', '{len(name)}')\n"
                      f"        self.end_headers()\n        self.wfile.write(b'{name}')\n"
                      f"h.HTTPServer(('127.0.0.1', {PORT}), H).serve_forever()\n")
            ids.append((name, new_sandbox(header, entrypoint=["python3", "-c", script])))
        for name, sandbox_id in ids:
            endpoint = httpx.get(f"{header.url}/v1/sandboxes/{sandbox_id}/endpoints/{PORT}",
                                 timeout=30).json()
            assert endpoint["headers"]["OpenSandbox-Ingress-To"] == f"{sandbox_id}-{PORT}"
            deadline = time.monotonic() + 30
            while True:
                response = httpx.get(f"http://{endpoint['endpoint']}/",
                                     headers=endpoint["headers"], timeout=30)
                if response.status_code != 502 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert (response.status_code, response.text) == (200, name)
    finally:
        for _, sandbox_id in ids:
            httpx.delete(f"{header.url}/v1/sandboxes/{sandbox_id}", timeout=60)


# --- outbound --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def outside_host() -> Iterator[tuple[str, str]]:
    """(URL, what it answers): an HTTP server of the tests' "internet", a network namespace
    reached from this host over a veth pair (`tests/helpers/test_internet.py`)."""
    try:
        internet = TestInternet().start()
    except InternetUnavailable as error:
        pytest.skip(str(error))
    yield internet.url(internet.address("alpha")), "alpha"
    internet.stop()


def test_outbound_reaches_a_host_outside(server: ServerProcess,
                                         outside_host: tuple[str, str]) -> None:
    url, token = outside_host
    sandbox_id = new_sandbox(server)
    try:
        code = ("import urllib.request; "
                f"print(urllib.request.urlopen({url!r}, timeout=20).read().decode())")
        response = httpx.post(f"{execd_url(server, sandbox_id)}/command",
                              json={"command": "python3 -c " + shlex.quote(code)}, timeout=60)
        events = split_frames(response.content)
        assert [e["text"] for e in events if e["type"] == "stdout"] == [token], events
    finally:
        httpx.delete(f"{server.url}/v1/sandboxes/{sandbox_id}", timeout=60)
