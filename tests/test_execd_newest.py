"""execd's newest surface on both runtimes: bash sessions, `/directories/list`, line reads,
the env file (`EXECD_ENVS`, `set_env`), bodies without `Content-Type`, and the 501s of
the routes upstream does not serve.

The newest SDKs (PyPI 1.1.x in `.venv-sdk-next`, npm 0.1.11 as `opensandbox-next`) drive the
user-facing flows as subprocesses; raw HTTP checks framing, errors and the spec.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.helpers.contract import assert_execd_spec
from tests.helpers.frames import split_frames
from tests.helpers.newer_sdks import NEXT_JS, NEXT_PYTHON, require, run_json
from tests.helpers.routes import ROUTES, route
from tests.helpers.servers import (
    ServerProcess,
    create_body,
    execd_url,
    no_leftover_processes,
    wait_for,
)

HEAD_SPEC = "head/execd-api.yaml"


@pytest.fixture(scope="session")
def server(execd_server: ServerProcess) -> ServerProcess:
    """Every test of this module runs on both runtimes."""
    return execd_server


@pytest.fixture(scope="module")
def box(module_execd: str) -> str:
    """The module's sandbox (its execd base URL)."""
    return module_execd


def stream(base: str, path: str, body: dict[str, Any] | None = None, *,
           timeout: float = 60) -> tuple[httpx.Response, list[dict[str, Any]]]:
    with httpx.Client(timeout=timeout) as client, \
            client.stream("POST", base + path, json=body) as response:
        raw = b"".join(response.iter_raw())
    assert response.status_code == 200, raw
    return response, [e for e in split_frames(raw) if e["type"] != "ping"]


def sh(base: str, command: str) -> list[str]:
    """Run a plain command; its stdout lines."""
    _, events = stream(base, "/command", {"command": command})
    return [e["text"] for e in events if e["type"] == "stdout"]


def new_session(base: str, **body: Any) -> str:
    response = httpx.post(base + "/session", json=body or None, timeout=30)
    assert response.status_code == 200, response.text
    assert_execd_spec(response, HEAD_SPEC)
    return str(response.json()["session_id"])


class RunInBackground:
    """A session run read to its end on another thread, while the test acts."""

    def __init__(self, base: str, session_id: str, command: str):
        self.events: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._read, args=(base, session_id, command))
        self._thread.start()

    def _read(self, base: str, session_id: str, command: str) -> None:
        self.events = stream(base, f"/session/{session_id}/run", {"command": command})[1]

    def result(self) -> list[dict[str, Any]]:
        self._thread.join(60)
        assert not self._thread.is_alive(), "the run's stream never ended"
        return self.events


def processes_named(base: str, *argvs: str) -> int:
    """How many processes in the sandbox run exactly one of `argvs` (`"sleep 5"`)."""
    wanted = " ".join(f"-e '{argv} '" for argv in argvs)
    out = sh(base, "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; "
                   f"done | grep -cxF {wanted} || true")
    return int(out[-1]) if out else 0


# --- the SDKs ------------------------------------------------------------------------------


@pytest.mark.parametrize("proxy", [False, True], ids=["gateway", "server-proxy"])
def test_newest_python_sdk(server: ServerProcess, proxy: bool) -> None:
    require(NEXT_PYTHON)
    argv = [str(NEXT_PYTHON), "tests/compat/newer_python_sdk_execd.py", server.domain,
            server.image]
    out = run_json(argv + (["--proxy"] if proxy else []))
    assert out["readme_handlers"] == ["STDOUT: Count 1", "STDOUT: Count 2", "STDOUT: Count 3",
                                      "complete"]
    first = out["session_first"]
    assert first == {"id": first["id"], "stdout": ["/tmp/deeper"], "exit_code": 0}
    uuid.UUID(first["id"])  # init.text is the session id
    assert out["session_second"] == {"stdout": ["kept=exported plain=unset", "/tmp/deeper",
                                                "no-function", "err"], "stderr": []}
    assert out["session_cwd"] == [["/"], ["/", "kept=gone"]]
    assert out["session_timeout"] == {"stdout": ["before"], "exit_code": -1, "error": "-1"}
    assert out["session_after_timeout"] == ["still-usable"]
    assert out["session_exit"] == {"stdout": ["before-exit"], "exit_code": 7}
    assert out["session_deleted"] == "SandboxApiException"
    assert out["session_default_cwd"] == ["/"]
    assert out["list_depth_None"] == [["/tmp/tree/a.txt", "file"], ["/tmp/tree/sub", "directory"]]
    assert out["list_depth_2"] == [["/tmp/tree/a.txt", "file"], ["/tmp/tree/sub", "directory"],
                                   ["/tmp/tree/sub/b.txt", "file"],
                                   ["/tmp/tree/sub/deep", "directory"]]
    assert out["list_depth_0"] == []
    assert out["read_offset"] == "two"
    assert out["read_tail"] == "three\n\nfive"
    assert out["read_past_end"] == ""
    assert out["read_range"] == "one"
    assert out["set_env_run"] == ["hello world", "it's $HOME"]
    # The file applies to a session unless the session exported the name itself.
    assert out["set_env_session"] == [["hello world"], ["mine"]]


@pytest.mark.parametrize("proxy", [False, True], ids=["gateway", "server-proxy"])
def test_newest_js_sdk(server: ServerProcess, proxy: bool) -> None:
    require(NEXT_JS)
    argv = ["node", "tests/js/newest_execd.mjs", server.domain, server.image]
    out = run_json(argv + (["--proxy"] if proxy else []))
    assert "error" not in out, out.get("error")
    assert out["sessions"] == {
        "id": True, "first": ["/tmp"], "second": ["kept=1 plain=unset", "/tmp", "no-function"],
        "perRun": ["/"], "slow": {"stdout": ["before"], "exitCode": -1},
        "again": ["still-usable"], "failed": 4}
    assert out["deleted"] == "SandboxApiException"
    assert out["list1"] == ["/tmp/js-tree/a.txt", "/tmp/js-tree/d"]
    assert out["list2"] == ["/tmp/js-tree/a.txt", "/tmp/js-tree/d", "/tmp/js-tree/d/b.txt"]
    assert out["lines"] == "l2\nl3"
    assert out["range"] == "l2"
    assert "501" in out["isolation"] and "NOT_SUPPORTED" in out["isolation"]


# --- sessions over raw HTTP -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ROUTES)
def test_session_framing_on_every_route(server: ServerProcess, box: str, kind: str) -> None:
    sandbox_id = box.split("/")[-2]
    base, headers = route(server, sandbox_id, 44772, kind)
    created = httpx.post(base + "/session", headers=headers, timeout=30)  # no body at all
    assert created.status_code == 200, created.text
    session_id = created.json()["session_id"]
    with httpx.Client(timeout=60) as client, client.stream(
            "POST", f"{base}/session/{session_id}/run", headers=headers,
            content=b'{"command": "echo one; echo; echo two >&2; printf three"}') as response:
        raw = b"".join(response.iter_raw())
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    events = [e for e in split_frames(raw) if e["type"] != "ping"]
    assert events[0]["type"] == "init" and events[0]["text"] == session_id
    assert [(e["type"], e.get("text")) for e in events[1:-1]] == [
        ("stdout", "one"), ("stdout", "two"), ("stdout", "three")]
    assert events[-1]["type"] == "execution_complete"
    assert all(isinstance(e["timestamp"], int) for e in events)
    deleted = httpx.delete(f"{base}/session/{session_id}", headers=headers)
    assert deleted.status_code == 200 and deleted.content == b""


def test_session_errors(box: str) -> None:
    missing = str(uuid.uuid4())
    for response in (httpx.post(f"{box}/session/{missing}/run", json={"command": "true"}),
                     httpx.delete(f"{box}/session/{missing}")):
        assert response.status_code == 404
        assert response.json()["code"] == "CONTEXT_NOT_FOUND"
        assert missing in response.json()["message"]
    session_id = new_session(box)
    for body in ({"command": ""}, {}, {"command": "true", "timeout": -1},
                 {"command": "true", "cwd": "/no/such/dir"},
                 {"command": "true", "cwd": "/etc/passwd"},
                 {"command": "true", "cwd": "$NO_SUCH_VARIABLE_HERE"}):
        response = httpx.post(f"{box}/session/{session_id}/run", json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["code"] == "INVALID_REQUEST_BODY"
    broken = httpx.post(f"{box}/session", content=b"{not json")
    assert broken.status_code == 400 and broken.json()["code"] == "INVALID_REQUEST_BODY"
    undefined = httpx.post(f"{box}/session", json={"cwd": "/tmp/$NO_SUCH_VARIABLE_HERE"})
    assert undefined.status_code == 500
    assert undefined.json()["code"] == "RUNTIME_ERROR"
    assert "NO_SUCH_VARIABLE_HERE" in undefined.json()["message"]


def test_session_cwd_is_expanded_and_created(box: str) -> None:
    session_id = new_session(box, cwd="~/made/by/session")
    _, events = stream(box, f"/session/{session_id}/run", {"command": "pwd; echo $HOME"})
    home = [e["text"] for e in events if e["type"] == "stdout"][1]
    assert events[1]["text"] == f"{home.rstrip('/')}/made/by/session"


def test_session_keeps_exported_values_as_upstream_reads_them(box: str) -> None:
    session_id = new_session(box)
    stream(box, f"/session/{session_id}/run",
           {"command": "export SPACED='a b' QUOTE='say \"hi\"' DOLLAR='cost $5' "
                       "LINES=$'one\\ntwo'"})
    _, events = stream(box, f"/session/{session_id}/run", {
        "command": 'printf "%s|" "$SPACED" "$QUOTE" "$DOLLAR" "$LINES"'})
    # Upstream reads `export -p` back with Go's Unquote: `$` gains a backslash, and a
    # value with a newline (which bash 5.2 prints as $'…') comes back as that literal
    # text. A program sees the same here.
    assert events[1]["text"] == 'a b|say "hi"|cost \\$5|$\'one\\ntwo\'|'


def test_session_timeout_kills_the_whole_group(box: str) -> None:
    session_id = new_session(box)
    started = time.monotonic()
    _, events = stream(box, f"/session/{session_id}/run",
                       {"command": "sleep 311 & sleep 312; echo never", "timeout": 800})
    assert time.monotonic() - started < 10
    assert events[-1]["type"] == "error"
    assert events[-1]["error"]["evalue"] == "-1"
    assert events[-1]["error"]["traceback"] == ["timeout after 800ms"]
    assert "never" not in [e.get("text") for e in events]
    wait_for(lambda: processes_named(box, "sleep 311") == 0, "the run's children to die")
    _, after = stream(box, f"/session/{session_id}/run", {"command": "echo usable"})
    assert after[1]["text"] == "usable" and after[-1]["type"] == "execution_complete"


def test_session_delete_stops_its_runs(box: str) -> None:
    session_id = new_session(box)
    events = RunInBackground(box, session_id, "echo started; sleep 321 & sleep 322")
    wait_for(lambda: processes_named(box, "sleep 322") == 1, "the run to start")
    assert httpx.delete(f"{box}/session/{session_id}").status_code == 200
    events = events.result()
    assert events[-1]["type"] == "error"
    assert events[-1]["error"]["evalue"] == "-1"
    assert events[-1]["error"]["traceback"] == ["signal: killed"]
    wait_for(lambda: processes_named(box, "sleep 321", "sleep 322") == 0,
             "the run's processes to die")


def test_session_run_waits_for_a_job_that_keeps_stdout(box: str) -> None:
    session_id = new_session(box)
    _, events = stream(box, f"/session/{session_id}/run",
                       {"command": "(sleep 1; echo late) & echo now"})
    assert [e.get("text") for e in events[1:-1]] == ["now", "late"]
    started = time.monotonic()
    _, events = stream(box, f"/session/{session_id}/run",
                       {"command": "sleep 331 >/dev/null 2>&1 & echo detached"})
    assert time.monotonic() - started < 5
    assert events[-1]["type"] == "execution_complete"
    stream(box, "/command", {"command": "pkill -f 'sleep 331' || true"})


def test_interrupt_by_session_id_deletes_the_session(box: str) -> None:
    session_id = new_session(box)
    assert httpx.delete(f"{box}/command", params={"id": session_id}).status_code == 200
    gone = httpx.post(f"{box}/session/{session_id}/run", json={"command": "true"})
    assert gone.status_code == 404


# --- bodies, unsupported routes --------------------------------------------------------------


def test_json_without_content_type(server: ServerProcess, box: str) -> None:
    with httpx.Client(timeout=30) as client, client.stream(
            "POST", f"{box}/command", content=b'{"command": "echo typeless"}') as response:
        raw = b"".join(response.iter_raw())
    assert response.status_code == 200
    assert [e.get("text") for e in split_frames(raw) if e["type"] == "stdout"] == ["typeless"]
    # The Lifecycle API keeps FastAPI's rule.
    import json

    lifecycle = httpx.post(f"{server.url}/v1/sandboxes",
                           content=json.dumps(create_body(server)).encode())
    assert lifecycle.status_code in (400, 422)


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/isolated/capabilities"), ("POST", "/v1/isolated/session"),
    ("GET", "/v1/isolated/sessions"), ("DELETE", "/v1/isolated/session/x"),
    ("GET", "/v1/filesystem/1000/1000/files/info?path=/tmp"),
    ("POST", "/v1/filesystem/0/0/directories"),
])
def test_routes_upstream_does_not_serve_are_501(box: str, method: str, path: str) -> None:
    response = httpx.request(method, box + path)
    assert response.status_code == 501
    body = response.json()
    assert body["code"] == "NOT_SUPPORTED"
    assert ("isolated" in body["message"]) or ("identity" in body["message"])


# --- directories/list ------------------------------------------------------------------------


def test_directory_listing(box: str) -> None:
    sh(box, "rm -rf /tmp/ls && mkdir -p /tmp/ls/b/c/d && echo x > /tmp/ls/a && "
            "echo yy > /tmp/ls/b/c/f && ln -s /etc /tmp/ls/link && chmod 700 /tmp/ls/b")
    listed = httpx.get(f"{box}/directories/list", params={"path": "/tmp/ls"})
    assert listed.status_code == 200
    assert_execd_spec(listed, HEAD_SPEC)
    entries = listed.json()
    assert [(e["path"], e["type"]) for e in entries] == [
        ("/tmp/ls/a", "file"), ("/tmp/ls/b", "directory"), ("/tmp/ls/link", "symlink")]
    a, b, link = entries
    assert a["size"] == 2 and a["owner"] == "root" and a["group"] == "root"
    assert b["mode"] == 700 and link["mode"] == 777 and link["size"] == len("/etc")
    deep = httpx.get(f"{box}/directories/list", params={"path": "/tmp/ls", "depth": 3}).json()
    assert [e["path"] for e in deep] == ["/tmp/ls/a", "/tmp/ls/b", "/tmp/ls/b/c",
                                         "/tmp/ls/b/c/d", "/tmp/ls/b/c/f", "/tmp/ls/link"]
    huge = httpx.get(f"{box}/directories/list", params={"path": "/tmp/ls", "depth": 99}).json()
    assert [e["path"] for e in huge] == [e["path"] for e in deep]  # the link is not followed
    assert httpx.get(f"{box}/directories/list",
                     params={"path": "/tmp/ls", "depth": 0}).json() == []


@pytest.mark.parametrize("params,status,code", [
    ({}, 400, "MISSING_QUERY"),
    ({"path": "/tmp/ls", "depth": "-1"}, 400, "INVALID_REQUEST_BODY"),
    ({"path": "/tmp/ls", "depth": "two"}, 400, "INVALID_REQUEST_BODY"),
    ({"path": "/tmp/no-such-dir"}, 404, "FILE_NOT_FOUND"),
    ({"path": "/tmp/ls/link"}, 400, "INVALID_REQUEST_BODY"),
    ({"path": "/tmp/ls/a"}, 400, "NOT_A_DIRECTORY"),
])
def test_directory_listing_errors(box: str, params: dict[str, str], status: int,
                                  code: str) -> None:
    sh(box, "mkdir -p /tmp/ls && touch /tmp/ls/a && ln -sfn /etc /tmp/ls/link")
    response = httpx.get(f"{box}/directories/list", params=params)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert response.json()["message"]


# --- line reads ------------------------------------------------------------------------------


def test_line_reads(box: str) -> None:
    sh(box, "printf 'one\\ntwo\\r\\nthree\\n\\nfive' > /tmp/lines.txt && mkdir -p /tmp/adir")

    def read(**params: Any) -> httpx.Response:
        return httpx.get(f"{box}/files/download", params={"path": "/tmp/lines.txt", **params})

    first = read(offset=2, limit=2)
    assert first.status_code == 200 and first.content == b"two\nthree"
    assert first.headers["content-type"] == "text/plain; charset=utf-8"
    assert "content-disposition" not in first.headers
    assert read(offset=1).content == b"one\ntwo\nthree\n\nfive"
    assert read(limit=1).content == b"one"
    assert read(offset=4, limit=1).content == b""  # an empty line in range is kept, empty
    assert read(offset=5, limit=9).content == b"five"
    assert read(offset=6).content == b""
    directory = httpx.get(f"{box}/files/download", params={"path": "/tmp/adir", "offset": 1})
    assert directory.status_code == 200 and directory.content == b""
    whole = read()
    assert whole.headers["content-type"] == "application/octet-stream"


@pytest.mark.parametrize("params,headers,status,code", [
    ({"offset": 1}, {"Range": "bytes=0-1"}, 400, "INVALID_REQUEST_BODY"),
    ({"offset": 0}, {}, 400, "INVALID_REQUEST_BODY"),
    ({"limit": "many"}, {}, 400, "INVALID_REQUEST_BODY"),
    ({"offset": -3, "limit": 1}, {}, 400, "INVALID_REQUEST_BODY"),
    ({"offset": 0, "missing": 1}, {}, 404, "FILE_NOT_FOUND"),  # the file is checked first
])
def test_line_read_errors(box: str, params: dict[str, Any], headers: dict[str, str],
                          status: int, code: str) -> None:
    sh(box, "printf 'a\\nb\\n' > /tmp/lines.txt")
    params = dict(params)  # shared between the runtimes' runs
    path = "/tmp/no-such-file" if params.pop("missing", None) else "/tmp/lines.txt"
    response = httpx.get(f"{box}/files/download", params={"path": path, **params},
                         headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code


# --- the env file ----------------------------------------------------------------------------


def test_env_file_is_there_and_read_by_every_command(box: str) -> None:
    assert sh(box, 'echo "$EXECD_ENVS"; test -f "$EXECD_ENVS" && echo present') == [
        "/opt/opensandbox/.env", "present"]
    sh(box, """cat > "$EXECD_ENVS" <<'EOF'
# a comment, then a blank line

SINGLE='literal $HOME'
DOUBLE="tab\\there \\"quoted\\""
BARE=$HOME/bare
NOEQUALS
LAST=first
LAST=second
EOF""")
    out = sh(box, 'printf "%s|" "$SINGLE" "$DOUBLE" "$BARE" "$LAST"; echo')
    home = sh(box, "echo $HOME")[0]
    assert out == [f'literal $HOME|tab\there "quoted"|{home}/bare|second|']
    _, events = stream(box, "/command", {"command": 'echo "$LAST"', "envs": {"LAST": "mine"}})
    assert [e.get("text") for e in events if e["type"] == "stdout"] == ["mine"]
    session_id = new_session(box)
    _, events = stream(box, f"/session/{session_id}/run", {"command": 'echo "$SINGLE"'})
    assert events[1]["text"] == "literal $HOME"
    sh(box, ': > "$EXECD_ENVS"')
    assert sh(box, 'echo "${LAST:-unset}"') == ["unset"]


def test_env_file_behind_a_symlink_or_a_directory_in_its_place(box: str) -> None:
    try:
        sh(box, 'printf "LINKED=yes\\n" > /tmp/real.env && rm -f "$EXECD_ENVS" '
                '&& ln -s /tmp/real.env "$EXECD_ENVS"')
        assert sh(box, 'echo "${LINKED:-unset}"') == ["yes"]
        sh(box, 'rm -f "$EXECD_ENVS" && mkdir "$EXECD_ENVS"')
        assert sh(box, 'echo "${LINKED:-unset}"') == ["unset"]
    finally:
        sh(box, 'rm -rf "$EXECD_ENVS" && : > "$EXECD_ENVS"')
    assert sh(box, 'test -f "$EXECD_ENVS" && test ! -s "$EXECD_ENVS" && echo empty') == [
        "empty"]


# --- nothing leaks -------------------------------------------------------------------------


def test_sandbox_delete_stops_sessions(server: ServerProcess) -> None:
    with server.client() as http:
        sandbox_id = http.post("/v1/sandboxes", json=create_body(server)).json()["id"]
        wait_for(lambda: http.get(f"/v1/sandboxes/{sandbox_id}").json()["status"]["state"]
                 == "Running", "the sandbox to run")
        base = execd_url(server, sandbox_id)
        run = RunInBackground(base, new_session(base), "sleep 341")
        wait_for(lambda: processes_named(base, "sleep 341") == 1, "the run to start")
        assert http.delete(f"/v1/sandboxes/{sandbox_id}").status_code == 204
        assert run.result()[-1]["type"] == "error"
    if server.runtime == "fake":
        wait_for(lambda: not [line for line in no_leftover_processes(server.state_dir)
                              if sandbox_id in line], "no process of the sandbox left")
