"""`/credential-vault…`: the Credential Vault's routes, answered as upstream's sidecar answers
them for a sandbox without a credential proxy, which every sandbox here is.

The vault injects credentials into a sandbox's HTTPS requests through a transparent MITM
proxy (mitmproxy, `credentialProxy.enabled` at create), which this server does not run:
`credentialProxy.enabled` is refused at create (501). So, as upstream does when the proxy
is off, a write (`POST`, `PATCH`) is `412` (its prerequisites are not there), and there is
never a vault to read or delete (`404`). The answers name the feature and why.
"""

from __future__ import annotations

from fastapi import APIRouter

from opensandbox_emulator.server.egress.sandbox import (
    Authorized,
    EgressError,
)

router = APIRouter()

NO_PROXY = ("the Credential Vault needs the sandbox's credential proxy (transparent MITM, "
            "credentialProxy.enabled at create), which this server does not run")


@router.api_route("/credential-vault", methods=["POST", "PATCH"])
async def write_vault(_: Authorized) -> None:
    raise EgressError(412, f"credential proxy is not enabled: {NO_PROXY}")


@router.api_route("/credential-vault", methods=["GET", "DELETE"])
async def read_vault(_: Authorized) -> None:
    raise EgressError(404, f"credential vault not found: {NO_PROXY}")


@router.get("/credential-vault/_active")
async def active_vault(_: Authorized) -> None:
    raise EgressError(403, "the active vault is served to the credential proxy only")


@router.get("/credential-vault/credentials")
@router.get("/credential-vault/credentials/{name}")
@router.get("/credential-vault/bindings")
@router.get("/credential-vault/bindings/{name}")
async def read_vault_part(_: Authorized) -> None:
    raise EgressError(404, f"credential vault not found: {NO_PROXY}")
