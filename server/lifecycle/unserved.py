"""Routes the newest SDKs call that neither this server nor upstream's serves.

Each answers `501 {"code","message"}` naming the feature, instead of a bare 404 that reads
like a typo: templates (`Sandbox.create_from_template`, `SandboxManager.create_template`)
and the control-plane network policy (`/sandboxes/{id}/networkpolicy`, which the SDK uses
for template-backed sandboxes). The SDK's fire-and-forget creation metrics
(`POST /metrics/events`) are accepted and dropped: `204`, as nothing depends on them.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from opensandbox_emulator.server.errors import NotImplementedHere

router = APIRouter(tags=["not served"])

TEMPLATES = ("Templates (create_template, create_from_template) are not served by this "
             "server, nor by upstream's: create sandboxes from an image or a snapshotId.")
NETWORK_POLICY = ("The control-plane network policy (/sandboxes/{id}/networkpolicy) is not "
                  "served by this server, nor by upstream's: read and change a sandbox's "
                  "policy through its egress API, at the endpoint of its port 18080 "
                  "(GET /v1/sandboxes/{id}/endpoints/18080).")


@router.post("/metrics/events", status_code=204, include_in_schema=False)
async def creation_metrics() -> Response:
    return Response(status_code=204)


@router.api_route("/templates", methods=["GET", "POST"], include_in_schema=False)
@router.api_route("/templates/{template_id}", methods=["GET", "DELETE"],
                  include_in_schema=False)
async def templates() -> Response:
    raise NotImplementedHere(TEMPLATES)


@router.api_route("/sandboxes/{sandbox_id}/networkpolicy",
                  methods=["GET", "PATCH", "PUT", "DELETE"], include_in_schema=False)
async def network_policy() -> Response:
    raise NotImplementedHere(NETWORK_POLICY)
