"""`resourceLimits` as the runtimes apply them: CPU in nano-CPUs, memory in bytes.

Values follow Kubernetes quantities, the way upstream parses them: `cpu` is `"2"`, `"0.5"` or
`"500m"` (millicores); `memory` is a number with an optional `k/M/G/T/P/E` suffix, binary
with `i` (`512Mi` = 512·2²⁰) or decimal without (`1G` = 10⁹), an optional trailing `b`, in
any case. Upstream silently drops a value it cannot parse; we refuse it, because a
sandbox that quietly runs without its limit is worse than a clear error. Docker's minimums
hold on every runtime, so that a request one runtime takes, the other takes too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from opensandbox_emulator.runtimes.failures import InvalidArgument

CPU = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(m?)\s*$")
MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([kmgtpe]?)(i?)b?\s*$", re.IGNORECASE)
POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}
MIN_MEMORY = 6 * 1024 * 1024  # Docker refuses less than 6 MiB


@dataclass(frozen=True)
class Limits:
    nano_cpus: int | None = None
    memory_bytes: int | None = None


def _invalid(key: str, value: str, example: str) -> InvalidArgument:
    return InvalidArgument(f"resourceLimits.{key} '{value}' is not a valid quantity; write it "
                           f"like {example}.", field=f"resourceLimits.{key}")


def parse_cpu(value: str) -> int:
    """Nano-CPUs: `"500m"` -> 500_000_000, `"2"` -> 2_000_000_000."""
    match = CPU.match(value)
    if match is None:
        raise _invalid("cpu", value, '"500m" or "2"')
    try:
        amount = Decimal(match.group(1))
    except InvalidOperation as error:  # pragma: no cover - the regex admits only numbers
        raise _invalid("cpu", value, '"500m" or "2"') from error
    if match.group(2):
        amount /= 1000
    nano = int(amount * 1_000_000_000)
    if nano < 10_000_000:
        raise InvalidArgument(f"resourceLimits.cpu '{value}' is below Docker's minimum of 10m "
                              "(0.01 CPU).", field="resourceLimits.cpu")
    return nano


def parse_memory(value: str) -> int:
    """Bytes: `"512Mi"` -> 536870912, `"1G"` -> 1000000000, `"64m"` -> 64000000."""
    match = MEMORY.match(value)
    if match is None:
        raise _invalid("memory", value, '"512Mi" or "1G"')
    number, unit, binary = match.groups()
    base = 1024 if binary else 1000
    if binary and not unit:
        raise _invalid("memory", value, '"512Mi" or "1G"')
    size = int(Decimal(number) * base ** POWERS[unit.lower()])
    if size < MIN_MEMORY:
        raise InvalidArgument(f"resourceLimits.memory '{value}' is below Docker's minimum of "
                              "6Mi.", field="resourceLimits.memory")
    return size


def parse_limits(resource_limits: Mapping[str, str]) -> Limits:
    """The limits a runtime can apply; other keys (`gpu`, …) are ignored, as upstream does."""
    cpu = resource_limits.get("cpu")
    memory = resource_limits.get("memory")
    return Limits(nano_cpus=parse_cpu(cpu) if cpu else None,
                  memory_bytes=parse_memory(memory) if memory else None)
