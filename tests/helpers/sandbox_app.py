"""A tiny application server that runs *inside* a sandbox, for the access-layer tests.

Standard library only: the sandbox runs it with the host's `/usr/bin/python3`, which has no
third-party packages. Usage: `python3 sandbox_app.py <port>`. Routes:

- `/echo[...]`, any method: JSON with what arrived (method, raw request target, headers in
  order, body size and SHA-256). `?hop=1` adds hop-by-hop headers to the response.
- `/fixed?size=N`: N bytes with `Content-Length`.
- `/chunked?n=N`: N chunks with `Transfer-Encoding: chunked`.
- `/gate?id=X`: sends `first` at once, then waits (at most 20 s) for `/release?id=X`, then
  sends `released` (or `timeout`) and ends. Proves a proxy relays before a stream ends.
- `/forever?id=X`: a chunk every 50 ms until the client goes away; `/open` lists the ids of
  those still streaming. Proves a proxy drops the upstream stream when its client leaves.
- `/ws` with `Upgrade: websocket`: echoes every message (text and binary), answers pings;
  with `?hello=1` it first sends the handshake's path and headers as JSON. An upgrade
  anywhere else is refused with 403.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
GATES: dict[str, threading.Event] = {}
OPEN_STREAMS: set[str] = set()
LOCK = threading.Lock()


def gate(name: str) -> threading.Event:
    with LOCK:
        return GATES.setdefault(name, threading.Event())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "SandboxApp/1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes

    def log_message(self, format: str, *args: object) -> None:
        pass

    # --- plumbing ---------------------------------------------------------------------

    def query(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_fixed(self, body: bytes, content_type: str = "application/json",
                   extra: Sequence[tuple[str, str]] = ()) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in extra:
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def start_chunked(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    # --- routes -----------------------------------------------------------------------

    def handle_any(self) -> None:
        route = urlsplit(self.path).path
        if self.headers.get("Upgrade", "").lower() == "websocket":
            if route == "/ws":
                self.websocket()
            else:
                body = b"no websocket here"
                self.send_response(403)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            return
        body = self.read_body()
        query = self.query()
        if route == "/fixed":
            self.send_fixed(b"x" * int(query.get("size", "10")), "application/octet-stream")
        elif route == "/chunked":
            self.start_chunked()
            for i in range(int(query.get("n", "3"))):
                self.chunk(f"chunk {i}\n".encode())
            self.end_chunked()
        elif route == "/gate":
            self.start_chunked()
            self.chunk(b"first\n")
            released = gate(query.get("id", "")).wait(20)
            self.chunk(b"released\n" if released else b"timeout\n")
            self.end_chunked()
        elif route == "/release":
            gate(query.get("id", "")).set()
            self.send_fixed(b"{}")
        elif route == "/forever":
            self.forever(query.get("id", ""))
        elif route == "/open":
            with LOCK:
                self.send_fixed(json.dumps(sorted(OPEN_STREAMS)).encode())
        else:
            extra: list[tuple[str, str]] = []
            if query.get("hop"):
                extra = [("Connection", "X-Resp-Hop"), ("X-Resp-Hop", "1"),
                         ("Keep-Alive", "timeout=5"), ("Proxy-Authenticate", "Basic"),
                         ("Trailer", "X-Checksum"), ("X-Resp-Kept", "yes")]
            echo = {"method": self.command, "path": self.path,
                    "headers": [[k, v] for k, v in self.headers.items()],
                    "body_bytes": len(body), "body_sha256": hashlib.sha256(body).hexdigest()}
            self.send_fixed(json.dumps(echo).encode(), extra=extra)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_any

    def forever(self, name: str) -> None:
        self.start_chunked()
        with LOCK:
            OPEN_STREAMS.add(name)
        try:
            while True:
                self.chunk(b"tick\n")
                time.sleep(0.05)
        except OSError:
            self.close_connection = True
        finally:
            with LOCK:
                OPEN_STREAMS.discard(name)

    # --- WebSocket (RFC 6455), just enough for an echo --------------------------------

    def websocket(self) -> None:
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        offered = self.headers.get("Sec-WebSocket-Protocol")
        if offered:
            self.send_header("Sec-WebSocket-Protocol", offered.split(",")[0].strip())
        self.end_headers()
        self.close_connection = True
        if self.query().get("hello"):
            hello = {"path": self.path, "headers": [[k, v] for k, v in self.headers.items()]}
            self.frame(1, json.dumps(hello).encode())
        message = bytearray()
        kind = 1
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            fin, opcode = head[0] & 0x80, head[0] & 0x0F
            length = head[1] & 0x7F
            if length == 126:
                length = struct.unpack("!H", self.rfile.read(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if opcode == 8:
                self.frame(8, payload[:2])
                return
            if opcode == 9:
                self.frame(10, payload)
                continue
            if opcode in (1, 2):
                kind, message = opcode, bytearray()
            if opcode in (0, 1, 2):
                message += payload
                if fin:
                    self.frame(kind, bytes(message))

    def frame(self, opcode: int, payload: bytes) -> None:
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", 0x80 | opcode, size)
        elif size < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 126, size)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 127, size)
        self.wfile.write(header + payload)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # many connections may arrive at once


def main() -> None:
    Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()


if __name__ == "__main__":
    main()
