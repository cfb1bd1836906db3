"""The resolvers the DNS forwarder asks: configured (`[egress] dns_upstream`), or the host's."""

from __future__ import annotations

import contextlib
import ipaddress

Upstream = tuple[str, int]


def parse_upstreams(text: str) -> list[Upstream]:
    """`"10.0.0.2, 10.0.0.3:5353, [fd00::1]:53"` as (host, port) pairs. Raises ValueError."""
    found = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, port = item, 53
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            if rest:
                port = int(rest.removeprefix(":"))
        elif item.count(":") == 1:
            host, _, number = item.partition(":")
            port = int(number)
        ipaddress.ip_address(host)  # a resolver is an address: no name to resolve first
        if not 0 < port < 65536:
            raise ValueError(f"port {port} of {item!r} is not a port")
        found.append((host, port))
    return found


def system_upstreams(path: str = "/etc/resolv.conf") -> list[Upstream]:
    """The host's resolvers, as its own programs would use them (at most three)."""
    found: list[Upstream] = []
    with contextlib.suppress(OSError), open(path) as handle:
        for line in handle:
            words = line.split()
            if len(words) >= 2 and words[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    found += parse_upstreams(words[1].partition("%")[0])
    return found[:3] or [("127.0.0.1", 53)]
