"""Lifecycle API speed: create -> Running, memory per sandbox, and list with 1,000 sandboxes;
and the test kit's in-process server against a server process.

Run: `python benchmarks/lifecycle.py [--sandboxes 1000] [--samples 200] [--cycles 20]
[--only lifecycle|in-process|snapshots] [--snapshot-mb 100] [--snapshot-runtimes fake,docker]`.

It starts its own server (`python -m opensandbox_emulator`, fake runtime: a container per
sandbox) on ports the kernel picks, and prints each measurement beside a baseline measured
on the same server in the same run: `GET /health`, a route that does no work, so the
difference is what the lifecycle itself costs. Creating is also shown beside what
isolation alone costs with no server in the way (`baselines.py`): a bare process, a bare
`bwrap`, and a bare runc container with the fake runtime's own config. Every sandbox runs
`sleep infinity`, which costs nothing once started; the memory each idle sandbox holds on
the host (its init, its network helper, its entrypoint, as proportional set size) is
measured with all of them running.

The in-process part times what the `opensandbox_emulator` pytest fixture costs: starting and
stopping `InProcessEmulator` beside starting and stopping a server process, and the official
SDK's create -> run a command -> kill cycle against each, in the same run.

The snapshot part fills a sandbox with `--snapshot-mb` of files (one file a MiB), then times
a snapshot (POST until `Ready`) and a restore (a sandbox from it, until `Running`) on each
runtime, beside what the runtime's own mechanism costs on the same data in the same run: a
plain `cp -a` of the sandbox's private root (fake), `docker commit` of its container
(docker); and beside a plain create for the restore.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from baselines import bare, bubblewrap, container
from common import measure, report, start_server

BODY = {"image": {"uri": "python:3.11"}, "timeout": 3600, "resourceLimits": {},
        "entrypoint": ["sleep", "infinity"], "metadata": {"bench": "lifecycle"}}


def create_running(client: httpx.Client, body: dict[str, Any] = BODY) -> str:
    """POST a sandbox and poll until it is Running; returns its id."""
    response = client.post("/v1/sandboxes", json=body)
    response.raise_for_status()
    body = response.json()
    state = body["status"]["state"]
    while state != "Running":
        if state not in ("Pending",):
            raise SystemExit(f"sandbox {body['id']} became {state}")
        state = client.get(f"/v1/sandboxes/{body['id']}").json()["status"]["state"]
    return str(body["id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sandboxes", type=int, default=1000, help="sandboxes to list")
    parser.add_argument("--samples", type=int, default=200, help="samples per measurement")
    parser.add_argument("--cycles", type=int, default=20,
                        help="SDK create/run/kill cycles (and server starts) per setup")
    parser.add_argument("--only", choices=("lifecycle", "in-process", "snapshots"),
                        help="run one part only")
    parser.add_argument("--snapshot-mb", type=int, default=100,
                        help="MiB of files in the snapshotted sandbox")
    parser.add_argument("--snapshot-samples", type=int, default=5,
                        help="snapshots and restores per runtime")
    parser.add_argument("--snapshot-runtimes", default="fake,docker",
                        help="runtimes for the snapshot part (docker is skipped without an "
                             "engine)")
    args = parser.parse_args()
    if args.only in (None, "in-process"):
        in_process(args.cycles)
    if args.only in (None, "lifecycle"):
        lifecycle(args)
    if args.only in (None, "snapshots"):
        for runtime in args.snapshot_runtimes.split(","):
            snapshots(runtime.strip(), args.snapshot_mb, args.snapshot_samples)


def lifecycle(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-lifecycle-"))
    started = time.monotonic()
    server = start_server(workdir)
    url = server.url
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            for _ in range(20):  # warm up connections and code paths
                client.get("/health")
                client.get("/v1/sandboxes")
            health = measure(lambda: client.get("/health").raise_for_status(), args.samples)
            described = client.get("/health").json()
            print(f"server: {url}, isolation {described['isolation']['mode']}, network "
                  f"{described['network']}, limits {described['limits']['mode']}; "
                  f"{args.samples} samples each\n", flush=True)
            report("baseline: GET /health", health)

            available_before = _available_kib()
            created: list[str] = []
            samples = min(args.samples, args.sandboxes)
            create_times = measure(lambda: created.append(create_running(client)), samples)
            report("create -> Running", create_times, health)
            isolation_floor(min(samples, 50))

            fill_start = time.monotonic()
            while len(created) < args.sandboxes:
                created.append(create_running(client))
            total = client.get("/v1/sandboxes", params={"pageSize": 1}).json()
            count = total["pagination"]["totalItems"]
            print(f"  ({count} sandboxes live; the rest created in "
                  f"{time.monotonic() - fill_start:.1f} s)", flush=True)
            memory_per_sandbox(server.process.pid, count)
            print(f"host memory used per sandbox (MemAvailable)    "
                  f"{(available_before - _available_kib()) / count / 1024:8.2f} MiB   "
                  "(kernel objects included; other processes on the host add noise)",
                  flush=True)

            health = measure(lambda: client.get("/health").raise_for_status(), args.samples)
            report(f"baseline again with {count} sandboxes", health)
            for label, params in (
                    ("list, first page (pageSize 20)", {}),
                    ("list, pageSize 200", {"pageSize": 200}),
                    ("list, metadata filter, pageSize 200",
                     {"metadata": "bench=lifecycle", "pageSize": 200}),
                    ("list, state filter, last page", {"state": "Running", "pageSize": 20,
                                                       "page": max(1, -(-count // 20))})):
                def list_once(params: dict[str, object] = params) -> None:
                    response = client.get("/v1/sandboxes", params=params)
                    response.raise_for_status()
                    assert response.json()["pagination"]["totalItems"] == count

                report(label, measure(list_once, args.samples), health)
    finally:
        stop_start = time.monotonic()
        server.stop(timeout=120)
        print(f"\nserver stopped (destroying every sandbox) in "
              f"{time.monotonic() - stop_start:.1f} s; whole run "
              f"{time.monotonic() - started:.1f} s", flush=True)
        shutil.rmtree(workdir, ignore_errors=True)


# --- the test kit: in-process against a server process -------------------------------------


def in_process(cycles: int) -> None:
    from opensandbox_emulator.testing import InProcessEmulator

    print(f"in-process emulator (the pytest fixture) against a server process; {cycles} "
          "samples each\n", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-in-process-"))
    try:
        first = time.perf_counter()
        InProcessEmulator().stop()  # the first start also imports the web stack
        print(f"{'first in-process start and stop (imports)':<46} "
              f"{(time.perf_counter() - first) * 1000:8.2f} ms", flush=True)
        starts, stops = [], []
        for _ in range(cycles):
            begun = time.perf_counter()
            emulator = InProcessEmulator()
            starts.append(time.perf_counter() - begun)
            begun = time.perf_counter()
            emulator.stop()
            stops.append(time.perf_counter() - begun)
        process_starts, process_stops = [], []
        for index in range(cycles):
            begun = time.perf_counter()
            server = start_server(workdir / f"server-{index}")
            process_starts.append(time.perf_counter() - begun)
            begun = time.perf_counter()
            server.stop()
            process_stops.append(time.perf_counter() - begun)
        report("baseline: server process start (healthy)", process_starts)
        report("in-process start", starts, process_starts)
        report("baseline: server process stop", process_stops)
        report("in-process stop (reset, then shut down)", stops, process_stops)

        server = start_server(workdir / "cycles")
        try:
            process_cycles = asyncio.run(sdk_cycles(server.domain, cycles))
        finally:
            server.stop()
        with InProcessEmulator() as emulator:
            in_process_cycles = asyncio.run(sdk_cycles(emulator.domain, cycles))
        print()
        report("baseline: SDK create/run/kill, server process", process_cycles)
        report("SDK create/run/kill, in-process", in_process_cycles, process_cycles)
        print(flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def sdk_cycles(domain: str, count: int) -> list[float]:
    """Seconds per `Sandbox.create` (ready) -> `commands.run("echo")` -> `kill`, with one
    untimed warm-up cycle."""
    from opensandbox import Sandbox
    from opensandbox.config import ConnectionConfig

    config = ConnectionConfig(domain=domain)
    samples = []
    for index in range(count + 1):
        begun = time.perf_counter()
        sandbox = await Sandbox.create("python:3.11", connection_config=config)
        run = await sandbox.commands.run("echo cycle")
        assert run.logs.stdout[0].text == "cycle"
        await sandbox.kill()
        await sandbox.close()
        if index:
            samples.append(time.perf_counter() - begun)
    return samples



# --- snapshots -----------------------------------------------------------------------------


def snapshots(runtime: str, megabytes: int, samples: int) -> None:
    # This folder holds a `docker.py` of its own, which would hide the Docker SDK.
    here = Path(__file__).resolve().parent
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != here]
    from tests.helpers.docker_engine import DOCKER_DEBIAN_IMAGE, docker_problem, docker_sections
    from tests.helpers.servers import launch

    if runtime == "docker" and docker_problem() is not None:
        print(f"\ndocker: skipped ({docker_problem()})", flush=True)
        return
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-snapshots-{runtime}-"))
    sections: dict[str, Any] = {"server": {"log_level": "WARNING"}}
    if runtime == "docker":
        sections.update(docker_sections(workdir))
    server = launch(sections, workdir)
    body: dict[str, Any] = {**BODY, "image": {"uri": DOCKER_DEBIAN_IMAGE if runtime == "docker"
                                              else "python:3.11"}}
    try:
        with httpx.Client(base_url=server.url, timeout=600) as client:
            created = client.post("/v1/sandboxes", json=body)
            created.raise_for_status()
            source = created.json()["id"]
            fill = (f"mkdir -p /workspace/data && for i in $(seq 1 {megabytes}); do "
                    "head -c 1048576 /dev/urandom > /workspace/data/f$i; done; "
                    "du -sm /workspace/data")
            filled = httpx.post(f"{server.gateway_url}/{source}/44772/command",
                                json={"command": fill}, timeout=600)
            filled.raise_for_status()
            print(f"\n{runtime}: a sandbox with {megabytes} MiB of files; {samples} samples each",
                  flush=True)

            made: list[str] = []

            def snapshot() -> None:
                response = client.post(f"/v1/sandboxes/{source}/snapshots", json={})
                response.raise_for_status()
                snapshot_id = response.json()["id"]
                made.append(snapshot_id)
                while True:
                    state = client.get(f"/v1/snapshots/{snapshot_id}").json()["status"]["state"]
                    if state == "Ready":
                        return
                    if state != "Creating":
                        raise SystemExit(f"snapshot {snapshot_id} became {state}")

            restored: list[str] = []

            def restore() -> None:
                response = client.post("/v1/sandboxes", json={
                    "snapshotId": made[0], "timeout": 3600, "resourceLimits": {},
                    "entrypoint": ["sleep", "infinity"]})
                response.raise_for_status()
                assert response.json()["status"]["state"] == "Running", response.text
                restored.append(response.json()["id"])

            def plain_create() -> None:
                restored.append(create_running(client, body))

            baseline = measure(lambda: engine_copy(runtime, server, source), samples)
            report(f"baseline: {'cp -a of its root' if runtime == 'fake' else 'docker commit'}",
                   baseline)
            report("snapshot -> Ready", measure(snapshot, samples), baseline)
            report("restore -> Running", measure(restore, samples), baseline)
            report("plain create -> Running", measure(plain_create, samples), baseline)
            for sandbox_id in restored:
                client.delete(f"/v1/sandboxes/{sandbox_id}")
            for snapshot_id in made:
                client.delete(f"/v1/snapshots/{snapshot_id}").raise_for_status()
            client.delete(f"/v1/sandboxes/{source}")
    finally:
        server.stop(timeout=120)
        if runtime == "docker":
            from tests.helpers.docker_engine import remove_docker_sandboxes

            remove_docker_sandboxes(sections["docker"]["instance"])
        shutil.rmtree(workdir, ignore_errors=True)


def engine_copy(runtime: str, server: Any, sandbox_id: str) -> None:
    """What the runtime's own mechanism costs on the sandbox's files, without the server:
    `cp -a --reflink=auto` of the private root (fake), `docker commit` (docker)."""
    if runtime == "fake":
        root = server.state_dir / "sandboxes" / sandbox_id / "root"
        target = Path(tempfile.mkdtemp(prefix="bench-cp-", dir=server.state_dir))
        try:
            subprocess.run(["cp", "-a", "--reflink=auto", f"{root}/.", str(target)], check=True)
        finally:
            shutil.rmtree(target, ignore_errors=True)
        return
    tag = f"opensandbox-bench-commit:{sandbox_id}"
    subprocess.run(["docker", "commit", f"sandbox-{sandbox_id}", tag], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["docker", "rmi", tag], check=True, stdout=subprocess.DEVNULL)


def isolation_floor(samples: int) -> None:
    """What starting something isolated costs with no server in the way."""
    print("  with no server in the way:")
    report("  a bare process (subprocess.run true)", measure(bare(["true"]), samples))
    in_bwrap = bubblewrap(["true"])
    if in_bwrap is not None:
        report("  a bare bwrap running true", measure(in_bwrap, samples))
    run_container, cleanup = container(["/bin/true"])
    try:
        if run_container is not None:
            report("  a bare runc container running true", measure(run_container, samples))
    finally:
        cleanup()


def _available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def memory_per_sandbox(server_pid: int, count: int) -> None:
    """The proportional set size of every process the server started for its sandboxes
    (its children and their descendants), by kind, divided by the number of sandboxes."""
    kinds: dict[str, int] = {}
    pending = _children(server_pid)
    while pending:
        pid = pending.pop()
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            size = _pss_kib(pid)
            pending += _children(pid)
        except OSError:
            continue
        name = Path(command[0].decode(errors="replace")).name
        if b"/opt/opensandbox/init.py" in command or name == "bwrap":
            kind = "init" if name != "bwrap" else "bwrap"
        elif name in ("slirp4netns", "sleep"):
            kind = name
        else:
            kind = "other"
        kinds[kind] = kinds.get(kind, 0) + size
    total = sum(kinds.values())
    parts = ", ".join(f"{kind} {size / count / 1024:.2f}" for kind, size in sorted(kinds.items()))
    print(f"memory per idle sandbox (PSS)                  {total / count / 1024:8.2f} MiB   "
          f"({parts})", flush=True)


if __name__ == "__main__":
    main()
