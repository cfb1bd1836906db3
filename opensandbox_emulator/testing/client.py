"""`EmulatorClient`: the control API from Python, for a server that runs anywhere with
`[control] enabled` (the pytest fixture's own, `docker compose up`, a CI service).

It speaks plain HTTP to `/_emulator/…`, so what a test does here is what any other
language's tests can do. Calls are synchronous; they are safe inside async tests too,
since the server never runs on the test's event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx

API_KEY_HEADER = "OPEN-SANDBOX-API-KEY"


class ControlError(Exception):
    """The control API refused a call; `status`, `code` and `message` say why."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Request:
    """One journal entry: a request the server served (or is serving: `status` None)."""

    seq: int
    time: datetime  # on the server's (movable) clock
    method: str
    path: str  # as its target saw it: `/v1/sandboxes`, or `/ping` inside a sandbox
    query: str
    sandbox_id: str | None
    port: int | None  # the sandbox port (44772 is execd); None for the Lifecycle API
    via: str  # "lifecycle", "gateway" or "proxy"
    status: int | None
    duration_ms: float | None
    fault: int | None  # the id of the fault rule that acted on it

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Request:
        return cls(seq=body["seq"], time=_parse_time(body["time"]), method=body["method"],
                   path=body["path"], query=body["query"], sandbox_id=body["sandboxId"],
                   port=body["port"], via=body["via"], status=body["status"],
                   duration_ms=body["durationMs"], fault=body["fault"])


@dataclass(frozen=True)
class Fault:
    """A fault rule as the server holds it; `fired` counts the requests it acted on."""

    id: int
    kind: str | None
    method: str | None
    path: str | None
    sandbox_id: str | None
    port: int | None
    times: int | None
    status: int | None
    code: str | None
    message: str | None
    delay_seconds: float
    cut_after_events: int | None
    fired: int
    remaining: int | None

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Fault:
        return cls(id=body["id"], kind=body["kind"], method=body["method"],
                   path=body["path"], sandbox_id=body["sandboxId"], port=body["port"],
                   times=body["times"], status=body["status"], code=body["code"],
                   message=body["message"], delay_seconds=body["delaySeconds"],
                   cut_after_events=body["cutAfterEvents"], fired=body["fired"],
                   remaining=body["remaining"])


class _Part:
    def __init__(self, client: EmulatorClient):
        self._client = client


class Journal(_Part):
    """`GET`/`DELETE /_emulator/journal`."""

    def entries(self, *, sandbox_id: str | None = None, path: str | None = None,
                method: str | None = None) -> list[Request]:
        """The requests served, oldest first; `path` is a glob (`/files*`)."""
        return [Request.from_wire(item) for item in self._page(sandbox_id, path, method)["items"]]

    @property
    def dropped(self) -> int:
        """How many old entries were dropped to keep the journal within its size."""
        return int(self._page(None, None, None)["dropped"])

    def clear(self) -> None:
        self._client.call("DELETE", "/journal")

    def _page(self, sandbox_id: str | None, path: str | None,
              method: str | None) -> dict[str, Any]:
        params = {key: value for key, value in (("sandboxId", sandbox_id), ("path", path),
                                                ("method", method)) if value is not None}
        return self._client.call("GET", "/journal", params=params)  # type: ignore[no-any-return]


class Faults(_Part):
    """`POST`/`GET`/`DELETE /_emulator/faults`: rules that make requests fail, wait, or
    have their stream cut. Each call returns the rule the server made."""

    def add(self, kind: str | None = None, *, method: str | None = None,
            path: str | None = None, sandbox_id: str | None = None, port: int | None = None,
            times: int | None = 1, status: int | None = None, code: str | None = None,
            message: str | None = None, delay_seconds: float | None = None,
            cut_after_events: int | None = None) -> Fault:
        """A rule for the next `times` matching requests (None: until removed). Unset
        fields match anything, or come from `kind`'s preset."""
        body: dict[str, Any] = {"times": times}
        for key, value in (("kind", kind), ("method", method), ("path", path),
                           ("sandboxId", sandbox_id), ("port", port), ("status", status),
                           ("code", code), ("message", message),
                           ("delaySeconds", delay_seconds),
                           ("cutAfterEvents", cut_after_events)):
            if value is not None:
                body[key] = value
        return Fault.from_wire(self._client.call("POST", "/faults", json=body))

    # Upstream's real failure modes, by name (the server's presets).

    def sandbox_start_failed(self, **fields: Any) -> Fault:
        """Create answers 500 `DOCKER::SANDBOX_START_FAILED`."""
        return self.add("sandbox_start_failed", **fields)

    def execd_unreachable(self, sandbox_id: str | None = None, **fields: Any) -> Fault:
        """execd requests answer 502, as when the server cannot reach the daemon."""
        return self.add("execd_unreachable", sandbox_id=sandbox_id, **fields)

    def sandbox_paused(self, sandbox_id: str | None = None, **fields: Any) -> Fault:
        """execd requests answer 503 `SANDBOX::PAUSED`."""
        return self.add("sandbox_paused", sandbox_id=sandbox_id, **fields)

    def command_stream_cut(self, after_events: int = 2, **fields: Any) -> Fault:
        """The next `POST /command` stream drops after `after_events` events."""
        return self.add("command_stream_cut", cut_after_events=after_events, **fields)

    def slow_ping(self, delay_seconds: float = 2.0, **fields: Any) -> Fault:
        """The next `GET /ping` answers after `delay_seconds`."""
        return self.add("slow_ping", delay_seconds=delay_seconds, **fields)

    def list(self) -> list[Fault]:
        return [Fault.from_wire(item) for item in self._client.call("GET", "/faults")["items"]]

    def remove(self, fault: Fault | int) -> None:
        fault_id = fault.id if isinstance(fault, Fault) else fault
        self._client.call("DELETE", f"/faults/{fault_id}")

    def clear(self) -> None:
        self._client.call("DELETE", "/faults")


class Clock(_Part):
    """`GET /_emulator/clock`, `POST /_emulator/clock/advance`."""

    def now(self) -> datetime:
        return _parse_time(self._client.call("GET", "/clock")["now"])

    @property
    def offset(self) -> timedelta:
        """How far the server's clock is ahead of real time."""
        return timedelta(seconds=self._client.call("GET", "/clock")["offsetSeconds"])

    def advance(self, by: float | timedelta) -> list[str]:
        """Move the server's clock forward; returns the ids of the sandboxes whose expiry
        it passed (already deleted when this returns)."""
        seconds = by.total_seconds() if isinstance(by, timedelta) else float(by)
        body = self._client.call("POST", "/clock/advance", json={"seconds": seconds})
        return list(body["expiredSandboxes"])


class EmulatorClient:
    """The control API of the server at `url` (`http://host:port`, the Lifecycle port)."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 120.0):
        self.url = url.rstrip("/")
        self.api_key = api_key or None
        headers = {API_KEY_HEADER: api_key} if api_key else {}
        self._http = httpx.Client(base_url=self.url + "/_emulator", headers=headers,
                                  timeout=timeout, trust_env=False)
        self.journal = Journal(self)
        self.faults = Faults(self)
        self.clock = Clock(self)

    @property
    def domain(self) -> str:
        """`host:port`, what the SDKs' `ConnectionConfig(domain=…)` takes."""
        return self.url.split("://", 1)[-1]

    def connection_config(self, **overrides: Any) -> Any:
        """An `opensandbox.config.ConnectionConfig` for this server (the async SDK)."""
        from opensandbox.config import ConnectionConfig

        return ConnectionConfig(**{**self._sdk_options(), **overrides})

    def connection_config_sync(self, **overrides: Any) -> Any:
        """An `opensandbox.config.ConnectionConfigSync` for this server (the sync SDK)."""
        from opensandbox.config import ConnectionConfigSync

        return ConnectionConfigSync(**{**self._sdk_options(), **overrides})

    def _sdk_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"domain": self.domain}
        if self.api_key:
            options["api_key"] = self.api_key
        return options

    def reset(self) -> int:
        """Delete every sandbox (its commands, contexts and files with it), empty the
        journal and the fault rules, put the clock back; returns how many sandboxes went."""
        return int(self.call("POST", "/reset")["deletedSandboxes"])

    def call(self, method: str, path: str, **options: Any) -> Any:
        response = self._http.request(method, path, **options)
        if response.status_code >= 400:
            try:
                body = response.json()
                code, message = body["code"], body["message"]
            except (ValueError, KeyError, TypeError):
                code, message = "UNKNOWN", response.text
            if response.status_code == 404 and code == "GENERAL::NOT_FOUND":
                message += (" (Is the control API on? Start the server with --control or "
                            "[control] enabled = true.)")
            raise ControlError(response.status_code, code, message)
        return response.json() if response.content else None

    def close(self) -> None:
        self._http.close()


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
