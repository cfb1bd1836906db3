"""The newest Lifecycle surface in this process, where the test holds the clock: signed
routes (their exact format, and expiry as the clock passes it), renew-on-access, the
lifecycle events an expiry leaves, and the bounded buffer of an entrypoint's output.
"""

from __future__ import annotations

import hashlib
import struct

import httpx
import pytest

from opensandbox_emulator.runtimes.output_tail import OutputTail
from opensandbox_emulator.server.access.signing import (
    MAX_UINT64,
    RouteSigner,
    SignedRoute,
    from_b36,
    parse_keys,
    to_b36,
)
from tests.helpers.contract import assert_error
from tests.helpers.in_process import START, InProcess, eventually

pytestmark = pytest.mark.anyio


def test_route_signature_is_osep_0011s() -> None:
    """Worked out here from the format itself: a route signed by us verifies at upstream's
    ingress with the same key, and the reverse."""
    secret, sandbox_id, port, expires = b"shared-secret", "my-sandbox", 9000, 1900000000
    canonical = f"v1\nshort\n{sandbox_id}\n{port}\n{to_b36(expires)}\n".encode()
    inner = struct.pack(">I", len(secret)) + secret + struct.pack(">I", len(canonical)) + canonical
    expected = hashlib.sha256(inner).hexdigest()[:8] + "k"
    from datetime import UTC, datetime

    signer = RouteSigner({"k": secret}, "k")
    signed = signer.sign(sandbox_id, port, expires, datetime(2030, 1, 1, tzinfo=UTC))
    assert signed == SignedRoute(to_b36(expires), expected)
    assert to_b36(expires) == "vf7lds" and int("vf7lds", 36) == expires
    assert signer.check(signed, sandbox_id, port, datetime(2030, 1, 1, tzinfo=UTC)) is None
    assert "does not match" in str(signer.check(signed, sandbox_id, port + 1,
                                                 datetime(2030, 1, 1, tzinfo=UTC)))


def test_base36_bounds() -> None:
    assert to_b36(0) == "0" and from_b36("0") == 0
    assert from_b36(to_b36(MAX_UINT64)) == MAX_UINT64 and len(to_b36(MAX_UINT64)) == 13
    assert from_b36("0a") is None  # leading zero
    assert from_b36("A") is None  # upper case
    assert from_b36("zzzzzzzzzzzzz") is None  # past 2^64-1


def test_signing_keys_in_the_ingress_format() -> None:
    assert parse_keys("a=c2VjcmV0, b=b3RoZXI") == {"a": b"secret", "b": b"other"}
    for bad in ("", "ab=c2VjcmV0", "A=c2VjcmV0", "a=!!", "a"):
        with pytest.raises(ValueError):
            parse_keys(bad)


def test_output_tail_keeps_the_newest_bytes() -> None:
    tail = OutputTail(10)
    for chunk in (b"0123", b"4567", b"89ab", b"cd"):
        tail.write(chunk)
    assert tail.read() == (b"456789abcd", 4)
    assert tail.read(3) == (b"bcd", 11)
    tail.write(b"x" * 25)
    assert tail.read() == (b"x" * 10, 29)


async def test_a_signed_route_expires_when_the_clock_passes_it(emulator: InProcess) -> None:
    sandbox_id = await emulator.new_sandbox()
    expires = int(START.timestamp()) + 60
    endpoint = (await emulator.client.get(f"/v1/sandboxes/{sandbox_id}/endpoints/44772",
                                          params={"expires": expires})).json()["endpoint"]
    route = endpoint.split("/", 1)[1]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=emulator.app.access.gateway),
                                 base_url="http://gateway") as gateway:
        assert (await gateway.get(f"/{route}/ping")).status_code == 200
        emulator.clock.advance(60)
        assert (await gateway.get(f"/{route}/ping")).status_code == 200  # until, inclusive
        emulator.clock.advance(1)
        assert_error(await gateway.get(f"/{route}/ping"), 401, "GATEWAY::UNAUTHORIZED",
                     "expired")
    past = await emulator.client.get(f"/v1/sandboxes/{sandbox_id}/endpoints/44772",
                                     params={"expires": expires})
    assert_error(past, 400, "SANDBOX::INVALID_PARAMETER", "not in the future")


async def test_renew_on_access_moves_the_expiry_at_most_once_a_minute(
        emulator: InProcess) -> None:
    sandbox_id = await emulator.new_sandbox(
        timeout=600, extensions={"access.renew.extend.seconds": "3600"})

    async def expires_at() -> str:
        return str((await emulator.client.get(f"/v1/sandboxes/{sandbox_id}")).json()["expiresAt"])

    assert await expires_at() == "2030-01-02T03:14:05.000000Z"
    ping = f"{emulator.execd(sandbox_id)}/ping"
    assert (await emulator.client.get(ping)).status_code == 200
    assert await expires_at() == "2030-01-02T04:04:05.000000Z"
    emulator.clock.advance(30)
    await emulator.client.get(ping)
    assert await expires_at() == "2030-01-02T04:04:05.000000Z"  # within the cooldown
    emulator.clock.advance(31)
    await emulator.client.get(ping)
    assert await expires_at() == "2030-01-02T04:05:06.000000Z"


async def test_an_expired_sandbox_leaves_its_events(emulator: InProcess) -> None:
    sandbox_id = await emulator.new_sandbox(timeout=60)
    emulator.clock.advance(61)
    await emulator.app.service.reap_expired()  # or the reaper's own round, whichever is first

    async def gone() -> bool:
        return (await emulator.client.get(f"/v1/sandboxes/{sandbox_id}")).status_code == 404

    await eventually(gone, "the sandbox to expire")
    events = await emulator.client.get(f"/v1/sandboxes/{sandbox_id}/diagnostics/events",
                                       params={"scope": "lifecycle"})
    assert events.status_code == 200
    assert events.json()["content"].splitlines() == [
        "2030-01-02T03:04:05.000000Z Created SANDBOX_CREATED: Sandbox created from image "
        "python:3.11, expiring at 2030-01-02T03:05:05.000000Z.",
        "2030-01-02T03:05:06.000000Z Expired TTL_EXPIRY: The sandbox's expiry "
        "(2030-01-02T03:05:05.000000Z) passed; it was removed."]
