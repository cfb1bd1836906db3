"""execd's command routes: HTTP in, one `CommandRegistry` call, HTTP out.

* `POST /command` streams events (see `server.execd.events`).
* `DELETE /command?id=` interrupts: 200 with an empty body once the command ended, also
  for a finished one; an unknown id is 404 (upstream answers 500 RUNTIME_ERROR).
* `GET /command/status/{id}`: the status object with snake_case keys; unknown id 404.
* `GET /command/{id}/logs?cursor=N`: the raw output from byte N on, for foreground
  commands too (upstream: background only). The next cursor is in
  `EXECD-COMMANDS-TAIL-CURSOR`. When the bounded log already dropped byte N, the body
  starts at the oldest byte kept and `EXECD-COMMANDS-LOG-TRUNCATED: true` says so
  (`EXECD-COMMANDS-LOG-START` gives that byte's offset). The body is always sent chunked:
  the JS SDK reads a `Content-Length: 0` body as "no body" and would fail an empty read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt
from starlette.responses import JSONResponse, Response, StreamingResponse

from opensandbox_emulator.runtimes.failures import InvalidArgument, RuntimeFailure
from opensandbox_emulator.server.execd.commands.registry import commands_of
from opensandbox_emulator.server.execd.commands.runner import CommandSpec
from opensandbox_emulator.server.execd.errors import (
    ExecdRuntimeError,
    InvalidRequestBody,
    MissingQuery,
)
from opensandbox_emulator.server.execd.events import EventStreamResponse
from opensandbox_emulator.server.execd.sandbox import ExecdSandbox, current_sandbox
from opensandbox_emulator.server.execd.sessions.bash import sessions_of
from opensandbox_emulator.server.inputs import EnvName, StrictText

router = APIRouter(tags=["command"])

Sandbox = Annotated[ExecdSandbox, Depends(current_sandbox)]

INT64_MAX = 2**63 - 1  # the spec's `format: int64`
ID_MAX = 2**32 - 2  # the largest uid or gid Linux has ((uid_t) -1 means "none")
TAIL_CURSOR_HEADER = "EXECD-COMMANDS-TAIL-CURSOR"
TRUNCATED_HEADER = "EXECD-COMMANDS-LOG-TRUNCATED"
LOG_START_HEADER = "EXECD-COMMANDS-LOG-START"


class RunCommandRequest(BaseModel):
    """`POST /command`. Unknown keys are ignored, as upstream's decoder does."""

    model_config = ConfigDict(extra="ignore")

    command: StrictText = Field(min_length=1)
    cwd: StrictText | None = None
    background: StrictBool | None = False
    timeout: StrictInt | None = Field(default=None, ge=0, le=INT64_MAX,
                                      description="milliseconds; 0 or absent: no timeout")
    uid: StrictInt | None = Field(default=None, ge=0, le=ID_MAX)
    gid: StrictInt | None = Field(default=None, ge=0, le=ID_MAX)
    envs: dict[EnvName, StrictText] | None = None


@router.post("/command")
async def run_command(body: RunCommandRequest, sandbox: Sandbox) -> Response:
    if body.gid is not None and body.uid is None:
        raise InvalidRequestBody("gid requires uid: set uid as well to run the command as "
                                 f"group {body.gid}.")
    spec = CommandSpec(command=body.command, cwd=body.cwd or None,
                       background=bool(body.background), timeout_ms=body.timeout or None,
                       envs=body.envs or {}, uid=body.uid, gid=body.gid)
    return await stream_command(sandbox, spec)


async def stream_command(sandbox: ExecdSandbox, spec: CommandSpec) -> Response:
    """Run `spec` and stream its events (`POST /command`, and `POST /code` without a
    language)."""
    try:
        command = await commands_of(sandbox).run(spec)
    except InvalidArgument:
        raise  # the request's fault: a 400, as the one table says
    except RuntimeFailure as error:
        # Upstream reports every failure of these routes as a 500 RUNTIME_ERROR with this
        # prefix, whatever the runtime's failure was.
        raise ExecdRuntimeError(f"error running commands: {error.message}") from error
    return EventStreamResponse(command.events(), sandbox.clock)


@router.delete("/command")
async def interrupt_command(
    sandbox: Sandbox, command_id: Annotated[str | None, Query(alias="id")] = None,
) -> Response:
    if not command_id:
        raise MissingQuery("id")
    sessions = sessions_of(sandbox)
    if command_id in sessions:
        # A bash session run's id is its session's: upstream deletes the session.
        await sessions.delete(command_id)
        return Response(status_code=200)
    command = commands_of(sandbox).get(command_id)
    await command.interrupt(sandbox.config.interrupt_grace_seconds)
    return Response(status_code=200)


@router.get("/command/status/{command_id}")
async def command_status(command_id: str, sandbox: Sandbox) -> JSONResponse:
    return JSONResponse(commands_of(sandbox).get(command_id).status())


@router.get("/command/{command_id}/logs")
async def command_logs(
    command_id: str, sandbox: Sandbox, cursor: Annotated[str | None, Query()] = None,
) -> Response:
    command = commands_of(sandbox).get(command_id)
    data, next_cursor, truncated = command.log.read(_parse_cursor(cursor))
    headers = {TAIL_CURSOR_HEADER: str(next_cursor)}
    if truncated:
        headers[TRUNCATED_HEADER] = "true"
        headers[LOG_START_HEADER] = str(next_cursor - len(data))
    return StreamingResponse(_body(data), media_type="text/plain; charset=utf-8",
                             headers=headers)


def _parse_cursor(raw: str | None) -> int:
    if raw is None or raw == "":
        return 0
    try:
        cursor = int(raw)
    except ValueError:
        cursor = -1
    if cursor < 0:
        raise InvalidRequestBody(f"cursor must be a byte offset (an integer >= 0), got "
                                 f"{raw!r}; pass the EXECD-COMMANDS-TAIL-CURSOR of the "
                                 "previous read, or leave it out to read from the start.")
    return cursor


async def _body(data: bytes) -> AsyncIterator[bytes]:
    """One chunk, or none: sent with chunked encoding, never as `Content-Length: 0`."""
    if data:
        yield data
