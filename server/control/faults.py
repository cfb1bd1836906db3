"""Fault rules: make the next N matching requests fail, wait, or have their stream cut.

A rule matches on method, a path glob (the path the target sees, as in the journal),
sandbox id and sandbox port; each unset field matches anything. The first rule that still
has uses left acts on a request, and counts it. A rule does one of:
- fail with `status` and a `{"code","message"}` body (after `delaySeconds`, if set);
- wait `delaySeconds` and then let the request through;
- let the request through and cut its event stream (`/command`, `/code`) after
  `cutAfterEvents` events, closing the connection as a crashed execd would.

`kind` starts a rule from one of upstream's real failure modes (`PRESETS`); fields given
beside it override the preset's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from opensandbox_emulator.server.control.journal import path_matches
from opensandbox_emulator.server.control.requests import RequestView
from opensandbox_emulator.server.errors import ApiError

EXECD_PORT = 44772
MAX_RULES = 1000
MAX_DELAY_SECONDS = 600.0

PRESETS: dict[str, dict[str, Any]] = {
    # The Docker runtime could not create or start the container.
    "sandbox_start_failed": {
        "method": "POST", "path": "/v1/sandboxes", "status": 500,
        "code": "DOCKER::SANDBOX_START_FAILED",
        "message": "Failed to create or start container: injected by the emulator."},
    # The server could not reach the sandbox's execd (a dead or not yet started daemon).
    "execd_unreachable": {
        "port": EXECD_PORT, "status": 502, "code": "GENERAL::UNKNOWN_ERROR",
        "message": "Could not connect to the backend sandbox endpoint: connection refused "
                   "(injected by the emulator)."},
    # The sandbox is paused, so its execd cannot answer.
    "sandbox_paused": {
        "port": EXECD_PORT, "status": 503, "code": "SANDBOX::PAUSED",
        "message": "Sandbox is paused; resume it to reach its ports (injected by the "
                   "emulator)."},
    # execd's connection drops while a command streams its output.
    "command_stream_cut": {
        "method": "POST", "path": "/command", "port": EXECD_PORT, "cut_after_events": 2},
    # execd answers /ping late (the SDKs poll it until a sandbox is ready).
    "slow_ping": {
        "method": "GET", "path": "/ping", "port": EXECD_PORT, "delay_seconds": 2.0},
}


class InvalidFault(ApiError):
    status_code = 400
    code = "EMULATOR::INVALID_FAULT"


class FaultNotFound(ApiError):
    status_code = 404
    code = "EMULATOR::FAULT_NOT_FOUND"

    def __init__(self, fault_id: int):
        super().__init__(f"No fault rule {fault_id} (GET /_emulator/faults lists them).")


@dataclass
class FaultRule:
    id: int
    kind: str | None = None
    method: str | None = None
    path: str | None = None
    sandbox_id: str | None = None
    port: int | None = None
    times: int | None = 1  # None: until removed
    status: int | None = None
    code: str | None = None
    message: str | None = None
    delay_seconds: float = 0.0
    cut_after_events: int | None = None
    fired: int = field(default=0)

    @property
    def remaining(self) -> int | None:
        return None if self.times is None else max(self.times - self.fired, 0)

    def matches(self, method: str, view: RequestView) -> bool:
        return ((self.method is None or self.method == method)
                and (self.sandbox_id is None or self.sandbox_id == view.sandbox_id)
                and (self.port is None or self.port == view.port)
                and path_matches(self.path, view.path))

    def error(self) -> ApiError | None:
        if self.status is None:
            return None
        return ApiError(self.message or f"Injected by the emulator (fault rule {self.id}).",
                        code=self.code or "GENERAL::UNKNOWN_ERROR", status_code=self.status)

    def to_dict(self) -> dict[str, Any]:
        names = {"sandbox_id": "sandboxId", "delay_seconds": "delaySeconds",
                 "cut_after_events": "cutAfterEvents"}
        body = {names.get(key, key): value for key, value in asdict(self).items()}
        body["remaining"] = self.remaining
        return body


class FaultBook:
    def __init__(self) -> None:
        self._rules: list[FaultRule] = []
        self._next_id = 1

    def add(self, *, kind: str | None = None, **fields: Any) -> FaultRule:
        """A new rule from `kind`'s preset (if any) overridden by `fields`."""
        if len(self._rules) >= MAX_RULES:
            raise InvalidFault(f"There are already {MAX_RULES} fault rules; delete some "
                               "(DELETE /_emulator/faults) first.")
        values: dict[str, Any] = {}
        if kind is not None:
            if kind not in PRESETS:
                raise InvalidFault(f"Unknown fault kind '{kind}'; known kinds: "
                                   f"{', '.join(PRESETS)}.")
            values.update(PRESETS[kind])
        values.update(fields)
        rule = FaultRule(id=self._next_id, kind=kind, **values)
        if rule.method is not None:
            rule.method = rule.method.upper()
        _check(rule)
        self._next_id += 1
        self._rules.append(rule)
        return rule

    def take(self, method: str, view: RequestView) -> FaultRule | None:
        """The first rule with uses left that matches, now counted as used once."""
        for rule in self._rules:
            if rule.remaining != 0 and rule.matches(method, view):
                rule.fired += 1
                return rule
        return None

    def rules(self) -> list[FaultRule]:
        return list(self._rules)

    def remove(self, fault_id: int) -> None:
        for rule in self._rules:
            if rule.id == fault_id:
                self._rules.remove(rule)
                return
        raise FaultNotFound(fault_id)

    def clear(self) -> None:
        """No rules, ids from 1 again."""
        self._rules.clear()
        self._next_id = 1


def _check(rule: FaultRule) -> None:
    if rule.status is None and not rule.delay_seconds and rule.cut_after_events is None:
        raise InvalidFault("A fault rule needs `status` (fail), `delaySeconds` (wait) or "
                           "`cutAfterEvents` (cut a stream), or a `kind`.")
    if rule.status is not None and not 400 <= rule.status <= 599:
        raise InvalidFault(f"status must be an error status, 400-599 (got {rule.status}).")
    if rule.status is not None and rule.cut_after_events is not None:
        raise InvalidFault("A rule either fails a request (`status`) or cuts its stream "
                           "(`cutAfterEvents`), not both.")
    if not 0 <= rule.delay_seconds <= MAX_DELAY_SECONDS:
        raise InvalidFault(f"delaySeconds must be between 0 and {MAX_DELAY_SECONDS:g} "
                           f"(got {rule.delay_seconds:g}).")
    if rule.cut_after_events is not None and rule.cut_after_events < 0:
        raise InvalidFault("cutAfterEvents must be 0 or more.")
    if rule.times is not None and rule.times < 1:
        raise InvalidFault("times must be 1 or more (or null: until the rule is deleted).")
    if rule.port is not None and not 1 <= rule.port <= 65535:
        raise InvalidFault(f"port must be between 1 and 65535 (got {rule.port}).")
