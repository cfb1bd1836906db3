"""`resourceLimits` as the runtimes read them: Kubernetes quantities to nano-CPUs and
bytes, and a clear refusal, naming the field, of anything it cannot apply (upstream drops
such a value silently and runs the sandbox unlimited).

The refusals are checked by their message only: which exception class carries them is the
runtime's business.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from opensandbox_emulator.runtimes.limits import (
    Limits,
    parse_cpu,
    parse_limits,
    parse_memory,
)

CPUS = [("2", 2_000_000_000), ("500m", 500_000_000), ("0.5", 500_000_000),
        (".25", 250_000_000), ("1.5", 1_500_000_000), ("10m", 10_000_000),
        (" 3 ", 3_000_000_000), ("2500m", 2_500_000_000)]

MEMORY = [("512Mi", 512 * 2**20), ("1Gi", 2**30), ("1G", 10**9), ("64M", 64 * 10**6),
          ("64m", 64 * 10**6), ("1gi", 2**30), ("1GiB", 2**30), ("1Gb", 10**9),
          ("2Ti", 2 * 2**40), ("0.5Gi", 2**29), ("6Mi", 6 * 2**20),
          ("10000000", 10_000_000), ("8192Ki", 8192 * 1024)]


@pytest.mark.parametrize(("value", "nano_cpus"), CPUS, ids=[case[0] for case in CPUS])
def test_cpu_quantities(value: str, nano_cpus: int) -> None:
    assert parse_cpu(value) == nano_cpus


@pytest.mark.parametrize(("value", "size"), MEMORY, ids=[case[0] for case in MEMORY])
def test_memory_quantities(value: str, size: int) -> None:
    assert parse_memory(value) == size


@pytest.mark.parametrize("value", ["two", "-1", "1.5.2", "1k", "500M", "", "1e3", "m"])
def test_a_cpu_that_is_no_quantity_is_refused_naming_the_field(value: str) -> None:
    with pytest.raises(Exception, match=r"^resourceLimits\.cpu ") as refused:
        parse_cpu(value)
    assert str(refused.value) == (f"resourceLimits.cpu '{value}' is not a valid quantity; "
                                  'write it like "500m" or "2".')


@pytest.mark.parametrize("value", ["lots", "1Xi", "1i", "-5Mi", "1 GB extra", "Mi", "1e9"])
def test_a_memory_that_is_no_quantity_is_refused_naming_the_field(value: str) -> None:
    with pytest.raises(Exception, match=r"^resourceLimits\.memory ") as refused:
        parse_memory(value)
    assert str(refused.value) == (f"resourceLimits.memory '{value}' is not a valid quantity; "
                                  'write it like "512Mi" or "1G".')


@pytest.mark.parametrize(("parse", "value", "minimum"), [
    (parse_cpu, "9m", "10m (0.01 CPU)"), (parse_cpu, "0.001", "10m (0.01 CPU)"),
    (parse_memory, "5Mi", "6Mi"), (parse_memory, "1k", "6Mi")])
def test_a_limit_below_what_docker_accepts_is_refused(parse: Callable[[str], int], value: str,
                                                      minimum: str) -> None:
    with pytest.raises(Exception, match=r"^resourceLimits\.(cpu|memory)") as refused:
        parse(value)
    assert f"'{value}' is below Docker's minimum of {minimum}" in str(refused.value)


def test_limits_take_cpu_and_memory_and_ignore_the_rest() -> None:
    assert parse_limits({"cpu": "250m", "memory": "256Mi", "gpu": "1"}) == Limits(
        nano_cpus=250_000_000, memory_bytes=256 * 2**20)
    assert parse_limits({}) == Limits(nano_cpus=None, memory_bytes=None)
    assert parse_limits({"cpu": "", "memory": ""}) == Limits()


def test_the_first_bad_limit_stops_the_parse() -> None:
    with pytest.raises(Exception, match=r"^resourceLimits\.memory 'huge'"):
        parse_limits({"cpu": "1", "memory": "huge"})
