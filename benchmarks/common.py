"""What every benchmark shares: starting the server, timing calls, summarising and reporting
latencies, and reading the server's memory.

Benchmarks run as scripts (`python benchmarks/<area>.py`), so this directory is first on
`sys.path` and `from common import ...` finds this module. Importing it puts the repository
root on `sys.path` too, which is what makes `tests.*` importable: import `common` before
`tests.*` (isort keeps it first anyway). The server is started the one way the tests start
it, `tests.helpers.servers.launch`: `python -m opensandbox_emulator` (fake runtime, real
runc) on ports the kernel picks.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.helpers.servers import ServerProcess, launch  # noqa: E402


def start_server(workdir: Path, **sections: dict[str, object]) -> ServerProcess:
    """A server whose config and state live in `workdir`, logging warnings only (its output
    is drained, so request logs would only cost time), with `sections` on top. Stop it with
    `.stop()`. `workdir` is opened to passers-by (0711), as a state directory normally is:
    behind a closed one, the fake runtime stages each sandbox's root through a helper,
    which costs time per create."""
    workdir.chmod(0o711)
    return launch({"server": {"log_level": "WARNING"}, **sections}, workdir)


# --- timing ------------------------------------------------------------------------------


def measure(action: Callable[[], object], count: int, warmup: int = 0) -> list[float]:
    """Seconds each of `count` calls of `action` took, after `warmup` untimed calls."""
    for _ in range(warmup):
        action()
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return samples


def measure_in_turn(actions: list[Callable[[], object]], count: int,
                    warmup: int = 0) -> list[list[float]]:
    """`measure` for several actions at once, one call of each in turn: a slow moment of
    the machine then falls on all of them alike, not on whichever ran then."""
    for _ in range(warmup):
        for action in actions:
            action()
    samples: list[list[float]] = [[] for _ in actions]
    for _ in range(count):
        for action, taken in zip(actions, samples, strict=True):
            start = time.perf_counter()
            action()
            taken.append(time.perf_counter() - start)
    return samples


def percentile(samples: list[float], fraction: float) -> float:
    """The sample below which `fraction` of them lie (nearest rank, no interpolation)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def duration(seconds: float, width: int = 8) -> str:
    """`seconds` in ms, or in us below 0.1 ms (where ms would print as 0.00)."""
    if seconds < 1e-4:
        return f"{seconds * 1e6:{width}.2f} us"
    return f"{seconds * 1000:{width}.2f} ms"


def summary(samples: list[float], fraction: float = 0.99, width: int = 8) -> str:
    """`median … ms   p99 … ms` of latency samples given in seconds."""
    return (f"median {duration(statistics.median(samples), width)}   "
            f"p{round(fraction * 100)} {duration(percentile(samples, fraction), width)}")


def report(name: str, samples: list[float], baseline: list[float] | None = None, *,
           fraction: float = 0.99, width: int = 46) -> float:
    """Print one measurement on a line: its `summary`, and with `baseline` (measured in the
    same run) how many times the baseline's median its median is. Returns the median."""
    median = statistics.median(samples)
    line = f"{name:<{width}} {summary(samples, fraction)}"
    if baseline is not None:
        line += f"   ({median / statistics.median(baseline):5.2f}x the baseline's median)"
    print(line, flush=True)
    return median


# --- memory ------------------------------------------------------------------------------


def memory_mib(pid: int, field: str) -> float:
    """A size field of /proc/<pid>/status in MiB: `VmRSS` (resident now) or `VmHWM` (the
    highest resident size since start, or since `/proc/<pid>/clear_refs` was given 5)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(f"/proc/{pid}/status has no {field} (is the process a zombie?)")


class RssSampler:
    """The highest VmRSS (MiB) of `pid` seen while the block runs, sampled on a thread every
    `interval` seconds and once more at the end. VmHWM alone cannot give this: it covers the
    whole life of the process unless reset."""

    def __init__(self, pid: int, interval: float = 0.01):
        self.pid = pid
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, memory_mib(self.pid, "VmRSS"))
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, memory_mib(self.pid, "VmRSS"))
