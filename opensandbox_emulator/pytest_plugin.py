"""The pytest plugin (entry point `pytest11`): fixtures that run the emulator inside the
test process.

    def test_create(opensandbox_emulator):
        config = opensandbox_emulator.connection_config()
        ...

`opensandbox_emulator` is one server for the whole session (started the first time a test
asks for it; stopped, with every sandbox deleted, at the end). `opensandbox_emulator_reset`
is the same server reset before the test: no sandbox, an empty journal, no fault rule,
the real time. Override the `opensandbox_emulator_config` fixture to change the server's
config sections, or pass `--opensandbox-runtime docker`.

Loading the plugin starts and imports nothing else: a session that asks for none of
these fixtures pays for nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from opensandbox_emulator.testing import InProcessEmulator

RUNTIME_OPTION = "--opensandbox-runtime"
RUNTIME_INI = "opensandbox_runtime"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("opensandbox-emulator", "OpenSandbox emulator")
    group.addoption(RUNTIME_OPTION, choices=("fake", "docker"), default=None,
                    help="the runtime of the opensandbox_emulator fixture's server "
                         "(default: the ini option, else fake)")
    parser.addini(RUNTIME_INI, "the runtime of the opensandbox_emulator fixture's server "
                  "(fake or docker)", default="fake")


@pytest.fixture(scope="session")
def opensandbox_emulator_config(pytestconfig: pytest.Config) -> dict[str, dict[str, Any]]:
    """The server's config sections, as in its TOML file. Override it in a conftest.py
    to change them, e.g. `{"server": {"api_key": "secret"}}`."""
    runtime = pytestconfig.getoption(RUNTIME_OPTION) or pytestconfig.getini(RUNTIME_INI)
    return {"runtime": {"type": runtime}}


@pytest.fixture(scope="session")
def opensandbox_emulator(
        opensandbox_emulator_config: dict[str, dict[str, Any]]) -> Iterator[InProcessEmulator]:
    """The emulator, running in this process for the whole session: `domain`,
    `connection_config()`, `reset()`, `journal`, `faults`, `clock`."""
    from opensandbox_emulator.testing import InProcessEmulator

    emulator = InProcessEmulator(opensandbox_emulator_config)
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def opensandbox_emulator_reset(opensandbox_emulator: InProcessEmulator) -> InProcessEmulator:
    """The session's emulator, reset for this test."""
    opensandbox_emulator.reset()
    return opensandbox_emulator
