"""Benchmark of execd commands: round trips, output throughput, memory bound.

    python benchmarks/commands.py [--runs N] [--stream-mb N] [--stream-runs N]
                                  [--background-mb N]

Starts its own server (fake runtime: a container per sandbox) and one sandbox, then measures
in one run:
- the round trip of `echo hi` (request to the end of the stream) through the Python SDK
  (`sandbox.commands.run`), through raw HTTP (httpx, keep-alive), as a run in a warm bash
  session (`POST /session/{id}/run`, raw HTTP), and, as the baseline, a bare
  `subprocess.run(["bash", "-c", "echo hi"])` on this host: median and p99; beside them,
  with no server in the way, the same command in a fresh `bwrap` (what each command cost
  when every process was its own bubblewrap) and through `runc exec` into the sandbox
  (what it would cost as an OCI exec rather than a fork by the sandbox's init);
- the same `echo hi` over raw HTTP from 10 clients at once, each on a sandbox of its own
  (10 processes, so the clients do not share a GIL), beside 10 bare `subprocess.run` loops
  at once: median and p99 of every round trip;
- the PTY echo round trip: one key typed into a shell on the sandbox's terminal over the
  WebSocket until its echo comes back, beside the same over a local pseudo-terminal pair
  with no server (`os.openpty`, the kernel's echo);
- stdout throughput of a foreground command printing `head -c 200M /dev/zero | base64`
  through the event stream, read to the end by a plain-socket HTTP/1.1 client (which
  costs little, so the server is what is measured) and by httpx, against the same
  command into a pipe on this host: the median of several runs of each, after a warm-up;
- the server's resident memory while a background command prints 1 GB into its bounded
  log: idle RSS, the highest RSS sampled during the run, and the kernel's high-water mark
  (VmHWM, reset just before the run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx
from baselines import bubblewrap, runc_exec
from common import RssSampler, measure, memory_mib, percentile, start_server, summary
from opensandbox import Sandbox
from opensandbox.config import ConnectionConfig

from tests.helpers.pty_client import PtyClient
from tests.helpers.servers import ServerProcess, execd_url

# --- round trips ---------------------------------------------------------------------------


def raw_round_trips(base: str, runs: int) -> list[float]:
    with httpx.Client(timeout=60) as client:
        def once() -> None:
            with client.stream("POST", f"{base}/command", json={"command": "echo hi"}) as r:
                body = r.read()
            assert b'"text":"hi"' in body and b"execution_complete" in body, body

        return measure(once, runs, warmup=5)


async def sdk_round_trips(sandbox: Sandbox, runs: int) -> list[float]:
    samples = []
    for i in range(runs + 5):
        start = time.perf_counter()
        execution = await sandbox.commands.run("echo hi")
        elapsed = time.perf_counter() - start
        assert [m.text for m in execution.logs.stdout] == ["hi"], execution
        if i >= 5:
            samples.append(elapsed)
    return samples


def session_round_trips(base: str, runs: int) -> list[float]:
    with httpx.Client(timeout=60) as client:
        session_id = client.post(f"{base}/session").json()["session_id"]

        def once() -> None:
            with client.stream("POST", f"{base}/session/{session_id}/run",
                               json={"command": "echo hi"}) as r:
                body = r.read()
            assert b'"text":"hi"' in body and b"execution_complete" in body, body

        samples = measure(once, runs, warmup=5)
        client.delete(f"{base}/session/{session_id}")
    return samples


def pty_echo_round_trips(base: str, runs: int) -> list[float]:
    """One key typed (raw stdin frame) until the terminal's echo of it arrives."""
    # The keys go to `cat` on the terminal, which echoes them.
    pty_id = httpx.post(f"{base}/pty", json={"command": "cat"}).json()["session_id"]
    client = PtyClient("ws://" + base.removeprefix("http://") + f"/pty/{pty_id}/ws")
    client.wait_event("connected")

    def once() -> None:
        seen = len(client.output)
        client.type(b"x")
        while len(client.output) == seen:
            client._take(5)
        assert client.output.endswith(b"x"), bytes(client.output[-20:])

    samples = measure(once, runs, warmup=5)
    client.close()
    httpx.delete(f"{base}/pty/{pty_id}")
    return samples


def local_pty_round_trips(runs: int) -> list[float]:
    """The baseline: a key written to a local terminal pair until its echo is readable."""
    master, slave = os.openpty()

    def once() -> None:
        os.write(master, b"x")
        select.select([master], [], [], 5)
        assert os.read(master, 16) == b"x"

    try:
        return measure(once, runs, warmup=5)
    finally:
        os.close(master)
        os.close(slave)


def subprocess_round_trips(runs: int, prefix: list[str] | None = None) -> list[float]:
    argv = [*(prefix or []), "bash", "-c", "echo hi"]

    def once() -> None:
        done = subprocess.run(argv, capture_output=True, check=True)
        assert done.stdout == b"hi\n"

    return measure(once, runs)


# --- many clients at once ------------------------------------------------------------------

CLIENTS = 10


def concurrent_round_trips(bases: list[str], runs: int) -> tuple[list[float], list[float]]:
    """(every round trip of `len(bases)` raw HTTP clients at once, each on its own
    sandbox; every round trip of as many bare `subprocess.run` loops at once)."""
    with ProcessPoolExecutor(len(bases)) as pool:
        served = [sample for samples in pool.map(raw_round_trips, bases, [runs] * len(bases))
                  for sample in samples]
        bare = [sample for samples in pool.map(subprocess_round_trips, [runs] * len(bases))
                for sample in samples]
    return served, bare


# --- throughput ----------------------------------------------------------------------------


def pipe_throughput(command: str) -> tuple[int, float]:
    """(stdout bytes, seconds) of `command` read from a pipe on this host."""
    start = time.perf_counter()
    process = subprocess.Popen(["bash", "-c", command], stdout=subprocess.PIPE)
    assert process.stdout is not None
    total = 0
    while chunk := process.stdout.read(1 << 20):
        total += len(chunk)
    process.wait()
    return total, time.perf_counter() - start


def socket_stream_throughput(server: ServerProcess, sandbox_id: str,
                             command: str) -> tuple[int, float]:
    """(event-stream bytes, seconds) of `command` run in the foreground, read to the end by
    a plain-socket HTTP/1.1 client: one request, then the chunked body taken apart in
    large reads, with nothing done per event."""
    body = json.dumps({"command": command}).encode()
    request = (f"POST /{sandbox_id}/44772/command HTTP/1.1\r\nHost: {server.host}:"
               f"{server.gateway_port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    start = time.perf_counter()
    total = 0
    tail = b""
    with socket.create_connection((server.host, server.gateway_port)) as sock:
        sock.sendall(request)
        buffer = bytearray()
        while b"\r\n\r\n" not in buffer:
            buffer += sock.recv(65536)
        head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower(), head
        buffer = bytearray(rest)
        position = 0

        def need(count: int) -> None:
            nonlocal buffer, position
            while len(buffer) - position < count:
                if position > 1 << 20:
                    del buffer[:position]
                    position = 0
                data = sock.recv(1 << 20)
                assert data, "the stream ended before its last chunk"
                buffer += data

        while True:
            while (line_end := buffer.find(b"\r\n", position)) < 0:
                need(len(buffer) - position + 1)
            size = int(buffer[position:line_end], 16)
            position = line_end + 2
            if size == 0:
                break
            need(size + 2)
            total += size
            end = position + size
            tail = (tail + bytes(buffer[max(position, end - 512):end]))[-512:]
            position = end + 2
    elapsed = time.perf_counter() - start
    assert b"execution_complete" in tail, tail
    return total, elapsed


def throughput_runs(server: ServerProcess, sandbox_id: str, base: str, command: str,
                    count: int) -> tuple[dict[str, list[float]], int, int]:
    """MB/s of stdout, `count` times each, for the pipe baseline, the plain-socket stream
    and the httpx stream, taken in turn (so that a slow moment of the machine falls on all
    three alike) after one unmeasured run of each (the first run of a command this size
    also pays for the memory the server and the kernel set aside for it). Also the bytes
    of stdout and of events that one run moves."""
    rates: dict[str, list[float]] = {"pipe": [], "socket": [], "httpx": []}
    stdout_bytes = wire_bytes = 0
    for index in range(count + 1):
        stdout_bytes, pipe_seconds = pipe_throughput(command)
        wire_bytes, socket_seconds = socket_stream_throughput(server, sandbox_id, command)
        _, httpx_seconds = stream_throughput(base, command)
        if index:  # the first round warms up
            for key, seconds in (("pipe", pipe_seconds), ("socket", socket_seconds),
                                 ("httpx", httpx_seconds)):
                rates[key].append(stdout_bytes / 1e6 / seconds)
    return rates, stdout_bytes, wire_bytes


def stream_throughput(base: str, command: str) -> tuple[int, float]:
    """(event-stream bytes, seconds) of `command` run in the foreground, read to the end
    by httpx."""
    start = time.perf_counter()
    total = 0
    tail = b""
    with httpx.Client(timeout=600) as client, \
            client.stream("POST", f"{base}/command", json={"command": command}) as response:
        for chunk in response.iter_raw(1 << 20):
            total += len(chunk)
            tail = (tail + chunk)[-512:]
    elapsed = time.perf_counter() - start
    assert b"execution_complete" in tail, tail
    return total, elapsed


# --- memory --------------------------------------------------------------------------------


def background_memory(server: ServerProcess, base: str, megabytes: int) -> dict[str, float]:
    pid = server.process.pid
    idle = memory_mib(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    command = f"yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c {megabytes}M"
    start = time.perf_counter()
    with httpx.Client(timeout=60) as client:
        body = client.post(f"{base}/command", json={"command": command, "background": True})
        command_id = body.text.split('"text":"', 1)[1].split('"', 1)[0]
        with RssSampler(pid, interval=0.02) as sampler:
            while client.get(f"{base}/command/status/{command_id}").json()["running"]:
                time.sleep(0.05)
            elapsed = time.perf_counter() - start
        logs = client.get(f"{base}/command/{command_id}/logs")
        cursor = int(logs.headers["execd-commands-tail-cursor"])
    assert cursor == megabytes << 20, cursor
    return {"idle_mb": idle, "highest_mb": max(idle, sampler.peak),
            "hwm_mb": memory_mib(pid, "VmHWM"), "seconds": elapsed,
            "kept_mb": len(logs.content) / 1048576}


# --- main ----------------------------------------------------------------------------------


def ratio(samples: list[float], baseline: list[float], fraction: float | None = None) -> str:
    """How many times the baseline's median (or its `fraction` percentile) `samples`' is."""
    if fraction is None:
        return f"{statistics.median(samples) / statistics.median(baseline):.1f}x"
    return f"{percentile(samples, fraction) / percentile(baseline, fraction):.1f}x"


def create_sandbox(server: ServerProcess) -> str:
    """A sandbox made over raw HTTP, once its execd answers."""
    created = httpx.post(f"{server.url}/v1/sandboxes", timeout=60, json={
        "image": {"uri": server.image}, "entrypoint": ["sleep", "infinity"],
        "timeout": 600, "resourceLimits": {}})
    created.raise_for_status()
    sandbox_id = created.json()["id"]
    base = execd_url(server, sandbox_id)
    for _ in range(200):
        if httpx.get(f"{base}/ping", timeout=10).status_code == 200:
            break
        time.sleep(0.05)
    return sandbox_id


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="round trips per series")
    parser.add_argument("--stream-mb", type=int, default=200,
                        help="MB of /dev/zero base64-encoded by the throughput command")
    parser.add_argument("--stream-runs", type=int, default=5,
                        help="measured runs of each throughput kind (after one warm-up)")
    parser.add_argument("--background-mb", type=int, default=1024,
                        help="MB printed by the background command")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-commands-") as workdir:
        server = start_server(Path(workdir))
        try:
            run(server, args, workdir)
        finally:
            server.stop()
    return 0


def run(server: ServerProcess, args: argparse.Namespace, workdir: str) -> None:
    from opensandbox_emulator.server.execd import events

    framing = ("in C" if events.frame_plain_lines is not events._frame_plain_lines
               else "in Python (the C extension was not built)")
    print(f"opensandbox-emulator commands benchmark (server {server.domain}, "
          f"{args.runs} round trips per series; output lines framed {framing})\n")

    async def with_sdk() -> tuple[str, list[float]]:
        sandbox = await Sandbox.create(
            "python:3.11", connection_config=ConnectionConfig(domain=server.domain),
            timeout=timedelta(minutes=10))
        try:
            return sandbox.id, await sdk_round_trips(sandbox, args.runs)
        finally:
            await sandbox.close()

    sandbox_id, sdk = asyncio.run(with_sdk())
    base = execd_url(server, sandbox_id)
    raw = raw_round_trips(base, args.runs)
    session = session_round_trips(base, args.runs)
    bare = subprocess_round_trips(args.runs)
    echo = ["bash", "-c", "echo hi"]
    in_bwrap = bubblewrap(echo)
    exec_into = runc_exec(server.process.pid, sandbox_id, echo)
    print("round trip of `echo hi`")
    print(f"  Python SDK commands.run         {summary(sdk, width=7)}")
    print(f"  raw HTTP POST /command          {summary(raw, width=7)}")
    print(f"  run in a warm bash session      {summary(session, width=7)}")
    print(f"  bare subprocess.run (baseline)  {summary(bare, width=7)}")
    if in_bwrap is not None:
        print(f"  subprocess.run in a new bwrap   {summary(measure(in_bwrap, args.runs), width=7)}"
              "   (no server: each process its own bubblewrap, as before)")
    if exec_into is not None:
        print(f"  runc exec into the sandbox      "
              f"{summary(measure(exec_into, min(args.runs, 100)), width=7)}"
              "   (no server: a command as an OCI exec)")
    print(f"  overhead: SDK {ratio(sdk, bare)}, raw HTTP {ratio(raw, bare)}, session run "
          f"{ratio(session, bare)} the bare subprocess (medians; p99: SDK "
          f"{ratio(sdk, bare, 0.99)}, raw HTTP {ratio(raw, bare, 0.99)})\n")

    bases = [base] + [execd_url(server, create_sandbox(server)) for _ in range(CLIENTS - 1)]
    served, bare_many = concurrent_round_trips(bases, max(20, args.runs // 2))
    print(f"round trip of `echo hi` from {CLIENTS} clients at once, each on its own sandbox")
    print(f"  raw HTTP POST /command          {summary(served, width=7)}")
    print(f"  bare subprocess.run (baseline)  {summary(bare_many, width=7)}")
    print(f"  overhead: raw HTTP {ratio(served, bare_many)} the bare subprocess (medians; "
          f"p99 {ratio(served, bare_many, 0.99)})\n")
    for other in bases[1:]:
        httpx.delete(f"{server.url}/v1/sandboxes/{other.rsplit('/', 2)[-2]}", timeout=30)

    typed = pty_echo_round_trips(base, args.runs)
    local = local_pty_round_trips(args.runs)
    print("PTY echo round trip (one key typed until its echo arrives)")
    print(f"  WebSocket /pty/{{id}}/ws          {summary(typed, width=7)}")
    print(f"  local openpty pair (baseline)   {summary(local, width=7)}\n")

    command = f"head -c {args.stream_mb}M /dev/zero | base64"
    runs, stdout_bytes, wire_bytes = throughput_runs(server, sandbox_id, base, command,
                                                     args.stream_runs)
    pipe_rate = statistics.median(runs["pipe"])
    print(f"stdout throughput of `{command}` ({stdout_bytes / 1e6:.0f} MB of stdout, "
          f"{wire_bytes / 1e6:.0f} MB of events; median of {args.stream_runs} runs after "
          f"a warm-up, each kind in turn, slowest and fastest beside it)")
    for name, key in (("event stream, plain socket", "socket"), ("event stream, httpx", "httpx")):
        rates = runs[key]
        rate = statistics.median(rates)
        print(f"  {name:<31} {rate:8.1f} MB/s of stdout ({min(rates):.0f}-{max(rates):.0f}; "
              f"{rate / pipe_rate:.0%} of the pipe)")
    print(f"  pipe on this host (baseline)    {pipe_rate:8.1f} MB/s "
          f"({min(runs['pipe']):.0f}-{max(runs['pipe']):.0f})\n")

    memory = background_memory(server, base, args.background_mb)
    print(f"server memory while a background command prints {args.background_mb} MB "
          f"(log buffer keeps {memory['kept_mb']:.1f} MB)")
    print(f"  idle RSS before                 {memory['idle_mb']:8.1f} MB")
    print(f"  highest RSS sampled during      {memory['highest_mb']:8.1f} MB")
    print(f"  peak RSS (VmHWM) during         {memory['hwm_mb']:8.1f} MB")
    print(f"  the command took                {memory['seconds']:8.2f} s "
          f"({args.background_mb / memory['seconds']:.0f} MB/s into the log)")
    httpx.delete(f"{server.url}/v1/sandboxes/{sandbox_id}", timeout=30)


if __name__ == "__main__":
    sys.exit(main())
