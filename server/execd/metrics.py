"""`GET /metrics` and `GET /metrics/watch`: the sandbox's CPU and memory, from the runtime.

The runtime measures (the fake runtime: the sandbox's own processes against the host's
totals; Docker: container stats), without blocking the event loop. `/metrics/watch` writes
one JSON object and a single `\\n` about every second (upstream's framing: no `data:`), until
the client leaves or the server stops; a failed sample is written as `{"error": "…"}` and
the stream goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import JSONResponse, StreamingResponse

from opensandbox_emulator.runtimes.failures import RuntimeFailure, SandboxMissing
from opensandbox_emulator.server.clock import epoch_ms
from opensandbox_emulator.server.errors import EXECD_API
from opensandbox_emulator.server.execd.sandbox import ExecdSandbox, current_sandbox
from opensandbox_emulator.server.failures import api_error
from opensandbox_emulator.server.shutdown import shutdown_of

router = APIRouter(tags=["metrics"])

WATCH_INTERVAL_SECONDS = 1.0
STREAM_HEADERS = {"Cache-Control": "no-cache", "Connection": "keep-alive",
                  "X-Accel-Buffering": "no"}


async def sample(sandbox: ExecdSandbox) -> dict[str, Any]:
    usage = await sandbox.runtime.usage(sandbox.sandbox_id)
    return {"cpu_count": usage.cpu_count, "cpu_used_pct": usage.cpu_used_pct,
            "mem_total_mib": usage.mem_total_mib, "mem_used_mib": usage.mem_used_mib,
            "timestamp": epoch_ms(sandbox.clock.now())}


@router.get("/metrics")
async def metrics(sandbox: ExecdSandbox = Depends(current_sandbox)) -> JSONResponse:  # noqa: B008
    try:
        return JSONResponse(await sample(sandbox))
    except RuntimeFailure as error:
        # Upstream words this route's errors with a prefix of its own.
        raise api_error(error, EXECD_API, message="error reading runtime metrics. "
                                                  f"{error.message}") from error


@router.get("/metrics/watch")
async def watch_metrics(request: Request,
                        sandbox: ExecdSandbox = Depends(current_sandbox)  # noqa: B008
                        ) -> StreamingResponse:
    shutdown = shutdown_of(request.scope)

    async def frames() -> AsyncIterator[bytes]:
        while not shutdown.begun:
            started = asyncio.get_running_loop().time()
            try:
                body: dict[str, Any] = await sample(sandbox)
            except SandboxMissing:
                return  # the sandbox is gone: end the stream
            except RuntimeFailure as error:
                body = {"error": error.message}
            yield json.dumps(body, separators=(",", ":")).encode() + b"\n"
            spent = asyncio.get_running_loop().time() - started
            # Sleep until the next sample, or until the server stops (the stream ends).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(shutdown.wait(),
                                       timeout=max(WATCH_INTERVAL_SECONDS - spent, 0.05))

    return StreamingResponse(frames(), media_type="text/event-stream", headers=STREAM_HEADERS)
