"""The HTTP layer: the Lifecycle API, sandbox access (gateway and server proxy) and the
embedded execd, over a runtime from `opensandbox_emulator.runtimes`."""
