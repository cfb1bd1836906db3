"""Benchmark of the access layer: what the gateway and the server proxy cost.

    python benchmarks/access.py [--pings N] [--size-mb N] [--rounds N] [--connections N]
                                [--egress-only]

Starts its own server (fake runtime: a container per sandbox), then measures in one run:
- latency of execd `GET /ping` through the gateway and through the server proxy, beside the
  lifecycle API's own `GET /health` (same server, no dispatch) as the baseline;
- latency of a small file from an application port (`python3 -m http.server` inside the
  sandbox): straight from that port, through the gateway, through the proxy;
- MB/s of a large file (100 MB by default) from that port, the same three ways.
Prints median and p99 (latency) or best and median of the rounds (throughput), the
overhead ratios against the baseline, and the server's peak memory (bounded: bodies stream).

Then, as root (it builds the tests' "internet", `tests/helpers/test_internet.py`), what an
egress policy costs a program in the sandbox that sets up connections to an allowed host,
timed inside the sandbox: a TCP connect to its address, and a DNS query for its name then
the connect, in a sandbox without a policy (the query straight to the DNS server) beside
one whose policy denies by default and allows that name (the query answered by the
server's forwarder, which allows the address before it answers; the first answer costs
the nftables update, later ones find the address allowed already).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from common import measure, memory_mib, percentile, start_server

from tests.helpers.app_sandboxes import free_port, host_volume, wait_until_served
from tests.helpers.frames import split_frames
from tests.helpers.servers import ServerProcess, create_body, execd_url
from tests.helpers.test_internet import HTTP_PORT, InternetUnavailable, TestInternet

EXECD = 44772


def latency(client: httpx.Client, url: str, count: int) -> list[float]:
    """Seconds per request over one keep-alive connection, after a short warm-up."""
    return measure(lambda: client.get(url).raise_for_status(), count, warmup=min(50, count))


def download_rate(client: httpx.Client, url: str, size: int) -> float:
    """MB/s of one download, streamed and discarded."""
    start = time.perf_counter()
    received = 0
    with client.stream("GET", url) as response:
        response.raise_for_status()
        for chunk in response.iter_raw(1 << 20):
            received += len(chunk)
    elapsed = time.perf_counter() - start
    if received != size:
        raise RuntimeError(f"{url}: got {received} bytes, expected {size}")
    return size / elapsed / 1e6


def write_file(path: Path, size: int) -> None:
    block = os.urandom(1 << 20)
    with path.open("wb") as handle:
        for _ in range(size >> 20):
            handle.write(block)
        handle.write(block[: size % (1 << 20)])


def row(name: str, values: list[str]) -> str:
    return f"  {name:<34}" + "".join(f"{v:>14}" for v in values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pings", type=int, default=1000, help="requests per latency series")
    parser.add_argument("--size-mb", type=int, default=100, help="size of the large file")
    parser.add_argument("--rounds", type=int, default=3, help="downloads per path")
    parser.add_argument("--connections", type=int, default=300,
                        help="connections per egress series (0: skip the egress part)")
    parser.add_argument("--egress-only", action="store_true",
                        help="measure only what an egress policy costs")
    args = parser.parse_args()
    if args.egress_only:
        egress(args.connections)
        return 0
    size = args.size_mb << 20

    with tempfile.TemporaryDirectory(prefix="bench-access-") as work:
        data = Path(work, "data")
        data.mkdir()
        write_file(data / "big.bin", size)
        (data / "small.txt").write_bytes(b"hello\n" * 20)
        server = start_server(Path(work))
        try:
            run(server, data, size, args)
        finally:
            server.stop()
    if args.connections:
        egress(args.connections)
    return 0


def run(server: ServerProcess, data: Path, size: int, args: argparse.Namespace) -> int:
    port = free_port()
    entrypoint = ["python3", "-m", "http.server", str(port), "--bind", "127.0.0.1",
                  "--directory", "/srv/data"]
    with httpx.Client(base_url=server.url, timeout=60) as api:
        created = api.post("/v1/sandboxes", json=create_body(
            entrypoint=entrypoint, volumes=[host_volume("data", data, "/srv/data")]))
        created.raise_for_status()
        sandbox_id = created.json()["id"]
        gateway = f"{server.gateway_url}/{sandbox_id}"
        proxy = f"{server.url}/sandboxes/{sandbox_id}/proxy"
        direct = f"http://127.0.0.1:{port}"
        wait_until_served(f"{gateway}/{port}/small.txt")

        print(f"access benchmark: server {server.url}, gateway :{server.gateway_port}, "
              f"sandbox {sandbox_id}, app port {port}")
        print(f"\nlatency, {args.pings} sequential requests on one keep-alive connection "
              "(ms)")
        print(row("", ["median", "p99", "x baseline"]))
        series: list[tuple[str, str, str]] = [
            ("baseline: lifecycle GET /health", f"{server.url}/health", "base"),
            ("execd /ping via gateway", f"{gateway}/{EXECD}/ping", "base"),
            ("execd /ping via server proxy", f"{proxy}/{EXECD}/ping", "base"),
            ("baseline: app file, direct", f"{direct}/small.txt", "app"),
            ("app file via gateway", f"{gateway}/{port}/small.txt", "app"),
            ("app file via server proxy", f"{proxy}/{port}/small.txt", "app"),
        ]
        baselines: dict[str, float] = {}
        with httpx.Client(timeout=60) as client:
            for name, url, group in series:
                samples = latency(client, url, args.pings)
                median = statistics.median(samples)
                baselines.setdefault(group, median)
                print(row(name, [f"{median * 1e3:.3f}", f"{percentile(samples, 0.99) * 1e3:.3f}",
                                 f"{median / baselines[group]:.2f}"]))

        print(f"\nthroughput, {size >> 20} MB file from the app port, {args.rounds} rounds "
              "(MB/s)")
        print(row("", ["best", "median", "x direct"]))
        paths: list[tuple[str, str]] = [
            ("baseline: direct (loopback)", f"{direct}/big.bin"),
            ("via gateway", f"{gateway}/{port}/big.bin"),
            ("via server proxy", f"{proxy}/{port}/big.bin"),
        ]
        rates: dict[str, list[float]] = {name: [] for name, _ in paths}
        with httpx.Client(timeout=120) as client:
            for _ in range(args.rounds):  # interleaved, so drift hits every path alike
                for name, url in paths:
                    rates[name].append(download_rate(client, url, size))
        base_rate = statistics.median(rates[paths[0][0]])
        for name, _ in paths:
            median = statistics.median(rates[name])
            print(row(name, [f"{max(rates[name]):.0f}", f"{median:.0f}",
                             f"{median / base_rate:.2f}"]))
        print(f"\nserver peak RSS after {2 * args.rounds} proxied downloads of "
              f"{size >> 20} MB: {memory_mib(server.process.pid, 'VmHWM'):.0f} MB "
              "(bodies stream; they are never held whole)")
        api.delete(f"/v1/sandboxes/{sandbox_id}")
    return 0


# --- egress ---------------------------------------------------------------------------------

# Runs in the sandbox: `count` connects to ADDRESS, and `count` DNS queries (a hand-made A
# query over UDP to DNS) for NAME each followed by a connect to the answer; prints the
# seconds of each.
CONNECT = r"""
import json, socket, struct, sys, time
dns, name, address = sys.argv[1:4]
port, count = int(sys.argv[4]), int(sys.argv[5])
question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0\0\1\0\1"
def resolve(ident):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question, (dns, 53))
        reply = s.recv(4096)
    return socket.inet_ntoa(reply[-4:])
def connect(to):
    socket.create_connection((to, port), timeout=5).close()
named, direct = [], []
for i in range(count):
    start = time.perf_counter()
    connect(resolve(i + 1))
    named.append(time.perf_counter() - start)
for i in range(count):
    start = time.perf_counter()
    connect(address)
    direct.append(time.perf_counter() - start)
print(json.dumps({"named": named, "direct": direct}))
"""


def egress(count: int) -> None:
    print(f"\negress: connection set-up to an allowed host, timed inside the sandbox, "
          f"{count} of each (ms)")
    try:
        internet = TestInternet().start()
    except InternetUnavailable as error:
        print(f"  skipped: {error}")
        return
    try:
        with tempfile.TemporaryDirectory(prefix="bench-egress-") as work:
            server = start_server(Path(work), egress={"dns_upstream": internet.dns})
            try:
                results = {policy: connections(server, internet, count, policy)
                           for policy in (False, True)}
            finally:
                server.stop()
    finally:
        internet.stop()
    print(row("", ["first", "median", "p99", "x baseline"]))
    for kind, label in (("direct", "connect to its address"),
                        ("named", "DNS query, then connect")):
        base = statistics.median(results[False][kind][1:])
        for policy in (False, True):
            samples = results[policy][kind]
            later = samples[1:]
            name = f"{'' if policy else 'baseline: '}{label}{', policy' if policy else ''}"
            print(row(name, [f"{samples[0] * 1e3:.3f}", f"{statistics.median(later) * 1e3:.3f}",
                             f"{percentile(later, 0.99) * 1e3:.3f}",
                             f"{statistics.median(later) / base:.2f}"]))
    print("  (with the policy, the address is allowed by the first answer for the name: the "
          "address series runs after the name series)")


def connections(server: ServerProcess, internet: TestInternet, count: int,
                policy: bool) -> dict[str, list[float]]:
    body = create_body()
    if policy:
        body["networkPolicy"] = {"defaultAction": "deny",
                                 "egress": [{"action": "allow", "target": "allowed.test"}]}
    with httpx.Client(base_url=server.url, timeout=120) as api:
        created = api.post("/v1/sandboxes", json=body)
        created.raise_for_status()
        sandbox_id = created.json()["id"]
        try:
            argv = ["python3", "-c", CONNECT, internet.dns, "allowed.test",
                    internet.address("alpha"), str(HTTP_PORT), str(count)]
            response = api.post(f"{execd_url(server, sandbox_id)}/command",
                                json={"command": " ".join(shlex.quote(a) for a in argv)})
            events = split_frames(response.content)
            lines = [e["text"] for e in events if e["type"] == "stdout"]
            if not lines:
                raise RuntimeError(f"the connection series failed: {events}")
            return json.loads(lines[-1])  # type: ignore[no-any-return]
        finally:
            api.delete(f"/v1/sandboxes/{sandbox_id}")


if __name__ == "__main__":
    raise SystemExit(main())
