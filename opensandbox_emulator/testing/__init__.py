"""Testing against the emulator: the in-process server and the control API from Python.

    from opensandbox_emulator.testing import InProcessEmulator

    with InProcessEmulator() as emulator:          # fake runtime, free ports, this process
        config = emulator.connection_config()      # for the official SDK
        ...
        emulator.journal.entries(path="/ping")     # what the SDK sent
        emulator.faults.sandbox_start_failed()     # the next create fails as upstream's does
        emulator.clock.advance(600)                # expire sandboxes without waiting

`EmulatorClient(url)` is the same control API for a server running elsewhere with
`--control`. With pytest, the `opensandbox_emulator` fixture gives an `InProcessEmulator`.
"""

from opensandbox_emulator.testing.client import (
    ControlError,
    EmulatorClient,
    Fault,
    Request,
)
from opensandbox_emulator.testing.inprocess import EmulatorStartError, InProcessEmulator

__all__ = ["ControlError", "EmulatorClient", "EmulatorStartError", "Fault",
           "InProcessEmulator", "Request"]
