"""execd's `/code` routes: HTTP in, one `CodeContexts` call, HTTP out.

* `POST /code/context {"language","cwd"?}` starts an interpreter and answers
  `{"id","language"}` (plus `cwd` when sent) once it is ready. A language whose toolchain
  the sandbox lacks is `400 LANGUAGE_UNAVAILABLE` at once, naming the tool.
* `GET /code/contexts[?language=]`, `GET /code/contexts/{id}`: `{"id","language"}` objects.
* `DELETE /code/contexts/{id}`, `DELETE /code/contexts?language=`: stop interpreters; 200
  with an empty body.
* `POST /code {"code","context":{"id"?,"language"?}}` streams the cell's events (framing in
  `server.execd.events`). No language: the code runs as a shell command, exactly as
  `POST /command` would. No id: the language's default context. Every refusal (unknown
  context 404, busy context 409, missing toolchain 400) is a plain HTTP error, because
  headers are only sent once the cell has been handed to the interpreter.
* `DELETE /code?id=` interrupts a context's running cell (or, as upstream's shared handler
  does, a command with that id) and answers once it stopped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from starlette.responses import JSONResponse, Response

from opensandbox_emulator.server.clock import Clock, epoch_ms
from opensandbox_emulator.server.errors import ApiError
from opensandbox_emulator.server.execd.code.contexts import CodeContext, check_language, contexts_of
from opensandbox_emulator.server.execd.code.drivers import LANGUAGES, Failure
from opensandbox_emulator.server.execd.code.errors import ContextNotFound
from opensandbox_emulator.server.execd.code.interpreter import Execution, Finished, Output, Result
from opensandbox_emulator.server.execd.commands.registry import commands_of
from opensandbox_emulator.server.execd.commands.routes import stream_command
from opensandbox_emulator.server.execd.commands.runner import CommandSpec
from opensandbox_emulator.server.execd.errors import (
    InvalidRequestBody,
    MissingQuery,
)
from opensandbox_emulator.server.execd.events import (
    Event,
    EventStreamResponse,
    complete_event,
    error_event,
    init_event,
)
from opensandbox_emulator.server.execd.sandbox import ExecdSandbox, current_sandbox
from opensandbox_emulator.server.inputs import NUL, StrictText

router = APIRouter(tags=["code"])

Sandbox = Annotated[ExecdSandbox, Depends(current_sandbox)]


class CodeContextRequest(BaseModel):
    """`POST /code/context`. Unknown keys are ignored, as upstream's decoder does."""

    model_config = ConfigDict(extra="ignore")

    language: StrictStr | None = None
    cwd: StrictText | None = None


class RunContext(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: StrictStr | None = None
    language: StrictStr | None = None


class RunCodeRequest(BaseModel):
    """`POST /code`."""

    model_config = ConfigDict(extra="ignore")

    code: StrictStr = Field(min_length=1)
    context: RunContext | None = None


@router.post("/code/context")
async def create_context(body: CodeContextRequest, sandbox: Sandbox) -> JSONResponse:
    if not body.language:
        raise InvalidRequestBody(f"language is required: one of {', '.join(LANGUAGES)}.")
    context = await contexts_of(sandbox).create(body.language, body.cwd)
    reply: dict[str, Any] = context.describe()
    if body.cwd:
        reply["cwd"] = body.cwd
    return JSONResponse(reply)


@router.get("/code/contexts")
async def list_contexts(sandbox: Sandbox,
                        language: Annotated[str | None, Query()] = None) -> JSONResponse:
    contexts = contexts_of(sandbox).list(language or None)
    return JSONResponse([context.describe() for context in contexts])


@router.delete("/code/contexts")
async def delete_contexts(sandbox: Sandbox,
                          language: Annotated[str | None, Query()] = None) -> Response:
    if not language:
        raise MissingQuery("language")
    await contexts_of(sandbox).delete_language(language)
    return Response(status_code=200)


@router.get("/code/contexts/{context_id}")
async def get_context(context_id: str, sandbox: Sandbox) -> JSONResponse:
    return JSONResponse(contexts_of(sandbox).get(context_id).describe())


@router.delete("/code/contexts/{context_id}")
async def delete_context(context_id: str, sandbox: Sandbox) -> Response:
    await contexts_of(sandbox).delete(context_id)
    return Response(status_code=200)


@router.post("/code")
async def run_code(body: RunCodeRequest, sandbox: Sandbox) -> Response:
    started = sandbox.clock.monotonic()
    wanted = body.context or RunContext()
    if not wanted.language:
        return await _run_as_command(body.code, sandbox)
    language = check_language(wanted.language)
    contexts = contexts_of(sandbox)
    if wanted.id:
        context = contexts.get(wanted.id)
        if context.language != language:
            raise InvalidRequestBody(f"context {context.id} is a {context.language} context, "
                                     f"not {language}: send its own language, or leave the "
                                     "language out to run a shell command.")
    else:
        context = await contexts.default(language)
    execution = await contexts.execute(context, body.code)
    return EventStreamResponse(CellEvents(context, execution, sandbox.clock, started),
                               sandbox.clock)


@router.delete("/code")
async def interrupt_code(sandbox: Sandbox,
                         context_id: Annotated[str | None, Query(alias="id")] = None
                         ) -> Response:
    if not context_id:
        raise MissingQuery("id")
    contexts = contexts_of(sandbox)
    context = contexts.find(context_id)
    if context is not None:
        await contexts.interrupt(context)
        return Response(status_code=200)
    # Upstream serves DELETE /code and DELETE /command with one handler: a command's id
    # (a context-less run streams one as its `init`) is interrupted too.
    try:
        command = commands_of(sandbox).get(context_id)
    except ApiError:
        raise ContextNotFound(context_id) from None
    await command.interrupt(sandbox.config.interrupt_grace_seconds)
    return Response(status_code=200)


async def _run_as_command(code: str, sandbox: ExecdSandbox) -> Response:
    """No language: the code is a shell command, streamed as `POST /command` streams it."""
    if NUL in code:
        raise InvalidRequestBody("code: must not contain a NUL byte (\\u0000) when it runs as "
                                 "a shell command (no context.language)")
    return await stream_command(sandbox, CommandSpec(command=code))


class CellEvents:
    """The events of one cell: `init` (the context id), its output, `execution_complete`.

    Upstream's mapping of Jupyter messages: a value is `execution_count` then `result`, a
    display is a `result` too (upstream drops displays), an error is `status` "error" then
    `error`, and `execution_complete` follows errors as well. In `results` the `text/plain`
    MIME key is called `text` (the Python SDK reads only that key); others are kept."""

    def __init__(self, context: CodeContext, execution: Execution, clock: Clock,
                 started: float):
        self.context = context
        self.execution = execution
        self.clock = clock
        self.started = started

    def __aiter__(self) -> AsyncIterator[Event | bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event | bytes]:
        yield init_event(self.context.id, self._now())
        async for item in self.execution.items():
            for event in self._events(item):
                yield event

    def _events(self, item: Output | Result | Failure | Finished) -> list[Event]:
        now = self._now()
        if isinstance(item, Output):
            return [Event(item.stream, now, text=item.text)]
        if isinstance(item, Result):
            result = Event("result", now, results=mime_bundle(item.data))
            if item.execution_count:
                return [Event("execution_count", now, execution_count=item.execution_count),
                        result]
            return [result]
        if isinstance(item, Failure):
            return [Event("status", now, text="error"),
                    error_event(item.ename, item.evalue, item.traceback, now)]
        elapsed = int((self.clock.monotonic() - self.started) * 1000)
        return [complete_event(elapsed, now)]

    def _now(self) -> int:
        return epoch_ms(self.clock.now())

    async def aclose(self) -> None:
        self.execution.detach()


def mime_bundle(data: dict[str, Any]) -> dict[str, Any]:
    """`text/plain` becomes `text` (first); the other MIME keys are kept as they are."""
    bundle: dict[str, Any] = {}
    if "text/plain" in data:
        bundle["text"] = data["text/plain"]
    for mime, value in data.items():
        if mime != "text/plain":
            bundle[mime] = value
    return bundle
