"""execd's PTY on both runtimes: a real terminal behind upstream's WebSocket protocol.

No SDK has a PTY client, so the tests speak the protocol with `websockets`' client
(`tests/helpers/pty_client.py`): input and output frames, resize, signals, exit status,
the replay on reconnect, one client at a time with takeover, pipe mode, and what delete and
the sandbox's end do to the process.
"""

from __future__ import annotations

import base64
import time

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from tests.helpers.pty_client import PtyClient
from tests.helpers.routes import ROUTES, route, ws_url
from tests.helpers.servers import (
    ServerProcess,
    create_body,
    execd_url,
    fake_only,
    no_leftover_processes,
    wait_for,
)


@pytest.fixture(scope="session")
def server(execd_server: ServerProcess) -> ServerProcess:
    """Every test of this module runs on both runtimes."""
    return execd_server


@pytest.fixture(scope="module")
def box(module_execd: str) -> str:
    """The module's sandbox (its execd base URL)."""
    return module_execd


def new_pty(base: str, **body: str) -> str:
    response = httpx.post(base + "/pty", json=body or None, timeout=30)
    assert response.status_code == 201, response.text
    return str(response.json()["session_id"])


def socket_url(base: str, pty_id: str) -> str:
    return ws_url(base) + f"/pty/{pty_id}/ws"


def shell(base: str, **body: str) -> tuple[str, PtyClient]:
    pty_id = new_pty(base, **body)
    client = PtyClient(socket_url(base, pty_id))
    assert client.wait_event("connected") == {"type": "connected", "session_id": pty_id,
                                              "mode": "pty"}
    return pty_id, client


@pytest.mark.parametrize("kind", ROUTES)
def test_echo_and_exit_on_every_route(server: ServerProcess, box: str, kind: str) -> None:
    base, headers = route(server, box.split("/")[-2], 44772, kind)
    created = httpx.post(base + "/pty", headers=headers)  # the body is optional
    assert created.status_code == 201
    pty_id = created.json()["session_id"]
    status = httpx.get(f"{base}/pty/{pty_id}", headers=headers)
    assert status.json() == {"session_id": pty_id, "running": False, "output_offset": 0}
    client = PtyClient(socket_url(base, pty_id), additional_headers=headers)
    assert client.wait_event("connected")["mode"] == "pty"
    client.type(b"echo hel''lo\r")
    client.wait_for(b"hello\r\n")  # the terminal's own line ending: a real tty
    assert httpx.get(f"{base}/pty/{pty_id}", headers=headers).json()["running"] is True
    client.type(b"exit 5\r")
    assert client.wait_event("exit") == {"type": "exit", "exit_code": 5}
    assert client.wait_closed() == (1000, "process exited")
    after = httpx.get(f"{base}/pty/{pty_id}", headers=headers).json()
    assert after["running"] is False and after["output_offset"] > 0


def test_resize_shows_in_stty_size(box: str) -> None:
    _, client = shell(box)
    client.type(b"stty size\r")
    client.wait_for(b"24 80")  # upstream's initial size
    client.send({"type": "resize", "cols": 132, "rows": 43})
    client.send({"type": "resize", "cols": 0, "rows": 10})  # ignored
    client.type(b"stty size\r")
    client.wait_for(b"43 132")
    client.close()


def test_ctrl_c_interrupts_the_foreground_job(box: str) -> None:
    _, client = shell(box)
    client.type(b"sleep 351; echo sleep-ended-$?\r")
    time.sleep(0.5)
    client.type(b"\x03")
    client.wait_for(b"^C")
    client.type(b"echo still-$((40+2))\r")
    client.wait_for(b"still-42")  # the shell survived its job's interrupt
    client.type(b"exit\r")
    assert client.wait_event("exit")["exit_code"] == 0  # the last command's status


def test_a_command_and_its_signals(box: str) -> None:
    _, done = shell(box, command="echo from-command; exit 3")
    done.wait_for(b"from-command")
    assert done.wait_event("exit")["exit_code"] == 3
    _, sleeper = shell(box, command="sleep 352")
    time.sleep(0.3)
    sleeper.send({"type": "signal", "signal": "SIGTERM"})
    assert sleeper.wait_event("exit")["exit_code"] == -1  # killed by a signal
    assert sleeper.wait_closed()[0] == 1000


def test_reconnect_replays_and_one_client_at_a_time(box: str) -> None:
    pty_id, first = shell(box)
    first.type(b"echo marker-$((6*7))\r")
    first.wait_for(b"marker-42")
    with pytest.raises(InvalidStatus) as refused:
        PtyClient(socket_url(box, pty_id))
    assert refused.value.response.status_code == 409
    assert b"ALREADY_CONNECTED" in refused.value.response.body
    first.close()
    wait_for(lambda: httpx.get(f"{box}/pty/{pty_id}").json()["running"], "the shell to run on")
    offset = httpx.get(f"{box}/pty/{pty_id}").json()["output_offset"]
    second = PtyClient(socket_url(box, pty_id))
    second.wait_event("connected")
    assert second.replay is not None
    start, replayed = second.replay
    assert start == 0 and b"marker-42" in replayed and len(replayed) >= offset
    third = PtyClient(socket_url(box, pty_id), takeover=1, since=offset)
    assert second.wait_closed() == (4001, "TAKEN_OVER")
    third.wait_event("connected")
    assert third.replay is None or b"marker-42" not in third.replay[1]
    third.type(b"echo resumed\r")
    third.wait_for(b"resumed\r\n")  # the same shell, taken over
    third.type(b"exit 0\r")
    assert third.wait_event("exit")["exit_code"] == 0


def test_pipe_mode_keeps_the_streams_apart(box: str) -> None:
    pty_id = new_pty(box, command="echo out; echo err >&2; exit 2")
    client = PtyClient(socket_url(box, pty_id), pty=0)
    assert client.wait_event("connected")["mode"] == "pipe"
    assert client.wait_event("exit")["exit_code"] == 2
    assert bytes(client.output) == b"out\n" and bytes(client.errors) == b"err\n"


def test_control_frames(box: str) -> None:
    _, client = shell(box)
    client.send({"type": "ping"})
    assert client.wait_event("pong") == {"type": "pong"}
    client.send({"type": "teleport"})
    error = client.wait_event("error")
    assert error["code"] == "INVALID_FRAME" and "teleport" in error["error"]
    client.ws.send("not json at all")  # ignored
    client.ws.send(b"\x07junk")  # ignored: not a stdin frame
    client.send({"type": "stdin", "data": "echo via-text-frame\r"})
    client.wait_for(b"via-text-frame\r\n")
    client.close()


def test_delete_kills_the_process_and_detaches_the_client(box: str) -> None:
    pty_id, client = shell(box)
    client.type(b"sleep 353\r")
    time.sleep(0.3)
    assert httpx.delete(f"{box}/pty/{pty_id}").status_code == 200
    assert client.wait_event("exit")["exit_code"] == -1
    assert client.wait_closed()[0] == 1000
    for response in (httpx.get(f"{box}/pty/{pty_id}"), httpx.delete(f"{box}/pty/{pty_id}")):
        assert response.status_code == 404
        assert response.json()["code"] == "CONTEXT_NOT_FOUND"
    with pytest.raises(InvalidStatus) as refused:
        PtyClient(socket_url(box, pty_id))
    assert refused.value.response.status_code == 404


def test_a_full_screen_program(box: str) -> None:
    """curses draws on the terminal, follows its resizes and reads keys, as `vi` or `top`
    do."""
    # The first key read comes before "ready": ncurses starts watching for resizes there.
    program = ("import curses\n"
               "def main(screen):\n"
               "    screen.timeout(50)\n"
               "    ready = False\n"
               "    while True:\n"
               "        key = screen.getch()\n"
               "        if key == -1 and not ready:\n"
               "            screen.addstr(0, 0, 'ready')\n"
               "            ready = True\n"
               "        elif key == curses.KEY_RESIZE:\n"
               "            rows, cols = screen.getmaxyx()\n"
               "            screen.addstr(1, 0, f'size {rows}x{cols}')\n"
               "        elif key != -1:\n"
               "            return chr(key)\n"
               "        screen.refresh()\n"
               "print('got', curses.wrapper(main))\n")
    encoded = base64.b64encode(program.encode()).decode()
    pty_id = new_pty(box, command="python3 -c 'import base64; "
                                  f"exec(base64.b64decode(\"{encoded}\"))'")
    client = PtyClient(socket_url(box, pty_id))
    client.wait_for(b"ready")
    client.send({"type": "resize", "cols": 100, "rows": 30})
    client.wait_for(b"size 30x100")
    client.type(b"z")
    client.wait_for(b"got z")
    assert client.wait_event("exit")["exit_code"] == 0


def test_vi_and_top(server: ServerProcess, box: str) -> None:
    fake_only(server, "the Debian test image has neither vi nor top; fake sandboxes see the "
                      "host's")
    _, client = shell(box)
    # Each program flushes what was typed ahead when it gives the terminal back, so the
    # next step is on the same line.
    client.type(b"vi /tmp/from-vi.txt; cat /tmp/from-vi.txt\r")
    client.wait_for(b"[New]")
    client.type(b"iwritten in vi\x1b:wq\r")
    client.wait_for(b"written in vi\r\n")
    client.type(b"top; echo top-$((6*7))\r")
    client.wait_for(b"load average")
    client.type(b"q")
    client.wait_for(b"top-42")
    client.close()


def test_sandbox_delete_stops_its_terminals(server: ServerProcess) -> None:
    with server.client() as http:
        sandbox_id = http.post("/v1/sandboxes", json=create_body(server)).json()["id"]
        wait_for(lambda: http.get(f"/v1/sandboxes/{sandbox_id}").json()["status"]["state"]
                 == "Running", "the sandbox to run")
        base = execd_url(server, sandbox_id)
        _, client = shell(base)
        client.type(b"sleep 354\r")
        time.sleep(0.3)
        assert http.delete(f"/v1/sandboxes/{sandbox_id}").status_code == 204
        assert client.wait_event("exit")["exit_code"] == -1
        client.wait_closed()
    if server.runtime == "fake":
        wait_for(lambda: not [line for line in no_leftover_processes(server.state_dir)
                              if sandbox_id in line], "no process of the sandbox left")
