"""Bad input is a 400 that names the field, on both runtimes: never a 500.

Each case once ended in a 500 (and a dropped connection, and a traceback in the log): a NUL
byte in a command, a working directory, an environment value or any file path; an
environment name holding `=`; a path longer than the kernel takes. Each test checks the
400 and its `{"code","message"}`, that the same keep-alive connection still serves the next
request, that nothing was left in the sandbox, and that the server logged no traceback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers.contract import assert_error
from tests.helpers.docker_engine import containers_of
from tests.helpers.servers import ServerProcess, create_body, execd_url, new_sandbox

LONG_NAME = "/tmp/" + "a" * 5000  # one name far over 255 bytes
DEEP_PATH = "/tmp" + "/d" * 3000  # short names, 6000 bytes in all


@pytest.fixture(scope="session")
def server(execd_server: ServerProcess) -> ServerProcess:
    """Every test of this module runs on both runtimes."""
    return execd_server


@pytest.fixture(scope="module")
def sandbox(server: ServerProcess) -> Iterator[str]:
    created = new_sandbox(server)
    yield created
    httpx.delete(f"{server.url}/v1/sandboxes/{created}", timeout=60)


@pytest.fixture
def execd(server: ServerProcess, sandbox: str) -> Iterator[httpx.Client]:
    """One keep-alive connection to the sandbox's execd (a pool of one)."""
    with httpx.Client(base_url=execd_url(server, sandbox), timeout=60,
                      limits=httpx.Limits(max_connections=1)) as client:
        yield client


def still_usable(client: httpx.Client, refused: httpx.Response) -> None:
    """The connection that carried `refused` serves the next request too."""
    assert "close" not in refused.headers.get("connection", "").lower(), refused.headers
    stream = refused.extensions.get("network_stream")
    assert stream is not None
    follow_up = client.get("/ping")
    assert follow_up.status_code == 200
    assert follow_up.extensions.get("network_stream") is stream, "the connection was dropped"


def tmp_listing(client: httpx.Client) -> list[str]:
    found = client.get("/files/search", params={"path": "/tmp", "pattern": "**"})
    assert found.status_code == 200, found.text
    return sorted(entry["path"] for entry in found.json())


def no_traceback(server: ServerProcess) -> None:
    assert not any("Traceback" in line for line in server.output), "".join(server.output[-40:])


# --- commands --------------------------------------------------------------------------------

COMMAND_CASES = [
    ({"command": "echo a\x00b"}, "command"),
    ({"command": "pwd", "cwd": "/tmp\x00x"}, "cwd"),
    ({"command": "env", "envs": {"GREETING": "hi\x00there"}}, "envs.GREETING"),
    ({"command": "env", "envs": {"A=B": "c"}}, "'A=B'"),
    ({"command": "env", "envs": {"": "c"}}, "envs key ''"),
]


@pytest.mark.parametrize(("body", "field"), COMMAND_CASES,
                         ids=["nul-command", "nul-cwd", "nul-env-value", "env-name-with-equals",
                              "empty-env-name"])
def test_a_bad_command_request_is_a_400_naming_the_field(
        server: ServerProcess, execd: httpx.Client, body: dict[str, Any], field: str) -> None:
    refused = execd.post("/command", json=body)
    assert_error(refused, 400, "INVALID_REQUEST_BODY", field)
    still_usable(execd, refused)
    no_traceback(server)


def test_code_without_a_language_is_a_command_and_refuses_a_nul(
        server: ServerProcess, execd: httpx.Client) -> None:
    refused = execd.post("/code", json={"code": "echo a\x00b"})
    assert_error(refused, 400, "INVALID_REQUEST_BODY", "NUL")
    still_usable(execd, refused)
    refused = execd.post("/code/context", json={"language": "python", "cwd": "/tmp\x00"})
    assert_error(refused, 400, "INVALID_REQUEST_BODY", "cwd")
    no_traceback(server)


# --- files -----------------------------------------------------------------------------------

NUL_PATH = "/tmp/a\x00b"


def upload(client: httpx.Client, path: str) -> httpx.Response:
    return client.post("/files/upload", files=[
        ("metadata", ("metadata", json.dumps({"path": path}), "application/json")),
        ("file", ("file", b"content", "application/octet-stream"))])


FILE_CASES: list[tuple[str, Any]] = [
    ("info", lambda c, p: c.get("/files/info", params={"path": p})),
    ("download", lambda c, p: c.get("/files/download", params={"path": p})),
    ("search", lambda c, p: c.get("/files/search", params={"path": p})),
    ("delete", lambda c, p: c.delete("/files", params={"path": p})),
    ("mkdir", lambda c, p: c.post("/directories", json={p: {"mode": 755}})),
    ("rmdir", lambda c, p: c.delete("/directories", params={"path": p})),
    ("permissions", lambda c, p: c.post("/files/permissions", json={p: {"mode": 644}})),
    ("replace", lambda c, p: c.post("/files/replace", json={p: {"old": "a", "new": "b"}})),
    ("mv-src", lambda c, p: c.post("/files/mv", json=[{"src": p, "dest": "/tmp/moved"}])),
    ("mv-dest", lambda c, p: c.post("/files/mv", json=[{"src": "/etc/hostname", "dest": p}])),
    ("upload", upload),
]


@pytest.mark.parametrize(("operation", "call"), FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_a_nul_in_any_file_path_is_a_400(server: ServerProcess, execd: httpx.Client,
                                         operation: str, call: Any) -> None:
    before = tmp_listing(execd)
    refused = call(execd, NUL_PATH)
    code = "INVALID_FILE_METADATA" if operation == "upload" else "INVALID_REQUEST_BODY"
    assert_error(refused, 400, code, "NUL")
    still_usable(execd, refused)
    assert tmp_listing(execd) == before
    no_traceback(server)


@pytest.mark.parametrize("path", [LONG_NAME, DEEP_PATH], ids=["long-name", "deep-path"])
@pytest.mark.parametrize(("operation", "call"),
                         [c for c in FILE_CASES if c[0] not in ("mv-src", "rmdir", "delete")],
                         ids=[c[0] for c in FILE_CASES if c[0] not in ("mv-src", "rmdir",
                                                                        "delete")])
def test_a_path_too_long_for_the_kernel_is_a_400(server: ServerProcess, execd: httpx.Client,
                                                 operation: str, call: Any, path: str) -> None:
    before = tmp_listing(execd)
    refused = call(execd, path)
    assert_error(refused, 400, "FILE_PATH_TOO_LONG", "too long")
    still_usable(execd, refused)
    assert tmp_listing(execd) == before
    no_traceback(server)


def test_removing_or_moving_a_path_too_long_is_never_a_500(
        server: ServerProcess, execd: httpx.Client) -> None:
    """Removing what cannot exist is a no-op (as for any missing path); moving it away is a
    400 or a 404, never a 500."""
    for path in (LONG_NAME, DEEP_PATH):
        for response in (execd.delete("/files", params={"path": path}),
                         execd.delete("/directories", params={"path": path}),
                         execd.post("/files/mv", json=[{"src": path, "dest": "/tmp/x"}])):
            assert response.status_code in (200, 400, 404), response.text
            if response.status_code != 200:
                assert set(response.json()) == {"code", "message"}
            still_usable(execd, response)
    no_traceback(server)


def test_a_path_the_kernel_takes_only_inside_the_sandbox_is_never_a_500(
        server: ServerProcess, execd: httpx.Client) -> None:
    """4050 bytes is a legal path, but on the fake runtime its host path (the sandbox's root
    in front) is not: the kernel's ENAMETOOLONG is a 400 there, a missing file a 404 in a
    container."""
    path = "/tmp" + "/dd" * 1348 + "/x"
    for response in (execd.get("/files/info", params={"path": path}),
                     execd.post("/directories", json={path: {"mode": 755}}),
                     upload(execd, path)):
        assert response.status_code in (200, 400, 404), response.text
        if response.status_code != 200:
            assert set(response.json()) == {"code", "message"}
        still_usable(execd, response)
    execd.delete("/directories", params={"path": "/tmp/dd"})
    no_traceback(server)


# --- create ----------------------------------------------------------------------------------

CREATE_CASES = [
    ({"entrypoint": ["tail\x00", "-f", "/dev/null"]}, "entrypoint[0]"),
    ({"env": {"GREETING": "hi\x00"}}, "env.GREETING"),
    ({"env": {"A=B": "c"}}, "env key 'A=B'"),
    ({"image": {"uri": "python\x00:3.11"}}, "image.uri"),
    ({"volumes": [{"name": "v", "host": {"path": "/tmp\x00"}, "mountPath": "/mnt/v"}]},
     "volumes[0].host.path"),
    ({"volumes": [{"name": "v", "host": {"path": "/tmp"}, "mountPath": "/mnt/v\x00"}]},
     "volumes[0].mountPath"),
]


def sandboxes_on_disk(server: ServerProcess) -> set[str]:
    """What the runtime holds for sandboxes: the fake runtime's private roots, or the
    docker runtime's containers of this server."""
    if server.runtime == "docker":
        return containers_of(server)
    return {path.name for path in (server.state_dir / "sandboxes").iterdir()}


@pytest.mark.parametrize(("overrides", "field"), CREATE_CASES,
                         ids=["nul-entrypoint", "nul-env", "env-name-with-equals", "nul-image",
                              "nul-host-path", "nul-mount-path"])
def test_a_bad_create_is_a_400_and_leaves_nothing(server: ServerProcess, sandbox: str,
                                                  overrides: dict[str, Any], field: str) -> None:
    before = sandboxes_on_disk(server)
    with httpx.Client(base_url=server.url, timeout=60,
                      limits=httpx.Limits(max_connections=1)) as client:
        refused = client.post("/v1/sandboxes", json=create_body(server, **overrides))
        assert_error(refused, 400, "SANDBOX::INVALID_PARAMETER", field)
        stream = refused.extensions.get("network_stream")
        assert stream is not None
        listed = client.get("/v1/sandboxes")
        assert listed.status_code == 200
        assert listed.extensions.get("network_stream") is stream
        assert [item["id"] for item in listed.json()["items"]] == [sandbox]
    assert sandboxes_on_disk(server) == before
    no_traceback(server)


def test_a_create_whose_mount_path_is_too_long_leaves_nothing(
        server: ServerProcess, sandbox: str, tmp_path: Any) -> None:
    before = sandboxes_on_disk(server)
    body = create_body(server, volumes=[{"name": "v", "host": {"path": str(tmp_path)},
                                         "mountPath": "/mnt/" + "m" * 300}])
    refused = httpx.post(f"{server.url}/v1/sandboxes", json=body, timeout=60)
    assert_error(refused, 400, "VOLUME::INVALID_MOUNT_PATH", "too long")
    assert sandboxes_on_disk(server) == before
    no_traceback(server)


def test_a_path_a_sandbox_process_keeps_changing_is_never_a_500(
        server: ServerProcess, execd: httpx.Client) -> None:
    """A sandbox process turns `/tmp/flip` from a symlink into a file and back as fast as
    it can, while the server resolves paths through it (the race once gave `EINVAL` from
    readlink, a 500). Every answer is a 2xx or a 4xx in the error shape."""
    flipper = execd.post("/command", json={"background": True, "timeout": 20000, "command": (
        "mkdir -p /tmp/target && touch /tmp/target/x; end=$(($(date +%s) + 15)); "
        "while [ $(date +%s) -lt $end ]; do ln -sfn /tmp/target /tmp/flip; rm -f /tmp/flip; "
        ": > /tmp/flip; rm -f /tmp/flip; done")})
    assert flipper.status_code == 200, flipper.text
    statuses = set()
    for _ in range(150):
        for response in (execd.get("/files/info", params={"path": "/tmp/flip/x"}),
                         execd.get("/files/info", params={"path": "/tmp/flip"}),
                         execd.get("/files/download", params={"path": "/tmp/flip/x"})):
            statuses.add(response.status_code)
            assert response.status_code < 500, response.text
            if response.status_code >= 400:
                assert set(response.json()) == {"code", "message"}
    print(f"\nstatuses seen while the path flipped: {sorted(statuses)}")
    no_traceback(server)
