"""The bash session routes: parse, one `BashSessions` call, reply.

* `POST /session` (body optional: `{"cwd"}`): `200 {"session_id"}`. The cwd is expanded
  (`~`, `$NAME`) and created; an undefined variable or a failed mkdir is 500 RUNTIME_ERROR.
* `POST /session/{id}/run` `{"command", "cwd"?, "timeout"? (ms)}`: the event stream, whose
  `init` carries the session id. A run cwd must be an existing directory (400).
* `DELETE /session/{id}`: kills the session's runs, 200 with an empty body.
An unknown session is 404 CONTEXT_NOT_FOUND on both (upstream answers a run with 500).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.responses import JSONResponse, Response

from opensandbox_emulator.server.execd.errors import (
    ExecdRuntimeError,
    InvalidRequestBody,
    UnknownSession,
)
from opensandbox_emulator.server.execd.events import EventStreamResponse
from opensandbox_emulator.server.execd.paths import BadWorkingDirectory, working_directory
from opensandbox_emulator.server.execd.sandbox import ExecdSandbox, current_sandbox
from opensandbox_emulator.server.execd.sessions.bash import (
    BashSession,
    SessionGone,
    SessionNotFound,
    sessions_of,
)
from opensandbox_emulator.server.inputs import StrictText

router = APIRouter(tags=["session"])

Sandbox = Annotated[ExecdSandbox, Depends(current_sandbox)]
HINT = "create one with POST /session (a deleted session is gone for good)"


class CreateSessionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    cwd: StrictText | None = None


class RunInSessionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    command: StrictText = Field(min_length=1)
    cwd: StrictText | None = None
    timeout: StrictInt | None = Field(default=None, ge=0,
                                      description="milliseconds; 0 or absent: 24 hours")


def _session(sandbox: ExecdSandbox, session_id: str) -> BashSession:
    try:
        return sessions_of(sandbox).get(session_id)
    except SessionNotFound:
        raise UnknownSession(session_id, hint=HINT) from None


@router.post("/session")
async def create_session(sandbox: Sandbox, body: CreateSessionRequest | None = None
                         ) -> JSONResponse:
    cwd = None
    if body is not None and body.cwd:
        try:
            cwd = await working_directory(sandbox, body.cwd, create=True)
        except BadWorkingDirectory as error:  # upstream's wording and status
            raise ExecdRuntimeError(f"error creating session. {error}") from error
    session = sessions_of(sandbox).create(cwd)
    return JSONResponse({"session_id": session.id})


@router.post("/session/{session_id}/run")
async def run_in_session(session_id: str, body: RunInSessionRequest, sandbox: Sandbox
                         ) -> Response:
    session = _session(sandbox, session_id)
    cwd = None
    if body.cwd:
        try:
            cwd = await working_directory(sandbox, body.cwd, create=False)
        except BadWorkingDirectory as error:
            raise InvalidRequestBody(f"invalid cwd: {error}") from error
    try:
        run = await sessions_of(sandbox).run(session, body.command, cwd, body.timeout)
    except SessionGone as error:
        raise ExecdRuntimeError(f"error running in session. {error}") from error
    return EventStreamResponse(run, sandbox.clock)


@router.delete("/session/{session_id}")
async def delete_session(session_id: str, sandbox: Sandbox) -> Response:
    try:
        await sessions_of(sandbox).delete(session_id)
    except SessionNotFound:
        raise UnknownSession(session_id, hint=HINT) from None
    return Response(status_code=200)
