"""A tiny authoritative DNS server for the tests' "internet", run inside its network
namespace: `python dns_server.py ADDRESS '{"name": "ip", "*.wild.test": "ip"}'`.

It answers A queries for the names it was given (`*.` entries match any name below),
NXDOMAIN for every other name, over UDP and TCP on port 53 of ADDRESS, with a TTL of 30 s,
and writes each name it was asked to stdout (so a test can tell a query reached it).
"""

from __future__ import annotations

import json
import socket
import socketserver
import struct
import sys
import threading

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

TTL = 30
PRINTING = threading.Lock()


def lookup(names: dict[str, str], name: str) -> str | None:
    if name in names:
        return names[name]
    for pattern, address in names.items():
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return address
    return None


def answer(names: dict[str, str], data: bytes) -> bytes:
    query = dns.message.from_wire(data)
    response = dns.message.make_response(query)
    question = query.question[0]
    name = question.name.to_text(omit_final_dot=True).lower()
    with PRINTING:
        print(name, flush=True)
    address = lookup(names, name)
    if address is None:
        response.set_rcode(dns.rcode.NXDOMAIN)
    elif question.rdtype == dns.rdatatype.A:
        response.answer.append(dns.rrset.from_text(question.name, TTL, "IN", "A", address))
    return response.to_wire()


def main() -> None:
    host, names = sys.argv[1], json.loads(sys.argv[2])

    class Udp(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            sock.sendto(answer(names, data), self.client_address)

    class Tcp(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while header := self.rfile.read(2):
                data = self.rfile.read(struct.unpack("!H", header)[0])
                reply = answer(names, data)
                self.wfile.write(struct.pack("!H", len(reply)) + reply)

    socketserver.ThreadingUDPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    udp = socketserver.ThreadingUDPServer((host, 53), Udp)
    tcp = socketserver.ThreadingTCPServer((host, 53), Tcp)
    threading.Thread(target=tcp.serve_forever, daemon=True).start()
    print("ready", flush=True)
    udp.serve_forever()


if __name__ == "__main__":
    socket.setdefaulttimeout(10)
    main()
