"""The commands of one sandbox: running ones, and finished ones kept for status and logs.

Upstream keeps every command forever. We keep finished commands up to `[execd]
max_finished_commands` per sandbox and for `[execd] finished_command_ttl_seconds` after
they end, oldest dropped first, and while their logs fit the server-wide budget of
`budget.py`; after that their id answers 404. Running commands are never dropped. The
registry is a part of the sandbox's `ExecdSandbox`: when the sandbox is deleted or
expires, `close()` kills every command it still runs.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import replace

from opensandbox_emulator.runtimes.failures import SpawnFailed
from opensandbox_emulator.server.execd.commands.runner import Command, CommandSpec, spawn_shell
from opensandbox_emulator.server.execd.envfile import env_file_entries
from opensandbox_emulator.server.execd.errors import NotFound
from opensandbox_emulator.server.execd.sandbox import ExecdSandbox

PART_NAME = "commands"


class CommandRegistry:
    def __init__(self, sandbox: ExecdSandbox):
        self.sandbox = sandbox
        self._commands: dict[str, Command] = {}
        self._finished: OrderedDict[str, float] = OrderedDict()  # id -> monotonic end

    async def run(self, spec: CommandSpec) -> Command:
        """Start a command. A start failure (missing cwd or shell) is not raised: it is
        recorded on the command, which then streams `init` and an `error` event. As
        upstream does, a failed foreground start is not registered, a failed background
        start is (finished, exit code 255). Other runtime failures are raised."""
        self._prune()
        sandbox = self.sandbox
        # The env file under the request's own variables, read afresh for each command.
        spec = replace(spec, envs={**await env_file_entries(sandbox), **spec.envs})
        command = Command(sandbox.ids.command_id(), spec, clock=sandbox.clock,
                          log_capacity=sandbox.config.log_buffer_bytes,
                          on_finished=self._on_finished)
        try:
            process = await spawn_shell(sandbox.runtime, sandbox.sandbox_id, spec)
        except SpawnFailed as error:
            if spec.background:
                self._commands[command.id] = command
            command.fail_to_start(error.message)
            return command
        self._commands[command.id] = command
        command.launch(process)
        return command

    def get(self, command_id: str) -> Command:
        self._prune()
        command = self._commands.get(command_id)
        if command is None:
            raise NotFound(f"command not found: {command_id}. It never ran in this sandbox, "
                           "or it finished long enough ago to be forgotten ([execd] "
                           "max_finished_commands / finished_command_ttl_seconds).")
        return command

    def _on_finished(self, command: Command) -> None:
        if self._commands.get(command.id) is command:
            self._finished[command.id] = self.sandbox.clock.monotonic()
            self._prune()
            if command.id in self._finished:
                self.sandbox.finished_logs.add(command, self)

    def evict(self, command: Command) -> None:
        """Forget a finished command (the server-wide log budget needs its room)."""
        if self._commands.get(command.id) is command:
            del self._commands[command.id]
            self._finished.pop(command.id, None)
            command.forget()

    def _prune(self) -> None:
        config = self.sandbox.config
        now = self.sandbox.clock.monotonic()
        while self._finished:
            command_id, finished_at = next(iter(self._finished.items()))
            expired = now - finished_at > config.finished_command_ttl_seconds
            if not expired and len(self._finished) <= config.max_finished_commands:
                break
            del self._finished[command_id]
            command = self._commands.pop(command_id, None)
            if command is not None:
                self.sandbox.finished_logs.discard(command)
                command.forget()

    def __len__(self) -> int:
        return len(self._commands)

    async def close(self) -> None:
        """Kill every command of the sandbox (it is being deleted or the server stops)."""
        commands = list(self._commands.values())
        self._commands.clear()
        self._finished.clear()
        for command in commands:
            self.sandbox.finished_logs.discard(command)
        await asyncio.gather(*(command.close() for command in commands))


def commands_of(sandbox: ExecdSandbox) -> CommandRegistry:
    """The sandbox's command registry, made on first use."""
    registry: CommandRegistry = sandbox.part(PART_NAME, CommandRegistry)
    return registry
