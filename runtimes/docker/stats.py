"""A sandbox's CPU and memory, from the engine's one-shot container stats.

No 1 s sampling wait: CPU is the usage between this sample and the previous one of the
same sandbox (kept on its `DockerSandbox`); the first call takes two, 0.2 s apart. Memory
leaves out the page cache the kernel can drop (inactive files), as `docker stats` does.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from docker.errors import APIError, NotFound

from opensandbox_emulator.runtimes.base import ResourceUsage
from opensandbox_emulator.runtimes.docker import labels
from opensandbox_emulator.runtimes.docker.engine import Engine, explain
from opensandbox_emulator.runtimes.docker.sandbox import (
    CpuSample,
    DockerSandbox,
    inspect_container,
)
from opensandbox_emulator.runtimes.failures import QueryFailed, SandboxMissing


async def _cpu_sample(engine: Engine, sandbox_id: str) -> tuple[CpuSample, dict[str, Any]]:
    try:
        stats = await engine.call(engine.api.stats, labels.container_name(sandbox_id),
                                  stream=False, one_shot=True)
    except NotFound as error:
        raise SandboxMissing(sandbox_id) from error
    except APIError as error:
        raise QueryFailed(sandbox_id, f"Reading the stats of sandbox {sandbox_id} failed: "
                          f"{explain(error)}") from error
    cpu = stats.get("cpu_stats") or {}
    sample = CpuSample(at=time.monotonic(),
                       cpu_ns=int((cpu.get("cpu_usage") or {}).get("total_usage") or 0),
                       system_ns=cpu.get("system_cpu_usage"))
    return sample, stats


async def usage(engine: Engine, sandbox: DockerSandbox, host_cpus: float) -> ResourceUsage:
    """CPU and memory of the sandbox against its limits (or the engine's host)."""
    attrs = await inspect_container(engine, sandbox.sandbox_id)
    current, stats = await _cpu_sample(engine, sandbox.sandbox_id)
    previous = sandbox.cpu_sample
    if previous is None or current.at - previous.at > 10:
        await asyncio.sleep(0.2)
        previous = current
        current, stats = await _cpu_sample(engine, sandbox.sandbox_id)
    sandbox.cpu_sample = current
    cpu = stats.get("cpu_stats") or {}
    online = float(cpu.get("online_cpus") or host_cpus)
    nano = int((attrs.get("HostConfig") or {}).get("NanoCpus") or 0)
    cpu_count = nano / 1e9 if nano else online
    used_ns = max(current.cpu_ns - previous.cpu_ns, 0)
    if current.system_ns and previous.system_ns and current.system_ns > previous.system_ns:
        cores = used_ns / (current.system_ns - previous.system_ns) * online
    else:
        elapsed = max(current.at - previous.at, 1e-6)
        cores = used_ns / 1e9 / elapsed
    percent = cores / cpu_count * 100 if cpu_count else 0.0
    memory = stats.get("memory_stats") or {}
    details = memory.get("stats") or {}
    inactive = details.get("total_inactive_file", details.get("inactive_file", 0)) or 0
    used = max(int(memory.get("usage") or 0) - int(inactive), 0)
    total = int(memory.get("limit") or 0)
    return ResourceUsage(cpu_count=round(cpu_count, 2),
                         cpu_used_pct=round(min(max(percent, 0.0), 100.0), 2),
                         mem_total_mib=round(total / 1048576, 1),
                         mem_used_mib=round(min(used, total or used) / 1048576, 1))
