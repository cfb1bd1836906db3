"""The code contexts of one sandbox: each a live interpreter, made and ended here.

`CodeContexts` is a part of the sandbox's `ExecdSandbox` (`contexts_of`), so when the
sandbox is deleted or expires its `close()` stops every interpreter. Rules:

* a context is listed once it is running (a failed create leaves nothing behind);
* with no context id, a run uses its language's *default* context, made on first use and
  then shared by every such run (upstream does the same; it is listed once, not twice);
* one cell at a time per context: a second run is refused (`ContextBusy`), never queued;
* an interpreter that exited (the user's code called `exit()`, say) is replaced by a fresh
  one at the next run, which says so on stderr: that context's state is gone.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from opensandbox_emulator.runtimes.failures import ExecutableNotFound, RuntimeFailure
from opensandbox_emulator.server.execd.code.drivers import DRIVERS, LANGUAGES, Driver
from opensandbox_emulator.server.execd.code.errors import (
    ContextBusy,
    ContextNotFound,
    InterpreterFailed,
    LanguageUnavailable,
)
from opensandbox_emulator.server.execd.code.interpreter import Busy, Execution, Gone, Interpreter
from opensandbox_emulator.server.execd.envfile import env_file_entries
from opensandbox_emulator.server.execd.errors import InvalidRequestBody
from opensandbox_emulator.server.execd.sandbox import ExecdSandbox

log = logging.getLogger("opensandbox.execd.code")

PART_NAME = "code"


@dataclass
class CodeContext:
    id: str
    language: str
    cwd: str | None = None
    default: bool = False
    interpreter: Interpreter | None = None
    deleted: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def describe(self) -> dict[str, str]:
        return {"id": self.id, "language": self.language}


def check_language(language: str) -> str:
    if language not in LANGUAGES:
        raise InvalidRequestBody(f"unknown language {language!r}: use one of "
                                 f"{', '.join(LANGUAGES)}.")
    return language


class CodeContexts:
    def __init__(self, sandbox: ExecdSandbox):
        self.sandbox = sandbox
        self._contexts: dict[str, CodeContext] = {}
        self._defaults: dict[str, CodeContext] = {}
        self._default_locks: dict[str, asyncio.Lock] = {}
        self._closed = False

    # --- creating and finding ----------------------------------------------------------

    async def create(self, language: str, cwd: str | None = None, *,
                     default: bool = False) -> CodeContext:
        driver = self._driver(language)
        context = CodeContext(self.sandbox.ids.command_id(), language, cwd or None, default)
        context.interpreter = await self._start(driver, context)
        if self._closed:
            await context.interpreter.close()
            raise InterpreterFailed("the sandbox is being deleted")
        self._contexts[context.id] = context
        log.info("sandbox %s: %s context %s started (%s)", self.sandbox.sandbox_id, language,
                 context.id, context.interpreter.info.get("impl", "?"))
        return context

    async def default(self, language: str) -> CodeContext:
        """The language's shared default context, started on first use."""
        check_language(language)
        lock = self._default_locks.setdefault(language, asyncio.Lock())
        async with lock:
            context = self._defaults.get(language)
            if context is None or context.deleted:
                context = await self.create(language, default=True)
                self._defaults[language] = context
            return context

    def get(self, context_id: str) -> CodeContext:
        context = self._contexts.get(context_id)
        if context is None:
            raise ContextNotFound(context_id)
        return context

    def find(self, context_id: str) -> CodeContext | None:
        return self._contexts.get(context_id)

    def list(self, language: str | None = None) -> list[CodeContext]:
        return [context for context in self._contexts.values()
                if language is None or context.language == language]

    # --- running -----------------------------------------------------------------------

    async def execute(self, context: CodeContext, code: str) -> Execution:
        """Send a cell to the context's interpreter (replacing it first if it exited)."""
        driver = self._driver(context.language)
        async with context.lock:
            if context.deleted:
                raise ContextNotFound(context.id)
            interpreter = context.interpreter
            notice = None
            if interpreter is None or not interpreter.alive:
                if interpreter is not None:
                    status = interpreter.exit_status
                    notice = (f"[the {context.language} interpreter of this context had "
                              f"exited ({status.description if status else 'stopped'}); "
                              "this run starts a new one, so earlier state is gone]\n")
                    await interpreter.close()
                context.interpreter = interpreter = await self._start(driver, context)
        try:
            return await interpreter.execute(code, notice)
        except Busy:
            raise ContextBusy(context.id) from None
        except Gone:
            raise InterpreterFailed(f"the {context.language} interpreter of context "
                                    f"{context.id} is gone; run again to start a new one"
                                    ) from None

    async def interrupt(self, context: CodeContext) -> None:
        if context.interpreter is not None:
            await context.interpreter.interrupt(self.sandbox.config.interrupt_grace_seconds)

    # --- ending ------------------------------------------------------------------------

    async def delete(self, context_id: str) -> None:
        context = self.get(context_id)
        await self._delete(context)

    async def delete_language(self, language: str) -> None:
        contexts = self.list(language)
        await asyncio.gather(*(self._delete(context) for context in contexts))

    async def _delete(self, context: CodeContext) -> None:
        self._contexts.pop(context.id, None)
        if self._defaults.get(context.language) is context:
            del self._defaults[context.language]
        context.deleted = True
        if context.interpreter is not None:
            await context.interpreter.close()
        log.info("sandbox %s: context %s deleted", self.sandbox.sandbox_id, context.id)

    async def close(self) -> None:
        """Stop every interpreter (the sandbox is being deleted or the server stops)."""
        self._closed = True
        contexts = list(self._contexts.values())
        self._contexts.clear()
        self._defaults.clear()
        for context in contexts:
            context.deleted = True
        await asyncio.gather(*(context.interpreter.close(clean_up=False)
                               for context in contexts if context.interpreter is not None))

    # --- drivers -------------------------------------------------------------------------

    @staticmethod
    def _driver(language: str) -> Driver:
        return DRIVERS[check_language(language)]

    async def _start(self, driver: Driver, context: CodeContext) -> Interpreter:
        label = f"sandbox {self.sandbox.sandbox_id} {context.language} context {context.id}"
        try:
            return await Interpreter.start(self.sandbox.runtime, self.sandbox.sandbox_id,
                                           driver, context.cwd, label=label,
                                           env=await env_file_entries(self.sandbox))
        except ExecutableNotFound as error:
            raise LanguageUnavailable(
                f"{driver.language} contexts need `{driver.tool}`, which is not on this "
                f"sandbox's PATH ({error.message}); {driver.hint}.") from error
        except RuntimeFailure as error:
            raise InterpreterFailed(f"could not start the {driver.language} interpreter: "
                                    f"{error.message}") from error


def contexts_of(sandbox: ExecdSandbox) -> CodeContexts:
    """The sandbox's code contexts, made on first use."""
    contexts: CodeContexts = sandbox.part(PART_NAME, CodeContexts)
    return contexts
