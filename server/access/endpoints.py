"""What `GET /v1/sandboxes/{id}/endpoints/{port}` hands out: how to reach a port.

Three shapes, none with a scheme (clients add `http://`):
- the gateway in `uri` mode: `host:gateway-port/<id>/<port>`;
- the gateway in `header` mode: `host:gateway-port`, plus `OpenSandbox-Ingress-To`;
- the server proxy (`use_server_proxy=true`): `<Host header>/sandboxes/<id>/proxy/<port>`.
A signed endpoint (`expires`) adds the route's expiry and signature: `…/<id>/<port>/<exp>/
<sig>`, or `<id>-<port>-<exp>-<sig>` in the header. The execd port's endpoint also carries
the sandbox's execd token when tokens are on, the egress port's (18080) its
`OPENSANDBOX-EGRESS-AUTH` token (as upstream's does for a sandbox with an egress sidecar),
and an unsigned endpoint of a secured sandbox its `OpenSandbox-Secure-Access` token.
"""

from __future__ import annotations

from typing import Any

from opensandbox_emulator.server.access.signing import SignedRoute
from opensandbox_emulator.server.config import Config

EXECD_PORT = 44772
EGRESS_PORT = 18080
EGRESS_AUTH_HEADER = "OPENSANDBOX-EGRESS-AUTH"
INGRESS_HEADER = "OpenSandbox-Ingress-To"
SECURE_ACCESS_HEADER = "OpenSandbox-Secure-Access"


def hostname_of(host_header: str) -> str:
    """`localhost:8080` -> `localhost`; `[::1]:8080` -> `[::1]`."""
    if host_header.startswith("["):
        return host_header[: host_header.index("]") + 1] if "]" in host_header else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def endpoint_for(*, config: Config, sandbox_id: str, port: int, use_server_proxy: bool,
                 host_header: str, gateway_port: int, token: str | None,
                 signed: SignedRoute | None = None,
                 secure_token: str | None = None,
                 egress_token: str | None = None) -> dict[str, Any]:
    headers: dict[str, str] = {}
    if use_server_proxy:
        host = config.server.eip or host_header
        endpoint = f"{host}/sandboxes/{sandbox_id}/proxy/{port}"
    else:
        host = config.gateway.public_host or hostname_of(host_header)
        if config.gateway.mode == "header":
            endpoint = f"{host}:{gateway_port}"
            headers[INGRESS_HEADER] = f"{sandbox_id}-{port}"
            if signed is not None:
                headers[INGRESS_HEADER] += f"-{signed.token_suffix}"
        else:
            endpoint = f"{host}:{gateway_port}/{sandbox_id}/{port}"
            if signed is not None:
                endpoint += f"/{signed.expires_b36}/{signed.signature}"
    if token is not None and port == EXECD_PORT:
        headers["X-EXECD-ACCESS-TOKEN"] = token
    if egress_token is not None and port == EGRESS_PORT:
        headers[EGRESS_AUTH_HEADER] = egress_token
    if secure_token is not None and signed is None:
        headers[SECURE_ACCESS_HEADER] = secure_token
    body: dict[str, Any] = {"endpoint": endpoint}
    if headers:
        body["headers"] = headers
    return body
