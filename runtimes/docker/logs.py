"""A sandbox's entrypoint output, from the engine's container log (`docker logs`).

The engine keeps what the container's main process wrote (stdout and stderr, in order);
the newest `max_bytes` of its last lines are read through a bounded tail, so a container
that logged gigabytes costs no more memory than a quiet one.
"""

from __future__ import annotations

from docker.errors import APIError, NotFound

from opensandbox_emulator.runtimes.base import EntrypointOutput
from opensandbox_emulator.runtimes.docker.engine import Engine, explain
from opensandbox_emulator.runtimes.docker.sandbox import DockerSandbox
from opensandbox_emulator.runtimes.failures import QueryFailed, SandboxMissing
from opensandbox_emulator.runtimes.output_tail import OutputTail

TAIL_LINES = 100_000  # the engine reads at most this many lines back


async def entrypoint_output(engine: Engine, sandbox: DockerSandbox,
                            max_bytes: int) -> EntrypointOutput:
    tail = OutputTail(max_bytes)

    def read() -> None:
        stream = engine.api.logs(sandbox.container, stdout=True, stderr=True, stream=True,
                                 follow=False, tail=TAIL_LINES)
        try:
            for chunk in stream:
                tail.write(chunk)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    try:
        await engine.call(read)
    except NotFound as error:
        raise SandboxMissing(sandbox.sandbox_id) from error
    except APIError as error:
        raise QueryFailed(sandbox.sandbox_id, f"Reading the log of sandbox "
                                              f"{sandbox.sandbox_id} failed: {explain(error)}"
                          ) from error
    data, dropped = tail.read()
    return EntrypointOutput(data, dropped)
