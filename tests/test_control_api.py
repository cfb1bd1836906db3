"""The control API (`/_emulator/…`) through raw HTTP, on a server process started with
`[control] enabled`: the API key, the doors it is not behind (gateway, proxy route), the
journal and its bound, fault rules on every door, and the clock.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.contract import assert_error
from tests.helpers.docker_engine import require_docker
from tests.helpers.servers import EXECD_PORT, ServerProcess, create_body, launch, wait_for

KEY = "control-test-key"
HEADERS = {"OPEN-SANDBOX-API-KEY": KEY}


@pytest.fixture(scope="module")
def control_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = launch({"control": {"enabled": True}, "server": {"api_key": KEY}},
                     tmp_path_factory.mktemp("control"))
    yield running
    running.stop()


@pytest.fixture
def api(control_server: ServerProcess) -> Iterator[httpx.Client]:
    """A client of the control server with its key, reset before the test."""
    with control_server.client(headers=HEADERS) as client:
        assert client.post("/_emulator/reset").status_code == 200
        yield client


def sandbox(api: httpx.Client, server: ServerProcess, **overrides: Any) -> str:
    response = api.post("/v1/sandboxes", json=create_body(server, **overrides))
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def doors(server: ServerProcess, sandbox_id: str) -> dict[str, tuple[str, dict[str, str]]]:
    """Every way to reach the sandbox's execd: base URL and headers."""
    return {
        "gateway uri": (f"{server.gateway_url}/{sandbox_id}/{EXECD_PORT}", {}),
        "gateway header": (server.gateway_url,
                           {"OpenSandbox-Ingress-To": f"{sandbox_id}-{EXECD_PORT}"}),
        "proxy": (f"{server.url}/sandboxes/{sandbox_id}/proxy/{EXECD_PORT}", {}),
        "proxy /v1": (f"{server.url}/v1/sandboxes/{sandbox_id}/proxy/{EXECD_PORT}", {}),
    }


def journal(api: httpx.Client, **params: str) -> list[dict[str, Any]]:
    response = api.get("/_emulator/journal", params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


# --- where the control API is --------------------------------------------------------------


@pytest.mark.parametrize("method,path", [("POST", "/_emulator/reset"),
                                         ("GET", "/_emulator/journal"),
                                         ("GET", "/_emulator/faults"),
                                         ("POST", "/_emulator/clock/advance")])
def test_absent_unless_enabled(server: ServerProcess, http: httpx.Client, method: str,
                               path: str) -> None:
    kept = sandbox(http, server)
    try:
        assert_error(http.request(method, path, json={"seconds": 10}), 404,
                     "GENERAL::NOT_FOUND")
        assert http.get(f"/v1/sandboxes/{kept}").status_code == 200
    finally:
        http.delete(f"/v1/sandboxes/{kept}")


@pytest.mark.parametrize("method,path", [("POST", "/_emulator/reset"),
                                         ("GET", "/_emulator/journal"),
                                         ("DELETE", "/_emulator/journal"),
                                         ("GET", "/_emulator/faults"),
                                         ("POST", "/_emulator/faults"),
                                         ("DELETE", "/_emulator/faults"),
                                         ("GET", "/_emulator/clock"),
                                         ("POST", "/_emulator/clock/advance")])
def test_the_api_key_is_required(control_server: ServerProcess, api: httpx.Client,
                                 method: str, path: str) -> None:
    with control_server.client() as anonymous:
        assert_error(anonymous.request(method, path), 401, "MISSING_API_KEY")
        assert_error(anonymous.request(method, path, headers={"OPEN-SANDBOX-API-KEY": "no"}),
                     401, "INVALID_API_KEY")
    assert api.get("/_emulator/faults").json() == {"items": []}  # nothing was added
    assert api.get("/_emulator/clock").json()["offsetSeconds"] == 0


def test_unreachable_through_the_gateway_and_the_proxy(control_server: ServerProcess,
                                                       api: httpx.Client) -> None:
    kept = sandbox(api, control_server)
    with httpx.Client(timeout=30) as raw:
        assert_error(raw.post(f"{control_server.gateway_url}/_emulator/reset"), 404,
                     "GATEWAY::ROUTE_NOT_FOUND")
        for door, (base, headers) in doors(control_server, kept).items():
            for method, path in (("POST", "/_emulator/reset"),
                                 ("POST", "/_emulator/clock/advance")):
                response = raw.request(method, base + path, headers={**headers, **HEADERS},
                                       json={"seconds": 3600})
                assert response.status_code == 404, (door, response.text)
    assert api.get(f"/v1/sandboxes/{kept}").status_code == 200  # not reset
    assert api.get("/_emulator/clock").json()["offsetSeconds"] == 0  # not moved
    seen = journal(api, sandboxId=kept, path="/_emulator/*")
    assert {entry["via"] for entry in seen} == {"gateway", "proxy"}
    assert {entry["status"] for entry in seen} == {404}


# --- the journal ----------------------------------------------------------------------------


def test_the_journal_sees_every_door(control_server: ServerProcess, api: httpx.Client) -> None:
    made = sandbox(api, control_server)
    with httpx.Client(timeout=30) as raw:
        for base, headers in doors(control_server, made).values():
            assert raw.get(f"{base}/ping", headers=headers).status_code == 200
    entries = journal(api, sandboxId=made)
    create, *pings = entries
    assert (create["method"], create["path"], create["status"], create["via"]) == (
        "POST", "/v1/sandboxes", 202, "lifecycle")
    assert [(e["via"], e["path"], e["port"], e["status"]) for e in pings] == [
        ("gateway", "/ping", EXECD_PORT, 200), ("gateway", "/ping", EXECD_PORT, 200),
        ("proxy", "/ping", EXECD_PORT, 200), ("proxy", "/ping", EXECD_PORT, 200)]
    seqs = [e["seq"] for e in entries]
    assert seqs == sorted(seqs)
    assert all(e["durationMs"] >= 0 and e["time"].endswith("Z") for e in entries)
    assert [e["seq"] for e in journal(api, path="/ping", method="get")] == seqs[1:]
    assert journal(api, sandboxId="no-such-sandbox") == []


def test_control_requests_are_not_journaled(api: httpx.Client) -> None:
    api.get("/_emulator/faults")
    api.get("/_emulator/clock")
    api.get("/health")
    assert [e["path"] for e in journal(api)] == ["/health"]
    assert api.delete("/_emulator/journal").status_code == 204
    assert journal(api) == []


def test_the_journal_is_bounded(start_server: Callable[..., ServerProcess]) -> None:
    small = start_server(control={"enabled": True, "journal_size": 5})
    with small.client() as client:
        client.delete("/_emulator/journal")  # the start-up's health checks
        for _ in range(12):
            client.get("/health")
        page = client.get("/_emulator/journal").json()
    assert page["capacity"] == 5 and page["dropped"] == 7
    assert [e["seq"] for e in page["items"]] == [8, 9, 10, 11, 12]


def test_journal_size_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"control\.journal_size"):
        launch({"control": {"enabled": True, "journal_size": 0}}, tmp_path)


# --- faults ---------------------------------------------------------------------------------


def test_a_fault_fires_on_every_door(control_server: ServerProcess, api: httpx.Client) -> None:
    made = sandbox(api, control_server)
    other = sandbox(api, control_server)
    rule = api.post("/_emulator/faults", json={
        "path": "/ping", "sandboxId": made, "status": 503, "code": "SANDBOX::PAUSED",
        "message": "asleep", "times": 4})
    assert rule.status_code == 201, rule.text
    with httpx.Client(timeout=30) as raw:
        for base, headers in doors(control_server, made).values():
            assert_error(raw.get(f"{base}/ping", headers=headers), 503, "SANDBOX::PAUSED",
                         "asleep")
        other_base, _ = doors(control_server, other)["gateway uri"]
        assert raw.get(f"{other_base}/ping").status_code == 200  # another sandbox
        for base, headers in doors(control_server, made).values():
            assert raw.get(f"{base}/ping", headers=headers).status_code == 200  # used up
    (listed,) = api.get("/_emulator/faults").json()["items"]
    assert (listed["fired"], listed["remaining"]) == (4, 0)
    faulted = [e for e in journal(api, sandboxId=made, path="/ping") if e["fault"]]
    assert len(faulted) == 4 and {e["status"] for e in faulted} == {503}


def test_faults_on_the_lifecycle_api(control_server: ServerProcess, api: httpx.Client) -> None:
    made = sandbox(api, control_server)
    api.post("/_emulator/faults", json={"kind": "sandbox_start_failed"})
    assert_error(api.post("/v1/sandboxes", json=create_body(control_server)), 500,
                 "DOCKER::SANDBOX_START_FAILED")
    api.post("/_emulator/faults", json={"method": "GET", "path": "/v1/sandboxes/*",
                                        "sandboxId": made, "status": 500, "times": None})
    for _ in range(3):
        assert_error(api.get(f"/v1/sandboxes/{made}"), 500, "GENERAL::UNKNOWN_ERROR")
    assert api.get("/v1/sandboxes").status_code == 200  # not the rule's path
    assert api.delete(f"/v1/sandboxes/{made}").status_code == 204  # not its method
    # Only the sandboxes created before the fault exist: the failed create made none.
    assert api.get("/v1/sandboxes").json()["pagination"]["totalItems"] == 0


def test_a_catch_all_rule_never_blocks_the_control_api(api: httpx.Client) -> None:
    api.post("/_emulator/faults", json={"status": 500, "times": None})
    assert api.get("/health").status_code == 500
    assert api.post("/_emulator/reset").status_code == 200
    assert api.get("/health").status_code == 200


def test_a_delay_then_an_error(api: httpx.Client) -> None:
    api.post("/_emulator/faults", json={"path": "/health", "delaySeconds": 0.3,
                                        "status": 504, "code": "GATEWAY::TIMEOUT"})
    assert_error(api.get("/health"), 504, "GATEWAY::TIMEOUT")
    (entry,) = journal(api, path="/health")
    assert entry["durationMs"] >= 300 and entry["status"] == 504


def test_a_command_stream_cut_midway(control_server: ServerProcess, api: httpx.Client) -> None:
    made = sandbox(api, control_server)
    api.post("/_emulator/faults", json={"kind": "command_stream_cut", "cutAfterEvents": 3})
    base, _ = doors(control_server, made)["gateway uri"]
    frames: list[bytes] = []
    with httpx.Client(timeout=30) as raw, pytest.raises(httpx.RemoteProtocolError):
        with raw.stream("POST", f"{base}/command",
                        json={"command": "for i in 1 2 3; do echo $i; sleep 0.2; done"}) as out:
            assert out.status_code == 200
            for chunk in out.iter_raw():
                frames += [frame for frame in chunk.split(b"\n\n") if frame]
    events = [json.loads(frame) for frame in frames]
    assert [event["type"] for event in events] == ["init", "ping", "stdout"]
    # Only the stream ended: the command ran on to its end, as after a dropped connection.
    command_id = events[0]["text"]
    status = wait_for(lambda: (body := raw_status(base, command_id))["running"] is False
                      and body, "the command to finish")
    assert status["exit_code"] == 0


def raw_status(base: str, command_id: str) -> dict[str, Any]:
    return dict(httpx.get(f"{base}/command/status/{command_id}", timeout=30).json())


@pytest.mark.parametrize("body,mentions", [
    ({}, "needs"),
    ({"kind": "volcano"}, "Unknown fault kind"),
    ({"status": 200}, "400-599"),
    ({"status": 500, "cutAfterEvents": 1}, "not both"),
    ({"delaySeconds": -1}, "delaySeconds"),
    ({"delaySeconds": 601}, "delaySeconds"),
    ({"status": 500, "times": 0}, "times"),
    ({"status": 500, "port": 70000}, "port"),
    ({"cutAfterEvents": -1}, "cutAfterEvents"),
])
def test_bad_fault_rules_are_refused(api: httpx.Client, body: dict[str, Any],
                                     mentions: str) -> None:
    assert_error(api.post("/_emulator/faults", json=body), 400, "EMULATOR::INVALID_FAULT",
                 mentions)
    assert api.get("/_emulator/faults").json() == {"items": []}


@pytest.mark.parametrize("content", [b"{not json", b"[1]", b'{"status": 500, "colour": 1}',
                                     b'{"status": "loud"}'])
def test_malformed_fault_bodies_are_refused(api: httpx.Client, content: bytes) -> None:
    assert_error(api.post("/_emulator/faults", content=content,
                          headers={"content-type": "application/json"}),
                 400, "EMULATOR::INVALID_REQUEST")


def test_rules_are_listed_and_deleted(api: httpx.Client) -> None:
    first = api.post("/_emulator/faults", json={"kind": "slow_ping"}).json()
    second = api.post("/_emulator/faults", json={"kind": "execd_unreachable",
                                                 "times": None}).json()
    assert (first["id"], second["id"]) == (1, 2)
    assert (second["status"], second["port"], second["remaining"]) == (502, EXECD_PORT, None)
    assert api.delete(f"/_emulator/faults/{first['id']}").status_code == 204
    assert [rule["id"] for rule in api.get("/_emulator/faults").json()["items"]] == [2]
    assert_error(api.delete("/_emulator/faults/1"), 404, "EMULATOR::FAULT_NOT_FOUND")
    assert api.delete("/_emulator/faults").status_code == 204
    assert api.get("/_emulator/faults").json() == {"items": []}


# --- the clock and reset, on both runtimes ----------------------------------------------------


def test_clock_and_reset(execd_server: ServerProcess,
                         start_server: Callable[..., ServerProcess]) -> None:
    running = start_server(like=execd_server, control={"enabled": True})
    with running.client() as client:
        short = sandbox(client, running, timeout=60)
        long = sandbox(client, running, timeout=600)
        expires = client.get(f"/v1/sandboxes/{long}").json()["expiresAt"]

        moved = client.post("/_emulator/clock/advance", json={"seconds": 30}).json()
        assert (moved["offsetSeconds"], moved["expiredSandboxes"]) == (30, [])
        moved = client.post("/_emulator/clock/advance", json={"seconds": 31}).json()
        assert moved["expiredSandboxes"] == [short]
        assert_error(client.get(f"/v1/sandboxes/{short}"), 404, "DOCKER::SANDBOX_NOT_FOUND")
        assert client.get(f"/v1/sandboxes/{long}").json()["status"]["state"] == "Running"
        assert client.get(f"/v1/sandboxes/{long}").json()["expiresAt"] == expires
        # A sandbox created now expires on the moved clock.
        later = client.post("/v1/sandboxes", json=create_body(running, timeout=600)).json()
        assert later["expiresAt"] > expires
        assert client.get("/_emulator/clock").json()["now"] > later["createdAt"][:19]
        assert_error(client.post("/_emulator/clock/advance", json={"seconds": -1}), 400,
                     "EMULATOR::INVALID_CLOCK_ADVANCE")
        assert_error(client.post("/_emulator/clock/advance", json={}), 400,
                     "EMULATOR::INVALID_REQUEST")

        client.post("/_emulator/faults", json={"kind": "slow_ping"})
        snapshot = client.post(f"/v1/sandboxes/{long}/snapshots", json={}).json()["id"]
        wait_for(lambda: client.get(f"/v1/snapshots/{snapshot}").json()["status"]["state"]
                 == "Ready", "the snapshot")
        reset = client.post("/_emulator/reset")
        assert reset.json() == {"deletedSandboxes": 2, "deletedSnapshots": 1}
        assert client.get("/_emulator/journal").json()["items"] == []
        assert client.get("/v1/sandboxes").json()["items"] == []
        assert client.get("/v1/snapshots").json()["items"] == []
        assert client.get(f"/v1/sandboxes/{long}/diagnostics/events",
                          params={"scope": "lifecycle"}).status_code == 404
        assert client.get("/_emulator/faults").json()["items"] == []
        assert client.get("/_emulator/clock").json()["offsetSeconds"] == 0
    assert containers_of(running) == []


def containers_of(running: ServerProcess) -> list[str]:
    """Names of the containers a docker-runtime server still has ([] on the fake one)."""
    if running.runtime != "docker":
        return []
    require_docker()
    import docker

    instance = tomllib.loads(running.config_path.read_text())["docker"]["instance"]
    client = docker.from_env(timeout=30)
    try:
        return [c.name for c in client.containers.list(
            all=True, filters={"label": f"opensandbox.io/instance={instance}"})]
    finally:
        client.close()
