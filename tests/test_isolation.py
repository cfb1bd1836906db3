"""Isolation on the fake runtime, with real runc: private roots, volumes, the host path
allowlist, and that deleting a sandbox or stopping the server leaves nothing behind.

What a sandbox did is read back from the host side of its private root
(`<state_dir>/sandboxes/<id>/root/...`), so the checks do not depend on execd.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.servers import ServerProcess, create_body, no_leftover_processes, wait_for

pytestmark = pytest.mark.skipif(shutil.which("runc") is None,
                                reason="runc is not installed (apt-get install runc)")


def root_of(server: ServerProcess, sandbox_id: str) -> Path:
    return server.state_dir / "sandboxes" / sandbox_id / "root"


def read_when_ready(path: Path) -> str:
    """The content of a file a sandbox writes once it has finished writing it."""
    return str(wait_for(lambda: path.exists() and path.read_text().endswith("\n")
                        and path.read_text(), f"{path}")).strip()


def processes_rooted_in(root: Path) -> dict[int, str]:
    """pid -> command line of every live process whose root directory is `root`."""
    try:
        target = os.stat(root)
    except FileNotFoundError:
        return {}
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            info = os.stat(f"/proc/{entry}/root")
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if (info.st_dev, info.st_ino) == (target.st_dev, target.st_ino):
            found[int(entry)] = cmdline.replace(b"\0", b" ").decode().strip()
    return found


def still_alive(processes: dict[int, str]) -> dict[int, str]:
    """Those of `processes` still running (same pid and command line, not a zombie)."""
    alive = {}
    for pid, cmdline in processes.items():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            now = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if now.strip() == cmdline and stat[stat.rfind(")") + 2] != "Z":
            alive[pid] = cmdline
    return alive


@pytest.fixture
def create(http: httpx.Client) -> Iterator[Callable[..., str]]:
    ids: list[str] = []

    def make(**overrides: Any) -> str:
        response = http.post("/v1/sandboxes", json=create_body(**overrides))
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
        return ids[-1]

    yield make
    for sandbox_id in ids:
        http.delete(f"/v1/sandboxes/{sandbox_id}")


def test_the_server_runs_sandboxes_as_containers(http: httpx.Client) -> None:
    health = http.get("/health").json()
    assert health["isolation"]["mode"] == "container", health
    assert health["network"]["mode"] == "own", health
    assert health["warnings"] == []


def test_tmp_is_private_to_each_sandbox(server: ServerProcess, create: Callable[..., str],
                                        tmp_path: Path) -> None:
    marker = tmp_path / "host-only"
    marker.write_text("host")
    script = ("echo {mine} > /tmp/x; sleep 0.3; cat /tmp/x > /tmp/seen; "
              f"if [ -e {marker} ]; then echo visible; else echo hidden; fi > /tmp/host; "
              "sleep 1000")
    a = create(entrypoint=["sh", "-c", script.format(mine="A")])
    b = create(entrypoint=["sh", "-c", script.format(mine="B")])
    for sandbox_id, mine in ((a, "A"), (b, "B")):
        root = root_of(server, sandbox_id)
        assert read_when_ready(root / "tmp" / "seen") == mine
        assert read_when_ready(root / "tmp" / "host") == "hidden"
        assert (root / "tmp" / "x").read_text().strip() == mine
    # Neither wrote to the host's /tmp.
    host_x = Path("/tmp/x")
    assert not host_x.is_file() or host_x.read_text().strip() not in ("A", "B")


def test_system_directories_are_read_only_and_env_comes_from_the_request(
        server: ServerProcess, create: Callable[..., str]) -> None:
    script = ("touch /usr/probe 2>/dev/null && echo writable > /tmp/usr || "
              "echo refused > /tmp/usr; echo \"$GREETING ${DROPPED-unset}\" > /tmp/env; "
              "cat /etc/hostname >/dev/null && echo readable > /tmp/etc; sleep 1000")
    sandbox_id = create(entrypoint=["sh", "-c", script],
                        env={"GREETING": "hello there", "DROPPED": None})
    root = root_of(server, sandbox_id)
    assert read_when_ready(root / "tmp" / "usr") == "refused"
    assert read_when_ready(root / "tmp" / "env") == "hello there unset"
    assert read_when_ready(root / "tmp" / "etc") == "readable"
    assert not Path("/usr/probe").exists()


def test_read_only_volumes_refuse_writes_and_writable_ones_reach_the_host(
        server: ServerProcess, create: Callable[..., str], tmp_path: Path) -> None:
    read_only, writable = tmp_path / "ro", tmp_path / "rw"
    read_only.mkdir()
    writable.mkdir()
    (read_only / "given").write_text("from the host\n")
    script = ("if { echo hi > /mnt/ro/new; } 2>/tmp/ro-error; then echo wrote; else "
              "echo refused; fi > /tmp/ro; cat /mnt/ro/given > /tmp/ro-read; "
              "echo hi > /mnt/rw/new && echo wrote > /tmp/rw; sleep 1000")
    sandbox_id = create(entrypoint=["sh", "-c", script], volumes=[
        {"name": "ro", "host": {"path": str(read_only)}, "mountPath": "/mnt/ro",
         "readOnly": True},
        {"name": "rw", "host": {"path": str(writable)}, "mountPath": "/mnt/rw"},
    ])
    root = root_of(server, sandbox_id)
    assert read_when_ready(root / "tmp" / "ro") == "refused"
    assert "Read-only file system" in (root / "tmp" / "ro-error").read_text()
    assert read_when_ready(root / "tmp" / "ro-read") == "from the host"
    assert not (read_only / "new").exists()
    assert read_when_ready(root / "tmp" / "rw") == "wrote"
    assert (writable / "new").read_text() == "hi\n"


def test_files_written_into_a_host_volume_are_owned_as_under_docker(
        server: ServerProcess, http: httpx.Client, create: Callable[..., str],
        tmp_path: Path) -> None:
    """Root inside writes a host volume as the host's root (an idmapped mount), and a host
    file owned by root is root's inside: Docker without userns-remap shows the same. The
    private root, by contrast, belongs to the sandbox's mapped ids."""
    health = http.get("/health").json()
    if not health["isolation"].get("volumes", "").startswith("idmapped"):
        pytest.skip("this host cannot idmap volumes (see /health: isolation.volumes)")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "given").write_text("from the host\n")
    script = ("echo hi > /mnt/shared/made; mkdir /mnt/shared/dir; stat -c '%U %u' "
              "/mnt/shared/given > /tmp/given-owner; echo x > /tmp/private; echo up > /tmp/up; "
              "sleep 1000")
    sandbox_id = create(entrypoint=["sh", "-c", script], volumes=[
        {"name": "shared", "host": {"path": str(shared)}, "mountPath": "/mnt/shared"}])
    root = root_of(server, sandbox_id)
    read_when_ready(root / "tmp" / "up")
    assert (shared / "made").stat().st_uid == 0 and (shared / "made").stat().st_gid == 0
    assert (shared / "dir").stat().st_uid == 0
    assert read_when_ready(root / "tmp" / "given-owner") == "root 0"
    if os.geteuid() == 0:  # root inside is an unprivileged id on the host
        assert (root / "tmp" / "private").stat().st_uid != 0
    # The files API agrees with what the sandbox sees, on both kinds of mount.
    execd = f"{server.gateway_url}/{sandbox_id}/44772"
    for path in ("/mnt/shared/made", "/tmp/private"):
        info = httpx.get(f"{execd}/files/info", params={"path": path}).json()[path]
        assert (info["owner"], info["group"]) == ("root", "root"), (path, info)
    response = httpx.post(f"{execd}/files/upload", files=[
        ("metadata", ("metadata", b'{"path": "/mnt/shared/uploaded"}', "application/json")),
        ("file", ("blob", b"up", "application/octet-stream"))])
    assert response.status_code == 200, response.text
    assert (shared / "uploaded").stat().st_uid == 0


def test_sub_paths_and_named_volumes_mount_the_right_directory(
        server: ServerProcess, create: Callable[..., str], tmp_path: Path) -> None:
    (tmp_path / "outer" / "inner").mkdir(parents=True)
    claim = "iso-" + uuid.uuid4().hex[:8]
    named = server.state_dir.parent / "volumes" / claim
    (named / "part").mkdir(parents=True)
    script = "echo sub > /mnt/sub/f; echo pvc > /mnt/pvc/f; echo done > /tmp/done; sleep 1000"
    sandbox_id = create(entrypoint=["sh", "-c", script], volumes=[
        {"name": "sub", "host": {"path": str(tmp_path / "outer")}, "subPath": "inner",
         "mountPath": "/mnt/sub"},
        {"name": "pvc", "pvc": {"claimName": claim}, "subPath": "part", "mountPath": "/mnt/pvc"},
    ])
    assert read_when_ready(root_of(server, sandbox_id) / "tmp" / "done") == "done"
    assert (tmp_path / "outer" / "inner" / "f").read_text() == "sub\n"
    assert not (tmp_path / "outer" / "f").exists()
    assert (named / "part" / "f").read_text() == "pvc\n"


def test_a_symlink_inside_a_volume_resolves_inside_the_sandbox(
        server: ServerProcess, create: Callable[..., str], tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("host secret\n")
    (shared / "link").symlink_to(secret)  # absolute: means the sandbox's own path
    script = ("cat /mnt/shared/link > /tmp/read 2>/dev/null || echo unreadable > /tmp/read; "
              "sleep 1000")
    sandbox_id = create(entrypoint=["sh", "-c", script], volumes=[
        {"name": "shared", "host": {"path": str(shared)}, "mountPath": "/mnt/shared"}])
    assert read_when_ready(root_of(server, sandbox_id) / "tmp" / "read") == "unreadable"


def test_host_paths_outside_the_allowlist_or_behind_a_symlink_are_refused(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "link").symlink_to(outside)
    server = start_server(storage={"allowed_host_paths": [str(allowed)]})
    with server.client() as client:
        for path in (outside, allowed / "link"):
            body = create_body(volumes=[{"name": "v", "host": {"path": str(path)},
                                         "mountPath": "/mnt/v"}])
            response = client.post("/v1/sandboxes", json=body)
            assert response.status_code == 400, response.text
            assert response.json()["code"] == "VOLUME::HOST_PATH_NOT_ALLOWED"
        assert client.get("/v1/sandboxes").json()["items"] == []
    assert list((server.state_dir / "sandboxes").iterdir()) == []


def test_delete_kills_every_process_and_removes_the_private_root(
        server: ServerProcess, http: httpx.Client, create: Callable[..., str]) -> None:
    # A child in the background, and a daemon that left the session and was orphaned.
    script = ("sleep 1001 & (setsid sleep 1002 &); echo up > /tmp/up; sleep 1003")
    sandbox_id = create(entrypoint=["sh", "-c", script])
    root = root_of(server, sandbox_id)
    read_when_ready(root / "tmp" / "up")
    processes = wait_for(lambda: (found := processes_rooted_in(root)) and
                         {"sleep 1001", "sleep 1002", "sleep 1003"} <= set(found.values())
                         and found, "the sandbox's processes")
    assert http.delete(f"/v1/sandboxes/{sandbox_id}").status_code == 204
    assert still_alive(processes) == {}
    assert not root.parent.exists()


def _runc_containers() -> list[dict[str, Any]]:
    import json
    import subprocess

    from opensandbox_emulator.runtimes.fake.runc import state_root

    listed = subprocess.run(["runc", "--root", state_root(), "list", "--format", "json"],
                            capture_output=True, text=True).stdout
    return json.loads(listed or "null") or []


def _cgroups_named(fragment: str) -> list[str]:
    found = []
    for controller in Path("/sys/fs/cgroup").iterdir():
        parent = controller / "opensandbox-emulator"
        if parent.is_dir():
            found += [str(p) for p in parent.iterdir() if fragment in p.name]
    return found


def test_delete_leaves_no_container_cgroup_mount_or_directory(
        server: ServerProcess, http: httpx.Client, create: Callable[..., str],
        tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    sandbox_id = create(entrypoint=["sh", "-c", "echo up > /tmp/up; sleep 1000"], volumes=[
        {"name": "v", "host": {"path": str(tmp_path / "v")}, "mountPath": "/mnt/v"}])
    read_when_ready(root_of(server, sandbox_id) / "tmp" / "up")
    assert [c for c in _runc_containers() if c["id"].endswith(sandbox_id)]
    if os.geteuid() == 0:
        assert _cgroups_named(sandbox_id)
    assert http.delete(f"/v1/sandboxes/{sandbox_id}").status_code == 204
    assert [c for c in _runc_containers() if c["id"].endswith(sandbox_id)] == []
    assert _cgroups_named(sandbox_id) == []
    assert sandbox_id not in Path("/proc/self/mountinfo").read_text()
    assert not any(sandbox_id in p.name for p in Path("/run/opensandbox-emulator/stage").glob("*")
                   ) if Path("/run/opensandbox-emulator/stage").exists() else True
    assert not root_of(server, sandbox_id).parent.exists()


def test_delete_of_a_paused_sandbox_kills_its_frozen_processes(
        server: ServerProcess, http: httpx.Client, create: Callable[..., str]) -> None:
    sandbox_id = create(entrypoint=["sh", "-c", "echo up > /tmp/up; sleep 1004"])
    root = root_of(server, sandbox_id)
    read_when_ready(root / "tmp" / "up")
    processes = processes_rooted_in(root)
    assert processes
    assert http.post(f"/v1/sandboxes/{sandbox_id}/pause").status_code == 202
    wait_for(lambda: http.get(f"/v1/sandboxes/{sandbox_id}").json()["status"]["state"]
             == "Paused", "Paused")
    assert http.delete(f"/v1/sandboxes/{sandbox_id}").status_code == 204
    assert still_alive(processes) == {}
    assert not root.parent.exists()


def test_stopping_the_server_leaves_no_process_and_no_root(
        start_server: Callable[..., ServerProcess]) -> None:
    server = start_server()
    roots = []
    processes: dict[int, str] = {}
    with server.client() as client:
        scripts = ["echo up > /tmp/up; sleep 1005",
                   "(setsid sleep 1006 &); echo up > /tmp/up; sleep 1007"]
        for script in scripts:
            response = client.post("/v1/sandboxes",
                                   json=create_body(entrypoint=["sh", "-c", script]))
            assert response.status_code == 202
            roots.append(root_of(server, response.json()["id"]))
        paused = client.post("/v1/sandboxes", json=create_body()).json()["id"]
        roots.append(root_of(server, paused))
        assert client.post(f"/v1/sandboxes/{paused}/pause").status_code == 202
        for root in roots[:2]:
            read_when_ready(root / "tmp" / "up")
        wait_for(lambda: "sleep 1006" in processes_rooted_in(roots[1]).values(), "the daemon")
        for root in roots:
            processes.update(processes_rooted_in(root))
    assert len(processes) >= 4
    server.stop()
    # uvicorn shuts down gracefully, then re-raises SIGTERM to die by it.
    assert server.process.returncode in (0, -15)
    wait_for(lambda: any("Application shutdown complete" in line for line in server.output),
             "the shutdown log line")
    assert still_alive(processes) == {}
    assert no_leftover_processes(server.state_dir) == []
    assert list((server.state_dir / "sandboxes").iterdir()) == []


def test_a_default_state_directory_is_temporary(start_server: Callable[..., ServerProcess],
                                               tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Without `[fake] state_dir` the runtime uses a temp dir, removed at shutdown."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    server = start_server(fake={"state_dir": ""})
    with server.client() as client:
        response = client.post("/v1/sandboxes", json=create_body(
            entrypoint=["sh", "-c", "echo up > /tmp/up; sleep 1008"]))
        assert response.status_code == 202
        sandbox_id = response.json()["id"]
    (state,) = [p for p in temp.iterdir() if p.name.startswith("opensandbox-emulator-")]
    root = state / "sandboxes" / sandbox_id / "root"
    read_when_ready(root / "tmp" / "up")
    processes = processes_rooted_in(root)
    assert processes
    server.stop()
    assert still_alive(processes) == {}
    assert no_leftover_processes(state) == []
    assert not state.exists()
