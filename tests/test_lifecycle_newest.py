"""The Lifecycle API's newest surface over raw HTTP, on both runtimes: metadata PATCH,
snapshots and restores, diagnostics, signed routes and secureAccess at the gateway, volumes
made on demand, the refusals of what is not served. Every answer is validated against the
head specs (`../shared/specs/head/`), every error is `{"code","message"}`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.helpers.contract import assert_error, assert_lifecycle_spec
from tests.helpers.servers import (
    ServerProcess,
    create_body,
    execd_url,
    wait_for,
)

LIFECYCLE = "head/sandbox-lifecycle.yml"
DIAGNOSTICS = "head/diagnostic-api.yml"


@pytest.fixture(scope="session")
def server(execd_server: ServerProcess) -> ServerProcess:
    """Every test of this module runs on both runtimes."""
    return execd_server


@pytest.fixture
def created(server: ServerProcess, http: httpx.Client) -> Iterator[Callable[..., str]]:
    """Create sandboxes from `create_body(server, **overrides)`; all deleted afterwards."""
    ids: list[str] = []

    def create(**overrides: Any) -> str:
        response = http.post("/v1/sandboxes", json=create_body(server, **overrides))
        assert response.status_code == 202, response.text
        assert_lifecycle_spec(response, LIFECYCLE)
        ids.append(response.json()["id"])
        return ids[-1]

    yield create
    for sandbox_id in ids:
        http.delete(f"/v1/sandboxes/{sandbox_id}")


@pytest.fixture
def snapshots(http: httpx.Client) -> Iterator[list[str]]:
    """Snapshot ids a test made; deleted afterwards (after its sandboxes)."""
    made: list[str] = []
    yield made
    for snapshot_id in made:
        http.delete(f"/v1/snapshots/{snapshot_id}")


def run(server: ServerProcess, sandbox_id: str, command: str) -> list[str]:
    """Run `command` in the sandbox through the gateway; its stdout lines."""
    import json

    response = httpx.post(f"{execd_url(server, sandbox_id)}/command",
                          json={"command": command}, timeout=60)
    assert response.status_code == 200, response.text
    events = [json.loads(chunk) for chunk in response.text.split("\n\n") if chunk.strip()]
    assert events[-1]["type"] == "execution_complete", events
    return [e["text"] for e in events if e["type"] == "stdout"]


def take_snapshot(http: httpx.Client, sandbox_id: str, made: list[str],
                  **body: Any) -> dict[str, Any]:
    """POST a snapshot (checking the 202 shape) and wait until it is Ready."""
    response = http.post(f"/v1/sandboxes/{sandbox_id}/snapshots", json=body)
    assert response.status_code == 202, response.text
    assert_lifecycle_spec(response, LIFECYCLE)
    accepted = response.json()
    made.append(accepted["id"])
    assert accepted["status"]["state"] == "Creating"
    assert accepted["status"]["reason"] == "snapshot_accepted"
    assert response.headers["location"] == f"/v1/snapshots/{accepted['id']}"

    def settled() -> dict[str, Any] | None:
        got = http.get(f"/v1/snapshots/{accepted['id']}")
        assert got.status_code == 200, got.text
        assert_lifecycle_spec(got, LIFECYCLE)
        body = got.json()
        return None if body["status"]["state"] == "Creating" else body

    snapshot: dict[str, Any] = wait_for(settled, "the snapshot to be taken", timeout=120)
    assert snapshot["status"]["state"] == "Ready", snapshot
    return snapshot


# --- metadata PATCH --------------------------------------------------------------------------


def test_metadata_patch_merges_deletes_and_shows_at_once(http: httpx.Client,
                                                         created: Callable[..., str]) -> None:
    suite = "t" + uuid.uuid4().hex[:12]
    sandbox_id = created(metadata={"suite": suite, "team": "ai", "old": "x"})
    response = http.patch(f"/v1/sandboxes/{sandbox_id}/metadata",
                          json={"team": "web", "old": None, "absent": None, "env": ""})
    assert response.status_code == 200, response.text
    assert_lifecycle_spec(response, LIFECYCLE)
    assert response.json()["metadata"] == {"suite": suite, "team": "web", "env": ""}
    assert http.get(f"/v1/sandboxes/{sandbox_id}").json()["metadata"] == response.json()["metadata"]
    listed = http.get("/v1/sandboxes", params={"metadata": f"suite={suite}&team=web&env="})
    assert [item["id"] for item in listed.json()["items"]] == [sandbox_id]
    assert http.get("/v1/sandboxes", params={"metadata": f"suite={suite}&team=ai"}
                    ).json()["items"] == []
    noop = http.patch(f"/v1/sandboxes/{sandbox_id}/metadata", json={})
    assert noop.status_code == 200 and noop.json()["metadata"] == response.json()["metadata"]
    emptied = http.patch(f"/v1/sandboxes/{sandbox_id}/metadata",
                         json={"suite": None, "team": None, "env": None})
    assert emptied.status_code == 200
    assert "metadata" not in emptied.json()  # an empty map is left out, as upstream


@pytest.mark.parametrize(("body", "code", "mentions"), [
    ({"opensandbox.io/owner": "me"}, "SANDBOX::INVALID_METADATA_LABEL", "reserved"),
    ({"opensandbox.io/owner": None}, "SANDBOX::INVALID_METADATA_LABEL", "reserved"),
    ({"bad key": "v"}, "SANDBOX::INVALID_METADATA_LABEL", "bad key"),
    ({"ok": "v" * 64}, "SANDBOX::INVALID_METADATA_LABEL", "not a valid Kubernetes label value"),
    ({"ok": 5}, "SANDBOX::INVALID_PARAMETER", "ok"),
    (["not", "an", "object"], "SANDBOX::INVALID_PARAMETER", "dictionary"),
], ids=["reserved key", "reserved key deleted", "bad key", "long value", "number",
        "not an object"])
def test_metadata_patch_refusals(http: httpx.Client, created: Callable[..., str],
                                 body: Any, code: str, mentions: str) -> None:
    sandbox_id = created(metadata={"keep": "me"})
    response = http.patch(f"/v1/sandboxes/{sandbox_id}/metadata", json=body)
    assert_error(response, 400, code, mentions)
    assert_lifecycle_spec(response, LIFECYCLE)
    assert http.get(f"/v1/sandboxes/{sandbox_id}").json()["metadata"] == {"keep": "me"}


def test_metadata_patch_of_an_unknown_sandbox_is_404(http: httpx.Client) -> None:
    response = http.patch("/v1/sandboxes/no-such-sandbox/metadata", json={"a": "b"})
    assert_error(response, 404, "DOCKER::SANDBOX_NOT_FOUND")
    assert_lifecycle_spec(response, LIFECYCLE)


# --- snapshots -------------------------------------------------------------------------------


def test_snapshot_restores_files_but_not_env_metadata_or_volumes(
        server: ServerProcess, http: httpx.Client, created: Callable[..., str],
        snapshots: list[str], tmp_path: Any) -> None:
    claim = "snapvol-" + uuid.uuid4().hex[:8]
    source = created(env={"SECRET": "source-only"}, metadata={"from": "source"},
                     volumes=[{"name": "data", "pvc": {"claimName": claim,
                                                       "deleteOnSandboxTermination": True},
                               "mountPath": "/mnt/data"}])
    run(server, source, "mkdir -p /workspace/app && echo written > /workspace/app/f.txt && "
                        "chmod 640 /workspace/app/f.txt && ln -s f.txt /workspace/app/link && "
                        "echo in-volume > /mnt/data/v.txt && echo tmp > /tmp/t.txt")
    snapshot = take_snapshot(http, source, snapshots, name="after-write")
    assert snapshot["name"] == "after-write" and snapshot["sandboxId"] == source

    response = http.post("/v1/sandboxes", json={"snapshotId": snapshot["id"], "timeout": 600,
                                                "resourceLimits": {"cpu": "1"},
                                                "metadata": {"from": "restore"}})
    assert response.status_code == 202, response.text
    assert_lifecycle_spec(response, LIFECYCLE)
    restored = response.json()["id"]
    try:
        # From a snapshot the entrypoint defaults to `tail -f /dev/null`.
        assert response.json()["entrypoint"] == ["tail", "-f", "/dev/null"]
        got = http.get(f"/v1/sandboxes/{restored}")
        assert_lifecycle_spec(got, LIFECYCLE)
        assert got.json()["snapshotId"] == snapshot["id"] and "image" not in got.json()
        assert got.json()["metadata"] == {"from": "restore"}
        lines = run(server, restored, "cat /workspace/app/f.txt /tmp/t.txt; "
                                      "stat -c '%a %U' /workspace/app/f.txt; "
                                      "readlink /workspace/app/link; "
                                      "test -e /mnt/data/v.txt && echo volume || echo no-volume; "
                                      "echo \"secret=${SECRET:-}\"")
        assert lines == ["written", "tmp", "640 root", "f.txt", "no-volume", "secret="]
    finally:
        http.delete(f"/v1/sandboxes/{restored}")


def test_snapshot_of_a_paused_sandbox_and_it_outlives_the_sandbox(
        server: ServerProcess, http: httpx.Client, created: Callable[..., str],
        snapshots: list[str]) -> None:
    source = created()
    run(server, source, "echo paused-state > /root/p.txt")
    assert http.post(f"/v1/sandboxes/{source}/pause").status_code == 202
    wait_for(lambda: http.get(f"/v1/sandboxes/{source}").json()["status"]["state"] == "Paused",
             "Paused")
    snapshot = take_snapshot(http, source, snapshots)
    assert "name" not in snapshot
    # The sandbox stays paused, then goes; its snapshot stays.
    assert http.get(f"/v1/sandboxes/{source}").json()["status"]["state"] == "Paused"
    assert http.delete(f"/v1/sandboxes/{source}").status_code == 204
    assert http.get(f"/v1/snapshots/{snapshot['id']}").json()["status"]["state"] == "Ready"
    restored = created(image=None, snapshotId=snapshot["id"], entrypoint=["sleep", "600"])
    assert run(server, restored, "cat /root/p.txt") == ["paused-state"]
    assert http.get(f"/v1/sandboxes/{restored}").json()["entrypoint"] == ["sleep", "600"]


def test_snapshots_list_get_and_delete(http: httpx.Client, created: Callable[..., str],
                                       snapshots: list[str]) -> None:
    source = created()
    first = take_snapshot(http, source, snapshots, name="first")
    second = take_snapshot(http, source, snapshots, name="second")
    listed = http.get("/v1/snapshots", params={"sandboxId": source})
    assert listed.status_code == 200
    assert_lifecycle_spec(listed, LIFECYCLE)
    assert [item["id"] for item in listed.json()["items"]] == [second["id"], first["id"]]
    assert listed.json()["pagination"] == {"page": 1, "pageSize": 20, "totalItems": 2,
                                           "totalPages": 1, "hasNextPage": False}
    paged = http.get("/v1/snapshots", params={"sandboxId": source, "pageSize": 1, "page": 2})
    assert [item["id"] for item in paged.json()["items"]] == [first["id"]]
    by_name = http.get("/v1/snapshots", params={"sandboxId": source, "name": "first"})
    assert [item["id"] for item in by_name.json()["items"]] == [first["id"]]
    by_state = http.get("/v1/snapshots", params=[("sandboxId", source), ("state", "Failed")])
    assert by_state.json()["items"] == []

    deleted = http.delete(f"/v1/snapshots/{first['id']}")
    assert deleted.status_code == 204, deleted.text
    assert_lifecycle_spec(deleted, LIFECYCLE)
    gone = http.get(f"/v1/snapshots/{first['id']}")
    assert_error(gone, 404, "SNAPSHOT::NOT_FOUND", first["id"])
    assert_lifecycle_spec(gone, LIFECYCLE)
    assert_error(http.delete(f"/v1/snapshots/{first['id']}"), 404, "SNAPSHOT::NOT_FOUND")
    restore = http.post("/v1/sandboxes", json={"snapshotId": first["id"], "timeout": 600,
                                               "resourceLimits": {}})
    # Upstream's 404 here is not among the spec's answers of POST /sandboxes.
    assert_error(restore, 404, "SNAPSHOT::NOT_FOUND")


def test_snapshot_refusals(server: ServerProcess, http: httpx.Client,
                           created: Callable[..., str]) -> None:
    missing = http.post("/v1/sandboxes/no-such-sandbox/snapshots", json={})
    assert_error(missing, 404, "DOCKER::SANDBOX_NOT_FOUND")
    assert_lifecycle_spec(missing, LIFECYCLE)
    exited = created(entrypoint=["sh", "-c", "exit 3"])
    wait_for(lambda: http.get(f"/v1/sandboxes/{exited}").json()["status"]["state"] == "Failed",
             "Failed")
    refused = http.post(f"/v1/sandboxes/{exited}/snapshots", json={})
    assert_error(refused, 409, "SNAPSHOT::INVALID_SOURCE_STATE", "Failed")
    assert_lifecycle_spec(refused, LIFECYCLE)
    running = created()
    empty_name = http.post(f"/v1/sandboxes/{running}/snapshots", json={"name": ""})
    assert_error(empty_name, 400, "SANDBOX::INVALID_PARAMETER", "name")
    assert_lifecycle_spec(empty_name, LIFECYCLE)
    for body, mentions in (({"timeout": 600}, "Exactly one of image or snapshotId"),
                           ({"image": {"uri": server.image}, "snapshotId": "x", "timeout": 600},
                            "Exactly one of image or snapshotId"),
                           ({"image": {"uri": server.image}, "timeout": 600},
                            "entrypoint is required")):
        response = http.post("/v1/sandboxes", json={"resourceLimits": {}, **body})
        assert_error(response, 400, "SANDBOX::INVALID_PARAMETER", mentions)
        assert_lifecycle_spec(response, LIFECYCLE)
    for response, status, code in (
            (http.get("/v1/snapshots/no-such-snapshot"), 404, "SNAPSHOT::NOT_FOUND"),
            (http.get("/v1/snapshots", params={"pageSize": 201}), 400,
             "SANDBOX::INVALID_PARAMETER")):
        assert_error(response, status, code)
        assert_lifecycle_spec(response, LIFECYCLE)


# --- diagnostics -----------------------------------------------------------------------------


def test_diagnostics_after_a_sandbox_s_life(http: httpx.Client,
                                            created: Callable[..., str]) -> None:
    sandbox_id = created(entrypoint=["sh", "-c", "echo hello from the entrypoint; "
                                                 "echo to stderr >&2; sleep 600"])
    assert http.post(f"/v1/sandboxes/{sandbox_id}/pause").status_code == 202
    wait_for(lambda: http.get(f"/v1/sandboxes/{sandbox_id}").json()["status"]["state"]
             == "Paused", "Paused")
    assert http.post(f"/v1/sandboxes/{sandbox_id}/resume").status_code == 202
    # Within the server's cap on a sandbox's life (max_sandbox_timeout_seconds).
    new_expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 7200))
    renewed = http.post(f"/v1/sandboxes/{sandbox_id}/renew-expiration",
                        json={"expiresAt": new_expiry})
    assert renewed.status_code == 200

    def logs() -> dict[str, Any] | None:
        response = http.get(f"/v1/sandboxes/{sandbox_id}/diagnostics/logs",
                            params={"scope": "container"})
        assert response.status_code == 200, response.text
        assert_lifecycle_spec(response, DIAGNOSTICS)
        body: dict[str, Any] = response.json()
        return body if "to stderr" in body["content"] else None

    body = wait_for(logs, "the entrypoint's output")
    assert "hello from the entrypoint\n" in body["content"]
    assert body["kind"] == "logs" and body["delivery"] == "inline"
    assert body["contentType"] == "text/plain; charset=utf-8" and body["truncated"] is False

    events = http.get(f"/v1/sandboxes/{sandbox_id}/diagnostics/events",
                      params={"scope": "lifecycle"})
    assert_lifecycle_spec(events, DIAGNOSTICS)
    kinds = [line.split()[1] for line in events.json()["content"].splitlines()]
    assert kinds == ["Created", "Paused", "Resumed", "Renewed"]
    assert new_expiry.rstrip("Z") in events.json()["content"]

    plain = http.get(f"/v1/sandboxes/{sandbox_id}/diagnostics/logs", params={"tail": 1})
    assert plain.headers["content-type"].startswith("text/plain")
    assert plain.headers["deprecation"] == "true"
    assert plain.text.strip() in ("to stderr", "hello from the entrypoint")

    assert http.delete(f"/v1/sandboxes/{sandbox_id}").status_code == 204
    after = http.get(f"/v1/sandboxes/{sandbox_id}/diagnostics/events", params={"scope": "all"})
    assert after.status_code == 200
    assert after.json()["content"].splitlines()[-1].split()[1] == "Deleted"
    assert any("was removed" in w for w in after.json()["warnings"])


def test_diagnostics_records_a_failed_entrypoint(http: httpx.Client,
                                                 created: Callable[..., str]) -> None:
    sandbox_id = created(entrypoint=["sh", "-c", "echo about to fail; exit 7"])
    wait_for(lambda: http.get(f"/v1/sandboxes/{sandbox_id}").json()["status"]["state"]
             == "Failed", "Failed")
    events = http.get(f"/v1/sandboxes/{sandbox_id}/diagnostics/events",
                      params={"scope": "all"}).json()["content"]
    assert "Failed CONTAINER_EXITED_ERROR: Sandbox container exited with code 7." in events
    logs = http.get(f"/v1/sandboxes/{sandbox_id}/diagnostics/logs",
                    params={"scope": "all"}).json()
    assert logs["content"] == "about to fail\n"


def test_diagnostics_refusals(http: httpx.Client, created: Callable[..., str]) -> None:
    for kind in ("logs", "events"):
        missing = http.get(f"/v1/sandboxes/no-such-sandbox/diagnostics/{kind}",
                           params={"scope": "container"})
        assert_error(missing, 404, "DOCKER::SANDBOX_NOT_FOUND")
        assert_lifecycle_spec(missing, DIAGNOSTICS)
    sandbox_id = created()
    unknown = http.get(f"/v1/sandboxes/{sandbox_id}/diagnostics/logs",
                       params={"scope": "everything"})
    assert_error(unknown, 400, "SANDBOX::INVALID_PARAMETER", "container")
    assert_lifecycle_spec(unknown, DIAGNOSTICS)
    network = http.get(f"/v1/sandboxes/{sandbox_id}/diagnostics/logs",
                       params={"scope": "network"})
    assert network.status_code == 200 and network.json()["content"] == ""
    assert network.json()["warnings"]


# --- signed routes and secureAccess -----------------------------------------------------------


def to_b36(value: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while value:
        value, digit = divmod(value, 36)
        out = digits[digit] + out
    return out or "0"


def _endpoint(http: httpx.Client, sandbox_id: str, port: int, **params: Any) -> dict[str, Any]:
    response = http.get(f"/v1/sandboxes/{sandbox_id}/endpoints/{port}", params=params)
    assert response.status_code == 200, response.text
    assert_lifecycle_spec(response, LIFECYCLE)
    body: dict[str, Any] = response.json()
    return body


def _ping(endpoint: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.get(f"http://{endpoint['endpoint']}/ping",
                     headers={**endpoint.get("headers", {}), **headers}, timeout=30)


def test_signed_route_is_accepted_then_refused_when_expired_or_altered(
        server: ServerProcess, http: httpx.Client, created: Callable[..., str]) -> None:
    sandbox_id = created()
    expires = int(time.time()) + 3
    signed = _endpoint(http, sandbox_id, 44772, expires=expires)
    prefix = f"{server.host}:{server.gateway_port}/{sandbox_id}/44772/"
    assert signed["endpoint"].startswith(prefix)
    expires_b36, signature = signed["endpoint"][len(prefix):].split("/")
    assert int(expires_b36, 36) == expires and len(signature) == 9
    assert _ping(signed).status_code == 200

    forged = dict(signed, endpoint=signed["endpoint"][:-2] +
                  ("1" if signed["endpoint"][-2] != "1" else "2") + signed["endpoint"][-1])
    assert_error(_ping(forged), 401, "GATEWAY::UNAUTHORIZED", "signature")
    later = dict(signed, endpoint=f"{prefix}{to_b36(expires + 1000)}/{signature}")
    assert_error(_ping(later), 401, "GATEWAY::UNAUTHORIZED", "signature")
    wait_for(lambda: _ping(signed).status_code == 401, "the signed route to expire")
    assert_error(_ping(signed), 401, "GATEWAY::UNAUTHORIZED", "expired")
    # The unsigned route still reaches a sandbox created without secureAccess.
    assert _ping(_endpoint(http, sandbox_id, 44772)).status_code == 200


def test_signed_route_in_the_header(server: ServerProcess, http: httpx.Client,
                                    created: Callable[..., str]) -> None:
    sandbox_id = created()
    expires = int(time.time()) + 600
    signed = _endpoint(http, sandbox_id, 44772, expires=expires)
    token = signed["endpoint"].split("/", 1)[1].replace("/", "-")
    route = {"endpoint": f"{server.host}:{server.gateway_port}",
             "headers": {"OpenSandbox-Ingress-To": token}}
    assert _ping(route).status_code == 200
    route["headers"]["OpenSandbox-Ingress-To"] = token[:-9] + "00000000" + token[-1]
    assert_error(_ping(route), 401, "GATEWAY::UNAUTHORIZED")


@pytest.mark.parametrize(("params", "mentions"), [
    ({"expires": "soon"}, "expires"),
    ({"expires": "0012"}, "expires"),
    ({"expires": str(2**64)}, "expires"),
    ({"expires": "1"}, "not in the future"),
    ({"expires": str(int(time.time()) + 600), "use_server_proxy": "true"}, "use_server_proxy"),
], ids=["not a number", "leading zeros", "past uint64", "in the past", "with server proxy"])
def test_signed_endpoint_refusals(http: httpx.Client, created: Callable[..., str],
                                  params: dict[str, str], mentions: str) -> None:
    sandbox_id = created()
    response = http.get(f"/v1/sandboxes/{sandbox_id}/endpoints/44772", params=params)
    assert_error(response, 400, "SANDBOX::INVALID_PARAMETER", mentions)
    if params["expires"].isdigit() and len(params["expires"]) <= 20:  # the spec's pattern
        assert_lifecycle_spec(response, LIFECYCLE)


def test_secure_access_needs_its_token_or_a_signed_route(
        server: ServerProcess, http: httpx.Client, created: Callable[..., str]) -> None:
    sandbox_id = created(secureAccess=True)
    unsigned = _endpoint(http, sandbox_id, 44772)
    token = unsigned["headers"]["OpenSandbox-Secure-Access"]
    assert _ping(unsigned).status_code == 200
    bare = {"endpoint": unsigned["endpoint"]}
    assert_error(_ping(bare), 401, "GATEWAY::UNAUTHORIZED", "secureAccess")
    assert_error(_ping(unsigned, **{"OpenSandbox-Secure-Access": token + "x"}), 401,
                 "GATEWAY::UNAUTHORIZED", "does not match")
    signed = _endpoint(http, sandbox_id, 44772, expires=int(time.time()) + 600)
    assert "OpenSandbox-Secure-Access" not in signed.get("headers", {})
    assert _ping(signed).status_code == 200
    proxied = _endpoint(http, sandbox_id, 44772, use_server_proxy="true")
    assert proxied["headers"]["OpenSandbox-Secure-Access"] == token
    assert _ping(proxied).status_code == 200
    assert_error(_ping({"endpoint": proxied["endpoint"]}), 401, "GATEWAY::UNAUTHORIZED")


# --- volumes, platform, extensions, credentialProxy ---------------------------------------


def test_pvc_is_created_on_demand_and_removed_with_its_sandbox(
        server: ServerProcess, http: httpx.Client) -> None:
    claim = "ondemand-" + uuid.uuid4().hex[:8]
    kept = "kept-" + uuid.uuid4().hex[:8]
    response = http.post("/v1/sandboxes", json=create_body(server, volumes=[
        {"name": "a", "pvc": {"claimName": claim, "deleteOnSandboxTermination": True,
                              "storage": "1Gi"}, "mountPath": "/mnt/a", "subPath": "sub"},
        {"name": "b", "pvc": {"claimName": kept}, "mountPath": "/mnt/b"}]))
    assert response.status_code == 202, response.text
    sandbox_id = response.json()["id"]
    try:
        assert run(server, sandbox_id, "echo x > /mnt/a/f && echo y > /mnt/b/g && "
                                       "cat /mnt/a/f /mnt/b/g") == ["x", "y"]
        again = http.post("/v1/sandboxes", json=create_body(server, volumes=[
            {"name": "b", "pvc": {"claimName": kept, "createIfNotExists": False},
             "mountPath": "/mnt/b"}]))
        assert again.status_code == 202, again.text
        assert run(server, again.json()["id"], "cat /mnt/b/g") == ["y"]
        http.delete(f"/v1/sandboxes/{again.json()['id']}")
    finally:
        http.delete(f"/v1/sandboxes/{sandbox_id}")
    # The volume made for it went with it; the other one stays.
    missing = http.post("/v1/sandboxes", json=create_body(server, volumes=[
        {"name": "a", "pvc": {"claimName": claim, "createIfNotExists": False},
         "mountPath": "/mnt/a"}]))
    assert_error(missing, 400, "VOLUME::PVC_NOT_FOUND", claim)
    still = http.post("/v1/sandboxes", json=create_body(server, volumes=[
        {"name": "b", "pvc": {"claimName": kept, "createIfNotExists": False},
         "mountPath": "/mnt/b"}]))
    assert still.status_code == 202, still.text
    http.delete(f"/v1/sandboxes/{still.json()['id']}")
    _remove_volume(server, kept)


def _remove_volume(server: ServerProcess, claim: str) -> None:
    if server.runtime == "docker":
        import docker

        client = docker.from_env()
        try:
            client.volumes.get(claim).remove(force=True)
        finally:
            client.close()
    else:
        import shutil

        shutil.rmtree(server.config_path.parent / "volumes" / claim, ignore_errors=True)


OSSFS = {"bucket": "my-bucket", "endpoint": "oss-cn-hangzhou.aliyuncs.com",
         "accessKeyId": "id", "accessKeySecret": "secret"}


@pytest.mark.parametrize(("overrides", "status", "code", "mentions"), [
    ({"volumes": [{"name": "o", "ossfs": OSSFS, "mountPath": "/o"}], }, 400,
     "VOLUME::UNSUPPORTED_BACKEND", "ossfs"),
    ({"volumes": [{"name": "o", "ossfs": {**OSSFS, "bucket": "x"}, "mountPath": "/o"}]}, 400,
     "SANDBOX::INVALID_PARAMETER", "bucket"),
    ({"volumes": [{"name": "p", "pvc": {"claimName": "c", "storage": "lots"},
                   "mountPath": "/p"}]}, 400, "SANDBOX::INVALID_PARAMETER", "storage"),
    ({"platform": {"os": "plan9", "arch": "amd64"}}, 400, "SANDBOX::INVALID_PARAMETER",
     "plan9"),
    ({"platform": {"os": "windows", "arch": "amd64"}}, 400, "SANDBOX::INVALID_PARAMETER",
     "windows"),
    ({"extensions": {"access.renew.extend.seconds": "10"}}, 400,
     "SANDBOX::INVALID_PARAMETER", "300"),
    ({"extensions": {"poolRef": "warm"}}, 400, "SANDBOX::UNSUPPORTED_POOL_REF", "pool"),
    ({"credentialProxy": {"enabled": True}}, 400, "SANDBOX::INVALID_PARAMETER",
     "networkPolicy"),
    ({"credentialProxy": {"enabled": True}, "networkPolicy": {"defaultAction": "deny"}}, 501,
     "GENERAL::NOT_IMPLEMENTED", "credentialProxy"),
    ({"templateId": "tpl_1", "image": None}, 501, "GENERAL::NOT_IMPLEMENTED", "templateId"),
], ids=["ossfs", "ossfs shape", "pvc storage", "platform os", "windows", "renew seconds",
        "poolRef", "credentialProxy alone", "credentialProxy", "templateId"])
def test_create_refusals_of_the_newest_fields(server: ServerProcess, http: httpx.Client,
                                              overrides: dict[str, Any], status: int,
                                              code: str, mentions: str) -> None:
    body = {k: v for k, v in {**create_body(server), **overrides}.items() if v is not None}
    response = http.post("/v1/sandboxes", json=body)
    assert_error(response, status, code, mentions)
    if status == 400:  # the spec lists no 501 for POST /sandboxes
        assert_lifecycle_spec(response, LIFECYCLE)


def test_platform_and_extensions_that_can_be_honoured(server: ServerProcess,
                                                      http: httpx.Client,
                                                      created: Callable[..., str]) -> None:
    import platform as host

    arch = {"x86_64": "amd64", "aarch64": "arm64"}[host.machine()]
    sandbox_id = created(platform={"os": "Linux", "arch": arch.upper()},
                         extensions={"access.renew.extend.seconds": "3600", "team.tag": "x"})
    got = http.get(f"/v1/sandboxes/{sandbox_id}").json()
    assert got["platform"] == {"os": "linux", "arch": arch}
    before = got["expiresAt"]
    # An access through the gateway renews the sandbox to an hour from now.
    assert _ping(_endpoint(http, sandbox_id, 44772)).status_code == 200
    after = http.get(f"/v1/sandboxes/{sandbox_id}").json()["expiresAt"]
    assert after > before
    if server.runtime == "fake":
        other = "arm64" if arch == "amd64" else "amd64"
        response = http.post("/v1/sandboxes", json=create_body(
            server, platform={"os": "linux", "arch": other}))
        assert_error(response, 400, "SANDBOX::INVALID_PARAMETER", other)


# --- what is not served ------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "mentions"), [
    ("POST", "/v1/templates", "Templates"),
    ("GET", "/v1/templates", "Templates"),
    ("GET", "/v1/templates/tpl_1", "Templates"),
    ("DELETE", "/v1/templates/tpl_1", "Templates"),
    ("GET", "/v1/sandboxes/some-id/networkpolicy", "network policy"),
    ("PATCH", "/v1/sandboxes/some-id/networkpolicy", "network policy"),
    ("PUT", "/v1/sandboxes/some-id/networkpolicy", "network policy"),
    ("DELETE", "/v1/sandboxes/some-id/networkpolicy", "network policy"),
])
def test_routes_upstream_does_not_serve_are_501(http: httpx.Client, method: str, path: str,
                                                mentions: str) -> None:
    response = http.request(method, path, json={})
    assert_error(response, 501, "GENERAL::NOT_IMPLEMENTED", mentions)


def test_creation_metrics_are_accepted(http: httpx.Client) -> None:
    response = http.post("/v1/metrics/events", json={"eventType": "sandbox.create",
                                                     "createDurationMs": 5, "success": True})
    assert response.status_code == 204
