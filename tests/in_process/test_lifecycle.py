"""The Lifecycle API in this process: how a create request is refused, and what the
injected clock and ids decide.

Every refusal is a 400 `{"code","message"}` whose message names the field at fault, and a
refused request leaves nothing behind: no sandbox, not even a spent id. With the app's
clock and ids in the test's hands, ids and times in answers are known to the character.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers.contract import assert_error
from tests.helpers.in_process import InProcess, eventually
from tests.helpers.servers import create_body, no_leftover_processes

pytestmark = pytest.mark.anyio

INVALID = "SANDBOX::INVALID_PARAMETER"

REFUSALS: list[tuple[str, dict[str, Any], str, str]] = [
    ("no image", {"image": None}, INVALID, "Exactly one of image or snapshotId"),
    ("empty image uri", {"image": {"uri": ""}}, INVALID, "image.uri:"),
    ("timeout too short", {"timeout": 5}, INVALID,
     "timeout must be between 60 and 86400 seconds (got 5)"),
    ("timeout too long", {"timeout": 86401}, INVALID, "(got 86401)"),
    ("no entrypoint", {"entrypoint": []}, INVALID, "entrypoint: List should have at least 1"),
    ("blank program", {"entrypoint": [" "]}, INVALID, "entrypoint[0] must name a program"),
    ("unsplittable command line", {"entrypoint": ["python -c 'open"]}, INVALID,
     "cannot be split into arguments (No closing quotation)"),
    ("number as a limit", {"resourceLimits": {"cpu": 1}}, INVALID,
     "resourceLimits.cpu: Input should be a valid string (got 1)"),
    ("number in env", {"env": {"A": 1}}, INVALID, "env.A: Input should be a valid string"),
    ("label key", {"metadata": {"bad key!": "x"}}, "SANDBOX::INVALID_METADATA_LABEL",
     "Metadata key 'bad key!' is not a valid Kubernetes label key"),
    ("label value", {"metadata": {"team": "a b"}}, "SANDBOX::INVALID_METADATA_LABEL",
     "Metadata value 'a b' is not a valid Kubernetes label value"),
    ("volume name twice", {"volumes": [
        {"name": "data", "host": {"path": "/tmp"}, "mountPath": "/mnt/a"},
        {"name": "data", "host": {"path": "/tmp"}, "mountPath": "/mnt/b"}]},
     "VOLUME::DUPLICATE_NAME", "Volume name 'data' is used more than once"),
    ("subPath climbing out", {"volumes": [
        {"name": "data", "host": {"path": "/tmp"}, "mountPath": "/mnt/a", "subPath": "../x"}]},
     "VOLUME::INVALID_SUB_PATH", "subPath '../x' must be a relative path without '..'"),
    ("missing host path", {"volumes": [
        {"name": "data", "host": {"path": "/no/such/dir"}, "mountPath": "/mnt/a"}]},
     "VOLUME::HOST_PATH_NOT_FOUND", "host path '/no/such/dir' does not exist"),
]


@pytest.mark.parametrize(("overrides", "code", "message"),
                         [case[1:] for case in REFUSALS], ids=[case[0] for case in REFUSALS])
async def test_a_bad_create_request_is_refused_naming_the_field(
        emulator: InProcess, overrides: dict[str, Any], code: str, message: str) -> None:
    body = {key: value for key, value in create_body(**overrides).items() if value is not None}
    assert_error(await emulator.client.post("/v1/sandboxes", json=body), 400, code, message)
    listed = (await emulator.client.get("/v1/sandboxes")).json()
    assert listed["items"] == [] and listed["pagination"]["totalItems"] == 0
    assert emulator.ids.issued == [], "a refused request spent an id"


async def test_a_body_that_is_not_json_is_refused(emulator: InProcess) -> None:
    response = await emulator.client.post("/v1/sandboxes", content=b"{image: 1",
                                          headers={"content-type": "application/json"})
    assert_error(response, 400, INVALID, "request body: not valid JSON")


async def test_ids_and_times_come_from_the_injected_parts(emulator: InProcess) -> None:
    first = await emulator.new_sandbox(timeout=600)
    emulator.clock.advance(90)
    second = await emulator.new_sandbox(timeout=3600)
    assert [first, second] == ["00000000-0000-4000-8000-000000000001",
                               "00000000-0000-4000-8000-000000000002"]
    got = (await emulator.client.get(f"/v1/sandboxes/{second}")).json()
    assert got["createdAt"] == "2030-01-02T03:05:35.000000Z"
    assert got["expiresAt"] == "2030-01-02T04:05:35.000000Z"
    assert got["status"]["state"] == "Running"


async def test_a_renewal_before_the_clock_is_refused_and_changes_nothing(
        emulator: InProcess) -> None:
    sandbox_id = await emulator.new_sandbox(timeout=600)
    emulator.clock.advance(120)
    response = await emulator.client.post(f"/v1/sandboxes/{sandbox_id}/renew-expiration",
                                          json={"expiresAt": "2030-01-02T03:05:00Z"})
    assert_error(response, 400, "DOCKER::INVALID_EXPIRATION",
                 "now is 2030-01-02T03:06:05.000000Z")
    got = (await emulator.client.get(f"/v1/sandboxes/{sandbox_id}")).json()
    assert got["expiresAt"] == "2030-01-02T03:14:05.000000Z"


async def test_a_sandbox_expires_when_the_clock_passes_its_expiry(emulator: InProcess) -> None:
    """Only the injected clock moves: the reaper (which wakes at least once a second)
    finds the sandbox expired and destroys it, its processes included."""
    sandbox_id = await emulator.new_sandbox(timeout=600)
    emulator.clock.advance(599)
    assert await emulator.app.service.reap_expired() == []
    assert (await emulator.client.get(f"/v1/sandboxes/{sandbox_id}")).status_code == 200
    emulator.clock.advance(1)

    async def gone() -> bool:
        return (await emulator.client.get(f"/v1/sandboxes/{sandbox_id}")).status_code == 404

    async def no_processes() -> bool:
        return not no_leftover_processes(emulator.state_dir)

    await eventually(gone, "the reaper to destroy the sandbox")
    await eventually(no_processes, "the sandbox's processes to end")
