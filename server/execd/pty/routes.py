"""The PTY routes: REST to create, inspect and delete; the WebSocket carries the terminal.

* `POST /pty` (body optional: `{"cwd", "command"}`): `201 {"session_id"}`; nothing starts
  yet. The cwd is expanded and created as for bash sessions.
* `GET /pty/{id}`: `{"session_id", "running", "output_offset"}`; `DELETE /pty/{id}`: kills
  the process group, 200 empty. Unknown ids are 404 CONTEXT_NOT_FOUND.
* `GET /pty/{id}/ws?since=&pty=0&takeover=1`: refused before the upgrade with 404 (unknown)
  or 409 ALREADY_CONNECTED (another client, no takeover); the frames are in `protocol.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated

from fastapi import APIRouter, Depends, WebSocket
from pydantic import BaseModel, ConfigDict
from starlette.responses import JSONResponse, Response

from opensandbox_emulator.server.errors import ApiError, error_response
from opensandbox_emulator.server.execd.errors import ExecdRuntimeError, UnknownSession
from opensandbox_emulator.server.execd.paths import BadWorkingDirectory, working_directory
from opensandbox_emulator.server.execd.pty import protocol
from opensandbox_emulator.server.execd.pty.session import (
    AlreadyConnected,
    Attachment,
    Close,
    PtySession,
    StartFailed,
    ptys_of,
)
from opensandbox_emulator.server.execd.sandbox import ExecdSandbox, current_sandbox
from opensandbox_emulator.server.inputs import StrictText
from opensandbox_emulator.server.shutdown import MESSAGE as SHUTDOWN_MESSAGE
from opensandbox_emulator.server.shutdown import shutdown_of

router = APIRouter(tags=["pty"])

Sandbox = Annotated[ExecdSandbox, Depends(current_sandbox)]
HINT = "create one with POST /pty"
RECEIVE_AFTER_CLOSE = 2.0
GOING_AWAY = 1001  # the close code of a server that is stopping


class CreatePtyRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    cwd: StrictText | None = None
    command: StrictText | None = None


class AlreadyConnectedError(ApiError):
    status_code = 409
    code = "ALREADY_CONNECTED"


def _session(sandbox: ExecdSandbox, session_id: str) -> PtySession:
    session = ptys_of(sandbox).get(session_id)
    if session is None:
        raise UnknownSession(session_id, "pty session", HINT)
    return session


@router.post("/pty", status_code=201)
async def create_pty(sandbox: Sandbox, body: CreatePtyRequest | None = None) -> JSONResponse:
    cwd = None
    if body is not None and body.cwd:
        try:
            cwd = await working_directory(sandbox, body.cwd, create=True)
        except BadWorkingDirectory as error:  # upstream's wording and status
            raise ExecdRuntimeError(f"error creating pty session. {error}") from error
    session = ptys_of(sandbox).create(cwd, body.command if body and body.command else None)
    return JSONResponse({"session_id": session.id}, status_code=201)


@router.get("/pty/{session_id}")
async def pty_status(session_id: str, sandbox: Sandbox) -> JSONResponse:
    return JSONResponse(_session(sandbox, session_id).info())


@router.delete("/pty/{session_id}")
async def delete_pty(session_id: str, sandbox: Sandbox) -> Response:
    if not await ptys_of(sandbox).delete(session_id):
        raise UnknownSession(session_id, "pty session", HINT)
    return Response(status_code=200)


@router.websocket("/pty/{session_id}/ws")
async def pty_socket(websocket: WebSocket, session_id: str, sandbox: Sandbox) -> None:
    query = websocket.query_params
    mode = "pipe" if query.get("pty") == "0" else "pty"
    try:
        since = int(query.get("since") or 0)
    except ValueError:
        since = 0
    try:
        session = _session(sandbox, session_id)
        client = session.attach(since, takeover=query.get("takeover") == "1", mode=mode)
    except AlreadyConnected:
        await websocket.send_denial_response(error_response(AlreadyConnectedError(
            f"pty session {session_id} already has a client; connect with takeover=1 to "
            "take it over")))
        return
    except ApiError as error:
        await websocket.send_denial_response(error_response(error))
        return
    await websocket.accept()
    sender = asyncio.create_task(_send(websocket, client))
    try:
        try:
            await session.ensure_started(mode)
        except StartFailed as error:
            await client.push(protocol.error("START_FAILED", str(error)))
            await client.push(Close(1011, "start failed"))
        receiver = asyncio.create_task(_receive(websocket, session, client))
        stopping = asyncio.create_task(shutdown_of(websocket.scope).wait())
        await asyncio.wait({sender, receiver, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stopping.done() and not sender.done():
            # The server is stopping: say so, and close as a server going away does.
            await client.push(protocol.error("SERVER_STOPPING", SHUTDOWN_MESSAGE))
            await client.push(Close(GOING_AWAY, SHUTDOWN_MESSAGE))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(sender), RECEIVE_AFTER_CLOSE)
        stopping.cancel()
        if sender.done():  # closed by us: the client's close answer ends the receiver
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(receiver), RECEIVE_AFTER_CLOSE)
        receiver.cancel()
    finally:
        session.detach(client)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender


async def _send(websocket: WebSocket, client: Attachment) -> None:
    while True:
        item = await client.outbox.get()
        if isinstance(item, Close):
            with contextlib.suppress(Exception):
                await websocket.close(item.code, item.reason)
            return
        if isinstance(item, bytes):
            await websocket.send_bytes(item)
        else:
            await websocket.send_text(item)


async def _receive(websocket: WebSocket, session: PtySession, client: Attachment) -> None:
    writable = True
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        frame = protocol.decode(message)
        if frame.kind == "stdin" and frame.data:
            if not writable:
                continue  # once a write failed, input from this client is dropped
            try:
                await session.write(frame.data)
            except OSError as error:
                writable = False
                await client.push(protocol.error("STDIN_WRITE_FAILED", str(error)))
        elif frame.kind == "resize":
            await session.resize(frame.cols, frame.rows)
        elif frame.kind == "signal" and frame.signal is not None:
            await session.signal(frame.signal)
        elif frame.kind == "ping":
            await client.push(protocol.text({"type": "pong"}))
        elif frame.kind == "invalid":
            await client.push(protocol.error("INVALID_FRAME", frame.detail))
