"""`DockerSettings`: how the Docker runtime makes its sandboxes (the `[docker]` section).

The server reads them from its config file and hands them to `DockerRuntime`; the runtime
itself reads no configuration. The keys are upstream's, plus `instance`, `state_dir` and
`init`, which are ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DockerSettings:
    network_mode: str = "bridge"
    drop_capabilities: list[str] = field(default_factory=lambda: [
        "AUDIT_WRITE", "MKNOD", "NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_MODULE",
        "SYS_PTRACE", "SYS_TIME", "SYS_TTY_CONFIG"])
    no_new_privileges: bool = True
    apparmor_profile: str = ""
    seccomp_profile: str = ""
    pids_limit: int | None = 512
    # Ours. Sandboxes of this server carry `opensandbox.io/instance=<instance>`; at start-up it
    # adopts only those, so several servers can share one engine without touching each other.
    instance: str = "default"
    # Ours: where renewed expiry times are kept (Docker labels cannot change after create).
    # Empty: $XDG_STATE_HOME/opensandbox-emulator (~/.local/state/opensandbox-emulator).
    state_dir: str = ""
    # Ours: run Docker's init (tini) as PID 1, so orphans of commands are reaped.
    init: bool = True
