"""The sample user suite (tests/user_suite/), run the way its users run it: its own pytest
session, with the plugin found through its entry point and the server inside that session.

Three runs: the editable install with SDK 0.1.5, a plain `pip install .` (tests/setup.sh
makes `.venv-user`) with SDK 1.1.1, and SDK 0.1.5 on the docker runtime. Each run's counts
are asserted, so a test that silently stops running fails here too; afterwards no sandbox
process or container may be left.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.docker_engine import DOCKER_DEBIAN_IMAGE, require_docker
from tests.helpers.servers import no_leftover_processes

USER_SUITE = ROOT / "tests" / "user_suite"
USER_VENV = ROOT / ".venv-user"
SOURCE_FOLDERS = {"opensandbox_emulator": ROOT / "opensandbox_emulator",
                  "opensandbox_emulator/server": ROOT / "server",
                  "opensandbox_emulator/runtimes": ROOT / "runtimes"}


@dataclass
class Outcome:
    passed: int
    failed: int
    skipped: int
    output: str


def run_user_suite(python: Path, tmp_path: Path, *args: str,
                   env: dict[str, str] | None = None) -> Outcome:
    report = tmp_path / "report.xml"
    # TMPDIR: the fake runtime's state directory lands under tmp_path, where the leak check
    # below looks.
    (tmp_path / "tmp").mkdir()
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("PYTEST_", "PYTHONPATH"))}
    environment.update(TMPDIR=str(tmp_path / "tmp"), **(env or {}))
    done = subprocess.run([str(python), "-m", "pytest", "-q", f"--junitxml={report}", *args],
                          cwd=USER_SUITE, env=environment, capture_output=True, text=True,
                          timeout=900)
    output = done.stdout + done.stderr
    assert report.exists(), output
    suite = ElementTree.parse(report).getroot().find("testsuite")
    assert suite is not None, output
    total, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
    failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    assert not no_leftover_processes(tmp_path), "sandbox processes outlived the session"
    return Outcome(total - failed - skipped, failed, skipped, output)


def test_with_the_editable_install_and_sdk_0_1_5(tmp_path: Path) -> None:
    outcome = run_user_suite(Path(sys.executable), tmp_path)
    assert (outcome.passed, outcome.failed, outcome.skipped) == (17, 0, 1), outcome.output


def test_with_a_plain_install_and_sdk_1_1_1(tmp_path: Path) -> None:
    python = USER_VENV / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{USER_VENV} is missing: run `sh tests/setup.sh`")
    site = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True).stdout.strip())
    stale = stale_files(site)
    assert not stale, (f"{USER_VENV} holds an older build of the package ({stale[:3]}…): "
                       "run `sh tests/setup.sh`")
    outcome = run_user_suite(python, tmp_path)
    assert (outcome.passed, outcome.failed, outcome.skipped) == (18, 0, 0), outcome.output


def test_on_the_docker_runtime(tmp_path: Path) -> None:
    require_docker()
    import docker

    client = docker.from_env(timeout=30)
    try:
        before = {c.id for c in client.containers.list(all=True)}
        # The README's example names an image only the fake runtime can run without a pull.
        outcome = run_user_suite(Path(sys.executable), tmp_path, "--opensandbox-runtime",
                                 "docker", "--deselect", "test_readme.py::test_hello",
                                 env={"SANDBOX_IMAGE": DOCKER_DEBIAN_IMAGE})
        left = [c.name for c in client.containers.list(all=True)
                if c.id not in before
                and c.labels.get("opensandbox.io/instance", "").startswith("pytest-")]
    finally:
        client.close()
    assert (outcome.passed, outcome.failed, outcome.skipped) == (16, 0, 1), outcome.output
    assert left == [], "the session left containers behind"


def stale_files(site: Path) -> list[str]:
    """Source files whose installed copy in `site` differs (or is missing)."""
    stale = []
    for installed, source in SOURCE_FOLDERS.items():
        for path in source.rglob("*.py"):
            relative = path.relative_to(source)
            copy = site / installed / relative
            if not copy.exists() or copy.read_bytes() != path.read_bytes():
                stale.append(str(path.relative_to(ROOT)))
    return stale

