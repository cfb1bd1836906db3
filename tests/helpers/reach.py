"""What a sandbox can reach: a small program run inside it that tries each target the way a
client would (resolve the name through the sandbox's own resolver, then connect, then
`GET /`) and says what happened, as one JSON object.

Each target's outcome is the body the test host answered with (its name), or one of:
`nxdomain` (the resolver said there is no such name), `refused` (the connection was
refused), `servfail`, `timeout`, or `error: …`. With `tcp_dns`, each target's name is asked over
TCP instead (a hand-made query to port 53 of the sandbox's first nameserver, or of
`resolver`), and the outcome is the answer's rcode name (`NOERROR`, `NXDOMAIN`).
"""

from __future__ import annotations

import json
import shlex
from typing import Any

import httpx

from tests.helpers.frames import split_frames
from tests.helpers.servers import ServerProcess, execd_url

PROBE = r'''
import json, socket, struct, sys
out = {}
def tcp_query(name, server):
    server = server or [l.split()[1] for l in open("/etc/resolv.conf")
                        if l.startswith("nameserver")][0]
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    query = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + question + b"\0\1\0\1"
    with socket.create_connection((server, 53), timeout=10) as s:
        s.sendall(struct.pack("!H", len(query)) + query)
        reply = s.recv(2 + 65535)
    return {0: "NOERROR", 2: "SERVFAIL", 3: "NXDOMAIN"}.get(reply[2 + 3] & 15, "other")
tcp = sys.argv[1].startswith("tcp")
for target in sys.argv[2:]:
    host, port = target.rsplit(":", 1)
    if tcp:
        out[target] = tcp_query(host, sys.argv[1][4:])
        continue
    try:
        address = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)[0][4]
    except socket.gaierror as e:
        out[target] = {socket.EAI_NONAME: "nxdomain", socket.EAI_AGAIN: "servfail"}.get(
            e.errno, "error: %s" % e)
        continue
    try:
        with socket.create_connection(address, timeout=10) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        out[target] = data.split(b"\r\n\r\n", 1)[1].decode()
    except ConnectionRefusedError:
        out[target] = "refused"
    except socket.timeout:
        out[target] = "timeout"
    except OSError as e:
        out[target] = "error: %s" % e
print(json.dumps(out))
'''


def reach(server: ServerProcess, sandbox_id: str, targets: list[str], *,
          tcp_dns: bool = False, resolver: str | None = None) -> dict[str, Any]:
    """{target: outcome} for each `host:port` target, tried from inside the sandbox."""
    mode = f"tcp:{resolver or ''}" if tcp_dns or resolver else "connect"
    command = " ".join(["python3", "-c", shlex.quote(PROBE), mode,
                        *map(shlex.quote, targets)])
    response = httpx.post(f"{execd_url(server, sandbox_id)}/command",
                          json={"command": command}, timeout=120)
    assert response.status_code == 200, response.text
    events = split_frames(response.content)
    lines = [event["text"] for event in events if event["type"] == "stdout"]
    assert lines, events
    return json.loads(lines[-1])  # type: ignore[no-any-return]
