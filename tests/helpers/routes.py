"""The access paths to a sandbox's port: the gateway (by URI and by header) and the server
proxy (at the root and under `/v1`), for tests that must hold on every one."""

from __future__ import annotations

from tests.helpers.servers import ServerProcess

ROUTES = ("gateway-uri", "gateway-header", "proxy", "proxy-v1")


def route(server: ServerProcess, sandbox_id: str, port: int,
          kind: str) -> tuple[str, dict[str, str]]:
    """(base URL, extra headers) that reach `port` of `sandbox_id` by the path `kind`."""
    if kind == "gateway-uri":
        return f"{server.gateway_url}/{sandbox_id}/{port}", {}
    if kind == "gateway-header":
        return server.gateway_url, {"OpenSandbox-Ingress-To": f"{sandbox_id}-{port}"}
    if kind == "proxy":
        return f"{server.url}/sandboxes/{sandbox_id}/proxy/{port}", {}
    if kind == "proxy-v1":
        return f"{server.url}/v1/sandboxes/{sandbox_id}/proxy/{port}", {}
    raise ValueError(kind)


def ws_url(base: str) -> str:
    return "ws://" + base.removeprefix("http://")
