"""Fuzzing both APIs with schemathesis, against a live server: never a 5xx.

Every operation of `../shared/specs/sandbox-lifecycle.yml` and `execd-api.yaml` gets
examples, boundary values and generated input, valid and invalid, and each answer is
checked: never a server error, every error a `{"code","message"}` body, and status,
headers, content type and body as the spec says, except where this server answers
otherwise on purpose. Those exceptions are listed below by operation and check, each with
its reason; most are rows of the README's deviation table ("Deviations from upstream").

Bounded and reproducible: a fixed number of examples per operation, derandomized (the same
inputs every run), about two minutes on two cores. The execd half fuzzes a real sandbox
through the gateway, made again whenever a generated command ended it; its server insists
on bubblewrap, so whatever a generated command or path does stays inside that sandbox. The
API key and the execd token are on, so that the authentication checks have work to do.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings

from tests.helpers.contract import SPECS
from tests.helpers.servers import ServerProcess, create_body, execd_url, launch

if not (SPECS / "execd-api.yaml").exists():
    pytest.skip(f"{SPECS} is not here (the fuzzing needs the specs)", allow_module_level=True)

import schemathesis
from schemathesis import checks
from schemathesis.config import SchemathesisConfig

EXAMPLES = 20  # per operation and phase; derandomized, so the same inputs every run

FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck), print_blob=False)

API_KEY = "fuzz-key"
TOKEN_HEADER = "X-EXECD-ACCESS-TOKEN"

lifecycle = schemathesis.openapi.from_path(str(SPECS / "sandbox-lifecycle.yml"))
# An endless stream: every call would wait for its timeout. tests/test_code.py and the
# shutdown test read it.
# The token is not generated (nor left out on purpose): every call sends the real one, and
# the `ignored_auth` check tries it without and with a wrong one.
execd = schemathesis.openapi.from_path(
    str(SPECS / "execd-api.yaml"),
    config=SchemathesisConfig.from_str("[generation]\nwith-security-parameters = false\n"),
).exclude(path="/metrics/watch")

# --- what this server answers otherwise, on purpose --------------------------------------------

# Statuses the spec does not list for an operation. README deviation table rows in quotes.
EXTRA_STATUSES: dict[str, dict[int, str]] = {
    "GET /sandboxes/{sandboxId}/endpoints/{port}": {
        400: "a port out of range is 400 DOCKER::INVALID_PORT, as upstream (unlisted)"},
    "DELETE /command": {404: "'DELETE /command?id= with an unknown id is 500' -> 404"},
    "DELETE /code": {404: "the same handler as DELETE /command: an unknown id is 404"},
    "POST /code": {404: "'/code errors after the headers' -> 404 CONTEXT_NOT_FOUND",
                   409: "'/code errors after the headers' -> 409 CONTEXT_BUSY"},
    "GET /code/contexts/{context_id}": {
        404: "'an unknown context id is an empty 500' -> 404 CONTEXT_NOT_FOUND"},
    "DELETE /code/contexts/{context_id}": {
        404: "'an unknown context id is an empty 500' -> 404 CONTEXT_NOT_FOUND"},
    "POST /files/replace": {404: "'/files/info on a missing file is 500' -> 404, here too"},
    "POST /files/mv": {409: "'mv … an existing destination' -> 409 FILE_ALREADY_EXISTS"},
}
# Every execd operation: the spec requires the token but lists no 401 (upstream answers
# 401 too); bad input (an empty, NUL-holding or too long path…) is a 400 where the spec has
# only 500; and the file errors upstream HEAD gives (403, 404, 409) where the spec has none.
EXECD_EXTRA_STATUSES = {
    401: "a missing or wrong X-EXECD-ACCESS-TOKEN is 401 (unlisted by the spec)",
    400: "'a NUL byte in a command, cwd, env or path… : 500' -> 400 naming the field",
    403: "writes to read-only mounts, /proc and /dev: 403 FILE_READ_ONLY / NOT_ACCESSIBLE",
    404: "a missing file or directory is 404 FILE_NOT_FOUND (as upstream HEAD)",
    409: "a path that is a mount point or changed meanwhile: 409 FILE_BUSY",
}

# Built-in checks left out, globally and per operation, with the reason.
SKIPPED_CHECKS: dict[str, str] = {
    # The spec's schemas are looser than upstream's own checks, which this server keeps:
    # pageSize at most 200, Kubernetes label rules for metadata, the timeout's range, an
    # entrypoint that names a program, non-empty paths, no NUL byte in a path or command.
    "positive_data_acceptance": "upstream refuses more than the spec's schemas do",
}
SKIPPED_CHECKS_FOR: dict[str, dict[str, str]] = {
    "GET /code/contexts": {"negative_data_rejection":
                           "language is optional: without it every context is listed"},
    "POST /code": {"negative_data_rejection":
                   "a context without language runs the code as a command (README)"},
    "GET /files/info": {"negative_data_rejection":
                        "no path asks about nothing: {} (as upstream)"},
    "POST /command": {"negative_data_rejection":
                      "null for an optional field means absent (as Go's decoder; SDKs send it)"},
    "POST /directories": {"negative_data_rejection":
                          "mode may be left out: 0 leaves it as it is (as upstream's decoder)"},
    "POST /files/permissions": {"negative_data_rejection":
                                "mode may be left out: 0 leaves it as it is (as upstream)"},
}


def error_shape(ctx: Any, response: Any, case: Any) -> None:
    """Every error answer is exactly `{"code","message"}`, neither blank."""
    if response.status_code < 400:
        return
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"code", "message"}, body
    assert body["code"] and body["message"].strip(), body


def status_codes_but(extra_for_all: dict[int, str]) -> Any:
    """`status_code_conformance`, but for the statuses this server answers on purpose."""

    def status_code_conformance_but_deviations(ctx: Any, response: Any, case: Any) -> None:
        extra = {**extra_for_all, **EXTRA_STATUSES.get(f"{case.method} {case.path}", {})}
        if response.status_code not in extra:
            checks.status_code_conformance(ctx, response, case)

    return status_code_conformance_but_deviations


def validate(case: Any, response: Any, *, extra_statuses: dict[int, str]) -> None:
    skipped = {**SKIPPED_CHECKS, **SKIPPED_CHECKS_FOR.get(f"{case.method} {case.path}", {}),
               "status_code_conformance": "replaced by status_codes_but()"}
    case.validate_response(
        response, excluded_checks=[getattr(checks, name) for name in skipped],
        additional_checks=[error_shape, status_codes_but(extra_statuses)])


# --- the server ----------------------------------------------------------------------------


@dataclass
class Target:
    server: ServerProcess
    sandbox_id: str = ""
    token: str = ""

    def headers(self) -> dict[str, str]:
        return {"OPEN-SANDBOX-API-KEY": API_KEY}

    def running_sandbox(self) -> str:
        """The sandbox to fuzz execd on; made again when a generated command ended it."""
        if self.sandbox_id:
            state = httpx.get(f"{self.server.url}/v1/sandboxes/{self.sandbox_id}",
                              headers=self.headers(), timeout=30)
            if state.status_code == 200 and state.json()["status"]["state"] == "Running":
                return self.sandbox_id
        made = httpx.post(f"{self.server.url}/v1/sandboxes", json=create_body(self.server),
                          headers=self.headers(), timeout=60)
        assert made.status_code == 202, made.text
        self.sandbox_id = made.json()["id"]
        endpoint = httpx.get(f"{self.server.url}/v1/sandboxes/{self.sandbox_id}/endpoints/"
                             "44772", headers=self.headers(), timeout=30).json()
        self.token = endpoint["headers"][TOKEN_HEADER]
        return self.sandbox_id


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    server = launch({"server": {"api_key": API_KEY}, "execd": {"access_token": True},
                     "fake": {"isolation": "bubblewrap"}}, tmp_path_factory.mktemp("fuzz"))
    try:
        yield Target(server)
    finally:
        server.stop()


def no_traceback(server: ServerProcess) -> None:
    assert not any("Traceback" in line for line in server.output), \
        "".join(server.output[-60:])


# --- the fuzzing ---------------------------------------------------------------------------


@lifecycle.parametrize()
@FUZZ
def test_lifecycle_api(case: Any, target: Target) -> None:
    response = case.call(base_url=f"{target.server.url}/v1", headers=target.headers(),
                         timeout=60)
    validate(case, response, extra_statuses={})
    no_traceback(target.server)


@execd.parametrize()
@FUZZ
def test_execd_api(case: Any, target: Target) -> None:
    sandbox_id = target.running_sandbox()
    response = case.call(base_url=execd_url(target.server, sandbox_id), timeout=60,
                         headers={TOKEN_HEADER: target.token})
    validate(case, response, extra_statuses=EXECD_EXTRA_STATUSES)
    no_traceback(target.server)
