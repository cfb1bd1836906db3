"""The control API for tests, under `/_emulator/` on the Lifecycle port (off unless
`[control] enabled`): reset the server, read the request journal, inject faults, move the
clock. `backend.EmulatorControl` holds the state, `tap.ControlTap` sees every request on
both listeners (journal and faults), and `routes` only translates HTTP."""
