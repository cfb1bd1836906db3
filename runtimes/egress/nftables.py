"""The nftables rules that enforce an egress policy inside a sandbox's network namespace.

One table, `inet opensandbox` (upstream's name), replaced as a whole in one transaction at
every policy change:

- chain `dns` (nat, output): every outbound DNS query, UDP and TCP to port 53 wherever it
  is addressed, is redirected to the server's DNS forwarder, which listens on
  127.0.0.1:15353 inside the namespace. That is the whole of `dns` mode.
- chain `egress` (filter, output), in `dns+nft` mode: established traffic and loopback
  pass; DNS over TLS (port 853) is refused (it would go around the forwarder); then the
  policy's IP and CIDR rules in their order; then the addresses the forwarder learned from
  the answers to allowed names (sets `learned_v4`/`learned_v6`, each entry timing out with
  its DNS answer, clamped to 60-360 s as upstream clamps it); then `defaultAction`.

A refused connection is rejected, not dropped: TCP gets a reset (`connect` fails at once
with "connection refused"), anything else an ICMP "administratively prohibited". Upstream
drops, so a program there waits out its own timeout; the outcome is the same refusal, only
sooner.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from opensandbox_emulator.runtimes.egress.policy import ALLOW, EgressPolicy

TABLE = "opensandbox"
DNS_PORT = 15353  # where the forwarder listens, on the namespace's loopback
LEARNED_V4 = "learned_v4"
LEARNED_V6 = "learned_v6"
MIN_LEARNED_SECONDS = 60
MAX_LEARNED_SECONDS = 360
LEARNED_SLACK_SECONDS = 60  # added to a DNS TTL, so an entry outlives the client's cache

DNS = "dns"
DNS_NFT = "dns+nft"
MODES = (DNS, DNS_NFT)


def learned_seconds(ttl: int) -> int:
    """How long an address learned from an answer with `ttl` stays allowed."""
    return min(max(ttl + LEARNED_SLACK_SECONDS, MIN_LEARNED_SECONDS), MAX_LEARNED_SECONDS)


def ruleset(policy: EgressPolicy, mode: str,
            learned: Iterable[tuple[str, int]] = ()) -> str:
    """The script that replaces the table with one enforcing `policy` (nft -f syntax).
    `learned`: addresses (with seconds left) still allowed through a name."""
    lines = [
        # Made first, so that deleting it never fails on the first apply.
        f"table inet {TABLE} {{}}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        "  chain dns {",
        "    type nat hook output priority -100; policy accept;",
        f"    udp dport 53 redirect to :{DNS_PORT}",
        f"    tcp dport 53 redirect to :{DNS_PORT}",
        "  }",
    ]
    if mode == DNS_NFT:
        lines += [
            f"  set {LEARNED_V4} {{ type ipv4_addr; flags timeout; }}",
            f"  set {LEARNED_V6} {{ type ipv6_addr; flags timeout; }}",
            "  chain refuse {",
            "    meta l4proto tcp reject with tcp reset",
            "    reject with icmpx admin-prohibited",
            "  }",
            "  chain egress {",
            "    type filter hook output priority 0; policy accept;",
            "    ct state established,related accept",
            '    oifname "lo" accept',
            # A redirected DNS query may still name the interface it was routed to first.
            "    ip daddr 127.0.0.0/8 accept",
            "    ip6 daddr ::1 accept",
            "    tcp dport 853 goto refuse",
            "    udp dport 853 goto refuse",
        ]
        for rule, network in policy.address_rules():
            family = "ip" if network.version == 4 else "ip6"
            verdict = "accept" if rule.action == ALLOW else "goto refuse"
            lines.append(f"    {family} daddr {network} {verdict}")
        lines += [
            f"    ip daddr @{LEARNED_V4} accept",
            f"    ip6 daddr @{LEARNED_V6} accept",
            "    accept" if policy.default_action == ALLOW else "    goto refuse",
            "  }",
        ]
    lines.append("}")
    script = "\n".join(lines) + "\n"
    if mode == DNS_NFT:
        script += learn(learned)
    return script


def learn(addresses: Iterable[tuple[str, int]]) -> str:
    """The script that allows each address for its seconds (replacing a shorter or longer
    timeout it had: add, delete and add again, in one transaction)."""
    lines = []
    for address, seconds in addresses:
        ip = ipaddress.ip_address(address)
        name = LEARNED_V4 if ip.version == 4 else LEARNED_V6
        lines += [f"add element inet {TABLE} {name} {{ {ip} }}",
                  f"delete element inet {TABLE} {name} {{ {ip} }}",
                  f"add element inet {TABLE} {name} {{ {ip} timeout {max(1, seconds)}s }}"]
    return "".join(line + "\n" for line in lines)


def removal() -> str:
    """The script that removes the table (and with it every rule of ours)."""
    return f"table inet {TABLE} {{}}\ndelete table inet {TABLE}\n"
