"""File transfer speed and memory: a 500 MB upload and download through the Python SDK.

Run: `python benchmarks/files.py [--megabytes 500]`.

It starts its own server (`python -m opensandbox_emulator`, fake runtime, real runc) on
ports the kernel picks and creates one sandbox with the official SDK. Baseline, measured in the same
run on the same disk: a plain file copy of the same data (`shutil.copyfile`). Then the SDK
uploads the file (`files.write_files` with a binary file object, which httpx streams) and
downloads it again (`files.read_bytes_stream`, written to a file on the same disk). For each
transfer it prints MB/s and the server's memory: its resident size when idle, the highest
resident size sampled every 10 ms during the transfer, and the kernel's peak (VmHWM).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from common import RssSampler, memory_mib, start_server

BLOCK = 1024 * 1024


def make_data(path: Path, megabytes: int) -> None:
    block = os.urandom(BLOCK)
    with path.open("wb") as handle:
        for index in range(megabytes):
            handle.write(index.to_bytes(8, "little") + block[8:])  # no two blocks alike


def same_file(a: Path, b: Path) -> bool:
    with a.open("rb") as left, b.open("rb") as right:
        while True:
            x, y = left.read(BLOCK * 8), right.read(BLOCK * 8)
            if x != y:
                return False
            if not x:
                return True


async def transfers(domain: str, source: Path, target: Path, pid: int
                    ) -> list[tuple[str, float, float]]:
    from opensandbox import Sandbox
    from opensandbox.config import ConnectionConfig
    from opensandbox.models.filesystem import WriteEntry

    config = ConnectionConfig(domain=domain, request_timeout=timedelta(minutes=5))
    sandbox = await Sandbox.create("python:3.11", connection_config=config,
                                   entrypoint=["sleep", "infinity"])
    results = []
    try:
        with source.open("rb") as data, RssSampler(pid) as sampler:
            started = time.perf_counter()
            await sandbox.files.write_files([WriteEntry(path="/tmp/bench.bin", data=data)])
            results.append(("SDK upload", time.perf_counter() - started, sampler.peak))
        with target.open("wb") as out, RssSampler(pid) as sampler:
            started = time.perf_counter()
            stream = await sandbox.files.read_bytes_stream("/tmp/bench.bin",
                                                           chunk_size=BLOCK)
            async for chunk in stream:
                out.write(chunk)
            results.append(("SDK download", time.perf_counter() - started, sampler.peak))
    finally:
        await sandbox.kill()
        await sandbox.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=500)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-files-"))
    server = start_server(workdir)
    try:
        source, copy, downloaded = (workdir / "source.bin", workdir / "copy.bin",
                                    workdir / "downloaded.bin")
        make_data(source, args.megabytes)
        size = source.stat().st_size
        started = time.perf_counter()
        shutil.copyfile(source, copy)
        baseline = time.perf_counter() - started
        copy.unlink()
        idle = memory_mib(server.process.pid, "VmRSS")
        results = asyncio.run(transfers(server.domain, source, downloaded, server.process.pid))
        assert same_file(source, downloaded), "the downloaded file differs from the source"
        megabytes = size / 1e6
        print(f"{args.megabytes} MiB ({megabytes:.0f} MB), server idle RSS {idle:.0f} MiB\n")
        print(f"{'transfer':<26}{'MB/s':>10}{'seconds':>10}{'server peak RSS':>18}")
        print(f"{'plain copy (baseline)':<26}{megabytes / baseline:>10.0f}{baseline:>10.2f}"
              f"{'-':>18}")
        for name, seconds, peak in results:
            print(f"{name:<26}{megabytes / seconds:>10.0f}{seconds:>10.2f}"
                  f"{peak:>14.0f} MiB")
        print(f"\nserver VmHWM (peak RSS since start): "
              f"{memory_mib(server.process.pid, 'VmHWM'):.0f} MiB")
    finally:
        server.stop(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
