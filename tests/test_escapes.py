"""Escape attempts from inside a sandbox: every one must fail, on every runtime.

Each test is something code in a sandbox (an AI agent's, say) would try to reach past it:
the host's files and processes through /proc, remounting the host's directories, the
server's own ports and secrets, other sandboxes, kernel modules, /sys, and daemons meant to
outlive the sandbox. Each runs as root inside the sandbox, through execd, and checks both
that the attempt failed inside and, where it would leave a trace, that nothing happened on
the host. The attacker is given what it could not easily guess (the server's host pid, host
paths): the sandbox must hold even so.

The suite runs on the fake runtime as root, on the docker runtime, and on the fake runtime
of a server run as a normal user (skipped where the machine cannot), the three servers of
`any_server`.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shlex
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.frames import split_frames
from tests.helpers.servers import (
    ServerProcess,
    execd_url,
    host_processes_mentioning,
    new_sandbox,
    no_leftover_processes,
    wait_for,
)

SECRET = "opensandbox-escape-secret"


@pytest.fixture(scope="session")
def server(any_server: ServerProcess) -> ServerProcess:
    """Every test of this module runs on every runtime, and as a normal user."""
    return any_server


def unprivileged(server: ServerProcess) -> bool:
    return os.path.basename(str(server.process.args[0])) == "setpriv"


def server_uid(server: ServerProcess) -> int:
    return os.stat(f"/proc/{server.process.pid}").st_uid


@pytest.fixture
def attacker(server: ServerProcess) -> Iterator[str]:
    """The execd URL of a fresh sandbox to attack from, deleted afterwards."""
    sandbox_id = new_sandbox(server)
    yield execd_url(server, sandbox_id)
    httpx.delete(f"{server.url}/v1/sandboxes/{sandbox_id}", timeout=60)


@pytest.fixture
def host_secret(server: ServerProcess) -> Iterator[Path]:
    """A file on the host that the server's user can read, holding `SECRET`."""
    directory = Path(tempfile.mkdtemp(prefix="escape-", dir="/tmp"))
    os.chmod(directory, 0o755)
    secret = directory / "secret.txt"
    secret.write_text(SECRET + "\n")
    os.chmod(secret, 0o644)
    yield secret
    for child in directory.iterdir():
        child.unlink()
    directory.rmdir()


def inside(base: str, script: str, *, timeout: float = 60) -> tuple[str, int]:
    """Run `script` as root in the sandbox: (stdout and stderr together, exit code)."""
    body: dict[str, Any] = {"command": f"exec 2>&1; {script}"}
    with httpx.Client(timeout=timeout) as client, \
            client.stream("POST", f"{base}/command", json=body) as response:
        raw = b"".join(response.iter_raw())
    assert response.status_code == 200, raw
    events = split_frames(raw)
    text = "\n".join(e["text"] for e in events if e["type"] in ("stdout", "stderr"))
    errors = [e for e in events if e["type"] == "error"]
    code = 0
    if errors:
        value = errors[0]["error"]["evalue"]
        code = int(value) if value.lstrip("-").isdigit() else -1
    return text, code


def python(code: str) -> str:
    """A `python3 -c` command line (the fake runtime's sandboxes run the host's python3,
    the docker runtime's test image has one)."""
    return "python3 -c " + shlex.quote(code)


# --- the host's files, through the server's /proc entry ---------------------------------------


def test_reading_host_files_through_the_servers_proc_root_fails(
        server: ServerProcess, attacker: str, host_secret: Path) -> None:
    pid = server.process.pid
    for path in (f"/proc/{pid}/root{host_secret}", f"/proc/1/root{host_secret}",
                 str(host_secret)):
        output, code = inside(attacker, f"cat {path}")
        assert code != 0 and SECRET not in output, (path, output)
    # Every process the sandbox can see, not just the guessed ones.
    output, _ = inside(attacker, f"cat /proc/[0-9]*/root{host_secret} 2>/dev/null; true")
    assert SECRET not in output


def test_writing_host_files_through_the_servers_proc_root_fails(
        server: ServerProcess, attacker: str) -> None:
    name = f"escape-{uuid.uuid4().hex[:8]}"
    output, code = inside(attacker, f"echo x > /proc/{server.process.pid}/root/tmp/{name}")
    assert code != 0, output
    assert not Path(f"/tmp/{name}").exists()


def test_remounting_usr_read_write_fails(server: ServerProcess, attacker: str) -> None:
    name = f"escape-{uuid.uuid4().hex[:8]}"
    output, code = inside(attacker, "mount -o remount,bind,rw /usr && "
                                    f"touch /usr/local/{name}")
    assert code != 0, output
    assert not Path(f"/usr/local/{name}").exists()
    output, code = inside(attacker, "mount -t tmpfs none /mnt")
    assert code != 0, output


# --- the host's processes --------------------------------------------------------------------


@pytest.fixture
def host_process(server: ServerProcess) -> Iterator[subprocess.Popen[bytes]]:
    """A process on the host, of the server's own user, that a sandbox must not reach."""
    uid = server_uid(server)
    prefix = [] if uid == os.geteuid() else ["setpriv", f"--reuid={uid}", f"--regid={uid}",
                                               "--clear-groups", "--"]
    process = subprocess.Popen([*prefix, "sleep", "1000"])
    yield process
    process.kill()
    process.wait()


def test_host_processes_are_invisible_and_out_of_reach(
        server: ServerProcess, attacker: str, host_process: subprocess.Popen[bytes]) -> None:
    listing, code = inside(attacker, "for p in /proc/[0-9]*; do echo \"${p#/proc/} "
                                     "$(tr '\\0' ' ' < $p/cmdline)\"; done")
    assert code == 0, listing
    assert "opensandbox_emulator" not in listing and "sleep 1000" not in listing, listing
    processes = [line for line in listing.splitlines() if re.match(r"^\d+ ", line)]
    assert len(processes) < 15, listing  # the sandbox's own few processes
    for pid in (host_process.pid, server.process.pid):
        output, code = inside(attacker, f"kill -9 {pid}")
        assert code != 0, output
    assert host_process.poll() is None
    assert server.process.poll() is None


def test_the_servers_command_line_and_environment_are_out_of_reach(
        server: ServerProcess, attacker: str) -> None:
    pid = server.process.pid
    for path in (f"/proc/{pid}/cmdline", f"/proc/{pid}/environ", str(server.config_path)):
        output, code = inside(attacker, f"tr '\\0' ' ' < {path}")
        assert code != 0, (path, output)
        assert "opensandbox_emulator" not in output and "[server]" not in output


def test_nsenter_into_pid_one_and_its_root_stay_in_the_sandbox(
        server: ServerProcess, attacker: str, host_secret: Path) -> None:
    output, code = inside(attacker, f"nsenter -t 1 -m -u -i -n -p cat {host_secret}")
    assert code != 0 and SECRET not in output, output
    output, code = inside(attacker, python(
        "import ctypes, os\n"
        "fd = os.open('/proc/self/ns/mnt', os.O_RDONLY)\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print('setns', libc.setns(fd, 0), ctypes.get_errno())\n"
        "print('unshare', libc.unshare(0x10000000), ctypes.get_errno())"))
    assert "setns -1" in output and "unshare -1" in output, output


def test_loading_a_kernel_module_fails(attacker: str) -> None:
    number = {"x86_64": 313, "aarch64": 273}.get(platform.machine())
    if number is None:
        pytest.skip(f"finit_module's number on {platform.machine()} is not known here")
    output, _ = inside(attacker, python(
        "import ctypes, errno, os\n"
        "fd = os.open('/dev/null', os.O_RDONLY)\n"
        f"result = ctypes.CDLL(None, use_errno=True).syscall({number}, fd, b'', 0)\n"
        "print(result, errno.errorcode.get(ctypes.get_errno()))"))
    assert output.strip() == "-1 EPERM", output


def test_writing_sys_fails(server: ServerProcess, attacker: str) -> None:
    alias = Path("/sys/class/net/lo/ifalias")
    before = alias.read_text() if alias.exists() else None
    output, code = inside(attacker, f"echo {SECRET} > /sys/class/net/lo/ifalias")
    assert code != 0, output
    assert "Read-only file system" in output or "Permission denied" in output, output
    if before is not None:
        assert alias.read_text() == before


# --- other sandboxes --------------------------------------------------------------------------


@pytest.fixture
def victim(server: ServerProcess) -> Iterator[tuple[str, str]]:
    """Another sandbox (id, execd URL) holding `SECRET` in /tmp/secret, with a process whose
    command line carries a marker."""
    sandbox_id = new_sandbox(server)
    base = execd_url(server, sandbox_id)
    marker = f"victim-{uuid.uuid4().hex[:8]}"
    inside(base, f"echo {SECRET} > /tmp/secret")
    httpx.post(f"{base}/command", json={"command": f"sleep 1000; : {marker}",
                                        "background": True}, timeout=30)
    wait_for(lambda: list(host_processes_mentioning(marker)), "the victim's process")
    yield sandbox_id, marker
    httpx.delete(f"{server.url}/v1/sandboxes/{sandbox_id}", timeout=60)


def test_another_sandboxs_files_are_out_of_reach(server: ServerProcess, attacker: str,
                                                  victim: tuple[str, str]) -> None:
    victim_id, _ = victim
    candidates = [
        f"/proc/{server.process.pid}/root{server.state_dir}/sandboxes/{victim_id}/root/tmp/secret",
        f"{server.state_dir}/sandboxes/{victim_id}/root/tmp/secret",
    ]
    for path in candidates:
        output, code = inside(attacker, f"cat {path}")
        assert code != 0 and SECRET not in output, (path, output)
    output, _ = inside(attacker, "cat /proc/[0-9]*/root/tmp/secret 2>/dev/null; "
                                 "grep -rs opensandbox-escape-secret / --include=secret "
                                 "-l 2>/dev/null | head; true", timeout=120)
    assert SECRET not in output, output


def test_ptrace_of_another_sandboxs_process_fails(server: ServerProcess, attacker: str,
                                                  victim: tuple[str, str]) -> None:
    _, marker = victim
    (host_pid,) = list(host_processes_mentioning(marker))[:1]
    output, _ = inside(attacker, python(
        "import ctypes, errno\n"
        f"result = ctypes.CDLL(None, use_errno=True).ptrace(16, {host_pid}, 0, 0)\n"
        "print(result, errno.errorcode.get(ctypes.get_errno()))"))
    assert output.strip().startswith("-1 "), output
    status = Path(f"/proc/{host_pid}/status").read_text()
    assert "TracerPid:\t0" in status


# --- the server's ports and the host's loopback ------------------------------------------------


def host_address() -> str | None:
    """This host's address on its default route, which a sandbox's traffic could aim at."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))
            return str(probe.getsockname()[0])
    except OSError:
        return None


@pytest.fixture
def loopback_listener() -> Iterator[tuple[int, list[str]]]:
    """A TCP listener on the host's 127.0.0.1, recording who connects."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    accepted: list[str] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, peer = listener.accept()
            except OSError:
                continue
            accepted.append(str(peer))
            connection.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1], accepted
    stop.set()
    thread.join()
    listener.close()


def test_the_servers_ports_and_the_hosts_loopback_are_unreachable(
        server: ServerProcess, attacker: str, victim: tuple[str, str],
        loopback_listener: tuple[int, list[str]]) -> None:
    listener_port, accepted = loopback_listener
    victim_id, _ = victim
    addresses = ["127.0.0.1", "10.0.2.2", "172.17.0.1", host_address() or "127.0.0.1"]
    ports = [server.port, server.gateway_port, listener_port]
    probe = ("import socket, sys\n"
             "for address in sys.argv[1].split(','):\n"
             "    for port in map(int, sys.argv[2].split(',')):\n"
             "        try:\n"
             "            socket.create_connection((address, port), timeout=3).close()\n"
             "            print('REACHED', address, port)\n"
             "        except OSError as error:\n"
             "            print('refused', address, port, error)\n")
    output, _ = inside(attacker, python(probe) + f" {','.join(addresses)} "
                                 f"{','.join(map(str, ports))}", timeout=120)
    assert "REACHED" not in output, output
    assert accepted == []
    # The control plane and another sandbox's execd, as a client inside would try them.
    for url in (f"http://127.0.0.1:{server.port}/v1/sandboxes",
                f"http://127.0.0.1:{server.gateway_port}/{victim_id}/44772/ping"):
        output, code = inside(attacker, python(
            f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=3).status)"))
        assert code != 0, (url, output)


# --- the files API -----------------------------------------------------------------------------


def test_the_files_api_never_serves_the_hosts_shadow(server: ServerProcess,
                                                     attacker: str) -> None:
    host_shadow = Path("/etc/shadow").read_bytes() if os.access("/etc/shadow", os.R_OK) \
        else None
    for path in ("/etc/shadow", f"/proc/{server.process.pid}/root/etc/shadow",
                 "/../../etc/shadow"):
        response = httpx.get(f"{attacker}/files/download", params={"path": path}, timeout=30)
        if response.status_code == 200:
            assert host_shadow is None or response.content != host_shadow, path
            assert b"$6$" not in response.content and b"$y$" not in response.content, path
        else:
            assert response.status_code in (403, 404), (path, response.text)
    inside(attacker, "ln -sf /proc/1/root/etc/shadow /tmp/shadow-link")
    response = httpx.get(f"{attacker}/files/download", params={"path": "/tmp/shadow-link"},
                         timeout=30)
    assert response.status_code != 200 or response.content != host_shadow


# --- daemons that try to outlive the sandbox ---------------------------------------------------


DAEMONS = ("(setsid sh -c 'sleep 1000; : {m}-setsid' &); "
           "(sh -c 'sh -c \"sleep 1000; : {m}-double\" &' &); "
           "(setsid chroot / sh -c 'sleep 1000; : {m}-chroot' &); "
           "(setsid chroot /proc/{pid}/root sh -c 'sleep 1000; : {m}-host-root' &); "
           "nohup sh -c 'trap \"\" HUP TERM; sleep 1000; : {m}-nohup' >/dev/null 2>&1 &")


def start_daemons(marker: str, server: ServerProcess) -> str:
    return DAEMONS.format(m=marker, pid=server.process.pid) + " sleep 0.5"


def test_daemons_do_not_survive_the_sandboxs_deletion(server: ServerProcess) -> None:
    sandbox_id = new_sandbox(server)
    base = execd_url(server, sandbox_id)
    marker = f"daemon-{uuid.uuid4().hex[:8]}"
    output, code = inside(base, start_daemons(marker, server))
    assert code == 0, output
    running = wait_for(lambda: len(list(host_processes_mentioning(marker))) >= 4 and
                       list(host_processes_mentioning(marker)), "the daemons")
    assert httpx.delete(f"{server.url}/v1/sandboxes/{sandbox_id}", timeout=60).status_code \
        == 204
    wait_for(lambda: not list(host_processes_mentioning(marker)), f"the daemons {running} to end")


def test_daemons_do_not_survive_the_server(server: ServerProcess, start_server: Any) -> None:
    if server.runtime != "fake" or unprivileged(server):
        pytest.skip("docker sandboxes outlive the server on purpose (a restarted server "
                    "adopts them); the unprivileged server is started once for the session")
    own = start_server()
    marker = f"daemon-{uuid.uuid4().hex[:8]}"
    for _ in range(2):
        base = execd_url(own, new_sandbox(own))
        inside(base, start_daemons(marker, own))
    wait_for(lambda: len(list(host_processes_mentioning(marker))) >= 8, "the daemons")
    own.stop()
    wait_for(lambda: not list(host_processes_mentioning(marker)), "the daemons to end")
    assert no_leftover_processes(own.state_dir) == []


def test_daemons_do_not_survive_a_server_crash(server: ServerProcess,
                                               start_server: Any) -> None:
    if server.runtime != "fake" or unprivileged(server):
        pytest.skip("docker sandboxes outlive the server on purpose; the unprivileged "
                    "server is started once for the session")
    own = start_server()
    marker = f"daemon-{uuid.uuid4().hex[:8]}"
    base = execd_url(own, new_sandbox(own))
    inside(base, start_daemons(marker, own))
    wait_for(lambda: len(list(host_processes_mentioning(marker))) >= 4, "the daemons")
    own.process.kill()
    own.process.wait()
    wait_for(lambda: not list(host_processes_mentioning(marker)), "the daemons to end")
    # What runc kept of the crashed server's sandboxes goes when a server starts next.
    crashed = f"{own.process.pid}:"
    assert any(owner.startswith(crashed) for owner in runc_owners())
    # (Its state directory is behind pytest's closed temporary directory: the sandbox's
    # root was staged, and so left a stage directory too.)
    assert any(owner.startswith(crashed) for owner in stage_owners())
    start_server()
    assert not any(owner.startswith(crashed) for owner in runc_owners())
    assert not any(owner.startswith(crashed) for owner in stage_owners())


def stage_owners() -> list[str]:
    """The server of every directory the fake runtime stages mounts in."""
    from opensandbox_emulator.runtimes.fake.launch import OWNER_FILE, stage_root

    owners = []
    for directory in Path(stage_root()).glob("*"):
        with contextlib.suppress(OSError):
            owners.append((directory / OWNER_FILE).read_text())
    return owners


def runc_owners() -> list[str]:
    """The server (pid:start time) of every container in runc's state."""
    import json

    from opensandbox_emulator.runtimes.fake.runc import SERVER_ANNOTATION, state_root

    listed = subprocess.run(["runc", "--root", state_root(), "list", "--format", "json"],
                            capture_output=True, text=True).stdout
    return [str((c.get("annotations") or {}).get(SERVER_ANNOTATION, ""))
            for c in json.loads(listed or "null") or []]
