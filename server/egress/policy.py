"""`/policy`: read and change a sandbox's egress policy at run time, as upstream's sidecar.

- `GET /policy`: `{"status":"ok","mode","enforcementMode","policy":{"defaultAction",
  "egress":[…]}}`; `egress` is always a list (the Python SDK cannot read `null`). A sandbox
  created without `networkPolicy` shows `allow` with no rules (`allow_all`).
- `PATCH /policy` with `[{action, target}, …]`: the rules merged in front of the current
  ones (the first rule of each target wins, the current rules of other targets stay,
  `defaultAction` unchanged); in force for new connections and queries before the answer.
- `DELETE /policy` with `["target", …]`: those rules removed; none matching adds
  `"reason": "no matching targets found"`.
- `POST`/`PUT /policy` with a whole policy (upstream serves them though its spec does not):
  the policy replaced; an empty body resets it to deny-all.

A sandbox without a policy gets one at its first change: enforcement starts then.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, PlainTextResponse

from opensandbox_emulator.runtimes.egress.policy import (
    EgressPolicy,
    PolicyError,
    TooManyRules,
    rules_from_document,
    targets_from_document,
)
from opensandbox_emulator.runtimes.failures import EgressFailed, EgressUnenforceable
from opensandbox_emulator.server.egress.sandbox import (
    Authorized,
    EgressError,
    EgressSandbox,
)

router = APIRouter()
MAX_BODY = 1024 * 1024  # upstream's limit on a request body


@router.get("/healthz")
async def healthz() -> PlainTextResponse:
    return PlainTextResponse("ok")


@router.get("/policy")
async def get_policy(sandbox: Authorized) -> JSONResponse:
    policy = await current_policy(sandbox)
    return JSONResponse({**status(sandbox, policy), "policy": policy.document()})


@router.patch("/policy")
async def patch_policy(request: Request,
                       sandbox: Authorized) -> JSONResponse:
    document = await read_json(request)
    if not isinstance(document, list) or not document:
        raise EgressError(400, "the body must be a JSON array of one or more rules, for "
                               "example [{\"action\": \"allow\", \"target\": \"example.com\"}]")
    try:
        rules = rules_from_document(document)
    except PolicyError as error:
        raise EgressError(400, str(error)) from None
    async with sandbox.lock:
        current = await current_policy(sandbox)
        try:
            policy = current.patched(rules)
        except TooManyRules as error:
            raise EgressError(413, str(error)) from None
        await apply(sandbox, policy)
    return JSONResponse(status(sandbox, policy))


@router.delete("/policy")
async def delete_rules(request: Request,
                       sandbox: Authorized) -> JSONResponse:
    try:
        targets = targets_from_document(await read_json(request))
    except PolicyError as error:
        raise EgressError(400, str(error)) from None
    async with sandbox.lock:
        current = await current_policy(sandbox)
        policy, removed = current.without(targets)
        if removed:
            await apply(sandbox, policy)
    body = status(sandbox, policy)
    if not removed:
        body["reason"] = "no matching targets found"
    return JSONResponse(body)


@router.api_route("/policy", methods=["POST", "PUT"])
async def replace_policy(request: Request,
                         sandbox: Authorized) -> JSONResponse:
    raw = await read_body(request)
    document = None
    if raw.strip():
        document = parse_json(raw)
    try:
        policy = EgressPolicy.from_document(document)
    except TooManyRules as error:
        raise EgressError(413, str(error)) from None
    except PolicyError as error:
        raise EgressError(400, str(error)) from None
    async with sandbox.lock:
        await apply(sandbox, policy)
    body = status(sandbox, policy)
    if document in (None, "", {}):
        body["reason"] = "policy reset to default deny-all"
    return JSONResponse(body)


# --- helpers ---------------------------------------------------------------------------------


def status(sandbox: EgressSandbox, policy: EgressPolicy) -> dict[str, Any]:
    return {"status": "ok", "mode": policy.mode, "enforcementMode": sandbox.mode}


async def current_policy(sandbox: EgressSandbox) -> EgressPolicy:
    policy = await sandbox.runtime.egress_policy(sandbox.sandbox_id)
    return policy if policy is not None else EgressPolicy.unrestricted()


async def apply(sandbox: EgressSandbox, policy: EgressPolicy) -> None:
    try:
        await sandbox.runtime.apply_egress(sandbox.sandbox_id, policy)
    except EgressUnenforceable as error:
        raise EgressError(501, error.message) from None
    except EgressFailed as error:
        raise EgressError(500, f"the policy could not be applied (the previous one stays in "
                               f"force): {error.message}") from None


async def read_body(request: Request) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise EgressError(413, f"the body is larger than {MAX_BODY} bytes")
    return body


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError as error:
        raise EgressError(400, f"the body is not JSON: {error}") from None


async def read_json(request: Request) -> Any:
    raw = await read_body(request)
    if not raw.strip():
        raise EgressError(400, "the request has no body")
    return parse_json(raw)
