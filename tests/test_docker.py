"""The docker runtime, end to end: the official SDK against a real server on a real engine.

Images come from `tests/docker/build-images.sh` (a busybox one and a Debian one with bash and
python3), built from local material. Without an engine these tests skip, unless
`OPENSANDBOX_REQUIRE_DOCKER=1`, which makes them fail instead (CI sets it).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from opensandbox.config.connection_sync import ConnectionConfigSync
from opensandbox.exceptions import SandboxException
from opensandbox.models.execd import RunCommandOpts
from opensandbox.models.filesystem import (
    ContentReplaceEntry,
    MoveEntry,
    SearchEntry,
    SetPermissionEntry,
    WriteEntry,
)
from opensandbox.models.sandboxes import PVC, Host, SandboxFilter, Volume
from opensandbox.sync import SandboxManagerSync, SandboxSync

from tests.helpers.docker_engine import (
    DOCKER_BUSYBOX_IMAGE,
    DOCKER_DEBIAN_IMAGE,
    docker_client,
    docker_host_dir,
    docker_sections,
    remove_docker_sandboxes,
    require_docker,
)
from tests.helpers.servers import ServerProcess, wait_for

BUSYBOX = DOCKER_BUSYBOX_IMAGE
DEBIAN = DOCKER_DEBIAN_IMAGE
FOREVER = ["sleep", "infinity"]


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    with docker_client() as client:
        yield client


@pytest.fixture
def server(docker_server: ServerProcess) -> ServerProcess:
    return docker_server


def connect(server: ServerProcess, **options: Any) -> ConnectionConfigSync:
    return ConnectionConfigSync(domain=server.domain, request_timeout=timedelta(seconds=60),
                                **options)


@pytest.fixture
def make_sandbox(server: ServerProcess) -> Iterator[Callable[..., SandboxSync]]:
    """`make_sandbox(image, **options)`: a ready sandbox, killed at the end of the test."""
    made: list[SandboxSync] = []

    def make(image: str = BUSYBOX, **options: Any) -> SandboxSync:
        options.setdefault("entrypoint", FOREVER)
        options.setdefault("resource", {"cpu": "500m", "memory": "256Mi"})
        options.setdefault("connection_config", connect(server))
        sandbox = SandboxSync.create(image, ready_timeout=timedelta(seconds=60), **options)
        made.append(sandbox)
        return sandbox

    yield make
    for sandbox in made:
        try:
            sandbox.kill()
        except SandboxException:
            pass
        sandbox.close()


def stdout_of(sandbox: SandboxSync, command: str, **opts: Any) -> str:
    execution = sandbox.commands.run(command, opts=RunCommandOpts(**opts) if opts else None)
    assert execution.error is None, (command, execution.error, execution.logs.stderr)
    return "".join(m.text + "\n" for m in execution.logs.stdout)


def state_of(server: ServerProcess, sandbox_id: str) -> dict[str, Any] | None:
    response = httpx.get(f"{server.url}/v1/sandboxes/{sandbox_id}", timeout=30)
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return dict(response.json()["status"])


def container_gone(engine: Any, sandbox_id: str) -> bool:
    import docker

    try:
        engine.containers.get(f"sandbox-{sandbox_id}")
    except docker.errors.NotFound:
        return True
    return False


def create_raw(server: ServerProcess, **body: Any) -> httpx.Response:
    payload: dict[str, Any] = {"image": {"uri": BUSYBOX}, "timeout": 600,
                               "resourceLimits": {"cpu": "500m", "memory": "128Mi"},
                               "entrypoint": FOREVER}
    payload.update(body)
    return httpx.post(f"{server.url}/v1/sandboxes", json=payload, timeout=60)


# --- lifecycle ---------------------------------------------------------------------------


def test_lifecycle_labels_limits_hardening_and_metadata(
        server: ServerProcess, engine: Any, make_sandbox: Callable[..., SandboxSync]) -> None:
    metadata = {"team": "ai", "example.com/tier": "gold"}
    sandbox = make_sandbox(metadata=metadata, env={"GREETING": "hello there"},
                           resource={"cpu": "500m", "memory": "128Mi"})
    info = sandbox.get_info()
    assert info.status.state == "Running"
    # The image has labels of its own; GET shows the user's metadata and nothing else.
    assert engine.images.get(BUSYBOX).labels
    assert info.metadata == metadata
    assert info.entrypoint == FOREVER

    container = engine.containers.get(f"sandbox-{sandbox.id}")
    labels = container.labels
    assert labels["opensandbox.io/id"] == sandbox.id
    assert labels["team"] == "ai"
    expires = datetime.fromisoformat(labels["opensandbox.io/expires-at"])
    assert abs((expires - info.expires_at).total_seconds()) < 0.001
    host = container.attrs["HostConfig"]
    assert host["NanoCpus"] == 500_000_000
    assert host["Memory"] == 128 * 1024 * 1024
    assert host["PidsLimit"] == 512
    assert {"NET_RAW", "SYS_ADMIN", "MKNOD"} <= set(host["CapDrop"])
    assert "no-new-privileges:true" in host["SecurityOpt"]

    assert stdout_of(sandbox, "echo $GREETING") == "hello there\n"
    manager = SandboxManagerSync.create(connect(server))
    try:
        listed = manager.list_sandbox_infos(SandboxFilter(metadata={"team": "ai"}))
        assert sandbox.id in [item.id for item in listed.sandbox_infos]
    finally:
        manager.close()

    sandbox.kill()
    assert state_of(server, sandbox.id) is None
    assert container_gone(engine, sandbox.id)


def test_unparsable_limits_are_400_and_create_nothing(server: ServerProcess,
                                                      engine: Any) -> None:
    before = len(engine.containers.list(all=True, filters={"label": "opensandbox.io/id"}))
    for limits in ({"cpu": "lots"}, {"memory": "12 parsecs"}, {"memory": "1Ki"}):
        response = create_raw(server, resourceLimits=limits)
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "SANDBOX::INVALID_PARAMETER"
        assert "resourceLimits." in response.json()["message"]
    after = len(engine.containers.list(all=True, filters={"label": "opensandbox.io/id"}))
    assert after == before


def test_an_image_that_cannot_be_pulled_is_a_clear_500(server: ServerProcess) -> None:
    response = create_raw(server, image={"uri": "127.0.0.1:9/opensandbox/missing:1"})
    assert response.status_code == 500, response.text
    body = response.json()
    assert body["code"] == "DOCKER::SANDBOX_IMAGE_PULL_FAILED"
    assert "127.0.0.1:9/opensandbox/missing:1" in body["message"]


def test_exited_and_removed_containers_show_as_such(server: ServerProcess,
                                                    engine: Any) -> None:
    failing = create_raw(server, entrypoint=["sh", "-c", "exit 3"]).json()["id"]
    succeeding = create_raw(server, entrypoint=["true"]).json()["id"]
    try:
        failed = wait_for(lambda: (s := state_of(server, failing)) and s["state"] == "Failed"
                          and s, what="the sandbox to fail")
        assert failed["reason"] == "CONTAINER_EXITED_ERROR"
        assert "code 3" in failed["message"]
        done = wait_for(lambda: (s := state_of(server, succeeding))
                        and s["state"] == "Terminated" and s, what="the sandbox to end")
        assert done["reason"] == "CONTAINER_EXITED"
        # Removed behind the server's back: gone from GET and from the list.
        engine.containers.get(f"sandbox-{failing}").remove(force=True)
        assert state_of(server, failing) is None
        listed = httpx.get(f"{server.url}/v1/sandboxes", params={"pageSize": 200}).json()
        assert failing not in [item["id"] for item in listed["items"]]
    finally:
        for sandbox_id in (failing, succeeding):
            httpx.delete(f"{server.url}/v1/sandboxes/{sandbox_id}", timeout=60)


# --- volumes -----------------------------------------------------------------------------


def test_host_volumes_rw_ro_and_sub_path(server: ServerProcess,
                                         make_sandbox: Callable[..., SandboxSync]) -> None:
    root = docker_host_dir(server) / f"vol-{uuid.uuid4().hex[:8]}"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "seed.txt").write_text("seeded\n")
    sandbox = make_sandbox(volumes=[
        Volume(name="work", host=Host(path=str(root)), mount_path="/mnt/rw", sub_path="sub"),
        Volume(name="view", host=Host(path=str(root)), mount_path="/mnt/ro", read_only=True),
    ])
    assert stdout_of(sandbox, "cat /mnt/rw/seed.txt") == "seeded\n"
    stdout_of(sandbox, "echo written > /mnt/rw/out.txt")
    assert (root / "sub" / "out.txt").read_text() == "written\n"
    assert stdout_of(sandbox, "cat /mnt/ro/sub/out.txt") == "written\n"
    refused = sandbox.commands.run("touch /mnt/ro/nope")
    assert refused.error is not None
    assert "Read-only file system" in "".join(m.text for m in refused.logs.stderr)
    assert not (root / "nope").exists()


def test_named_volume_whole_and_sub_path(server: ServerProcess, engine: Any,
                                         make_sandbox: Callable[..., SandboxSync]) -> None:
    name = f"osb-test-{uuid.uuid4().hex[:10]}"
    volume = engine.volumes.create(name)
    try:
        Path(volume.attrs["Mountpoint"], "sub").mkdir()
        sandbox = make_sandbox(volumes=[
            Volume(name="data", pvc=PVC(claim_name=name), mount_path="/data"),
            Volume(name="part", pvc=PVC(claim_name=name), mount_path="/part", sub_path="sub",
                   read_only=True),
        ])
        stdout_of(sandbox, "echo shared > /data/sub/f.txt")
        assert stdout_of(sandbox, "cat /part/f.txt") == "shared\n"
        assert Path(volume.attrs["Mountpoint"], "sub", "f.txt").read_text() == "shared\n"

        missing = create_raw(server, volumes=[{"name": "a", "pvc": {"claimName": "osb-nope",
                                                                    "createIfNotExists": False},
                                               "mountPath": "/a"}])
        assert missing.status_code == 400
        assert missing.json()["code"] == "VOLUME::PVC_NOT_FOUND"
        no_sub = create_raw(server, volumes=[{"name": "a", "pvc": {"claimName": name},
                                              "mountPath": "/a", "subPath": "absent"}])
        assert no_sub.status_code == 400
        assert no_sub.json()["code"] == "VOLUME::PVC_SUBPATH_NOT_FOUND"
        sandbox.kill()
    finally:
        wait_for(lambda: not engine.containers.list(
            all=True, filters={"volume": name}), what="containers using the volume to go")
        volume.remove(force=True)


# --- pause, expiry -----------------------------------------------------------------------


def test_pause_and_resume(server: ServerProcess, engine: Any,
                          make_sandbox: Callable[..., SandboxSync]) -> None:
    sandbox = make_sandbox()
    stdout_of(sandbox, "echo before > /tmp/mark")
    sandbox.pause()
    wait_for(lambda: (s := state_of(server, sandbox.id)) and s["state"] == "Paused",
             what="Paused")
    assert engine.containers.get(f"sandbox-{sandbox.id}").attrs["State"]["Paused"] is True
    ping = httpx.get(f"{server.gateway_url}/{sandbox.id}/44772/ping", timeout=30)
    assert ping.status_code == 503
    resumed = SandboxSync.resume(sandbox.id, connection_config=connect(server))
    try:
        assert resumed.get_info().status.state == "Running"
        assert engine.containers.get(f"sandbox-{sandbox.id}").attrs["State"]["Paused"] is False
        assert stdout_of(resumed, "cat /tmp/mark") == "before\n"
    finally:
        resumed.close()


def test_renewed_expiry_removes_the_container(server: ServerProcess, engine: Any) -> None:
    sandbox_id = create_raw(server, timeout=60).json()["id"]
    soon = datetime.now(UTC) + timedelta(seconds=2)
    renewed = httpx.post(f"{server.url}/v1/sandboxes/{sandbox_id}/renew-expiration",
                         json={"expiresAt": soon.isoformat()}, timeout=30)
    assert renewed.status_code == 200, renewed.text
    wait_for(lambda: state_of(server, sandbox_id) is None, what="the sandbox to expire")
    wait_for(lambda: container_gone(engine, sandbox_id), what="the container to be removed")


# --- restart safety ------------------------------------------------------------------------


def test_sandboxes_survive_a_server_restart(start_server: Callable[..., ServerProcess],
                                            engine: Any, tmp_path: Path) -> None:
    require_docker()
    (tmp_path / "host").mkdir()
    sections = docker_sections(tmp_path, allowed_host_paths=[str(tmp_path / "host")])
    instance = sections["docker"]["instance"]
    try:
        first = start_server(**sections)
        outside = create_raw(first, volumes=[{"name": "x", "host": {"path": "/etc"},
                                              "mountPath": "/x"}])
        assert outside.status_code == 400, outside.text
        assert outside.json()["code"] == "VOLUME::HOST_PATH_NOT_ALLOWED"
        kept = SandboxSync.create(BUSYBOX, entrypoint=FOREVER, metadata={"keep": "yes"},
                                  resource={"cpu": "500m", "memory": "128Mi"},
                                  connection_config=connect(first))
        stdout_of(kept, "echo state > /tmp/kept")
        later = (datetime.now(UTC) + timedelta(hours=3)).replace(microsecond=0)
        httpx.post(f"{first.url}/v1/sandboxes/{kept.id}/renew-expiration",
                   json={"expiresAt": later.isoformat()}, timeout=30).raise_for_status()
        doomed = create_raw(first, timeout=60).json()["id"]
        httpx.post(f"{first.url}/v1/sandboxes/{doomed}/renew-expiration",
                   json={"expiresAt": (datetime.now(UTC) + timedelta(seconds=1)).isoformat()},
                   timeout=30).raise_for_status()
        before = kept.get_info()
        kept.close()
        first.stop()
        assert engine.containers.get(f"sandbox-{kept.id}").status == "running"

        second = start_server(**sections)
        again = SandboxSync.connect(kept.id, connection_config=connect(second))
        try:
            info = again.get_info()
            assert info.status.state == "Running"
            assert info.created_at == before.created_at
            assert info.expires_at == later
            assert info.metadata == {"keep": "yes"}
            assert stdout_of(again, "cat /tmp/kept") == "state\n"
        finally:
            again.close()
        # The one whose expiry passed across the restart is reaped.
        wait_for(lambda: state_of(second, doomed) is None, what="the expired sandbox to go")
        wait_for(lambda: container_gone(engine, doomed), what="its container to go")
    finally:
        remove_docker_sandboxes(instance)


# --- ports ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("image", "entrypoint"), [
    (DEBIAN, ["python3", "-m", "http.server", "8000", "--directory", "/etc"]),
    # Bound to the container's loopback: reached through a relay exec'd in the sandbox
    # (python3 in the Debian image, busybox nc in the busybox one).
    (DEBIAN, ["python3", "-m", "http.server", "8000", "--bind", "127.0.0.1",
              "--directory", "/etc"]),
    (BUSYBOX, ["httpd", "-f", "-p", "127.0.0.1:8000", "-h", "/etc"]),
], ids=["all-interfaces", "loopback-python", "loopback-busybox"])
def test_application_port_through_gateway_and_server_proxy(
        server: ServerProcess, make_sandbox: Callable[..., SandboxSync], image: str,
        entrypoint: list[str]) -> None:
    sandbox = make_sandbox(image, entrypoint=entrypoint)
    hostname = stdout_of(sandbox, "cat /etc/hostname")
    gateway = sandbox.get_endpoint(8000).endpoint
    via_proxy = SandboxSync.connect(sandbox.id, connection_config=connect(
        server, use_server_proxy=True))
    try:
        proxied = via_proxy.get_endpoint(8000).endpoint
    finally:
        via_proxy.close()
    assert "/proxy/8000" in proxied and gateway != proxied
    for endpoint in (gateway, proxied):
        def fetch(endpoint: str = endpoint) -> httpx.Response | None:
            try:
                response = httpx.get(f"http://{endpoint}/hostname", timeout=10)
            except httpx.HTTPError:
                return None
            return response if response.status_code != 502 else None

        response = wait_for(fetch, what=f"the web server behind {endpoint}")
        assert response.status_code == 200
        assert response.text == hostname
    missing = httpx.get(f"http://{gateway.replace('/8000', '/8001')}/", timeout=30)
    assert missing.status_code == 502


# --- commands --------------------------------------------------------------------------------


def test_timeout_kills_the_whole_process_group(make_sandbox: Callable[..., SandboxSync]) -> None:
    sandbox = make_sandbox()  # busybox: no bash, so commands fall back to sh
    execution = sandbox.commands.run("sleep 300 & sleep 301",
                                     opts=RunCommandOpts(timeout=timedelta(seconds=1)))
    assert execution.error is not None
    assert stdout_of(sandbox, "pgrep sleep || echo none") == "none\n"


def test_interrupt_and_background_logs_keep_write_order(
        make_sandbox: Callable[..., SandboxSync]) -> None:
    sandbox = make_sandbox(DEBIAN)
    started = sandbox.commands.run(
        "for i in 1 2 3; do echo out$i; echo err$i >&2; done; sleep 300",
        opts=RunCommandOpts(background=True))
    assert started.id
    logs = wait_for(lambda: (c := sandbox.commands.get_background_command_logs(started.id)
                             .content).count("\n") >= 6 and c, what="the logs")
    assert logs == "out1\nerr1\nout2\nerr2\nout3\nerr3\n"
    assert sandbox.commands.get_command_status(started.id).running is True
    sandbox.commands.interrupt(started.id)
    status = wait_for(lambda: (s := sandbox.commands.get_command_status(started.id))
                      and not s.running and s, what="the interrupt")
    assert status.exit_code != 0
    assert stdout_of(sandbox, "echo $BASH_VERSION | cut -c1") == "5\n"  # bash, not sh
    assert stdout_of(sandbox, "cd /proc && for p in [0-9]*; do "
                              "tr '\\0' ' ' < $p/cmdline; echo; done | grep -c '^sleep 30[0]' "
                              "|| true") == "0\n"


def test_command_cwd_env_and_missing_program(make_sandbox: Callable[..., SandboxSync]) -> None:
    sandbox = make_sandbox()
    assert stdout_of(sandbox, "pwd", working_directory="/etc") == "/etc\n"
    missing = sandbox.commands.run("pwd", opts=RunCommandOpts(working_directory="/nope"))
    assert missing.error is not None
    assert "/nope" in missing.error.value + "".join(missing.error.traceback)


def test_sandboxes_of_another_instance_are_left_alone(
        start_server: Callable[..., ServerProcess], server: ServerProcess,
        make_sandbox: Callable[..., SandboxSync], tmp_path: Path) -> None:
    mine = make_sandbox()
    other = start_server(**docker_sections(tmp_path))
    listed = httpx.get(f"{other.url}/v1/sandboxes", params={"pageSize": 200}).json()
    assert mine.id not in [item["id"] for item in listed["items"]]
    assert httpx.get(f"{other.url}/v1/sandboxes/{mine.id}").status_code == 404


# --- files and metrics -------------------------------------------------------------------------


def test_files_through_archive_and_helpers(make_sandbox: Callable[..., SandboxSync]) -> None:
    sandbox = make_sandbox()  # busybox: the helpers need nothing but its applets
    files = sandbox.files
    files.write_files([WriteEntry(path="/work/notes/a.txt", data="alpha beta alpha",
                                  mode=640),
                       WriteEntry(path="/work/notes/b.log", data=b"\x00binary\xff")])
    assert stdout_of(sandbox, "cat /work/notes/a.txt; echo; stat -c %a /work/notes/a.txt") \
        == "alpha beta alpha\n640\n"
    assert files.read_bytes("/work/notes/b.log") == b"\x00binary\xff"
    info = files.get_file_info(["/work/notes/a.txt"])["/work/notes/a.txt"]
    assert (info.size, info.mode, info.owner, info.group) == (16, 640, "root", "root")

    # Larger than what goes through the helper agent: the archive API both ways.
    big = bytes(range(256)) * (12 * 1024)  # 3 MiB
    files.write_file("/work/big.bin", big)
    assert stdout_of(sandbox, "wc -c < /work/big.bin").strip() == str(len(big))
    assert files.read_bytes("/work/big.bin") == big
    assert files.read_bytes("/work/big.bin", range_header="bytes=1000-1999") == big[1000:2000]

    found = files.search(SearchEntry(path="/work", pattern="*.txt"))
    assert [entry.path for entry in found] == ["/work/notes/a.txt"]
    files.replace_contents([ContentReplaceEntry(path="/work/notes/a.txt", old_content="alpha",
                                                new_content="omega")])
    assert files.read_file("/work/notes/a.txt") == "omega beta omega"
    files.set_permissions([SetPermissionEntry(path="/work/notes/a.txt", owner="nobody",
                                              group="nogroup", mode=600)])
    assert stdout_of(sandbox, "stat -c '%U %G %a' /work/notes/a.txt") == "nobody nogroup 600\n"
    files.move_files([MoveEntry(src="/work/notes/a.txt", dest="/work/moved/a.txt")])
    files.delete_files(["/work/notes/b.log"])
    assert stdout_of(sandbox, "find /work -type f | sort") == "/work/big.bin\n/work/moved/a.txt\n"
    files.delete_directories(["/work"])
    assert stdout_of(sandbox, "ls /work 2>&1 || true").startswith("ls: ")
    with pytest.raises(SandboxException):
        files.read_file("/work/moved/a.txt")


def test_metrics_come_from_container_stats(make_sandbox: Callable[..., SandboxSync]) -> None:
    sandbox = make_sandbox(resource={"cpu": "500m", "memory": "256Mi"})
    metrics = sandbox.get_metrics()
    assert metrics.cpu_count == 0.5
    assert metrics.memory_total_in_mib == 256
    assert 0 < metrics.memory_used_in_mib < 256
