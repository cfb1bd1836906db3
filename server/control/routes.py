"""The control API's routes, under `/_emulator/` on the Lifecycle port: each translates
HTTP to one `EmulatorControl` call. Included only when `[control] enabled`; the API key
applies as to the Lifecycle API."""

from __future__ import annotations

import json
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse, Response

from opensandbox_emulator.server.control.backend import EmulatorControl
from opensandbox_emulator.server.control.models import AdvanceRequest, FaultRequest
from opensandbox_emulator.server.errors import ApiError, describe_validation_errors

router = APIRouter(prefix="/_emulator", tags=["emulator control"])


class InvalidControlRequest(ApiError):
    status_code = 400
    code = "EMULATOR::INVALID_REQUEST"


def control(request: Request) -> EmulatorControl:
    return request.app.state.control  # type: ignore[no-any-return]


Control = Annotated[EmulatorControl, Depends(control)]
M = TypeVar("M", bound=BaseModel)


async def json_body(request: Request) -> Any:
    """The body as JSON, read here rather than by FastAPI, so that a bad one gets the
    control API's own error code and not the Lifecycle API's."""
    raw = await request.body()
    try:
        return json.loads(raw) if raw.strip() else None
    except ValueError as error:
        raise InvalidControlRequest(f"The body is not valid JSON ({error}); send a JSON "
                                    "object with Content-Type: application/json.") from error


Json = Annotated[Any, Depends(json_body)]


def parse(model: type[M], body: Any) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise InvalidControlRequest(describe_validation_errors(list(error.errors()))) from error


@router.post("/reset")
async def reset(emulator: Control) -> dict[str, Any]:
    return await emulator.reset()


@router.get("/journal")
async def journal(
    emulator: Control,
    sandbox_id: Annotated[str | None, Query(alias="sandboxId")] = None,
    path: Annotated[str | None, Query()] = None,
    method: Annotated[str | None, Query()] = None,
) -> dict[str, Any]:
    book = emulator.journal
    return {"items": [entry.to_dict() for entry in book.entries(sandbox_id=sandbox_id,
                                                                path=path, method=method)],
            "capacity": book.capacity, "dropped": book.dropped}


@router.delete("/journal", status_code=204)
async def clear_journal(emulator: Control) -> Response:
    emulator.journal.clear()
    return Response(status_code=204)


@router.post("/faults", status_code=201)
async def add_fault(emulator: Control, body: Json) -> JSONResponse:
    request = parse(FaultRequest, body)
    fields = request.model_dump(exclude_unset=True, exclude={"kind"})
    if fields.get("delay_seconds") is None:
        fields.pop("delay_seconds", None)
    rule = emulator.faults.add(kind=request.kind, **fields)
    return JSONResponse(rule.to_dict(), status_code=201)


@router.get("/faults")
async def list_faults(emulator: Control) -> dict[str, Any]:
    return {"items": [rule.to_dict() for rule in emulator.faults.rules()]}


@router.delete("/faults", status_code=204)
async def clear_faults(emulator: Control) -> Response:
    emulator.faults.clear()
    return Response(status_code=204)


@router.delete("/faults/{fault_id}", status_code=204)
async def remove_fault(emulator: Control, fault_id: int) -> Response:
    emulator.faults.remove(fault_id)
    return Response(status_code=204)


@router.get("/clock")
async def clock(emulator: Control) -> dict[str, Any]:
    return emulator.clock_state()


@router.post("/clock/advance")
async def advance(emulator: Control, body: Json) -> dict[str, Any]:
    return await emulator.advance(parse(AdvanceRequest, body).seconds)
