"""Configuration: upstream's TOML layout, plus sections of our own.

An `opensandbox-server` config file works unchanged: `[server]`, `[runtime]`, `[docker]`,
`[storage]`, `[egress]` and `[router]` keep upstream's keys (those we cannot honour are
accepted and shown as ignored). Our own settings live in `[gateway]`, `[execd]`, `[fake]`
and `[control]`. An unknown key or a bad value stops start-up with a message naming the key.
`[docker]` is the Docker runtime's own `DockerSettings`, read here and handed to it.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from opensandbox_emulator.runtimes.docker.settings import DockerSettings


class ConfigError(Exception):
    """The configuration cannot be used; the message names the offending key."""


@dataclass(frozen=True)
class ServerSection:
    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "INFO"
    api_key: str = ""
    # Upstream HEAD: the largest `timeout` a create request may ask for.
    max_sandbox_timeout_seconds: int = 86400
    # Upstream HEAD: the host put in endpoints (overrides the request's Host).
    eip: str = ""
    # Ours: a file holding the API key (its first line), so the key is not on a command
    # line; OPENSANDBOX_API_KEY in the environment works too. See `api_keys.py`.
    api_key_file: str = ""
    # Ours: origins that may call the Lifecycle API from a browser (CORS); empty: none.
    cors_origins: list[str] = field(default_factory=list)
    # Ours: Host header values accepted besides loopback names and the configured ones
    # (against DNS rebinding; see `hosts.py`). "*" accepts any host (behind a proxy).
    allowed_hosts: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RuntimeSection:
    type: Literal["fake", "docker"] = "fake"
    execd_image: str = ""  # upstream injects execd from this image; ours is embedded


@dataclass(frozen=True)
class StorageSection:
    allowed_host_paths: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EgressSection:
    image: str = ""  # upstream's sidecar image; ours is the server itself
    # Upstream's key: "dns" filters names only (connections to literal addresses pass, as
    # upstream's default); "dns+nft" (ours by default) filters addresses too.
    mode: Literal["dns", "dns+nft"] = "dns+nft"
    # Ours: the resolvers the DNS forwarder asks ("10.0.0.2, 10.0.0.3:5353"); empty: the
    # host's (/etc/resolv.conf).
    dns_upstream: str = ""


@dataclass(frozen=True)
class RouterSection:
    domain: str = ""
    wildcard_domain: str = ""


@dataclass(frozen=True)
class GatewaySection:
    """Ours: the second listener that routes requests to a sandbox's ports."""

    port: int = 44772
    # "uri": endpoints are `host:port/<id>/<port>`; "header": `host:port` plus
    # the `OpenSandbox-Ingress-To` header. The gateway accepts both either way.
    mode: Literal["uri", "header"] = "uri"
    # The host put into endpoints; empty means the host the client used.
    public_host: str = ""
    # Signed routes (OSEP-0011): "id=BASE64,id2=BASE64" as upstream's ingress takes them
    # (or env OPENSANDBOX_SECURE_ACCESS_KEYS, or upstream's [ingress.secure_access]); empty:
    # a key made at start-up. The active key (default: the first) signs, all verify.
    secure_access_keys: str = ""
    secure_access_active_key: str = ""


@dataclass(frozen=True)
class ExecdSection:
    """Ours: the embedded execd."""

    # Give each sandbox its own X-EXECD-ACCESS-TOKEN (handed out in endpoint headers).
    access_token: bool = False
    log_buffer_bytes: int = 4 * 1024 * 1024
    max_finished_commands: int = 1000
    finished_command_ttl_seconds: int = 3600
    interrupt_grace_seconds: float = 3.0
    # All finished commands' logs together, across sandboxes; the oldest are forgotten
    # first past it (see `commands/budget.py`).
    finished_logs_budget_bytes: int = 256 * 1024 * 1024


@dataclass(frozen=True)
class FakeSection:
    """Ours: the runtime that makes each sandbox a container of this host's system."""

    state_dir: str = ""  # empty: a temporary directory, removed at shutdown
    volumes_root: str = ""  # where `pvc` named volumes live; empty: under state_dir
    # "auto": every layer of isolation the host allows, down to none (loudly); "strict":
    # every layer or refuse to start; "none": none. "bubblewrap" (older) means "strict".
    isolation: Literal["auto", "strict", "bubblewrap", "none"] = "auto"
    # The most processes (threads included) a sandbox may have at once; 0: no limit.
    pids_limit: int = 512


@dataclass(frozen=True)
class ControlSection:
    """Ours: the control API for tests (`/_emulator/…`: reset, journal, faults, clock)."""

    enabled: bool = False
    journal_size: int = 1000  # requests the journal keeps; older ones are dropped


@dataclass(frozen=True)
class Config:
    server: ServerSection = field(default_factory=ServerSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    docker: DockerSettings = field(default_factory=DockerSettings)
    storage: StorageSection = field(default_factory=StorageSection)
    egress: EgressSection = field(default_factory=EgressSection)
    router: RouterSection = field(default_factory=RouterSection)
    gateway: GatewaySection = field(default_factory=GatewaySection)
    execd: ExecdSection = field(default_factory=ExecdSection)
    fake: FakeSection = field(default_factory=FakeSection)
    control: ControlSection = field(default_factory=ControlSection)

    def replace(self, section: str, **values: Any) -> Config:
        current = getattr(self, section)
        return dataclasses.replace(self, **{section: dataclasses.replace(current, **values)})

    def describe(self) -> str:
        """The effective configuration as TOML-ish lines, with the API key masked."""
        lines = []
        for section in dataclasses.fields(self):
            lines.append(f"[{section.name}]")
            for item in dataclasses.fields(getattr(self, section.name)):
                value = getattr(getattr(self, section.name), item.name)
                if item.name in ("api_key", "secure_access_keys") and value:
                    value = "***"
                key = item.name.replace("_", "-") if section.name == "router" else item.name
                lines.append(f"  {key} = {value!r}")
        return "\n".join(lines)


# Upstream sections that configure runtimes we do not emulate: accepted, ignored.
IGNORED_SECTIONS = ("kubernetes", "agent_sandbox", "secure_runtime", "ingress")


def _check(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        return _check(value, next(o for o in options if o is not type(None)), where)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _upstream_secure_access(ingress: Any) -> dict[str, str]:
    """Upstream's `[ingress.secure_access]` (`active_key`, `keys = [{key_id, key}]`) as our
    `[gateway]` keys; the rest of `[ingress]` stays ignored."""
    block = ingress.get("secure_access") if isinstance(ingress, dict) else None
    if not isinstance(block, dict):
        return {}
    keys = block.get("keys")
    if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
        raise ConfigError("ingress.secure_access.keys: expected a list of {key_id, key} tables")
    text = ",".join(f"{k.get('key_id', '')}={k.get('key', '')}" for k in keys)
    return {"secure_access_keys": text,
            "secure_access_active_key": str(block.get("active_key", ""))}


def from_mapping(data: dict[str, Any]) -> Config:
    """Build a `Config` from parsed TOML, refusing unknown keys and bad values."""
    sections: dict[str, Any] = {}
    config_hints = typing.get_type_hints(Config)
    data = dict(data)
    upstream_keys = _upstream_secure_access(data.get("ingress"))
    if upstream_keys:
        gateway = dict(data.get("gateway") or {})
        for key, value in upstream_keys.items():
            gateway.setdefault(key, value)
        data["gateway"] = gateway
    for name, body in data.items():
        if name in IGNORED_SECTIONS:
            continue
        if name not in config_hints:
            known = ", ".join(f"[{n}]" for n in config_hints)
            raise ConfigError(f"unknown section [{name}] (known sections: {known})")
        if not isinstance(body, dict):
            raise ConfigError(f"[{name}] must be a table")
        section_type = config_hints[name]
        hints = typing.get_type_hints(section_type)
        values = {}
        for key, value in body.items():
            attr = key.replace("-", "_")
            if attr not in hints:
                raise ConfigError(f"unknown key '{name}.{key}' (known keys in [{name}]: "
                                  f"{', '.join(hints)})")
            values[attr] = _check(value, hints[attr], f"{name}.{key}")
        sections[name] = section_type(**values)
    config = Config(**sections)
    if config.server.api_key.strip() and config.server.api_key_file:
        raise ConfigError("server.api_key_file: set either server.api_key or "
                          "server.api_key_file, not both")
    validate(config)
    return config


def validate(config: Config) -> None:
    """Cross-field checks; each message names the key."""
    for key, port in (("server.port", config.server.port), ("gateway.port", config.gateway.port)):
        if not 0 <= port <= 65535:
            raise ConfigError(f"{key}: {port} is not a TCP port (0-65535)")
    if config.server.port == config.gateway.port and config.server.port != 0:
        raise ConfigError("gateway.port: must differ from server.port")
    for i, prefix in enumerate(config.storage.allowed_host_paths):
        if not prefix.startswith("/"):
            raise ConfigError(f"storage.allowed_host_paths[{i}]: {prefix!r} is not absolute")
    if config.server.max_sandbox_timeout_seconds < 60:
        raise ConfigError("server.max_sandbox_timeout_seconds: must be at least 60")
    if config.fake.pids_limit < 0:
        raise ConfigError("fake.pids_limit: must be 0 (no limit) or more")
    if config.execd.log_buffer_bytes < 1024:
        raise ConfigError("execd.log_buffer_bytes: must be at least 1024")
    if config.control.journal_size < 1:
        raise ConfigError("control.journal_size: must be at least 1")
    if config.execd.finished_logs_budget_bytes < config.execd.log_buffer_bytes:
        raise ConfigError("execd.finished_logs_budget_bytes: must be at least "
                          f"execd.log_buffer_bytes ({config.execd.log_buffer_bytes}), so that "
                          "the newest finished command always fits")
    for i, origin in enumerate(config.server.cors_origins):
        if origin != "*" and ("://" not in origin or origin.endswith("/")):
            raise ConfigError(f"server.cors_origins[{i}]: {origin!r} is not an origin; write "
                              "scheme://host[:port] with no path, e.g. "
                              "\"http://localhost:3000\"")
    if config.gateway.secure_access_keys:
        from opensandbox_emulator.server.access.signing import parse_keys

        try:
            keys = parse_keys(config.gateway.secure_access_keys)
        except ValueError as error:
            raise ConfigError(f"gateway.secure_access_keys: {error}") from error
        active = config.gateway.secure_access_active_key
        if active and active not in keys:
            raise ConfigError(f"gateway.secure_access_active_key: {active!r} is not one of the "
                              f"keys ({', '.join(keys)})")
    elif config.gateway.secure_access_active_key:
        raise ConfigError("gateway.secure_access_active_key: set secure_access_keys too")
    if config.egress.dns_upstream:
        from opensandbox_emulator.runtimes.egress.resolvers import parse_upstreams

        try:
            parse_upstreams(config.egress.dns_upstream)
        except ValueError as error:
            raise ConfigError(f"egress.dns_upstream: {config.egress.dns_upstream!r} is not a "
                              f"list of resolver addresses (ip[:port], comma-separated): "
                              f"{error}") from error
    if config.server.log_level.upper() not in ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"):
        raise ConfigError(f"server.log_level: {config.server.log_level!r} is not a log level")


def _keys_from_environment(config: Config) -> Config:
    """Upstream's `OPENSANDBOX_SECURE_ACCESS_KEYS`/`…_ACTIVE_KEY`, where the file sets none
    (key material from a secret rather than a plain file)."""
    keys = os.environ.get("OPENSANDBOX_SECURE_ACCESS_KEYS", "")
    if not keys or config.gateway.secure_access_keys:
        return config
    config = config.replace("gateway", secure_access_keys=keys, secure_access_active_key=
                            os.environ.get("OPENSANDBOX_SECURE_ACCESS_ACTIVE_KEY", ""))
    validate(config)
    return config


def load(path: str | None) -> Config:
    """Read the config file named by `path` or `SANDBOX_CONFIG_PATH`; none means defaults."""
    path = path or os.environ.get("SANDBOX_CONFIG_PATH") or None
    if path is None:
        return _keys_from_environment(Config())
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError as error:
        raise ConfigError(f"config file {path} does not exist") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from error
    return _keys_from_environment(from_mapping(data))
