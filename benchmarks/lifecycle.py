"""Lifecycle API speed: create -> Running, and list with 1,000 sandboxes.

Run: `python benchmarks/lifecycle.py [--sandboxes 1000] [--samples 200]`.

It starts its own server (`python -m opensandbox_emulator`, fake runtime, real bubblewrap) on
ports the kernel picks, and prints each measurement beside a baseline measured on the same server in
the same run: `GET /health`, a route that does no work, so the difference is what the
lifecycle itself costs. Every sandbox runs `sleep infinity`, which costs nothing once started.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import httpx
from common import measure, report, start_server

BODY = {"image": {"uri": "python:3.11"}, "timeout": 3600, "resourceLimits": {},
        "entrypoint": ["sleep", "infinity"], "metadata": {"bench": "lifecycle"}}


def create_running(client: httpx.Client) -> str:
    """POST a sandbox and poll until it is Running; returns its id."""
    response = client.post("/v1/sandboxes", json=BODY)
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
    args = parser.parse_args()
    if shutil.which("bwrap") is None:
        print("warning: bubblewrap is missing; sandboxes run without isolation", flush=True)

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
            print(f"server: {url}, runtime {client.get('/health').json()['isolation']}; "
                  f"{args.samples} samples each\n", flush=True)
            report("baseline: GET /health", health)

            created: list[str] = []
            samples = min(args.samples, args.sandboxes)
            create_times = measure(lambda: created.append(create_running(client)), samples)
            report("create -> Running", create_times, health)

            fill_start = time.monotonic()
            while len(created) < args.sandboxes:
                created.append(create_running(client))
            total = client.get("/v1/sandboxes", params={"pageSize": 1}).json()
            count = total["pagination"]["totalItems"]
            print(f"  ({count} sandboxes live; the rest created in "
                  f"{time.monotonic() - fill_start:.1f} s)", flush=True)

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


if __name__ == "__main__":
    main()
