"""A user's program with the code-interpreter SDK, as its README writes it, run with either
generation: `opensandbox-code-interpreter` 0.1.1 on `opensandbox` 0.1.5 (`.venv`) or the
newest, 1.1.1 on 1.1.1 (`.venv-sdk-next`). Each creates its sandboxes with its own README's
call, unchanged (image, entrypoint, version variables) but for the connection config, and
`CodeInterpreter.create(sandbox=sandbox)` with its defaults (1.1.1: the strict readiness
check). Prints what it saw as one JSON object for tests/test_code_interpreter_sdk.py.

    <venv>/bin/python tests/compat/code_interpreter_sdk.py <domain>
"""

import asyncio
import json
import sys
from datetime import timedelta
from importlib.metadata import version

from code_interpreter import CodeInterpreter, SupportedLanguage
from opensandbox import Sandbox
from opensandbox.config import ConnectionConfig
from opensandbox.models.execd import ExecutionHandlers

NEWEST = not version("opensandbox-code-interpreter").startswith("0.")


async def create_as_documented(config: ConnectionConfig) -> Sandbox:
    if NEWEST:
        # opensandbox-code-interpreter 1.1.1, README "Quick Start", step 2
        sandbox = await Sandbox.create(
            "opensandbox/code-interpreter:v1.1.0",
            connection_config=config,
            entrypoint=["/opt/code-interpreter/code-interpreter.sh"],
            env={
                "PYTHON_VERSION": "3.11",
                "JAVA_VERSION": "17",
                "NODE_VERSION": "20",
                "GO_VERSION": "1.24",
            },
        )
        return sandbox
    # opensandbox-code-interpreter 0.1.1, README "Quick Start", step 2
    sandbox = await Sandbox.create(
        "opensandbox/code-interpreter:latest",
        connection_config=config,
        entrypoint=["/opt/opensandbox/code-interpreter.sh"],
        env={
            "PYTHON_VERSION": "3.11",
            "JAVA_VERSION": "17",
            "NODE_VERSION": "20",
            "GO_VERSION": "1.24",
        },
    )
    return sandbox


def seen(execution) -> dict[str, object]:
    error = execution.error
    return {"stdout": "".join(m.text for m in execution.logs.stdout),
            "stderr": "".join(m.text for m in execution.logs.stderr),
            "results": [r.text for r in execution.result],
            "error": None if error is None else [error.name, error.value]}


async def interrupted(codes, context, code: str) -> dict[str, object]:
    """Run `code`, interrupt it once it printed `started`, and say how the run ended."""
    started = asyncio.Event()

    async def on_stdout(message) -> None:
        if "started" in message.text:
            started.set()

    async def interrupt_when_started() -> None:
        await asyncio.wait_for(started.wait(), 120)
        await codes.interrupt(context.id)

    interrupter = asyncio.ensure_future(interrupt_when_started())
    execution = await codes.run(code, context=context,
                                handlers=ExecutionHandlers(on_stdout=on_stdout))
    await interrupter
    return seen(execution)


async def one_sandbox(interpreter: CodeInterpreter, out: dict[str, object]) -> None:
    codes = interpreter.codes
    # README step 5-7
    context = await interpreter.codes.create_context(SupportedLanguage.PYTHON)
    result = await interpreter.codes.run(
        "import sys\nprint(sys.version)\nresult = 2 + 2\nresult",
        context=context,
    )
    out["readme_python"] = seen(result)
    # README section 0: the default context of a language keeps its state
    await interpreter.codes.run("x = 42", language=SupportedLanguage.PYTHON)
    execution = await interpreter.codes.run("result = x\nresult",
                                            language=SupportedLanguage.PYTHON)
    out["default_python"] = seen(execution)
    out["python_error"] = seen(await codes.run("1 / 0", context=context))

    bash = await codes.create_context(SupportedLanguage.BASH)
    await codes.run("greeting=hello; cd /tmp", context=bash)
    out["bash"] = seen(await codes.run('echo "$greeting from $PWD"', context=bash))

    # README section 1: Java
    ctx = await interpreter.codes.create_context(SupportedLanguage.JAVA)
    execution = await interpreter.codes.run(
        (
            'System.out.println("Calculating sum...");\n'
            + "int a = 10;\n"
            + "int b = 20;\n"
            + "int sum = a + b;\n"
            + 'System.out.println("Sum: " + sum);\n'
            + "sum"
        ),
        context=ctx,
    )
    out["readme_java"] = seen(execution)
    out["java_state"] = seen(await codes.run("sum * 2", context=ctx))
    out["java_error"] = seen(await codes.run("int broken = missing + 1;", context=ctx))
    out["java_interrupt"] = await interrupted(
        codes, ctx, 'System.out.println("started");\nThread.sleep(600_000);')
    out["java_after_interrupt"] = seen(await codes.run("sum", context=ctx))

    # README: Multi-language (Go)
    go_ctx = await interpreter.codes.create_context(SupportedLanguage.GO)
    out["readme_go"] = seen(await interpreter.codes.run(
        "package main\nfunc main() { println(\"Running in Go\") }",
        context=go_ctx,
    ))
    await codes.run('import "fmt"\nfunc add(a, b int) int { return a + b }', context=go_ctx)
    out["go_state"] = seen(await codes.run("fmt.Println(add(40, 2))", context=go_ctx))
    out["go_error"] = seen(await codes.run("fmt.Println(undefinedName)", context=go_ctx))
    out["go_interrupt"] = await interrupted(
        codes, go_ctx, 'fmt.Println("started")\ntime.Sleep(10 * time.Minute)')
    out["go_after_interrupt"] = seen(await codes.run("fmt.Println(add(1, 1))",
                                                     context=go_ctx))

    ts = await codes.create_context(SupportedLanguage.TYPESCRIPT)
    await codes.run("interface Point { x: number }\nconst p: Point = { x: 40 };", context=ts)
    out["typescript"] = seen(await codes.run("console.log('typed');\np.x + 2", context=ts))

    # contexts of several languages side by side, running at the same time
    runs = await asyncio.gather(
        codes.run("import time\ntime.sleep(0.5)\nprint('python done')", context=context),
        codes.run('Thread.sleep(500);\nSystem.out.println("java done");', context=ctx),
        codes.run('time.Sleep(500 * time.Millisecond)\nfmt.Println("go done")',
                  context=go_ctx),
        codes.run("sleep 0.5; echo bash done", context=bash))
    out["concurrent"] = [seen(execution)["stdout"] for execution in runs]
    listed = {c.language for language in (SupportedLanguage.PYTHON, SupportedLanguage.JAVA,
                                          SupportedLanguage.GO, SupportedLanguage.BASH,
                                          SupportedLanguage.TYPESCRIPT)
              for c in await codes.list_contexts(language)}
    out["languages_listed"] = sorted(listed)


async def second_sandbox(interpreter: CodeInterpreter, out: dict[str, object]) -> None:
    ctx = await interpreter.codes.create_context(SupportedLanguage.JAVA)
    out["second_java"] = seen(await interpreter.codes.run("21 * 2", context=ctx))


async def main() -> None:
    config = ConnectionConfig(domain=sys.argv[1], request_timeout=timedelta(seconds=60))
    out: dict[str, object] = {"newest": NEWEST}
    # Two code-interpreter sandboxes at once: each passes the readiness check on its own.
    first, second = await asyncio.gather(create_as_documented(config),
                                         create_as_documented(config))
    async with first, second:
        try:
            interpreters = await asyncio.gather(CodeInterpreter.create(sandbox=first),
                                                CodeInterpreter.create(sandbox=second))
            await asyncio.gather(one_sandbox(interpreters[0], out),
                                 second_sandbox(interpreters[1], out))
        finally:
            await asyncio.gather(first.kill(), second.kill())
    print(json.dumps(out))


asyncio.run(main())
