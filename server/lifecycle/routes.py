"""The Lifecycle API's routes: each translates HTTP to one `SandboxService` call."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from starlette.responses import JSONResponse, Response

from opensandbox_emulator.server.access.endpoints import endpoint_for
from opensandbox_emulator.server.access.signing import signed_route_expiry
from opensandbox_emulator.server.errors import InvalidPort
from opensandbox_emulator.server.lifecycle.models import (
    CreateSandboxRequest,
    CreateSnapshotRequest,
    RenewExpirationRequest,
)
from opensandbox_emulator.server.lifecycle.service import SandboxService
from opensandbox_emulator.server.lifecycle.snapshots import SnapshotService

router = APIRouter(tags=["sandboxes"])


def service(request: Request) -> SandboxService:
    return request.app.state.service  # type: ignore[no-any-return]


def snapshot_service(request: Request) -> SnapshotService:
    return request.app.state.snapshots  # type: ignore[no-any-return]


Service = Annotated[SandboxService, Depends(service)]
Snapshots = Annotated[SnapshotService, Depends(snapshot_service)]


@router.post("/sandboxes", status_code=202)
async def create_sandbox(body: CreateSandboxRequest, sandboxes: Service) -> JSONResponse:
    return JSONResponse(await sandboxes.create(body), status_code=202)


@router.get("/sandboxes")
async def list_sandboxes(
    sandboxes: Service,
    state: Annotated[list[str] | None, Query()] = None,
    metadata: Annotated[str | None, Query()] = None,
    page: Annotated[int, Query(ge=1)] = 1,
    page_size: Annotated[int, Query(alias="pageSize", ge=1, le=200)] = 20,
) -> dict[str, Any]:
    return await sandboxes.list(states=state or [], metadata=metadata, page=page,
                                page_size=page_size)


@router.get("/sandboxes/{sandbox_id}")
async def get_sandbox(sandbox_id: str, sandboxes: Service) -> dict[str, Any]:
    return await sandboxes.describe(sandbox_id)


@router.delete("/sandboxes/{sandbox_id}", status_code=204)
async def delete_sandbox(sandbox_id: str, sandboxes: Service) -> Response:
    await sandboxes.delete(sandbox_id)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/pause", status_code=202)
async def pause_sandbox(sandbox_id: str, sandboxes: Service) -> Response:
    await sandboxes.pause(sandbox_id)
    return Response(status_code=202)


@router.post("/sandboxes/{sandbox_id}/resume", status_code=202)
async def resume_sandbox(sandbox_id: str, sandboxes: Service) -> Response:
    await sandboxes.resume(sandbox_id)
    return Response(status_code=202)


@router.post("/sandboxes/{sandbox_id}/renew-expiration")
async def renew_expiration(sandbox_id: str, body: RenewExpirationRequest,
                           sandboxes: Service) -> dict[str, str]:
    return await sandboxes.renew(sandbox_id, body.expires_at)


@router.patch("/sandboxes/{sandbox_id}/metadata")
async def patch_metadata(sandbox_id: str, sandboxes: Service,
                         patch: Annotated[dict[str, str | None], Body()]) -> dict[str, Any]:
    return await sandboxes.patch_metadata(sandbox_id, patch)


@router.get("/sandboxes/{sandbox_id}/endpoints/{port}")
async def get_endpoint(sandbox_id: str, port: str, request: Request, sandboxes: Service,
                       use_server_proxy: bool = False,
                       expires: str | None = None) -> dict[str, Any]:
    expires_at = signed_route_expiry(expires, use_server_proxy)
    # Parsed here, not by FastAPI, so that "abc" gets the same INVALID_PORT as 0 or 65536.
    number = int(port) if port.isascii() and port.isdigit() else 0
    if not 1 <= number <= 65535:
        raise InvalidPort(port)
    await sandboxes.state(sandbox_id)  # 404 for an unknown sandbox
    access = request.app.state.access
    signed = None
    if expires_at is not None:
        signed = access.signer.sign(sandbox_id, number, expires_at, sandboxes.clock.now())
    return endpoint_for(config=sandboxes.config, sandbox_id=sandbox_id, port=number,
                        use_server_proxy=use_server_proxy,
                        host_header=request.headers.get("host", "127.0.0.1"),
                        gateway_port=access.gateway_port,
                        token=access.hub.get(sandbox_id).access_token, signed=signed,
                        secure_token=sandboxes.secure_access_token(sandbox_id),
                        egress_token=sandboxes.egress_token(sandbox_id))


# --- snapshots -------------------------------------------------------------------------------


@router.post("/sandboxes/{sandbox_id}/snapshots", status_code=202)
async def create_snapshot(sandbox_id: str, snapshots: Snapshots,
                          body: Annotated[CreateSnapshotRequest | None, Body()] = None
                          ) -> JSONResponse:
    created = await snapshots.create(sandbox_id, body.name if body else None)
    return JSONResponse(created, status_code=202,
                        headers={"Location": f"/v1/snapshots/{created['id']}"})


@router.get("/snapshots")
async def list_snapshots(
    snapshots: Snapshots,
    sandbox_id: Annotated[str | None, Query(alias="sandboxId")] = None,
    state: Annotated[list[str] | None, Query()] = None,
    name: Annotated[str | None, Query()] = None,
    page: Annotated[int, Query(ge=1)] = 1,
    page_size: Annotated[int, Query(alias="pageSize", ge=1, le=200)] = 20,
) -> dict[str, Any]:
    return snapshots.list(sandbox_id=sandbox_id, states=[s for s in state or [] if s],
                          name=name, page=page, page_size=page_size)


@router.get("/snapshots/{snapshot_id}")
async def get_snapshot(snapshot_id: str, snapshots: Snapshots) -> dict[str, Any]:
    return snapshots.get(snapshot_id)


@router.delete("/snapshots/{snapshot_id}", status_code=204)
async def delete_snapshot(snapshot_id: str, snapshots: Snapshots) -> Response:
    await snapshots.delete(snapshot_id)
    return Response(status_code=204)
