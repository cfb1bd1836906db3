"""Java, Go and TypeScript code contexts over raw HTTP, on both runtimes.

Each context is the language's real toolchain inside a sandbox of `server.code_image`: on
Docker the test image with a JDK, Go and Node.js (tests/docker/build-images.sh); on the fake
runtime the host's own (CI installs openjdk-17-jdk-headless and golang-go from Debian).
TypeScript runs with the classic package (5.x, from tests/js) and the native compiler
(7.x, from tests/js/typescript7), each lent to the sandbox as a read-only volume.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import ROOT
from tests.helpers.code_api import (
    Background,
    create,
    error_of,
    expect_error,
    results,
    run,
    stderr,
    stdout,
    stream,
)
from tests.helpers.servers import ServerProcess, execd_url, new_sandbox

TYPESCRIPT_MODULES = {"5": ROOT / "tests" / "js" / "node_modules",
                      "7": ROOT / "tests" / "js" / "typescript7" / "node_modules"}


@pytest.fixture(scope="session")
def server(execd_server: ServerProcess) -> ServerProcess:
    """Every test of this module runs on both runtimes."""
    return execd_server


@contextlib.contextmanager
def code_sandbox(server: ServerProcess, **overrides: Any) -> Iterator[str]:
    """The execd base URL of a fresh sandbox of `server.code_image`, deleted afterwards."""
    sandbox_id = new_sandbox(server, image={"uri": server.code_image}, **overrides)
    try:
        yield execd_url(server, sandbox_id)
    finally:
        httpx.delete(f"{server.url}/v1/sandboxes/{sandbox_id}", timeout=60)


@pytest.fixture(scope="module")
def base(server: ServerProcess) -> Iterator[str]:
    """One sandbox with every toolchain, shared by the module's tests (each makes its own
    contexts)."""
    with code_sandbox(server) as url:
        yield url


def shell(base: str, command: str) -> list[str]:
    """A command's stdout lines (`POST /code` without a language runs a shell command,
    whose events are one line each)."""
    events = [e for e in stream(base, {"code": command}) if e["type"] != "ping"]
    assert error_of(events) is None, events
    return [e["text"] for e in events if e["type"] == "stdout"]


def interrupt(base: str, context_id: str, code: str, language: str) -> list[dict[str, Any]]:
    """Run `code` in the background, interrupt it once it printed `started`, and return
    its events."""
    background = Background(base, {"code": code,
                                   "context": {"id": context_id, "language": language}})
    deadline = time.monotonic() + 120
    while "started" not in stdout(background.events) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.delete(f"{base}/code", params={"id": context_id}, timeout=60
                        ).status_code == 200
    return background.join()


# --- java ----------------------------------------------------------------------------------


def test_java_cells_keep_declarations_and_give_values(base: str) -> None:
    context_id = create(base, "java")
    # The code-interpreter SDK's README example: statements, then the value of `sum`.
    events = run(base, 'System.out.println("Calculating sum...");\nint a = 10;\nint b = 20;\n'
                       'int sum = a + b;\nSystem.out.println("Sum: " + sum);\nsum',
                 context_id, "java")
    assert stdout(events) == "Calculating sum...\nSum: 30\n"
    assert results(events) == [{"text": "30"}]
    assert [e["execution_count"] for e in events if e["type"] == "execution_count"] == [1]
    assert events[-1]["type"] == "execution_complete"
    # variables, methods, classes and imports persist; a value is toString()'s text
    run(base, "import java.time.LocalDate;\nint twice(int x) { return 2 * x; }\n"
              "record Point(int x, int y) {}", context_id, "java")
    assert results(run(base, "twice(sum)", context_id, "java")) == [{"text": "60"}]
    assert results(run(base, "new Point(1, 2)", context_id, "java")) == [
        {"text": "Point[x=1, y=2]"}]
    assert results(run(base, "LocalDate.of(2024, 2, 29).getDayOfWeek()", context_id,
                       "java")) == [{"text": "THURSDAY"}]
    assert results(run(base, '"a\\tb" + a', context_id, "java")) == [{"text": "a\tb10"}]
    assert results(run(base, '"é✓ \\u0001"', context_id, "java")) == [{"text": "é✓ \u0001"}]
    # jshell's default imports, and a re-declaration replaces the old one
    assert results(run(base, "List<Integer> xs = new ArrayList<>(List.of(3, 1, 2));\n"
                             "Collections.sort(xs);\nxs", context_id, "java")) == [
        {"text": "[1, 2, 3]"}]
    run(base, 'String sum = "replaced";', context_id, "java")
    assert results(run(base, "sum", context_id, "java")) == [{"text": "replaced"}]
    # a declaration or a statement as the last snippet has no value
    events = run(base, "int c = 3;\nSystem.err.println(\"to stderr\");", context_id, "java")
    assert results(events) == [] and stderr(events) == "to stderr\n"


def test_java_errors_leave_the_context_usable(base: str) -> None:
    context_id = create(base, "java")
    run(base, "int kept = 7;", context_id, "java")
    events = run(base, 'System.out.println("before");\nint zero = 0;\n'
                       'int ratio = kept / zero;\nSystem.out.println("after");', context_id,
                 "java")
    assert stdout(events) == "before\n"
    assert [e["type"] for e in events][-3:] == ["status", "error", "execution_complete"]
    error = error_of(events)
    assert error is not None and error["ename"] == "EvalException"
    assert error["evalue"] == "/ by zero"
    assert error["traceback"][0] == "java.lang.ArithmeticException: / by zero"
    compile_error = error_of(run(base, "int y = undefinedThing + 1;", context_id, "java"))
    assert compile_error is not None and compile_error["ename"] == "CompilationException"
    assert "cannot find symbol" in compile_error["evalue"]
    assert "int y = undefinedThing + 1;" in compile_error["traceback"]
    assert any("undefinedThing" in line for line in compile_error["traceback"])
    thrown = error_of(run(base, 'throw new IllegalStateException("mine")', context_id,
                          "java"))
    assert thrown is not None and thrown["evalue"] == "mine"
    assert thrown["traceback"][0] == "java.lang.IllegalStateException: mine"
    incomplete = error_of(run(base, "int broken = (1 + ", context_id, "java"))
    assert incomplete is not None and incomplete["ename"] == "IncompleteSourceException"
    assert results(run(base, "kept", context_id, "java")) == [{"text": "7"}]


def test_java_interrupt_stops_the_cell_and_keeps_state(base: str) -> None:
    context_id = create(base, "java")
    run(base, "int kept = 42;", context_id, "java")
    for code in ('System.out.println("started");\nThread.sleep(600_000);',
                 'System.out.println("started");\nlong n = 0;\nwhile (true) { n++; }'):
        events = interrupt(base, context_id, code, "java")
        assert error_of(events)["ename"] == "KeyboardInterrupt"  # type: ignore[index]
        assert events[-1]["type"] == "execution_complete"
    assert results(run(base, "kept", context_id, "java")) == [{"text": "42"}]


# --- go ------------------------------------------------------------------------------------


def test_go_declarations_persist_and_statements_run_in_a_fresh_main(base: str) -> None:
    context_id = create(base, "go")
    # The code-interpreter SDK's README example: a whole program (println writes stderr).
    events = run(base, 'package main\nfunc main() { println("Running in Go") }', context_id,
                 "go")
    assert stderr(events) == "Running in Go\n" and events[-1]["type"] == "execution_complete"
    events = run(base, 'import "fmt"\n\nfunc add(a, b int) int { return a + b }\n\n'
                       "type Point struct{ X, Y int }\n\n"
                       "func (p Point) Sum() int { return add(p.X, p.Y) }\n\n"
                       "fmt.Println(add(1, 2))", context_id, "go")
    assert stdout(events) == "3\n" and error_of(events) is None
    assert stdout(run(base, "fmt.Println(Point{20, 22}.Sum())", context_id, "go")) == "42\n"
    # a new declaration of a name replaces the old one; `%%` opens main
    events = run(base, "func add(a, b int) int { return a * b }\n%%\nfmt.Println(add(6, 7))",
                 context_id, "go")
    assert stdout(events) == "42\n"
    # global variables are kept as declarations, initialised again in every run
    run(base, "var counter = 10", context_id, "go")
    assert stdout(run(base, "counter++\nfmt.Println(counter)", context_id, "go")) == "11\n"
    assert stdout(run(base, "counter++\nfmt.Println(counter)", context_id, "go")) == "11\n"
    # a standard package used without its import is imported, as goimports would
    assert stdout(run(base, 'fmt.Println(strings.ToUpper("go"))', context_id, "go")) == "GO\n"
    # output streams as it comes, and the program's exit status is an error
    events = run(base, 'fmt.Print("partial")\nos.Exit(3)', context_id, "go")
    assert stdout(events) == "partial"
    assert error_of(events) == {"ename": "ExitError", "evalue": "exit status 3",
                                "traceback": ["exit status 3"]}


def test_go_compile_errors_name_the_cell_and_line(base: str) -> None:
    context_id = create(base, "go")
    run(base, 'import "fmt"\nfunc kept() string { return "kept" }', context_id, "go")
    # a value of one cell does not survive into the next (each is a fresh program)
    run(base, "x := 5\nfmt.Println(x)", context_id, "go")
    events = run(base, 'fmt.Println("first line")\nfmt.Println(x)', context_id, "go")
    error = error_of(events)
    assert error is not None and error["ename"] == "CompileError"
    assert error["evalue"] == "cell3.go:2:13: undefined: x"
    assert stdout(events) == ""  # nothing ran
    syntax = error_of(run(base, "fmt.Println(", context_id, "go"))
    assert syntax is not None and syntax["evalue"].startswith("cell4.go:")
    # a cell that does not compile keeps none of its declarations
    run(base, "func broken() int { return undefinedThing }", context_id, "go")
    again = error_of(run(base, "fmt.Println(broken())", context_id, "go"))
    assert again is not None and "undefined: broken" in again["evalue"]
    panic = run(base, 'panic("boom")', context_id, "go")
    assert "panic: boom" in stderr(panic)
    assert error_of(panic)["evalue"] == "exit status 2"  # type: ignore[index]
    assert stdout(run(base, "fmt.Println(kept())", context_id, "go")) == "kept\n"


def test_go_interrupt_stops_the_program_and_keeps_declarations(base: str) -> None:
    context_id = create(base, "go")
    run(base, 'import "fmt"\nconst kept = "yes"', context_id, "go")
    events = interrupt(base, context_id, 'fmt.Println("started")\ntime.Sleep(10 * time.Minute)',
                       "go")
    assert error_of(events)["ename"] == "KeyboardInterrupt"  # type: ignore[index]
    assert stdout(run(base, "fmt.Println(kept)", context_id, "go")) == "yes\n"


# --- typescript -----------------------------------------------------------------------------


@pytest.mark.parametrize("major", sorted(TYPESCRIPT_MODULES))
def test_typescript_context(server: ServerProcess, major: str) -> None:
    modules = TYPESCRIPT_MODULES[major]
    if not (modules / "typescript" / "package.json").is_file():
        pytest.fail(f"{modules} has no typescript package: run `sh tests/setup.sh`")
    version = json.loads((modules / "typescript" / "package.json").read_text())["version"]
    assert version.startswith(major + ".")
    volume = {"name": "ts", "host": {"path": str(modules)}, "mountPath": "/opt/ts/node_modules",
              "readOnly": True}
    with code_sandbox(server, volumes=[volume], env={"NODE_PATH": "/opt/ts/node_modules"}
                      ) as base:
        context_id = create(base, "typescript")
        events = run(base, "interface Point { x: number }\nconst p: Point = { x: 40 };\n"
                           "console.log('typed');\np.x + 2", context_id, "typescript")
        assert stdout(events) == "typed\n" and results(events) == [{"text": "42"}]
        assert results(run(base, "enum Color { Red, Green }\nColor.Green + p.x", context_id,
                           "typescript")) == [{"text": "41"}]
        error = error_of(run(base, "const broken: number = ;", context_id, "typescript"))
        assert error is not None and error["ename"] == "SyntaxError"
        assert error["evalue"].startswith("cell-3.ts(1,24): ")
        assert results(run(base, "p.x", context_id, "typescript")) == [{"text": "40"}]
        # nothing of the compiler's is left once the context is gone
        assert httpx.delete(f"{base}/code/contexts/{context_id}", timeout=60
                            ).status_code == 200
        assert not [name for name in shell(base, "ls -a ${TMPDIR:-/tmp}")
                    if name.startswith("opensandbox-typescript")]


def test_a_typescript_package_without_either_api_is_refused_naming_its_version(
        server: ServerProcess, tmp_path: Path) -> None:
    package = tmp_path / "node_modules" / "typescript"
    package.mkdir(parents=True)
    (package / "package.json").write_text('{"name": "typescript", "version": "9.9.9"}')
    (package / "index.js").write_text("module.exports = { version: '9.9.9' };")
    volume = {"name": "ts", "host": {"path": str(tmp_path / "node_modules")},
              "mountPath": "/opt/ts/node_modules", "readOnly": True}
    with code_sandbox(server, volumes=[volume], env={"NODE_PATH": "/opt/ts/node_modules"}
                      ) as base:
        response = httpx.post(f"{base}/code/context", json={"language": "typescript"},
                              timeout=60)
        message = expect_error(response, 400, "LANGUAGE_UNAVAILABLE")
        assert "9.9.9" in message and "7.x" in message


# --- contexts side by side, and what they leave behind ---------------------------------------


def test_languages_side_by_side_and_concurrent_runs(base: str) -> None:
    contexts = {language: create(base, language) for language in ("java", "go", "python")}
    cells = {"java": 'Thread.sleep(300);\nSystem.out.println("java done");',
             "go": 'time.Sleep(300 * time.Millisecond)\nfmt.Println("go done")',
             "python": "import time\ntime.sleep(0.3)\nprint('python done')"}
    running = [Background(base, {"code": cells[language],
                                 "context": {"id": contexts[language], "language": language}})
               for language in cells]
    for language, background in zip(cells, running, strict=True):
        assert stdout(background.join()) == f"{language} done\n"
    listed = httpx.get(f"{base}/code/contexts", timeout=30).json()
    assert {(c["id"], c["language"]) for c in listed} >= {
        (context_id, language) for language, context_id in contexts.items()}


@pytest.mark.parametrize("language", ["java", "go"])
def test_a_deleted_context_leaves_no_process_or_scratch_directory(server: ServerProcess,
                                                                  language: str) -> None:
    marker = f"/tmp/leftover-check-{language}"
    sleeper = ('System.out.println("started");\nThread.sleep(600_000);' if language == "java"
               else 'fmt.Println("started")\ntime.Sleep(10 * time.Minute)')
    with code_sandbox(server) as base:
        before = set(shell(base, "ls -a ${TMPDIR:-/tmp}"))
        context_id = create(base, language, cwd=marker)
        background = Background(base, {"code": sleeper,
                                       "context": {"id": context_id, "language": language}})
        deadline = time.monotonic() + 120
        while "started" not in stdout(background.events) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.delete(f"{base}/code/contexts/{context_id}", timeout=60
                            ).status_code == 200
        assert error_of(background.join())["ename"] == "ContextDeleted"  # type: ignore[index]
        after = set(shell(base, "ls -a ${TMPDIR:-/tmp}"))
        assert after == before | {f"leftover-check-{language}"}
        # no process of the context is left: none runs in its working directory
        assert shell(base, f"for p in /proc/[0-9]*; do [ \"$(readlink $p/cwd)\" = {marker} ] "
                           "&& echo $p; done; true") == []
