"""execd code interpreting over raw HTTP: framing, context rules and every error path.

Every request goes through the gateway to the embedded execd of a real sandbox, and every
context is a real interpreter process inside it. Every test runs on both runtimes (`[fake]`
and `[docker]`, see `execd_server` in conftest.py), in sandboxes of `server.image`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.code_api import (
    Background,
    create,
    error_of,
    expect_error,
    results,
    run,
    stdout,
    stream,
)
from tests.helpers.contract import assert_execd_spec
from tests.helpers.frames import HEX32, split_frames
from tests.helpers.servers import ServerProcess, execd_url, new_sandbox

PYENV_SITE = Path("/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages")
ROOT = Path(__file__).resolve().parent.parent


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def server(execd_server: ServerProcess) -> ServerProcess:
    """Every test of this module runs on both runtimes."""
    return execd_server


@pytest.fixture
def base(server: ServerProcess) -> Iterator[str]:
    """The execd base URL of a fresh sandbox, deleted afterwards."""
    sandbox_id = new_sandbox(server)
    yield execd_url(server, sandbox_id)
    httpx.delete(f"{server.url}/v1/sandboxes/{sandbox_id}", timeout=60)


# --- POST /code: framing and events ----------------------------------------------------


def test_value_output_and_framing(base: str) -> None:
    context_id = create(base)
    with httpx.Client(timeout=60) as client, client.stream(
            "POST", f"{base}/code", json={"code": "x = 20\nprint('hi')\nprint('a\\nb')\nx + 22",
                                          "context": {"id": context_id,
                                                      "language": "python"}}) as response:
        raw = b"".join(response.iter_raw())
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    events = split_frames(raw)
    assert events[0] == {"type": "init", "text": context_id,
                         "timestamp": events[0]["timestamp"]}
    assert events[1]["type"] == "ping" and events[1]["text"] == "pong"
    events = [e for e in events if e["type"] != "ping"]
    assert [e["type"] for e in events][-3:] == ["execution_count", "result",
                                                "execution_complete"]
    # Chunks keep their newlines. Where a chunk ends is the pipe's business (`print` writes
    # its text and its end separately), so only the joined text is checked.
    assert stdout(events) == "hi\na\nb\n"
    assert events[-3]["execution_count"] == 1
    assert events[-2]["results"] == {"text": "42"}


def test_state_persists_and_contexts_are_isolated(base: str) -> None:
    first, second = create(base), create(base)
    run(base, "import math\nvalue = math.factorial(5)", first)
    assert results(run(base, "value", first)) == [{"text": "120"}]
    events = run(base, "value", second)
    error = error_of(events)
    assert error is not None and error["ename"] == "NameError"
    assert "value" in error["evalue"]


def test_execution_count_increments_per_run(base: str) -> None:
    context_id = create(base)
    run(base, "print('no value')", context_id)
    events = run(base, "'two'", context_id)
    assert [e["execution_count"] for e in events if e["type"] == "execution_count"] == [2]
    assert results(events) == [{"text": "'two'"}]


def test_no_execution_count_without_a_value(base: str) -> None:
    events = run(base, "print(1)\nNone", create(base))
    assert [e["type"] for e in events] == ["init", "stdout", "execution_complete"]


def test_error_event_then_complete(base: str) -> None:
    context_id = create(base)
    events = run(base, "def f():\n    return 1 / 0\nf()", context_id)
    assert [e["type"] for e in events] == ["init", "status", "error", "execution_complete"]
    assert events[1]["text"] == "error"
    error = events[2]["error"]
    assert (error["ename"], error["evalue"]) == ("ZeroDivisionError", "division by zero")
    assert error["traceback"][0].startswith("Traceback")
    assert any("return 1 / 0" in line for line in error["traceback"])
    assert not any("python_driver" in line or "_driver" in line for line in error["traceback"])
    syntax = error_of(run(base, "def broken(:", context_id))
    assert syntax is not None and syntax["ename"] == "SyntaxError"
    # the context survives both
    assert results(run(base, "'alive'", context_id)) == [{"text": "'alive'"}]


def test_stderr_and_subprocess_output(base: str) -> None:
    events = run(base, "import sys, subprocess\nprint('out')\nprint('err', file=sys.stderr)\n"
                       "subprocess.run(['echo', 'child'])\nprint('end')", create(base))
    assert stdout(events) == "out\nchild\nend\n"
    assert "".join(e["text"] for e in events if e["type"] == "stderr") == "err\n"


def test_partial_lines_and_unicode(base: str) -> None:
    events = run(base, "print('a', end='')\nprint('é✓', end='')\nprint('\\x1eplain')",
                 create(base))
    assert stdout(events) == "aé✓\x1eplain\n"


def test_rich_results_and_display(base: str) -> None:
    code = ("class Card:\n"
            "    def _repr_html_(self):\n"
            "        return '<b>card</b>'\n"
            "    def _repr_png_(self):\n"
            "        return b'\\x89PNG'\n"
            "    def __repr__(self):\n"
            "        return 'Card()'\n"
            "display(Card())\n"
            "Card()")
    events = run(base, code, create(base))
    assert [e["type"] for e in events] == ["init", "result", "execution_count", "result",
                                           "execution_complete"]
    shown = events[1]["results"]
    assert shown == {"text": "Card()", "text/html": "<b>card</b>", "image/png": "iVBORw=="}
    assert events[3]["results"] == shown


def test_top_level_await(base: str) -> None:
    events = run(base, "import asyncio\nawait asyncio.sleep(0)\n6 * 7", create(base))
    assert results(events) == [{"text": "42"}]


def test_stdin_is_empty(base: str) -> None:
    error = error_of(run(base, "input()", create(base)))
    assert error is not None and error["ename"] in ("EOFError", "StdinNotImplementedError")


def test_context_cwd_is_created_and_used(base: str) -> None:
    response = httpx.post(f"{base}/code/context",
                          json={"language": "python", "cwd": "/workspace/proj"}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["cwd"] == "/workspace/proj"
    assert results(run(base, "import os\nos.getcwd()", body["id"])) == [
        {"text": "'/workspace/proj'"}]


def test_unusable_cwd_is_400(base: str) -> None:
    # Under a regular file: no runtime can make that directory.
    response = httpx.post(f"{base}/code/context",
                          json={"language": "python", "cwd": "/etc/passwd/opensandbox-nope"},
                          timeout=60)
    assert "/etc/passwd/opensandbox-nope" in expect_error(response, 400,
                                                          "INVALID_REQUEST_BODY")
    assert httpx.get(f"{base}/code/contexts", timeout=30).json() == []


# --- context-less and default runs ---------------------------------------------------------


def test_no_language_runs_a_shell_command(base: str) -> None:
    events = run(base, "echo one; echo two; exit 3", language=None)
    assert HEX32.match(events[0]["text"])
    assert [e["text"] for e in events if e["type"] == "stdout"] == ["one", "two"]
    assert events[-1]["type"] == "error"
    assert events[-1]["error"] == {"ename": "CommandExecError", "evalue": "3",
                                   "traceback": ["exit status 3"]}
    assert httpx.get(f"{base}/code/contexts", timeout=30).json() == []


def test_default_context_is_lazy_shared_and_listed_once(base: str) -> None:
    assert httpx.get(f"{base}/code/contexts", timeout=30).json() == []
    first = run(base, "counter = 1")
    second = run(base, "counter += 1\ncounter")
    assert first[0]["text"] == second[0]["text"]
    assert results(second) == [{"text": "2"}]
    listed = httpx.get(f"{base}/code/contexts", params={"language": "python"},
                       timeout=30).json()
    assert listed == [{"id": first[0]["text"], "language": "python"}]
    # deleting it by language: the next default run starts afresh
    assert httpx.delete(f"{base}/code/contexts", params={"language": "python"},
                        timeout=30).status_code == 200
    assert httpx.get(f"{base}/code/contexts", timeout=30).json() == []
    third = run(base, "'counter' in globals()")
    assert third[0]["text"] != first[0]["text"]
    assert results(third) == [{"text": "False"}]


# --- context management --------------------------------------------------------------


def test_list_get_delete(base: str) -> None:
    python_id, bash_id = create(base, "python"), create(base, "bash")
    everything = httpx.get(f"{base}/code/contexts", timeout=30).json()
    assert everything == [{"id": python_id, "language": "python"},
                          {"id": bash_id, "language": "bash"}]
    assert httpx.get(f"{base}/code/contexts", params={"language": "bash"},
                     timeout=30).json() == [{"id": bash_id, "language": "bash"}]
    assert httpx.get(f"{base}/code/contexts", params={"language": "ruby"},
                     timeout=30).json() == []
    got = httpx.get(f"{base}/code/contexts/{python_id}", timeout=30)
    assert got.status_code == 200 and got.json() == {"id": python_id, "language": "python"}

    deleted = httpx.delete(f"{base}/code/contexts/{python_id}", timeout=30)
    assert deleted.status_code == 200
    assert deleted.content == b"" and deleted.headers["content-length"] == "0"
    expect_error(httpx.get(f"{base}/code/contexts/{python_id}", timeout=30), 404,
                 "CONTEXT_NOT_FOUND")
    expect_error(httpx.delete(f"{base}/code/contexts/{python_id}", timeout=30), 404,
                 "CONTEXT_NOT_FOUND")
    response = httpx.post(f"{base}/code", json={
        "code": "1", "context": {"id": python_id, "language": "python"}}, timeout=30)
    expect_error(response, 404, "CONTEXT_NOT_FOUND")
    # deleting a language with no contexts is fine; then the bash one goes
    assert httpx.delete(f"{base}/code/contexts", params={"language": "python"},
                        timeout=30).status_code == 200
    assert httpx.delete(f"{base}/code/contexts", params={"language": "bash"},
                        timeout=30).status_code == 200
    assert httpx.get(f"{base}/code/contexts", timeout=30).json() == []


def test_interrupt_stops_the_cell_and_keeps_state(base: str) -> None:
    context_id = create(base)
    run(base, "kept = 'still here'", context_id)
    body = {"code": "import time\nfor _ in range(600):\n    time.sleep(0.1)",
            "context": {"id": context_id, "language": "python"}}
    background = Background(base, body)
    busy = httpx.post(f"{base}/code", json={**body, "code": "1"}, timeout=30)
    assert context_id in expect_error(busy, 409, "CONTEXT_BUSY")
    interrupted = httpx.delete(f"{base}/code", params={"id": context_id}, timeout=30)
    assert interrupted.status_code == 200 and interrupted.content == b""
    events = background.join()
    assert [e["type"] for e in events][-3:] == ["status", "error", "execution_complete"]
    assert error_of(events)["ename"] == "KeyboardInterrupt"  # type: ignore[index]
    assert results(run(base, "kept", context_id)) == [{"text": "'still here'"}]
    # interrupting an idle context is a no-op
    assert httpx.delete(f"{base}/code", params={"id": context_id}, timeout=30
                        ).status_code == 200


def test_deleting_a_context_ends_its_running_cell(base: str) -> None:
    context_id = create(base)
    background = Background(base, {"code": "import time\ntime.sleep(300)",
                                   "context": {"id": context_id, "language": "python"}})
    assert httpx.delete(f"{base}/code/contexts/{context_id}", timeout=30).status_code == 200
    events = background.join()
    assert events[-1]["type"] == "execution_complete"
    assert error_of(events)["ename"] == "ContextDeleted"  # type: ignore[index]


def test_an_exited_interpreter_is_replaced(base: str) -> None:
    context_id = create(base)
    run(base, "lost = 1", context_id)
    events = run(base, "import os\nos._exit(3)", context_id)
    assert events[-1]["type"] == "execution_complete"
    error = error_of(events)
    assert error is not None and error["ename"] == "InterpreterExited"
    assert "exit status 3" in error["evalue"]
    events = run(base, "'lost' in globals()", context_id)
    assert results(events) == [{"text": "False"}]
    assert "earlier state is gone" in "".join(e["text"] for e in events
                                              if e["type"] == "stderr")


def test_interrupting_a_context_less_command(base: str) -> None:
    # DELETE /code and DELETE /command share one handler upstream: a command id works too.
    background = Background(base, {"code": "echo started; sleep 300"})
    command_id = background.init_text()
    assert HEX32.match(command_id)
    assert httpx.delete(f"{base}/code", params={"id": command_id}, timeout=30
                        ).status_code == 200
    events = background.join()
    assert events[-1]["type"] == "error"
    assert events[-1]["error"]["evalue"] == "-1"


# --- errors -----------------------------------------------------------------------------


def test_responses_match_the_spec(base: str) -> None:
    with httpx.Client(base_url=base, timeout=60) as client:
        created = client.post("/code/context", json={"language": "python"})
        assert_execd_spec(created)
        context_id = created.json()["id"]
        for response in (
                client.get("/code/contexts", params={"language": "python"}),
                client.get(f"/code/contexts/{context_id}"),
                client.get("/code/contexts/nope"),
                client.post("/code/context", json={"language": "ruby"}),
                client.post("/code", json={"context": {"language": "python"}}),
                client.delete("/code", params={"id": context_id}),
                client.delete("/code"),
                client.delete(f"/code/contexts/{context_id}"),
                client.delete("/code/contexts", params={"language": "python"})):
            assert_execd_spec(response)



def test_body_errors(base: str) -> None:
    for body in (None, {}, {"code": ""}, {"code": 5}, {"code": "1", "context": "python"}):
        response = httpx.post(f"{base}/code", content=b"" if body is None else
                              json.dumps(body).encode(),
                              headers={"content-type": "application/json"}, timeout=30)
        expect_error(response, 400, "INVALID_REQUEST_BODY")
    response = httpx.post(f"{base}/code", json={"code": "1", "context": {"language": "ruby"}},
                          timeout=30)
    assert "ruby" in expect_error(response, 400, "INVALID_REQUEST_BODY")
    for body in ({}, {"language": ""}, {"language": "ruby"}, {"language": 3}):
        response = httpx.post(f"{base}/code/context", json=body, timeout=30)
        expect_error(response, 400, "INVALID_REQUEST_BODY")


def test_query_errors(base: str) -> None:
    assert "'id'" in expect_error(httpx.delete(f"{base}/code", timeout=30), 400,
                                  "MISSING_QUERY")
    assert "'language'" in expect_error(httpx.delete(f"{base}/code/contexts", timeout=30),
                                        400, "MISSING_QUERY")
    expect_error(httpx.delete(f"{base}/code", params={"id": "nope"}, timeout=30), 404,
                 "CONTEXT_NOT_FOUND")
    expect_error(httpx.get(f"{base}/code/contexts/nope", timeout=30), 404,
                 "CONTEXT_NOT_FOUND")


def test_language_mismatch_and_unknown_context(base: str) -> None:
    context_id = create(base, "bash")
    response = httpx.post(f"{base}/code", json={
        "code": "1", "context": {"id": context_id, "language": "python"}}, timeout=30)
    assert "bash" in expect_error(response, 400, "INVALID_REQUEST_BODY")
    response = httpx.post(f"{base}/code", json={
        "code": "1", "context": {"id": "ffff", "language": "python"}}, timeout=30)
    expect_error(response, 404, "CONTEXT_NOT_FOUND")


def test_missing_toolchain_is_400_at_once(server: ServerProcess) -> None:
    sandbox_id = new_sandbox(server, env={"PATH": "/opensandbox-empty"},
                              entrypoint=["/usr/bin/tail", "-f", "/dev/null"])
    base = execd_url(server, sandbox_id)
    try:
        for language, tool in (("python", "python3"), ("bash", "bash"), ("javascript", "node"),
                               ("typescript", "node"), ("go", "go"), ("java", "jshell")):
            response = httpx.post(f"{base}/code/context", json={"language": language},
                                  timeout=30)
            assert f"`{tool}`" in expect_error(response, 400, "LANGUAGE_UNAVAILABLE")
        response = httpx.post(f"{base}/code", json={"code": "1",
                                                    "context": {"language": "python"}},
                              timeout=30)
        assert "python3" in expect_error(response, 400, "LANGUAGE_UNAVAILABLE")
        assert httpx.get(f"{base}/code/contexts", timeout=30).json() == []
    finally:
        httpx.delete(f"{server.url}/v1/sandboxes/{sandbox_id}", timeout=60)


# --- bash --------------------------------------------------------------------------------


def test_bash_context(base: str) -> None:
    context_id = create(base, "bash")
    events = run(base, "greeting=hello\ncd /tmp\necho \"$greeting\"\necho oops >&2",
                 context_id, "bash")
    # stdout and stderr are two pipes (two streams of the exec on docker): the order
    # between them is not kept, upstream neither.
    assert [e["type"] for e in events[:1] + events[-1:]] == ["init", "execution_complete"]
    assert sorted((e["type"], e["text"]) for e in events[1:-1]) == [("stderr", "oops\n"),
                                                                   ("stdout", "hello\n")]
    # backslashes reach bash intact: printf sees `\\n` and prints a backslash and an n
    events = run(base, "printf '%s in %s\\\\n' \"$greeting\" \"$(pwd)\"\nfalse", context_id,
                 "bash")
    assert stdout(events) == "hello in /tmp\\n"
    assert error_of(events) == {"ename": "CommandExecError", "evalue": "1",
                                "traceback": ["exit status 1"]}
    assert events[-1]["type"] == "execution_complete"
    # declare inside a cell stays global; functions persist
    run(base, "declare -A colors=([sky]=blue)\nshout() { echo \"${1^^}\"; }", context_id,
        "bash")
    assert stdout(run(base, 'shout "${colors[sky]}"', context_id, "bash")) == "BLUE\n"


def test_bash_interrupt_keeps_the_shell(base: str) -> None:
    context_id = create(base, "bash")
    run(base, "kept=yes", context_id, "bash")
    background = Background(base, {
        "code": "loop() { while :; do sleep 1; done; }\nloop\necho not-reached",
        "context": {"id": context_id, "language": "bash"}})
    assert httpx.delete(f"{base}/code", params={"id": context_id}, timeout=30
                        ).status_code == 200
    events = background.join()
    assert "not-reached" not in stdout(events)
    assert error_of(events)["ename"] == "KeyboardInterrupt"  # type: ignore[index]
    assert stdout(run(base, 'echo "kept=$kept"', context_id, "bash")) == "kept=yes\n"


# --- javascript ----------------------------------------------------------------------------


IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@contextlib.contextmanager
def node_sandbox(server: ServerProcess, *volumes: dict[str, Any],
                 **env: str) -> Iterator[str]:
    """The execd base URL of a sandbox lent this host's `node` (read-only, last on its
    PATH: the docker test image has no Node.js, a fake sandbox finds the host's first
    anyway), with `volumes` and `env` too; deleted afterwards. Skips when the host has no
    node, or one that cannot run in the image (it needs libraries the image lacks)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node on this host to lend the sandbox")
    lent = {"name": "host-node", "host": {"path": str(Path(node).resolve().parent)},
            "mountPath": "/opt/host-node", "readOnly": True}
    sandbox_id = new_sandbox(server, volumes=[lent, *volumes],
                              env={"PATH": IMAGE_PATH + ":/opt/host-node", **env})
    try:
        base = execd_url(server, sandbox_id)
        probe = [e for e in stream(base, {"code": "node -e 0"}) if e["type"] == "error"]
        if probe:
            pytest.skip(f"this host's node does not run in {server.image}: {probe}")
        yield base
    finally:
        httpx.delete(f"{server.url}/v1/sandboxes/{sandbox_id}", timeout=60)


@pytest.fixture
def node_base(server: ServerProcess) -> Iterator[str]:
    """Like `base`, in a sandbox that has node."""
    with node_sandbox(server) as base:
        yield base


def test_javascript_context(node_base: str) -> None:
    base = node_base
    context_id = create(base, "javascript")
    events = run(base, "let n = 40; console.log('hi'); n + 2", context_id, "javascript")
    assert stdout(events) == "hi\n"
    assert results(events) == [{"text": "42"}]
    events = run(base, "n.missing.field", context_id, "javascript")
    assert error_of(events)["ename"] == "TypeError"  # type: ignore[index]
    background = Background(base, {"code": "while (true) {}",
                                   "context": {"id": context_id, "language": "javascript"}})
    assert httpx.delete(f"{base}/code", params={"id": context_id}, timeout=30
                        ).status_code == 200
    assert error_of(background.join())["ename"] == "KeyboardInterrupt"  # type: ignore[index]
    assert results(run(base, "n", context_id, "javascript")) == [{"text": "40"}]


def test_typescript_needs_the_typescript_package(docker_server: ServerProcess) -> None:
    """On Docker, in an image with node but no typescript (fake sandboxes see the host's
    global one: tests/setup.sh installs it)."""
    with node_sandbox(docker_server, NODE_PATH="/opensandbox-none") as base:
        response = httpx.post(f"{base}/code/context", json={"language": "typescript"},
                              timeout=60)
        message = expect_error(response, 400, "LANGUAGE_UNAVAILABLE")
        assert "typescript" in message and "npm" in message and "`node`" not in message


# --- lifecycle -----------------------------------------------------------------------------


def processes_mentioning(marker: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(cmdline.replace(b"\0", b" ")[:200].decode(errors="replace"))
    return found


def test_deleting_the_sandbox_stops_its_interpreters(server: ServerProcess) -> None:
    sandbox_id = new_sandbox(server)
    base = execd_url(server, sandbox_id)
    marker = f"/tmp/leak-{uuid.uuid4().hex}"
    for language in ("python", "bash"):
        create(base, language, cwd=f"{marker}-{language}")
    Background(base, {"code": "import time\ntime.sleep(300)",
                      "context": {"language": "python"}})
    assert len(processes_mentioning(marker)) >= 2
    assert httpx.delete(f"{server.url}/v1/sandboxes/{sandbox_id}",
                        timeout=60).status_code == 204
    deadline = time.monotonic() + 10
    while processes_mentioning(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_mentioning(marker) == []


@pytest.mark.skipif(not (PYENV_SITE / "IPython").is_dir(),
                    reason="no IPython on this host to lend to the sandbox")
def test_ipython_is_used_when_importable(server: ServerProcess) -> None:
    volume = {"name": "ipython", "host": {"path": str(PYENV_SITE)},
              "mountPath": "/opt/ipython", "readOnly": True}
    sandbox_id = new_sandbox(server, volumes=[volume],
                              env={"PYTHONPATH": "/opt/ipython"})
    base = execd_url(server, sandbox_id)
    try:
        context_id = create(base)
        events = run(base, "import IPython\nx = 6\nx * 7", context_id)
        assert results(events) == [{"text": "42"}]
        assert [e["execution_count"] for e in events if e["type"] == "execution_count"] == [1]
        events = run(base, "%time y = x", context_id)  # a magic: only IPython has those
        assert error_of(events) is None, events
        events = run(base, "from IPython.display import HTML, display\n"
                           "display(HTML('<i>hi</i>'))\n1/0", context_id)
        shown = results(events)
        assert shown and shown[0]["text/html"] == "<i>hi</i>"
        error = error_of(events)
        assert error is not None and error["ename"] == "ZeroDivisionError"
        assert any("1/0" in line for line in error["traceback"])
        background = Background(base, {"code": "import time\ntime.sleep(300)",
                                       "context": {"id": context_id, "language": "python"}})
        assert httpx.delete(f"{base}/code", params={"id": context_id}, timeout=30
                            ).status_code == 200
        assert error_of(background.join())["ename"] == "KeyboardInterrupt"  # type: ignore
        assert results(run(base, "y", context_id)) == [{"text": "6"}]
    finally:
        httpx.delete(f"{server.url}/v1/sandboxes/{sandbox_id}", timeout=60)
