"""One memory budget for the logs of finished commands, across every sandbox.

Each command's log is bounded on its own (`[execd] log_buffer_bytes`), and each sandbox
keeps a bounded number of finished commands, but together that is still a lot: a thousand
finished commands of 4 MiB would pin 4 GB in one sandbox. So the logs that finished
commands hold are also counted together against `[execd] finished_logs_budget_bytes`;
past it the oldest finished command, whatever its sandbox, is forgotten, exactly as the
per-sandbox limits forget one (its id then answers 404 like an unknown command). A log is
counted as it stands when its command finishes. Running commands are never dropped.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Protocol


class Finished(Protocol):
    """A finished command as the budget sees it."""

    @property
    def held_bytes(self) -> int: ...


class Forgetter(Protocol):
    def evict(self, command: Any) -> None: ...


class FinishedLogs:
    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[Any, tuple[Forgetter, int]] = OrderedDict()
        self._used = 0
        self.evicted = 0

    @property
    def used_bytes(self) -> int:
        return self._used

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, command: Finished, owner: Forgetter) -> None:
        """Count a command that just finished; forget the oldest ones past the budget
        (`owner.evict(command)` is how each is forgotten)."""
        held = command.held_bytes
        self._entries[command] = (owner, held)
        self._used += held
        while self._used > self.budget_bytes and self._entries:
            oldest, (oldest_owner, oldest_held) = self._entries.popitem(last=False)
            self._used -= oldest_held
            self.evicted += 1
            oldest_owner.evict(oldest)

    def discard(self, command: Finished) -> None:
        """The command was forgotten for another reason (age, count, its sandbox went)."""
        entry = self._entries.pop(command, None)
        if entry is not None:
            self._used -= entry[1]

    def report(self) -> dict[str, int]:
        """What `/health` shows."""
        return {"budget_bytes": self.budget_bytes, "used_bytes": self._used,
                "finished_commands": len(self._entries), "evicted_commands": self.evicted}
