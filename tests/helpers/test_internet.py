"""The tests' "internet": a network namespace on this machine that stands for the world.

`TestInternet.start()` builds it (root and iproute2 needed): a network namespace joined to
this host by a veth pair with private addresses, a DNS server inside (`dns_server.py`) that
resolves the test names, and an HTTP server on each of several addresses, each answering
`GET /` with its own name. Sandboxes reach it the way they reach the world (slirp4netns
and Docker's bridge both route through this host), and nothing leaves the machine.
`stop()` removes the namespace, the veth and the processes, whatever state they are in.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

import httpx

from tests.helpers import ROOT

HTTP_PORT = 8099
# What each server calls itself, and the last byte of its address.
HOSTS = {"alpha": 3, "beta": 4, "gamma": 5}
# The names the DNS server answers, and which server each is.
NAMES = {"allowed.test": "alpha", "other.test": "beta", "api.wild.test": "gamma",
         "deep.api.wild.test": "beta", "wild.test": "alpha", "cidr.test": "gamma"}


class InternetUnavailable(Exception):
    """This machine cannot build it (not root, no iproute2); the message says why."""


@dataclass
class TestInternet:
    __test__ = False  # not a test class, whatever pytest thinks of its name

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    subnet: str = field(default_factory=lambda: f"10.{random.randint(200, 250)}."
                                                f"{random.randint(0, 255)}")
    processes: list[subprocess.Popen[str]] = field(default_factory=list)
    dns_log: list[str] = field(default_factory=list)

    @property
    def namespace(self) -> str:
        return f"osb-inet-{self.tag}"

    @property
    def host_link(self) -> str:
        return f"osbih{self.tag}"

    @property
    def dns(self) -> str:
        """The DNS server's address (use it as `[egress] dns_upstream`)."""
        return f"{self.subnet}.2"

    def address(self, host: str) -> str:
        return f"{self.subnet}.{HOSTS[host]}"

    def url(self, name_or_address: str) -> str:
        return f"http://{name_or_address}:{HTTP_PORT}/"

    @property
    def cidr(self) -> str:
        return f"{self.subnet}.0/24"

    def start(self) -> TestInternet:
        if os.geteuid() != 0 or shutil.which("ip") is None:
            raise InternetUnavailable("building a network namespace needs root and iproute2")
        inside = f"osbin{self.tag}"
        _ip("netns", "add", self.namespace)
        try:
            _ip("link", "add", self.host_link, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", self.namespace)
            _ip("addr", "add", f"{self.subnet}.1/24", "dev", self.host_link)
            _ip("link", "set", self.host_link, "up")
            for last in (2, *HOSTS.values()):
                _ip("-n", self.namespace, "addr", "add", f"{self.subnet}.{last}/24", "dev",
                    inside)
            _ip("-n", self.namespace, "link", "set", inside, "up")
            _ip("-n", self.namespace, "link", "set", "lo", "up")
            _ip("-n", self.namespace, "route", "add", "default", "via", f"{self.subnet}.1")
            names = {name: self.address(host) for name, host in NAMES.items()}
            dns = self._run(str(ROOT / "tests" / "helpers" / "dns_server.py"), self.dns,
                            json.dumps(names))
            assert dns.stdout is not None
            if dns.stdout.readline().strip() != "ready":
                raise InternetUnavailable("the test DNS server did not start")
            _follow(dns, self.dns_log)
            for host in HOSTS:
                self._run("-c", _SERVE, self.address(host), str(HTTP_PORT), host)
            for host in HOSTS:
                _wait_served(self.url(self.address(host)), host)
        except BaseException:
            self.stop()
            raise
        return self

    def _run(self, *args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(["ip", "netns", "exec", self.namespace, sys.executable,
                                    *args], stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()
        self.processes.clear()
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_link], capture_output=True)


# Each HTTP server answers every GET with its own name.
_SERVE = """
import http.server, sys
host, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(name)))
        self.end_headers()
        self.wfile.write(name)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((host, port), Handler).serve_forever()
"""


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise InternetUnavailable(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _follow(process: subprocess.Popen[str], into: list[str]) -> None:
    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            into.append(line.strip())

    threading.Thread(target=read, daemon=True).start()


def _wait_served(url: str, name: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(url, timeout=2).text == name:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise InternetUnavailable(f"the test host {url} never answered from this host")
        time.sleep(0.1)
