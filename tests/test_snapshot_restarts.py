"""Snapshots outlive the server where the runtime keeps them: Docker's snapshot images are
adopted at start-up like its containers; the fake runtime's copies are found again in a
configured `[fake] state_dir`. Metadata patched on a Docker sandbox survives a restart too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.helpers.docker_engine import docker_sections, remove_docker_sandboxes, require_docker
from tests.helpers.servers import ServerProcess, create_body, execd_url, wait_for


def _run(server: ServerProcess, sandbox_id: str, command: str) -> list[str]:
    response = httpx.post(f"{execd_url(server, sandbox_id)}/command",
                          json={"command": command}, timeout=60)
    events = [json.loads(c) for c in response.text.split("\n\n") if c.strip()]
    return [e["text"] for e in events if e["type"] == "stdout"]


def _snapshot(server: ServerProcess, sandbox_id: str) -> str:
    with server.client() as http:
        response = http.post(f"/v1/sandboxes/{sandbox_id}/snapshots", json={"name": "kept"})
        assert response.status_code == 202, response.text
        snapshot_id: str = response.json()["id"]
        wait_for(lambda: http.get(f"/v1/snapshots/{snapshot_id}").json()["status"]["state"]
                 == "Ready", "the snapshot")
    return snapshot_id


def _survives(first: ServerProcess, start_again: Callable[[], ServerProcess]) -> None:
    with first.client() as http:
        created = http.post("/v1/sandboxes", json=create_body(first, metadata={"a": "1"}))
        assert created.status_code == 202, created.text
        source = created.json()["id"]
        _run(first, source, "echo across-restarts > /root/r.txt")
        snapshot_id = _snapshot(first, source)
        patched = http.patch(f"/v1/sandboxes/{source}/metadata", json={"a": None, "b": "2"})
        assert patched.status_code == 200
    first.stop()

    second = start_again()
    with second.client() as http:
        got = http.get(f"/v1/snapshots/{snapshot_id}").json()
        assert got["status"]["state"] == "Ready", got
        assert got["status"]["reason"] == "snapshot_recovery_ready"
        assert got["name"] == "kept" and got["sandboxId"] == source
        restored = http.post("/v1/sandboxes", json={"snapshotId": snapshot_id, "timeout": 600,
                                                    "resourceLimits": {}})
        assert restored.status_code == 202, restored.text
        restored_id = restored.json()["id"]
        assert _run(second, restored_id, "cat /root/r.txt") == ["across-restarts"]
        if second.runtime == "docker":  # the source container was adopted, metadata and all
            assert http.get(f"/v1/sandboxes/{source}").json()["metadata"] == {"b": "2"}
        assert http.delete(f"/v1/sandboxes/{restored_id}").status_code == 204
        assert http.delete(f"/v1/snapshots/{snapshot_id}").status_code == 204
        assert http.get(f"/v1/snapshots/{snapshot_id}").status_code == 404


def test_docker_snapshots_survive_a_server_restart(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    require_docker()
    sections = docker_sections(tmp_path)
    try:
        _survives(start_server(**sections), lambda: start_server(**sections))
        import docker

        client = docker.from_env()
        try:
            left = client.images.list(filters={"label": [
                "opensandbox.io/snapshot-of",
                f"opensandbox.io/instance={sections['docker']['instance']}"]})
        finally:
            client.close()
        assert left == []  # deleting the snapshot removed its image
    finally:
        remove_docker_sandboxes(sections["docker"]["instance"])


def test_fake_snapshots_survive_a_restart_with_a_configured_state_dir(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    fake = {"state_dir": str(tmp_path / "state"), "volumes_root": str(tmp_path / "volumes")}
    _survives(start_server(fake=fake), lambda: start_server(fake=fake))
    assert list((tmp_path / "state" / "snapshots").iterdir()) == []  # its storage is freed
