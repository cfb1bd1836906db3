"""execd commands over raw HTTP: framing, pings, output, timeouts, interrupt, status, logs.

Every request goes through the gateway to the embedded execd of a real sandbox, so the byte
framing checked here is what an SDK receives. Every test runs on both runtimes (`[fake]`:
a runc container, `[docker]`: a container of the Debian test image), and checks what happened
to processes from inside the sandbox, where both runtimes look the same.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections import deque
from typing import Any

import httpx
import pytest

from tests.helpers.frames import HEX32, split_frames
from tests.helpers.servers import (
    ServerProcess,
    execd_url,
    fake_only,
    host_processes_mentioning,
    new_sandbox,
    no_leftover_processes,
    wait_for,
)


@pytest.fixture(scope="session")
def server(execd_server: ServerProcess) -> ServerProcess:
    """Every test of this module runs on both runtimes."""
    return execd_server


# --- helpers ---------------------------------------------------------------------------


def run(base: str, body: dict[str, Any], *, timeout: float = 60) -> tuple[httpx.Response,
                                                                         list[dict[str, Any]]]:
    """POST /command and read the whole stream."""
    with httpx.Client(timeout=timeout) as client, \
            client.stream("POST", f"{base}/command", json=body) as response:
        raw = b"".join(response.iter_raw())
    assert response.status_code == 200, raw
    return response, split_frames(raw)


def without_pings(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] != "ping"]


def texts(events: list[dict[str, Any]], kind: str = "stdout") -> list[str]:
    return [e["text"] for e in events if e["type"] == kind]


class EventReader:
    """A stream read event by event, for tests that act while a command runs."""

    def __init__(self, base: str, body: dict[str, Any]):
        self.client = httpx.Client(timeout=60)
        self.context = self.client.stream("POST", f"{base}/command", json=body)
        self.response = self.context.__enter__()
        assert self.response.status_code == 200
        self.chunks = self.response.iter_raw()
        self.buffer = b""
        self.ready: deque[bytes] = deque()

    def next(self) -> dict[str, Any] | None:
        while not self.ready:
            chunk = next(self.chunks, None)
            if chunk is None:
                return None
            *frames, self.buffer = (self.buffer + chunk).split(b"\n\n")
            self.ready.extend(frames)
        return dict(json.loads(self.ready.popleft()))

    def until(self, kind: str) -> dict[str, Any]:
        while True:
            event = self.next()
            assert event is not None, f"stream ended before a {kind!r} event"
            if event["type"] == kind:
                return event

    def rest(self) -> list[dict[str, Any]]:
        events = []
        while (event := self.next()) is not None:
            events.append(event)
        return events

    def last(self) -> dict[str, Any]:
        """Read to the end without parsing every event; return the last one."""
        tail = self.buffer
        for chunk in self.chunks:
            tail = (tail + chunk)[-4096:]
        frames = [f for f in tail.split(b"\n\n") if f] or list(self.ready)
        return dict(json.loads(frames[-1]))

    def close(self) -> None:
        self.context.__exit__(None, None, None)
        self.client.close()


def status(base: str, command_id: str) -> dict[str, Any]:
    response = httpx.get(f"{base}/command/status/{command_id}", timeout=30)
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_finished(base: str, command_id: str, *, limit: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        current = status(base, command_id)
        if not current["running"]:
            return current
        time.sleep(0.05)
    raise AssertionError(f"command {command_id} still running after {limit} s")


def start_background(base: str, command: str, **extra: Any) -> str:
    _, events = run(base, {"command": command, "background": True, **extra})
    assert [e["type"] for e in events] == ["init", "ping", "execution_complete"], events
    return str(events[0]["text"])


def read_logs(base: str, command_id: str, cursor: int | None = None) -> httpx.Response:
    params = {} if cursor is None else {"cursor": cursor}
    response = httpx.get(f"{base}/command/{command_id}/logs", params=params, timeout=30)
    assert response.status_code == 200, response.text
    return response


def output_of(base: str, command: str) -> list[str]:
    _, events = run(base, {"command": command})
    assert events[-1]["type"] == "execution_complete", events
    return texts(events)


# `alive <pid>`: whether the sandbox sees a live (not zombie) process of that pid.
ALIVE = ("alive() { s=$(sed 's/.*) //' /proc/$1/stat 2>/dev/null | cut -c1); "
         '[ -n "$s" ] && [ "$s" != Z ]; }; ')


def process_alive(base: str, pid: int) -> bool:
    """Whether `pid` is a live process, as the sandbox itself sees it."""
    return output_of(base, ALIVE + f"alive {pid} && echo alive || echo gone") == ["alive"]


def wait_gone(base: str, pid: int) -> bool:
    """Whether `pid` dies (within 10 s, polled inside the sandbox)."""
    lines = output_of(base, ALIVE + f"for i in $(seq 1 200); do alive {pid} || "
                                    "{ echo gone; exit 0; }; sleep 0.05; done; echo alive")
    return lines == ["gone"]


def wait_state(server: ServerProcess, sandbox_id: str, state: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        current = httpx.get(f"{server.url}/v1/sandboxes/{sandbox_id}").json()["status"]
        if current["state"] == state:
            return
        time.sleep(0.05)
    raise AssertionError(f"sandbox {sandbox_id} never became {state}")


@pytest.fixture
def base(server: ServerProcess, sandbox_id: str) -> str:
    return execd_url(server, sandbox_id)


# --- the stream ----------------------------------------------------------------------


def test_stream_framing_is_byte_exact(base: str) -> None:
    response, events = run(base, {"command": "echo hello; echo oops >&2; exit 3"})
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert "content-length" not in response.headers
    assert [e["type"] for e in events[:2]] == ["init", "ping"]
    assert HEX32.match(events[0]["text"])
    assert events[1] == {"type": "ping", "text": "pong", "timestamp": events[1]["timestamp"]}
    body = events[2:]
    assert sorted((e["type"], e["text"]) for e in body[:-1]) == [("stderr", "oops"),
                                                                   ("stdout", "hello")]
    assert body[-1] == {"type": "error", "timestamp": body[-1]["timestamp"],
                        "error": {"ename": "CommandExecError", "evalue": "3",
                                  "traceback": ["exit status 3"]}}
    current = status(base, events[0]["text"])
    assert current["exit_code"] == 3 and current["error"] == "exit status 3"


def test_success_ends_with_execution_complete(base: str) -> None:
    _, events = run(base, {"command": "echo hi"})
    assert [e["type"] for e in without_pings(events)] == ["init", "stdout",
                                                         "execution_complete"]
    done = events[-1]
    assert set(done) <= {"type", "execution_time", "timestamp"}
    current = status(base, events[0]["text"])
    assert current["running"] is False and current["exit_code"] == 0
    assert "error" not in current
    assert list(current) == ["id", "content", "running", "exit_code", "started_at",
                             "finished_at"]
    assert current["content"] == "echo hi"
    for key in ("started_at", "finished_at"):
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$", current[key])


def test_lines_split_on_cr_and_lf_and_partial_line_is_flushed(base: str) -> None:
    command = (r"""printf 'a\r\nb\rc\n\n\nd "q" \\ \t tab\n'; """
               r"""printf 'h\303\251llo\n'; printf 'tail'""")
    assert output_of(base, command) == ["a", "b", "c", 'd "q" \\ \t tab', "héllo", "tail"]


def test_invalid_utf8_is_replaced_not_dropped(base: str) -> None:
    assert output_of(base, r"printf 'x\377y\n'") == ["x\ufffdy"]


def test_pings_keep_coming_while_a_command_runs(base: str) -> None:
    _, events = run(base, {"command": "sleep 4; echo late"})
    pings = [e for e in events if e["type"] == "ping"]
    # One at once after init, one every 3 s after that: a 4 s command sees at least two.
    assert len(pings) >= 2
    assert events[1]["type"] == "ping"
    assert texts(events) == ["late"] and events[-1]["type"] == "execution_complete"


def test_missing_cwd_is_a_start_error_naming_it(base: str) -> None:
    _, events = run(base, {"command": "pwd", "cwd": "/no/such/dir"})
    kinds = [e["type"] for e in without_pings(events)]
    assert kinds == ["init", "error"]
    error = events[-1]["error"]
    assert error["ename"] == "CommandExecError" and error["traceback"] == []
    assert "/no/such/dir" in error["evalue"]
    # As upstream: a foreground start failure is not registered.
    missing = httpx.get(f"{base}/command/status/{events[0]['text']}")
    assert missing.status_code == 404


def test_background_start_failure_is_registered_with_255(base: str) -> None:
    _, events = run(base, {"command": "pwd", "cwd": "/no/such/dir", "background": True})
    assert [e["type"] for e in without_pings(events)] == ["init", "error"]
    current = status(base, events[0]["text"])
    assert current["running"] is False and current["exit_code"] == 255
    assert "/no/such/dir" in current["error"]


def test_cwd_envs_and_sandbox_env(server: ServerProcess) -> None:
    sandbox = new_sandbox(server, env={"FROM_SANDBOX": "sandbox-value"})
    try:
        base = execd_url(server, sandbox)
        lines = output_of(base, "mkdir -p /workspace/sub && echo made")
        assert lines == ["made"]
        _, events = run(base, {"command": 'pwd; echo "$FROM_SANDBOX|$EXTRA|$HOME"',
                               "cwd": "/workspace/sub", "envs": {"EXTRA": "x y"}})
        assert texts(events) == ["/workspace/sub", "sandbox-value|x y|/root"]
    finally:
        httpx.delete(f"{server.url}/v1/sandboxes/{sandbox}")


def test_uid_and_gid(base: str) -> None:
    _, events = run(base, {"command": "id -u; id -g", "uid": 1234, "gid": 4321})
    assert texts(events) == ["1234", "4321"]
    _, events = run(base, {"command": "id -u; id -g", "uid": 1234})
    assert texts(events) == ["1234", "1234"]


def test_falls_back_to_sh_without_bash(base: str) -> None:
    assert output_of(base, "mkdir -p /tmp/onlysh && ln -sf /bin/sh /tmp/onlysh/sh && "
                           "echo ok") == ["ok"]
    _, events = run(base, {"command": 'echo "$0"', "envs": {"PATH": "/tmp/onlysh"}})
    assert texts(events) == ["sh"]
    _, events = run(base, {"command": "echo x", "envs": {"PATH": "/nowhere"}})
    error = without_pings(events)[-1]["error"]
    assert "executable file not found" in error["evalue"] and error["traceback"] == []


# --- request validation and unknown ids --------------------------------------------------


@pytest.mark.parametrize("body", [
    b"", b"not json", b"[]", b"null", b'{"cwd":"/"}', b'{"command":""}', b'{"command":5}',
    b'{"command":"true","timeout":"5"}', b'{"command":"true","timeout":-1}',
    b'{"command":"true","background":"yes"}', b'{"command":"true","envs":["A=1"]}',
    b'{"command":"true","gid":5}', b'{"command":"true","uid":-1}',
])
def test_bad_bodies_are_400_invalid_request_body(base: str, body: bytes) -> None:
    response = httpx.post(f"{base}/command", content=body,
                          headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "INVALID_REQUEST_BODY"
    assert response.json()["message"]


def test_unknown_keys_are_ignored(base: str) -> None:
    _, events = run(base, {"command": "echo ok", "whatever": {"x": 1}})
    assert texts(events) == ["ok"]


def test_unknown_ids_are_404(base: str) -> None:
    unknown = "0" * 32
    for response in (httpx.get(f"{base}/command/status/{unknown}"),
                     httpx.get(f"{base}/command/{unknown}/logs"),
                     httpx.delete(f"{base}/command", params={"id": unknown})):
        assert response.status_code == 404, response.text
        body = response.json()
        assert set(body) == {"code", "message"} and unknown in body["message"]


def test_interrupt_needs_an_id(base: str) -> None:
    response = httpx.delete(f"{base}/command")
    assert response.status_code == 400
    assert response.json() == {"code": "MISSING_QUERY",
                               "message": "missing query parameter 'id'"}


def test_bad_cursor_is_400(base: str) -> None:
    command_id = start_background(base, "echo x")
    for cursor in ("-1", "abc"):
        response = httpx.get(f"{base}/command/{command_id}/logs", params={"cursor": cursor})
        assert response.status_code == 400
        assert response.json()["code"] == "INVALID_REQUEST_BODY"


# --- timeouts, interrupt ------------------------------------------------------------------


def test_timeout_kills_the_whole_process_group(base: str) -> None:
    _, events = run(base, {"command": "sleep 60 & echo $! > /tmp/child.pid; sleep 100; wait",
                           "timeout": 800})
    assert events[-1]["error"] == {"ename": "CommandExecError", "evalue": "-1",
                                   "traceback": ["signal: killed"]}
    current = status(base, events[0]["text"])
    assert current["exit_code"] == -1 and current["error"] == "signal: killed"
    child = int(output_of(base, "cat /tmp/child.pid")[0])
    assert wait_gone(base, child), "the command's child survived its timeout"


def test_interrupt_terminates_a_foreground_command(base: str) -> None:
    reader = EventReader(base, {"command": "echo started; sleep 60"})
    try:
        command_id = reader.until("init")["text"]
        reader.until("stdout")
        response = httpx.delete(f"{base}/command", params={"id": command_id}, timeout=30)
        assert response.status_code == 200
        assert response.content == b"" and response.headers["content-length"] == "0"
        last = [e for e in reader.rest() if e["type"] != "ping"]
        assert last == [{"type": "error", "timestamp": last[0]["timestamp"],
                         "error": {"ename": "CommandExecError", "evalue": "-1",
                                   "traceback": ["signal: terminated"]}}]
    finally:
        reader.close()
    current = status(base, command_id)
    assert current["exit_code"] == -1 and current["error"] == "signal: terminated"
    again = httpx.delete(f"{base}/command", params={"id": command_id})
    assert again.status_code == 200 and again.content == b""


def test_a_command_that_handles_the_interrupt_finishes_its_way(base: str) -> None:
    reader = EventReader(base, {"command": "trap 'echo cleaning up; exit 5' TERM; "
                                           "echo started; sleep 60 & wait"})
    try:
        command_id = reader.until("init")["text"]
        reader.until("stdout")
        assert httpx.delete(f"{base}/command", params={"id": command_id},
                            timeout=30).status_code == 200
        rest = [e for e in reader.rest() if e["type"] != "ping"]
    finally:
        reader.close()
    # What it writes while it handles the signal still arrives, and its own exit status
    # counts (upstream signals the shell and reports how it ended).
    assert texts(rest) == ["cleaning up"]
    assert rest[-1]["error"] == {"ename": "CommandExecError", "evalue": "5",
                                 "traceback": ["exit status 5"]}
    assert status(base, command_id)["exit_code"] == 5


def test_client_disconnect_does_not_stop_the_command(base: str) -> None:
    reader = EventReader(base, {"command": "for i in $(seq 1 20); do echo n$i; sleep 0.05; "
                                           "done"})
    command_id = reader.until("init")["text"]
    reader.close()
    current = wait_finished(base, command_id)
    assert current["exit_code"] == 0
    # Foreground commands keep their output in the log too (an extension).
    assert read_logs(base, command_id).text == "".join(f"n{i}\n" for i in range(1, 21))


def test_slow_reader_pushes_back_on_the_command(base: str) -> None:
    reader = EventReader(base, {"command": "head -c 64M /dev/zero | base64; "
                                           "touch /tmp/bp-done"})
    try:
        reader.until("stdout")
        time.sleep(1.5)  # not reading: the pipe and the socket fill up, the writer waits
        assert output_of(base, "test -e /tmp/bp-done && echo done || echo blocked") == [
            "blocked"]
        assert reader.last()["type"] == "execution_complete"
    finally:
        reader.close()
    assert output_of(base, "test -e /tmp/bp-done && echo done || echo blocked") == ["done"]


# --- background commands and logs --------------------------------------------------------


def test_background_interleaves_stdout_and_stderr_in_one_log(base: str) -> None:
    command_id = start_background(base, "echo a; echo b >&2; echo c; printf partial >&2; "
                                        "exit 4")
    current = wait_finished(base, command_id)
    assert current["exit_code"] == 4 and current["error"] == "exit status 4"
    response = read_logs(base, command_id)
    assert response.text == "a\nb\nc\npartial"
    assert response.headers["execd-commands-tail-cursor"] == str(len("a\nb\nc\npartial"))
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


def test_200_lines_polled_with_the_cursor_lose_and_repeat_nothing(base: str) -> None:
    expected = "".join(f"line {i:03d}\n" for i in range(1, 201))
    command_id = start_background(
        base, "for i in $(seq 1 200); do printf 'line %03d\\n' $i; "
              "[ $((i % 20)) -eq 0 ] && sleep 0.1; done; true")
    seen, cursor, polls = "", 0, 0
    while True:
        finished = not status(base, command_id)["running"]
        response = read_logs(base, command_id, cursor)
        seen += response.text
        next_cursor = int(response.headers["execd-commands-tail-cursor"])
        assert next_cursor == cursor + len(response.content)
        cursor, polls = next_cursor, polls + 1
        if finished and polls >= 5:
            break
        time.sleep(0.2)
    assert seen == expected
    assert cursor == len(expected.encode())


def test_an_empty_read_is_chunked_not_content_length_zero(base: str) -> None:
    command_id = start_background(base, "printf abc")
    wait_finished(base, command_id)
    for cursor, expected_next in ((3, "3"), (10, "10")):
        response = read_logs(base, command_id, cursor)
        assert response.content == b""
        assert response.headers["execd-commands-tail-cursor"] == expected_next
        assert "content-length" not in response.headers
        assert response.headers["transfer-encoding"] == "chunked"


def test_background_leaves_what_it_started_on_purpose_running(
        server: ServerProcess, http: httpx.Client) -> None:
    sandbox = new_sandbox(server)
    base = execd_url(server, sandbox)
    marker = f"osb-kept-{uuid.uuid4().hex}"
    command_id = start_background(base, f"sh -c 'sleep 60; :' {marker} & "
                                        "echo $! > /tmp/kept.pid")
    assert wait_finished(base, command_id)["exit_code"] == 0
    kept = int(output_of(base, "cat /tmp/kept.pid")[0])
    assert process_alive(base, kept)
    # Deleting the sandbox kills everything, commands' children included.
    long_running = start_background(base, f"echo $$ > /tmp/main.pid; sleep 60; : {marker}")
    assert long_running
    output_of(base, "while [ ! -s /tmp/main.pid ]; do sleep 0.02; done")
    assert len(host_processes_mentioning(marker)) >= 2
    assert http.delete(f"/v1/sandboxes/{sandbox}").status_code == 204
    wait_for(lambda: not host_processes_mentioning(marker), "the sandbox's processes to end")


def test_deleting_a_sandbox_ends_its_open_streams(server: ServerProcess,
                                                  http: httpx.Client) -> None:
    sandbox = new_sandbox(server)
    reader = EventReader(execd_url(server, sandbox), {"command": "echo up; sleep 60"})
    try:
        reader.until("stdout")
        assert http.delete(f"/v1/sandboxes/{sandbox}").status_code == 204
        last = [e for e in reader.rest() if e["type"] != "ping"]
        assert [e["type"] for e in last] == ["error"]
        assert last[0]["error"]["traceback"] == ["signal: killed"]
    finally:
        reader.close()


def test_pause_freezes_commands_and_timeouts_still_fire(server: ServerProcess,
                                                         http: httpx.Client) -> None:
    sandbox = new_sandbox(server)
    base = execd_url(server, sandbox)

    def ticks() -> list[float]:
        return [float(t) for t in output_of(base, "cat /tmp/ticks")]

    try:
        # A clock inside the sandbox: one line of wall time every 50 ms (the sandbox and
        # the test share the host's clock).
        start_background(base, "while true; do date +%s.%N >> /tmp/ticks; sleep 0.05; done")
        wait_for(lambda: output_of(base, "test -s /tmp/ticks && echo yes"), "the first tick")
        reader = EventReader(base, {"command": "sleep 60", "timeout": 1500})
        try:
            command_id = reader.until("init")["text"]
            assert http.post(f"/v1/sandboxes/{sandbox}/pause").status_code == 202
            wait_state(server, sandbox, "Paused")
            frozen_from = time.time()
            # Decision: a paused sandbox's command timeouts keep counting and fire.
            last = [e for e in reader.rest() if e["type"] != "ping"]
            assert last[-1]["error"]["traceback"] == ["signal: killed"]
            frozen_until = time.time()
        finally:
            reader.close()
        assert http.post(f"/v1/sandboxes/{sandbox}/resume").status_code == 202
        wait_state(server, sandbox, "Running")
        # The clock went on after the resume, and stood still while the sandbox was paused.
        wait_for(lambda: max(ticks()) > frozen_until, "a tick after the resume")
        assert [t for t in ticks() if frozen_from < t < frozen_until] == []
        assert status(base, command_id)["error"] == "signal: killed"
    finally:
        http.delete(f"/v1/sandboxes/{sandbox}")


# --- bounded logs and retention -------------------------------------------------------------


def test_log_buffer_drops_old_bytes_and_says_so(server: ServerProcess,
                                               start_server: Any) -> None:
    small = start_server(like=server,
                         execd={"log_buffer_bytes": 4096, "max_finished_commands": 3})
    sandbox = new_sandbox(small)
    base = execd_url(small, sandbox)
    expected = "".join(f"{i}\n" for i in range(1, 20001)).encode()
    command_id = start_background(base, "seq 1 20000")
    wait_finished(base, command_id)
    response = read_logs(base, command_id, 0)
    assert response.headers["execd-commands-log-truncated"] == "true"
    assert 0 < len(response.content) <= 4096
    assert expected.endswith(response.content)
    start = int(response.headers["execd-commands-log-start"])
    assert start == len(expected) - len(response.content)
    assert int(response.headers["execd-commands-tail-cursor"]) == len(expected)
    inside = read_logs(base, command_id, len(expected) - 10)
    assert inside.content == expected[-10:]
    assert "execd-commands-log-truncated" not in inside.headers
    # Only the newest 3 finished commands are kept.
    newer = [start_background(base, f"echo {i}") for i in range(3)]
    for command_id_ in newer:
        wait_finished(base, command_id_)
    assert httpx.get(f"{base}/command/status/{command_id}").status_code == 404
    assert all(status(base, c)["exit_code"] == 0 for c in newer)


def test_finished_commands_are_forgotten_after_their_ttl(server: ServerProcess,
                                                        start_server: Any) -> None:
    short = start_server(like=server, execd={"finished_command_ttl_seconds": 1})
    base = execd_url(short, new_sandbox(short))
    command_id = start_background(base, "true")
    wait_finished(base, command_id)
    deadline = time.monotonic() + 10
    while httpx.get(f"{base}/command/status/{command_id}").status_code == 200:
        assert time.monotonic() < deadline, "never forgotten"
        time.sleep(0.2)
    assert httpx.get(f"{base}/command/{command_id}/logs").status_code == 404


# --- concurrency -------------------------------------------------------------------------


async def _run_async(client: httpx.AsyncClient, base: str, tag: str) -> list[dict[str, Any]]:
    async with client.stream("POST", f"{base}/command",
                             json={"command": f"echo start-{tag}; sleep 0.3; "
                                              f"echo end-{tag} >&2"}) as response:
        assert response.status_code == 200
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    return split_frames(raw)


def _check_concurrent(results: list[list[dict[str, Any]]], tags: list[str]) -> None:
    ids = set()
    for tag, events in zip(tags, results, strict=True):
        ids.add(events[0]["text"])
        assert texts(events) == [f"start-{tag}"]
        assert texts(events, "stderr") == [f"end-{tag}"]
        assert events[-1]["type"] == "execution_complete"
    assert len(ids) == len(tags)


def test_50_commands_at_once_on_one_sandbox(base: str) -> None:
    async def main() -> list[list[dict[str, Any]]]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            return await asyncio.gather(*(_run_async(client, base, str(i))
                                          for i in range(50)))

    _check_concurrent(asyncio.run(main()), [str(i) for i in range(50)])


def test_50_commands_at_once_across_10_sandboxes(server: ServerProcess,
                                                 http: httpx.Client) -> None:
    sandboxes = [new_sandbox(server) for _ in range(10)]
    try:
        targets = [(execd_url(server, s), f"{n}-{i}") for n, s in enumerate(sandboxes)
                   for i in range(5)]

        async def main() -> list[list[dict[str, Any]]]:
            limits = httpx.Limits(max_connections=100)
            async with httpx.AsyncClient(timeout=120, limits=limits) as client:
                return await asyncio.gather(*(_run_async(client, b, tag)
                                              for b, tag in targets))

        _check_concurrent(asyncio.run(main()), [tag for _, tag in targets])
    finally:
        for sandbox in sandboxes:
            http.delete(f"/v1/sandboxes/{sandbox}")


def test_stopping_the_server_leaves_no_process_behind(server: ServerProcess,
                                                     start_server: Any) -> None:
    fake_only(server, "docker sandboxes outlive the server on purpose (a restarted server "
                      "adopts them: test_docker.py::test_sandboxes_survive_a_server_restart)")
    own = start_server()
    base = execd_url(own, new_sandbox(own))
    marker = f"stop-{uuid.uuid4().hex[:12]}"
    start_background(base, f"sh -c 'sleep 100; : {marker}' & echo $! > /tmp/child.pid; "
                           f"echo $$ > /tmp/main.pid; sleep 100; : {marker}")
    pids = [int(p) for p in output_of(
        base, "while [ ! -s /tmp/main.pid ]; do sleep 0.02; done; cat /tmp/child.pid "
              "/tmp/main.pid")]
    assert len(pids) == 2 and all(process_alive(base, pid) for pid in pids)
    assert len(host_processes_mentioning(marker)) == 2
    own.stop()
    assert own.process.returncode is not None
    wait_for(lambda: not host_processes_mentioning(marker), "the sandbox's processes to end")
    assert no_leftover_processes(own.state_dir) == []
