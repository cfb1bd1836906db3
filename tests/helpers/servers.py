"""A real server process, and what tests do with one over HTTP.

`launch(sections, workdir)` runs `python -m opensandbox_emulator` with a config file made of
`sections` (TOML tables) on ports the kernel picks, waits until it is healthy and returns a
`ServerProcess`; `.stop()` ends it the way an operator would (SIGTERM). The tests' fixtures
and the benchmarks both start servers this one way.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import ROOT
from tests.helpers.docker_engine import DOCKER_CODE_IMAGE, DOCKER_DEBIAN_IMAGE

READY = re.compile(r"lifecycle API on http://(\S+):(\d+) .*sandbox gateway on port (\d+)")
EXECD_PORT = 44772


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    host: str
    port: int
    gateway_port: int
    config_path: Path
    state_dir: Path
    output: list[str]
    runtime: str = "fake"
    # An image this server's runtime can run, with sh, bash, python3 and coreutils: the fake
    # runtime ignores the name (its sandboxes see the host's /usr); the docker one needs a
    # local image (tests/docker/build-images.sh).
    image: str = "python:3.11"

    @property
    def code_image(self) -> str:
        """An image that also has a JDK (jshell), Go and Node.js with typescript 7: the
        docker test image built for that; the fake runtime runs the host's (CI installs
        them from Debian), so any name does."""
        return DOCKER_CODE_IMAGE

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def domain(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.host}:{self.gateway_port}"

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (the server then destroys its sandboxes); SIGKILL after `timeout` s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def launch(sections: dict[str, dict[str, Any]], workdir: Path, *,
           python: str = sys.executable, cwd: Path = ROOT,
           prefix: list[str] | None = None, args: list[str] | None = None,
           env: dict[str, str] | None = None) -> ServerProcess:
    """A server configured by `sections` on top of loopback, kernel-picked ports and a
    state directory in `workdir`, once its `/health` answers. It runs `python -m
    opensandbox_emulator` of `python` (by default this interpreter, whose environment holds
    the project's editable install) in `cwd`, behind `prefix` (`setpriv …`, say), with
    `args` after `--config` and `env` on top of this process's environment."""
    merged: dict[str, dict[str, Any]] = {
        "server": {"host": "127.0.0.1", "port": 0, "log_level": "INFO"},
        "gateway": {"port": 0},
        "fake": {"state_dir": str(workdir / "state"), "volumes_root": str(workdir / "volumes")},
    }
    for section, values in sections.items():
        merged.setdefault(section, {}).update(values)
    Path(merged["fake"]["state_dir"]).mkdir(parents=True, exist_ok=True)
    Path(merged["fake"]["volumes_root"]).mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.toml"
    write_config(config_path, merged)
    process = subprocess.Popen(
        [*(prefix or []), python, "-m", "opensandbox_emulator", "--config", str(config_path),
         *(args or [])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
        env={**os.environ, **env} if env else None)
    output: list[str] = []
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    match = None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        output.append(line)
        match = READY.search(line)
        if match:
            break
    if match is None:
        process.kill()
        raise RuntimeError("server did not start:\n" + "".join(output))
    runtime = str(merged.get("runtime", {}).get("type", "fake"))
    server = ServerProcess(process, match.group(1), int(match.group(2)), int(match.group(3)),
                           config_path, Path(merged["fake"]["state_dir"]), output, runtime,
                           DOCKER_DEBIAN_IMAGE if runtime == "docker" else "python:3.11")

    def drain() -> None:
        """Keep reading the output, so the server never blocks on a full pipe."""
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.05)
    server.stop()
    raise RuntimeError("server never became healthy:\n" + "".join(output))


def fake_only(server: ServerProcess, reason: str) -> None:
    """Skip the calling test on any runtime but the fake one, saying why it cannot hold
    there (kept for checks that only exist on the fake runtime)."""
    if server.runtime != "fake":
        pytest.skip(f"fake runtime only: {reason}")


# --- sandboxes over HTTP -------------------------------------------------------------------


def create_body(server: ServerProcess | None = None, /, **overrides: Any) -> dict[str, Any]:
    """A create request for a sandbox that stays up; with `server`, of an image that
    server's runtime can run."""
    image = server.image if server is not None else "python:3.11"
    body: dict[str, Any] = {"image": {"uri": image}, "timeout": 600,
                            "resourceLimits": {"cpu": "1", "memory": "1Gi"},
                            "entrypoint": ["tail", "-f", "/dev/null"]}
    body.update(overrides)
    return body


def new_sandbox(server: ServerProcess, **overrides: Any) -> str:
    """The id of a sandbox just created on `server` from `create_body(server, **overrides)`;
    the caller deletes it."""
    response = httpx.post(f"{server.url}/v1/sandboxes", json=create_body(server, **overrides),
                          timeout=60)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def execd_url(server: ServerProcess, sandbox_id: str) -> str:
    """The sandbox's execd base URL through the gateway (uri mode)."""
    return f"{server.gateway_url}/{sandbox_id}/{EXECD_PORT}"


# --- waiting and leaks ---------------------------------------------------------------------


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll `check` until it returns something truthy, and return that (not a timing
    assertion: the deadline only stops a broken server from hanging the suite)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def host_processes_mentioning(marker: str) -> dict[int, str]:
    """Live processes of this host whose command line holds `marker`: pid -> command line.
    A sandbox's processes are processes of this host on both runtimes (the docker engine is
    local), and a marker in their argv finds them after the sandbox itself is gone."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if marker.encode() in cmdline and state[state.rfind(")") + 2] != "Z":
            found[int(entry)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


def no_leftover_processes(state_dir: Path) -> list[str]:
    """Command lines of live processes that still belong to a server whose state lives in
    `state_dir` (a leak): those that mention it, and those whose root directory is a
    sandbox's private root in it, however it was mounted (a fake sandbox's processes)."""
    leaks = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if not cmdline:  # a zombie, or a kernel thread
                continue
            if str(state_dir) in cmdline or _rooted_under(int(entry), state_dir):
                leaks.append(cmdline)
        except OSError:
            continue
    return leaks


def _rooted_under(pid: int, directory: Path) -> bool:
    """Whether process `pid`'s root mount is a directory under `directory`: the mount's own
    root, as /proc/<pid>/mountinfo gives it (bind mounts keep their source's path, relative
    to the filesystem it lies on)."""
    prefixes = {str(directory).rstrip("/") + "/"}
    within = os.path.relpath(directory, _mount_point(directory))
    if within != ".":  # `directory` is not a mount point itself
        prefixes.add("/" + within + "/")
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == "/":
            return any(fields[3].startswith(prefix) for prefix in prefixes)
    return False


def _mount_point(path: Path) -> str:
    current = os.path.realpath(path)
    while not os.path.ismount(current):
        current = os.path.dirname(current)
    return current
