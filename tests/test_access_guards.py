"""What keeps a web page the developer visits away from the server: no CORS unless asked
for, and only on the Lifecycle API; a `Host` check against DNS rebinding on every port;
the API key from a file or the environment rather than a command line. Also: `OPTIONS`
and `405` name the real methods, and renew is capped like create.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.helpers.contract import assert_error, assert_lifecycle_spec
from tests.helpers.servers import EXECD_PORT, ServerProcess, execd_url, launch, new_sandbox

EVIL = "http://evil.example"
PREFLIGHT = {"Origin": EVIL, "Access-Control-Request-Method": "GET",
             "Access-Control-Request-Headers": "open-sandbox-api-key"}


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control")}


# --- CORS --------------------------------------------------------------------------------------


def test_no_cors_by_default_anywhere(server: ServerProcess, sandbox_id: str) -> None:
    """A foreign page's preflight and its reads get no CORS header: the browser refuses
    them. The proxy route and the gateway, which reach execd, are the same."""
    proxy = f"{server.url}/v1/sandboxes/{sandbox_id}/proxy/{EXECD_PORT}/ping"
    gateway = f"{execd_url(server, sandbox_id)}/ping"
    for url in (f"{server.url}/v1/sandboxes", f"{server.url}/sandboxes", proxy, gateway):
        preflight = httpx.options(url, headers=PREFLIGHT)
        assert not cors_headers(preflight), (url, preflight.headers)
        read = httpx.get(url, headers={"Origin": EVIL})
        assert read.status_code == 200, (url, read.text)
        assert not cors_headers(read), (url, read.headers)


def test_listed_origins_get_cors_on_the_lifecycle_api_only(
        start_server: Callable[..., ServerProcess]) -> None:
    friend = "http://localhost:5173"
    server = start_server(server={"cors_origins": [friend]})
    sandbox_id = new_sandbox(server)
    listed = httpx.get(f"{server.url}/v1/sandboxes", headers={"Origin": friend})
    assert listed.headers["access-control-allow-origin"] == friend
    preflight = httpx.options(f"{server.url}/v1/sandboxes/{sandbox_id}",
                              headers={**PREFLIGHT, "Origin": friend,
                                       "Access-Control-Request-Method": "DELETE"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == friend
    # Any other origin may not read it.
    other = httpx.get(f"{server.url}/v1/sandboxes", headers={"Origin": EVIL})
    assert "access-control-allow-origin" not in other.headers
    # The proxy route and the gateway: never, not even for a listed origin.
    for url in (f"{server.url}/sandboxes/{sandbox_id}/proxy/{EXECD_PORT}/ping",
                f"{execd_url(server, sandbox_id)}/ping"):
        for response in (httpx.options(url, headers={**PREFLIGHT, "Origin": friend}),
                         httpx.get(url, headers={"Origin": friend})):
            assert not cors_headers(response), (url, response.headers)


def test_a_cors_origin_that_is_not_an_origin_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="cors_origins"):
        launch({"server": {"cors_origins": ["localhost:3000"]}}, tmp_path)


# --- the Host check ----------------------------------------------------------------------------


def test_a_foreign_host_is_refused_on_every_port(server: ServerProcess,
                                                 sandbox_id: str) -> None:
    """DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1."""
    urls = [f"{server.url}/v1/sandboxes", f"{server.url}/health",
            f"{server.url}/sandboxes/{sandbox_id}/proxy/{EXECD_PORT}/ping",
            f"{execd_url(server, sandbox_id)}/ping"]
    for url in urls:
        refused = httpx.get(url, headers={"Host": "evil.example"})
        assert_error(refused, 403, "GENERAL::HOST_NOT_ALLOWED", "evil.example")
        refused = httpx.get(url, headers={"Host": f"evil.example:{server.port}"})
        assert_error(refused, 403, "GENERAL::HOST_NOT_ALLOWED")
    # A WebSocket handshake too (written by hand: clients set Host from the URL).
    with socket.create_connection(("127.0.0.1", server.gateway_port), timeout=10) as raw:
        raw.sendall(f"GET /{sandbox_id}/8080/ HTTP/1.1\r\nHost: evil.example\r\n"
                    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        status_line = raw.makefile("rb").readline()
    assert status_line.split()[1] == b"403", status_line


def test_loopback_names_are_allowed(server: ServerProcess) -> None:
    for host in ("localhost", f"localhost:{server.port}", "127.0.0.1", "127.1.2.3:80",
                 "[::1]:8080", "LOCALHOST.", "app.localhost"):
        assert httpx.get(f"{server.url}/health", headers={"Host": host}).status_code == 200, host


def test_configured_hosts_are_allowed_and_star_allows_any(
        start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(server={"eip": "sandbox.internal:8080",
                                  "allowed_hosts": ["dev-box.lan"]},
                          gateway={"public_host": "gw.example.test"})
    for host in ("sandbox.internal:8080", "dev-box.lan", "DEV-BOX.LAN:9", "gw.example.test"):
        assert httpx.get(f"{server.url}/v1/sandboxes", headers={"Host": host}
                         ).status_code == 200, host
    assert httpx.get(f"{server.url}/health", headers={"Host": "other.lan"}).status_code == 403
    anything = start_server(server={"allowed_hosts": ["*"]})
    assert httpx.get(f"{anything.url}/health", headers={"Host": "other.lan"}).status_code == 200


# --- the API key -------------------------------------------------------------------------------


def requires(server: ServerProcess, key: str) -> None:
    assert_error(httpx.get(f"{server.url}/v1/sandboxes"), 401, "MISSING_API_KEY")
    assert_error(httpx.get(f"{server.url}/v1/sandboxes",
                           headers={"OPEN-SANDBOX-API-KEY": key + "x"}), 401, "INVALID_API_KEY")
    good = httpx.get(f"{server.url}/v1/sandboxes", headers={"OPEN-SANDBOX-API-KEY": key})
    assert good.status_code == 200
    assert_lifecycle_spec(good)
    assert key not in "".join(server.output), "the key was printed"


def test_the_api_key_from_the_environment(tmp_path: Path) -> None:
    server = launch({}, tmp_path, env={"OPENSANDBOX_API_KEY": "from-the-env"})
    try:
        requires(server, "from-the-env")
        assert "from-the-env" not in Path(f"/proc/{server.process.pid}/cmdline").read_text()
    finally:
        server.stop()


@pytest.mark.parametrize(("mode", "warned"), [(0o600, False), (0o644, True)])
def test_the_api_key_from_a_file(tmp_path: Path, mode: int, warned: bool) -> None:
    """The file's first line is the key; a file others can read is warned about."""
    key_file = tmp_path / "api-key"
    key_file.write_text("from-a-file\nanything after the first line\n")
    key_file.chmod(mode)
    server = launch({"server": {"api_key_file": str(key_file)}}, tmp_path)
    try:
        requires(server, "from-a-file")
        warnings = [line for line in server.output if "can be read by other users" in line]
        assert bool(warnings) == warned, server.output
    finally:
        server.stop()


def test_a_missing_key_file_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="api_key_file"):
        launch({"server": {"api_key_file": str(tmp_path / "nothing")}}, tmp_path)


def test_the_api_key_flag_still_works_but_warns(tmp_path: Path) -> None:
    server = launch({}, tmp_path, args=["--api-key", "on-the-line"])
    try:
        requires(server, "on-the-line")
        assert any("visible" in line or "every local process" in line
                   for line in server.output), server.output
    finally:
        server.stop()


def test_the_environment_wins_over_the_config_file(tmp_path: Path) -> None:
    server = launch({"server": {"api_key": "from-config"}}, tmp_path,
                    env={"OPENSANDBOX_API_KEY": "from-env"})
    try:
        requires(server, "from-env")
    finally:
        server.stop()


# --- methods and renew -------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "methods"), [
    ("/v1/sandboxes", "GET, POST, OPTIONS"),
    ("/sandboxes/{id}", "GET, DELETE, OPTIONS"),
    ("/v1/sandboxes/{id}/pause", "POST, OPTIONS"),
    ("/v1/sandboxes/{id}/endpoints/8080", "GET, OPTIONS"),
])
def test_options_and_405_list_the_real_methods(http: httpx.Client, sandbox_id: str,
                                               path: str, methods: str) -> None:
    path = path.replace("{id}", sandbox_id)
    answered = http.options(path)
    assert answered.status_code == 204
    assert answered.headers["allow"] == methods
    refused = http.put(path)
    assert_error(refused, 405, "GENERAL::METHOD_NOT_ALLOWED")
    assert refused.headers["allow"] == methods
    assert_error(http.options("/v1/nothing-here"), 404, "GENERAL::NOT_FOUND")


def test_options_on_execd_lists_its_methods(server: ServerProcess, sandbox_id: str) -> None:
    with httpx.Client(base_url=execd_url(server, sandbox_id)) as execd:
        assert execd.options("/command").headers["allow"] == "POST, DELETE, OPTIONS"
        assert execd.options("/files").headers["allow"] == "DELETE, OPTIONS"
        refused = execd.put("/files/info")
        assert_error(refused, 405, "GENERAL::METHOD_NOT_ALLOWED")
        assert refused.headers["allow"] == "GET, OPTIONS"


def test_renew_is_capped_like_create(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(server={"max_sandbox_timeout_seconds": 3600})
    sandbox_id = new_sandbox(server, timeout=600)
    url = f"{server.url}/v1/sandboxes/{sandbox_id}/renew-expiration"
    now = datetime.now(UTC)
    far = (now + timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")
    refused = httpx.post(url, json={"expiresAt": far})
    assert_error(refused, 400, "DOCKER::INVALID_EXPIRATION", "max_sandbox_timeout_seconds")
    assert_lifecycle_spec(refused)
    near = (now + timedelta(minutes=50)).strftime("%Y-%m-%dT%H:%M:%SZ")
    renewed = httpx.post(url, json={"expiresAt": near})
    assert renewed.status_code == 200, renewed.text
