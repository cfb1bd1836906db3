"""Start-up configuration: upstream's TOML layout, our sections, CLI flags, and errors that
stop start-up with a message naming the key. Each case runs the real
`python -m opensandbox_emulator`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import ROOT
from tests.helpers.servers import READY, create_body

UPSTREAM_CONFIG = """\
# An opensandbox-server config as upstream documents it.
[server]
host = "0.0.0.0"
port = 8080
log_level = "INFO"
api_key = "upstream-key"

[runtime]
type = "docker"
execd_image = "opensandbox/execd:v1.0.6"

[docker]
network_mode = "host"
drop_capabilities = ["AUDIT_WRITE", "MKNOD", "NET_ADMIN", "NET_RAW", "SYS_ADMIN",
                     "SYS_MODULE", "SYS_PTRACE", "SYS_TIME", "SYS_TTY_CONFIG"]
no_new_privileges = true
apparmor_profile = ""
seccomp_profile = ""
pids_limit = 512

[storage]
allowed_host_paths = ["/data"]

[egress]
image = "opensandbox/egress:v1.0.0"
"""


def run_failing(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run the server expecting it to refuse to start; (exit code, stderr)."""
    result = subprocess.run([sys.executable, "-m", "opensandbox_emulator", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, **(env or {})})
    return result.returncode, result.stderr


class Running:
    """A server started from the command line, stopped by the fixture."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "opensandbox_emulator", *args], cwd=ROOT, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        assert self.process.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            match = READY.search(line)
            if match:
                self.url = f"http://{match.group(1)}:{match.group(2)}"
                break
        else:
            pytest.fail("server did not start:\n" + "".join(self.lines))
        if not hasattr(self, "url"):
            self.stop()
            pytest.fail("server did not start:\n" + "".join(self.lines))
        with httpx.Client() as client:
            while client.get(self.url + "/health").status_code != 200:  # pragma: no cover
                time.sleep(0.05)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def output_after_stop(self) -> str:
        """Everything the server printed, once it has stopped."""
        self.stop()
        return self.output

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            rest, _ = self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            rest, _ = self.process.communicate()
        except ValueError:  # already stopped and drained
            rest = ""
        if rest:
            self.lines.append(rest)


@pytest.fixture
def run(tmp_path: Path) -> Iterator[type[Running]]:
    started: list[Running] = []

    class Tracked(Running):
        def __init__(self, args: list[str], env: dict[str, str] | None = None):
            env = {"TMPDIR": str(tmp_path), **(env or {})}
            super().__init__(args, env)
            started.append(self)

    yield Tracked
    for server in started:
        server.stop()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


LOOPBACK = ["--host", "127.0.0.1", "--port", "0", "--gateway-port", "0"]


@pytest.mark.parametrize(("toml", "names"), [
    ("[server]\nhots = \"127.0.0.1\"\n", "server.hots"),
    ("[fake]\nstate-directory = \"/tmp\"\n", "fake.state-directory"),
    ("[mystery]\nx = 1\n", "[mystery]"),
    ("server = 1\n", "[server]"),
    ("[server]\nport = \"eighty\"\n", "server.port"),
    ("[server]\nport = 70000\n", "server.port"),
    ("[server]\napi_key = 42\n", "server.api_key"),
    ("[server]\nlog_level = \"LOUD\"\n", "server.log_level"),
    ("[runtime]\ntype = \"kubernetes\"\n", "runtime.type"),
    ("[docker]\nno_new_privileges = \"yes\"\n", "docker.no_new_privileges"),
    ("[storage]\nallowed_host_paths = \"/data\"\n", "storage.allowed_host_paths"),
    ("[storage]\nallowed_host_paths = [\"data\"]\n", "storage.allowed_host_paths[0]"),
    ("[storage]\nallowed_host_paths = [1]\n", "storage.allowed_host_paths[0]"),
    ("[gateway]\nmode = \"path\"\n", "gateway.mode"),
    ("[server]\nport = 9000\n[gateway]\nport = 9000\n", "gateway.port"),
    ("[fake]\nisolation = \"maybe\"\n", "fake.isolation"),
    ("[execd]\naccess_token = \"on\"\n", "execd.access_token"),
    ("[gateway]\nsecure_access_keys = \"ab=c2VjcmV0\"\n", "gateway.secure_access_keys"),
    ("[gateway]\nsecure_access_keys = \"a=c2VjcmV0\"\nsecure_access_active_key = \"b\"\n",
     "gateway.secure_access_active_key"),
    ("[ingress.secure_access]\nactive_key = \"a\"\nkeys = \"a=c2VjcmV0\"\n",
     "ingress.secure_access.keys"),
])
def test_a_bad_config_stops_start_up_naming_the_key(tmp_path: Path, toml: str,
                                                    names: str) -> None:
    config = write(tmp_path / "config.toml", toml)
    code, stderr = run_failing(["--config", str(config)])
    assert code == 2, stderr
    assert "configuration error" in stderr
    assert names in stderr, stderr
    assert "Traceback" not in stderr


def test_invalid_toml_and_missing_files_are_reported(tmp_path: Path) -> None:
    broken = write(tmp_path / "broken.toml", "[server\nport = 1\n")
    code, stderr = run_failing(["--config", str(broken)])
    assert code == 2
    assert str(broken) in stderr and "not valid TOML" in stderr
    code, stderr = run_failing(["--config", str(tmp_path / "absent.toml")])
    assert code == 2
    assert "absent.toml" in stderr and "does not exist" in stderr
    code, stderr = run_failing([], env={"SANDBOX_CONFIG_PATH": str(tmp_path / "env.toml")})
    assert code == 2
    assert "env.toml" in stderr


def test_bad_cli_values_are_refused(tmp_path: Path) -> None:
    code, stderr = run_failing(["--port", "70000"])
    assert code == 2
    assert "server.port" in stderr
    code, stderr = run_failing(["--runtime", "kubernetes"])
    assert code == 2
    assert "--runtime" in stderr


def test_no_config_file_means_the_fake_runtime_on_loopback_without_a_key(
        run: type[Running]) -> None:
    server = run(["--port", "0", "--gateway-port", "0"], env={"SANDBOX_CONFIG_PATH": ""})
    assert server.url.startswith("http://127.0.0.1:")
    assert "effective configuration" in server.output
    assert re.search(r"type = 'fake'", server.output)
    assert re.search(r"host = '127.0.0.1'", server.output)
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/health").json()["runtime"] == "fake"
        assert client.get("/v1/sandboxes").status_code == 200  # no key needed


def test_cli_flags_override_the_file(run: type[Running], tmp_path: Path) -> None:
    config = write(tmp_path / "config.toml", """\
[server]
host = "127.0.0.2"
port = 1
api_key = "from-file"
log_level = "WARNING"
[gateway]
port = 2
[fake]
state_dir = "%s"
""" % (tmp_path / "state"))
    server = run(["--config", str(config), *LOOPBACK, "--api-key", "from-cli",
                  "--log-level", "INFO", "--runtime", "fake"])
    assert server.url.startswith("http://127.0.0.1:")
    assert "from-cli" not in server.output and "from-file" not in server.output  # masked
    assert "api_key = '***'" in server.output
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/v1/sandboxes", headers={"OPEN-SANDBOX-API-KEY": "from-file"}
                          ).status_code == 401
        response = client.get("/v1/sandboxes", headers={"OPEN-SANDBOX-API-KEY": "from-cli"})
        assert response.status_code == 200


def test_the_config_path_can_come_from_the_environment(run: type[Running],
                                                       tmp_path: Path) -> None:
    config = write(tmp_path / "env.toml", '[server]\napi_key = "env-key"\n')
    server = run(LOOPBACK, env={"SANDBOX_CONFIG_PATH": str(config)})
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/v1/sandboxes").status_code == 401
        assert client.get("/v1/sandboxes", headers={"OPEN-SANDBOX-API-KEY": "env-key"}
                          ).status_code == 200


def test_an_upstream_config_works_unchanged(run: type[Running], tmp_path: Path) -> None:
    """An existing opensandbox-server file starts the emulator; only the runtime and the
    listen address are overridden on the command line (tests need no Docker)."""
    config = write(tmp_path / "upstream.toml", UPSTREAM_CONFIG)
    server = run(["--config", str(config), *LOOPBACK, "--runtime", "fake"])
    output = server.output
    assert "network_mode = 'host'" in output
    assert "allowed_host_paths = ['/data']" in output
    assert "image = 'opensandbox/egress:v1.0.0'" in output
    headers = {"OPEN-SANDBOX-API-KEY": "upstream-key"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
        assert client.get("/v1/sandboxes").status_code == 200
        assert client.get("/v1/sandboxes", headers={"OPEN-SANDBOX-API-KEY": "x"}
                          ).status_code == 401
        # The allowlist from [storage] is in force.
        body = create_body(volumes=[{"name": "v", "host": {"path": str(tmp_path)},
                                     "mountPath": "/mnt/v"}])
        refused = client.post("/v1/sandboxes", json=body)
        assert refused.status_code == 400
        assert refused.json()["code"] == "VOLUME::HOST_PATH_NOT_ALLOWED"
        assert "/data" in refused.json()["message"]
        created = client.post("/v1/sandboxes", json=create_body())
        assert created.status_code == 202
        assert client.delete(f"/v1/sandboxes/{created.json()['id']}").status_code == 204


def test_upstream_sections_for_other_runtimes_are_accepted(run: type[Running],
                                                           tmp_path: Path) -> None:
    config = write(tmp_path / "k8s.toml", UPSTREAM_CONFIG + """
[router]
domain = "sandbox.example.com"

[kubernetes]
namespace = "sandboxes"
""")
    server = run(["--config", str(config), *LOOPBACK, "--runtime", "fake"])
    assert "domain = 'sandbox.example.com'" in server.output


def test_without_runc_it_runs_unisolated_and_says_so(run: type[Running],
                                                    tmp_path: Path) -> None:
    """`isolation = "auto"` with no runc on PATH: start anyway, warn, report in /health."""
    server = run(LOOPBACK, env={"SANDBOX_CONFIG_PATH": "", "PATH": str(tmp_path / "empty")})
    with httpx.Client(base_url=server.url, timeout=30) as client:
        health = client.get("/health").json()
        assert health["isolation"]["mode"] == "none"
        assert health["network"]["mode"] == "host"
        assert health["limits"]["mode"] == "none"
        assert any("NO ISOLATION" in warning and "runc" in warning
                   for warning in health["warnings"])
        created = client.post("/v1/sandboxes", json=create_body())
        assert created.status_code == 202, created.text
        sandbox_id = created.json()["id"]
        assert client.get(f"/v1/sandboxes/{sandbox_id}").json()["status"]["state"] == "Running"
        assert client.delete(f"/v1/sandboxes/{sandbox_id}").status_code == 204
    server.stop()
    assert "NO ISOLATION" in server.output_after_stop()


def test_isolation_can_be_required_or_turned_off(run: type[Running], tmp_path: Path) -> None:
    off = write(tmp_path / "off.toml", '[fake]\nisolation = "none"\n')
    server = run(["--config", str(off), *LOOPBACK])
    with httpx.Client(base_url=server.url) as client:
        health = client.get("/health").json()
    assert health["isolation"]["mode"] == "none"
    assert any('isolation = "none"' in warning for warning in health["warnings"])
    for level in ("strict", "bubblewrap"):  # the older value now means "strict"
        required = write(tmp_path / f"{level}.toml", f'[fake]\nisolation = "{level}"\n')
        code, stderr = run_failing(["--config", str(required), *LOOPBACK],
                                   env={"PATH": str(tmp_path / "empty")})
        assert code != 0
        assert 'isolation = "strict"' in stderr and "runc is not installed" in stderr, stderr


def test_upstream_secure_access_keys_sign_routes(run: type[Running], tmp_path: Path) -> None:
    """Upstream's `[ingress.secure_access]` block gives the gateway its keys: a route signed
    here carries the active key's id and verifies with that key's secret."""
    import base64
    import hashlib
    import struct

    secret = b"upstream shared secret"
    config = write(tmp_path / "keys.toml", f"""
[ingress.secure_access]
active_key = "b"
keys = [{{ key_id = "a", key = "{base64.b64encode(b'old').decode()}" }},
        {{ key_id = "b", key = "{base64.b64encode(secret).decode()}" }}]
""")
    server = run(["--config", str(config), *LOOPBACK])
    assert "secure_access_keys = '***'" in server.output
    with httpx.Client(base_url=server.url, timeout=30) as client:
        sandbox_id = client.post("/v1/sandboxes", json=create_body()).json()["id"]
        try:
            expires = int(time.time()) + 600
            endpoint = client.get(f"/v1/sandboxes/{sandbox_id}/endpoints/8080",
                                  params={"expires": expires}).json()["endpoint"]
            expires_b36, signature = endpoint.split("/")[-2:]
            canonical = f"v1\nshort\n{sandbox_id}\n8080\n{expires_b36}\n".encode()
            inner = (struct.pack(">I", len(secret)) + secret +
                     struct.pack(">I", len(canonical)) + canonical)
            assert signature == hashlib.sha256(inner).hexdigest()[:8] + "b"
        finally:
            client.delete(f"/v1/sandboxes/{sandbox_id}")
