"""The package as a user installs it: one import name, `opensandbox_emulator`.

A wheel built from this checkout (what `pip install .` builds) goes into a fresh virtualenv:
it holds `opensandbox_emulator` and nothing generic (no top-level `server` or `runtimes`
that would clash with another project's), its console script and `python -m
opensandbox_emulator` start, and a server started from it answers. The project's own
editable install (`.venv`) is held to the same, from a directory outside the checkout.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx
import pytest

from tests.helpers import ROOT
from tests.helpers.servers import launch

# What building leaves out: environments, caches, and what a build writes next to the code.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv*", "node_modules", "__pycache__", "build",
                                    "dist", "*.egg-info", ".pytest_cache", ".ruff_cache")
DEPENDENCIES_PTH = "project-dependencies.pth"


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr}"
    return done


def python_in(venv: Path) -> str:
    return str(venv / "bin" / "python")


def site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / \
        "site-packages"


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv holding only a wheel of this checkout. The project's dependencies
    come from this interpreter's environment through a `.pth` line; the `.pth` files over
    there (the editable install among them) are not run, so nothing of the checkout leaks
    in."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)  # a build writes into its source tree
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    run([*pip, "wheel", "--no-deps", "--wheel-dir", str(work / "wheels"), str(source)], work)
    wheels = list((work / "wheels").glob("opensandbox_emulator-*.whl"))
    assert len(wheels) == 1, wheels
    made = work / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(made)], work)
    run([*pip, "--python", python_in(made), "install", "--no-deps", "--no-index",
         str(wheels[0])], work)
    (site_packages(made) / DEPENDENCIES_PTH).write_text(sysconfig.get_paths()["purelib"] + "\n")
    return made


def test_the_wheel_installs_one_package_and_nothing_generic(venv: Path) -> None:
    installed = {path.name for path in site_packages(venv).iterdir()} - {DEPENDENCIES_PTH}
    assert installed == {"opensandbox_emulator", "opensandbox_emulator-0.1.0.dist-info"}
    package = site_packages(venv) / "opensandbox_emulator"
    assert (package / "server" / "app.py").is_file()
    assert (package / "runtimes" / "docker" / "runtime.py").is_file()
    # Programs the fake runtime runs on their own (the sandbox's init, the mount helper):
    # the wheel must carry them.
    assert (package / "runtimes" / "fake" / "sandbox_init.py").is_file()
    assert (package / "runtimes" / "fake" / "mount_helper.py").is_file()
    # The code interpreter's drivers are data files, not modules: they must be in the wheel.
    drivers = package / "server" / "execd" / "code" / "drivers"
    assert {"bash_driver.sh", "node_driver.js", "python_driver.py", "java_driver.java",
            "go_driver.go", "launcher.sh"} <= {path.name for path in drivers.iterdir()}
    # So are the code-interpreter image's scripts that fake sandboxes are offered.
    scripts = package / "server" / "images" / "code_interpreter"
    assert {"code-interpreter.sh", "code-interpreter-env.sh"} <= {
        path.name for path in scripts.iterdir()}
    # The test kit: the in-process server and the pytest plugin, found by its entry point.
    assert (package / "testing" / "inprocess.py").is_file()
    entry_points = site_packages(venv) / "opensandbox_emulator-0.1.0.dist-info" / \
        "entry_points.txt"
    assert "[pytest11]\nopensandbox_emulator = opensandbox_emulator.pytest_plugin" in \
        entry_points.read_text()


@pytest.mark.parametrize("python", ["the clean venv", "the project's .venv"])
def test_only_opensandbox_emulator_imports(venv: Path, tmp_path: Path, python: str) -> None:
    interpreter = python_in(venv) if python == "the clean venv" else sys.executable
    found = run([interpreter, "-c", "import opensandbox_emulator.server.app as app; "
                 "print(app.__file__)"], tmp_path).stdout.strip()
    if python == "the clean venv":
        assert found.startswith(str(venv)), found
    else:
        assert found == str(ROOT / "server" / "app.py"), found
    for generic in ("server", "runtimes"):
        done = subprocess.run([interpreter, "-c", f"import {generic}"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode != 0, f"`import {generic}` worked with {python}"
        assert f"No module named '{generic}'" in done.stderr, done.stderr


@pytest.mark.parametrize("python", ["the clean venv", "the project's .venv"])
def test_the_console_script_and_the_module_start(venv: Path, tmp_path: Path,
                                                 python: str) -> None:
    bin_dir = venv / "bin" if python == "the clean venv" else Path(sys.executable).parent
    for argv in ([str(bin_dir / "opensandbox-emulator"), "--help"],
                 [str(bin_dir / "python"), "-m", "opensandbox_emulator", "--help"]):
        shown = run(argv, tmp_path).stdout
        assert shown.startswith("usage: opensandbox-emulator"), shown
        assert "--runtime" in shown and "--config" in shown, shown


def test_a_server_from_the_wheel_serves(venv: Path, tmp_path: Path) -> None:
    """`python -m opensandbox_emulator` of the clean venv, outside the checkout, runs a
    sandbox: the installed package is whole, not just importable."""
    server = launch({}, tmp_path, python=python_in(venv), cwd=tmp_path)
    try:
        with server.client() as client:
            assert client.get("/health").json()["runtime"] == "fake"
            created = client.post("/v1/sandboxes", json={
                "image": {"uri": "python:3.11"}, "entrypoint": ["sleep", "infinity"]})
            assert created.status_code == 202, created.text
            command = httpx.post(
                f"{server.gateway_url}/{created.json()['id']}/44772/command",
                json={"command": "echo from-the-wheel"}, timeout=30)
            assert command.status_code == 200, command.text
            assert '"text":"from-the-wheel"' in command.text, command.text
    finally:
        server.stop()
