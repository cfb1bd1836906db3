"""Signed routes (OSEP-0011): endpoints that carry their own expiry and signature.

Upstream signs routes only behind its Kubernetes ingress gateway; our gateway plays that
part, with the same format, so a route signed here verifies there with the same key:

    expires_b36 = the expiry (Unix seconds) in lower-case base 36, no leading zeros
    canonical   = "v1\\nshort\\n{sandbox_id}\\n{port}\\n{expires_b36}\\n"
    inner       = BE32(len(secret)) + secret + BE32(len(canonical)) + canonical
    signature   = first 8 hex digits of SHA-256(inner) + the signing key's 1-char id
    route token = {sandbox_id}-{port}-{expires_b36}-{signature}

Keys are `id -> secret bytes`; the active one signs and every one verifies (so a key can be
rotated without breaking routes already handed out). Where they come from is the config's
business (`server/config.py`): with none configured, the server makes one of its own at
start-up, so its signed routes last as long as it runs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import struct
from dataclasses import dataclass
from datetime import datetime

from opensandbox_emulator.server.errors import InvalidParameter

MAX_UINT64 = 2**64 - 1
MAX_EXPIRES_B36 = 13
EXPIRES_B36 = re.compile(r"^(0|[1-9a-z][0-9a-z]*)\Z")
SIGNATURE = re.compile(r"^[0-9a-f]{8}[0-9a-z]\Z")
KEY_ID = re.compile(r"^[0-9a-z]\Z")
DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def to_b36(value: int) -> str:
    if value == 0:
        return "0"
    out = []
    while value:
        value, digit = divmod(value, 36)
        out.append(DIGITS[digit])
    return "".join(reversed(out))


def from_b36(text: str) -> int | None:
    """The expiry of a route segment, or None when it is not a well-formed one."""
    if len(text) > MAX_EXPIRES_B36 or not EXPIRES_B36.match(text):
        return None
    value = int(text, 36)
    return value if value <= MAX_UINT64 else None


def hex8(secret: bytes, sandbox_id: str, port: int, expires_b36: str) -> str:
    canonical = f"v1\nshort\n{sandbox_id}\n{port}\n{expires_b36}\n".encode()
    inner = (struct.pack(">I", len(secret)) + secret +
             struct.pack(">I", len(canonical)) + canonical)
    return hashlib.sha256(inner).hexdigest()[:8]


@dataclass(frozen=True)
class SignedRoute:
    """The two route segments a signed endpoint adds after `<id>/<port>`."""

    expires_b36: str
    signature: str

    @property
    def token_suffix(self) -> str:
        return f"{self.expires_b36}-{self.signature}"


class RouteSigner:
    def __init__(self, keys: dict[str, bytes], active: str):
        if not keys or active not in keys:
            raise ValueError("the active signing key must be one of the keys")
        self.keys = dict(keys)
        self.active = active

    @classmethod
    def generated(cls) -> RouteSigner:
        """A signer with a fresh random key (id `0`), for a server configured with none."""
        return cls({"0": secrets.token_bytes(32)}, "0")

    def sign(self, sandbox_id: str, port: int, expires: int, now: datetime) -> SignedRoute:
        if expires <= now.timestamp():
            raise InvalidParameter(f"expires {expires} is not in the future (now is "
                                   f"{int(now.timestamp())}, in Unix seconds).")
        expires_b36 = to_b36(expires)
        secret = self.keys[self.active]
        return SignedRoute(expires_b36,
                           hex8(secret, sandbox_id, port, expires_b36) + self.active)

    def check(self, route: SignedRoute, sandbox_id: str, port: int,
              now: datetime) -> str | None:
        """None when the route is good for `now`; otherwise why not, for a person."""
        expires = from_b36(route.expires_b36)
        if expires is None or not SIGNATURE.match(route.signature):
            return "the signed route is malformed"
        secret = self.keys.get(route.signature[8])
        if secret is None:
            return "the route was signed with a key this server does not have"
        wanted = hex8(secret, sandbox_id, port, route.expires_b36)
        if not hmac.compare_digest(route.signature[:8], wanted):
            return "the route's signature does not match"
        if now.timestamp() > expires:
            return "access expired: the signed route's expiry has passed"
        return None


def signed_route_expiry(expires: str | None, use_server_proxy: bool) -> int | None:
    """The `expires` query of an endpoint request as Unix seconds, or None without one;
    the combinations upstream refuses are refused the same way."""
    if expires is None:
        return None
    if not (expires.isascii() and expires.isdigit()) or len(expires) > 20 or \
            (len(expires) > 1 and expires[0] == "0") or int(expires) > MAX_UINT64:
        raise InvalidParameter(f"expires must be Unix epoch seconds, a whole number without "
                               f"leading zeros up to 2^64-1 (got {expires!r}).")
    if use_server_proxy:
        raise InvalidParameter("expires (a signed route) cannot be combined with "
                               "use_server_proxy=true: signed routes go through the gateway.")
    return int(expires)


def parse_keys(text: str) -> dict[str, bytes]:
    """`a=BASE64,b=BASE64` (the ingress gateway's `--secure-access-keys` format)."""
    keys: dict[str, bytes] = {}
    for segment in (s.strip() for s in text.split(",")):
        if not segment:
            continue
        key_id, equals, value = segment.partition("=")
        key_id, value = key_id.strip(), value.strip()
        if not equals or not KEY_ID.match(key_id) or not value:
            raise ValueError(f"{segment!r} is not 'id=base64' with a one-character id "
                             "[0-9a-z]")
        try:
            secret = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
        except (binascii.Error, ValueError) as error:
            raise ValueError(f"the secret of key {key_id!r} is not base64") from error
        if not secret:
            raise ValueError(f"the secret of key {key_id!r} is empty")
        keys[key_id] = secret
    if not keys:
        raise ValueError("no keys given")
    return keys
