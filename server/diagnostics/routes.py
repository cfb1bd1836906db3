"""Diagnostics: what a sandbox's entrypoint printed and what happened to it.

Upstream's server answers the stable routes (with `scope`) with 501; this one serves the
spec's descriptor with the text inline: `logs` are the entrypoint's own output (its newest
bytes, bounded as command logs are), `events` the sandbox's lifecycle events. A sandbox
removed not long ago still has its events here (its output went with it). Without `scope`
the deprecated plain-text form answers, as upstream's DevOps routes do.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import PlainTextResponse

from opensandbox_emulator.runtimes.failures import SandboxMissing, Unsupported
from opensandbox_emulator.server.clock import rfc3339
from opensandbox_emulator.server.errors import InvalidParameter
from opensandbox_emulator.server.lifecycle.service import SandboxService

router = APIRouter(tags=["diagnostics"])

MAX_CONTENT_BYTES = 1024 * 1024
CONTENT_TYPE = "text/plain; charset=utf-8"
SCOPES = ("container", "lifecycle", "runtime", "network", "process", "all")
LOG_SCOPES = ("container", "all")  # the entrypoint's output
EVENT_SCOPES = ("lifecycle", "runtime", "container", "all")  # the lifecycle events


def service(request: Request) -> SandboxService:
    return request.app.state.service  # type: ignore[no-any-return]


Service = Annotated[SandboxService, Depends(service)]


def _check_scope(scope: str) -> str:
    scope = scope.strip().lower()
    if scope not in SCOPES:
        raise InvalidParameter(f"Unknown diagnostics scope '{scope}'; use one of "
                               f"{', '.join(SCOPES)}.")
    return scope


def _descriptor(sandbox_id: str, kind: str, scope: str, text: str, *, truncated: bool,
                warnings: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"sandboxId": sandbox_id, "kind": kind, "scope": scope,
                            "delivery": "inline", "contentType": CONTENT_TYPE,
                            "content": text, "contentLength": len(text.encode()),
                            "truncated": truncated}
    if warnings:
        body["warnings"] = warnings
    return body


async def _output(sandboxes: SandboxService, sandbox_id: str,
                  max_bytes: int) -> tuple[str, int, list[str]]:
    """(the entrypoint's newest output, bytes dropped before it, warnings)."""
    _, removed_at = sandboxes.journal(sandbox_id)
    if removed_at is not None:
        return "", 0, [f"Sandbox {sandbox_id} was removed at {rfc3339(removed_at)}; its "
                       "output went with it (its lifecycle events are still under "
                       "diagnostics/events)."]
    try:
        output = await sandboxes.runtime.entrypoint_output(sandbox_id, max_bytes)
    except Unsupported as error:
        return "", 0, [error.message]
    except SandboxMissing:
        return "", 0, [f"Sandbox {sandbox_id} is gone; its output went with it."]
    warnings = []
    if output.dropped:
        warnings.append(f"{output.dropped} older bytes of output are not kept (the server "
                        f"keeps the newest {max_bytes}).")
    return output.data.decode(errors="replace"), output.dropped, warnings


async def _events(sandboxes: SandboxService, sandbox_id: str,
                  limit: int | None = None) -> tuple[str, list[str]]:
    if sandboxes.exists(sandbox_id):
        await sandboxes.state(sandbox_id)  # notes an exit that nobody has read yet
    journal, removed_at = sandboxes.journal(sandbox_id)
    warnings = []
    if journal.dropped:
        warnings.append(f"{journal.dropped} older events are not kept.")
    if removed_at is not None:
        warnings.append(f"Sandbox {sandbox_id} was removed at {rfc3339(removed_at)}.")
    return journal.text(limit), warnings


@router.get("/sandboxes/{sandbox_id}/diagnostics/logs", response_model=None)
async def diagnostic_logs(
    sandbox_id: str, sandboxes: Service,
    scope: Annotated[str | None, Query()] = None,
    tail: Annotated[int, Query(ge=1, le=10000)] = 100,
    since: Annotated[str | None, Query()] = None,
) -> dict[str, Any] | PlainTextResponse:
    if scope is None:  # the deprecated plain-text form: the last `tail` lines
        text, _, _ = await _output(sandboxes, sandbox_id, MAX_CONTENT_BYTES)
        lines = text.splitlines(keepends=True)[-tail:]
        return PlainTextResponse("".join(lines) or "(no logs)",
                                 headers={"Deprecation": "true"})
    scope = _check_scope(scope)
    sandboxes.journal(sandbox_id)  # 404 for a sandbox never seen
    if scope not in LOG_SCOPES:
        return _descriptor(sandbox_id, "logs", scope, "", truncated=False, warnings=[
            f"No '{scope}' logs here: the entrypoint's output is scope 'container'; the "
            "sandbox's lifecycle is under diagnostics/events."])
    text, dropped, warnings = await _output(sandboxes, sandbox_id, MAX_CONTENT_BYTES)
    return _descriptor(sandbox_id, "logs", scope, text, truncated=dropped > 0,
                       warnings=warnings)


@router.get("/sandboxes/{sandbox_id}/diagnostics/events", response_model=None)
async def diagnostic_events(
    sandbox_id: str, sandboxes: Service,
    scope: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any] | PlainTextResponse:
    if scope is None:  # the deprecated plain-text form: the last `limit` events
        text, _ = await _events(sandboxes, sandbox_id, limit)
        return PlainTextResponse(text or "(no notable events)",
                                 headers={"Deprecation": "true"})
    scope = _check_scope(scope)
    sandboxes.journal(sandbox_id)
    if scope not in EVENT_SCOPES:
        return _descriptor(sandbox_id, "events", scope, "", truncated=False, warnings=[
            f"No '{scope}' events here: the sandbox's lifecycle events are scope "
            "'lifecycle'."])
    text, warnings = await _events(sandboxes, sandbox_id)
    return _descriptor(sandbox_id, "events", scope, text, truncated=False,
                       warnings=warnings)
