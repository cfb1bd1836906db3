"""A sandbox's own `/etc`: private, writable, and free of the host's secrets.

The sandbox runs the host's programs, so it needs some of the host's configuration:
certificates, the dynamic linker's cache, alternatives, time zone, shell start-up files,
the configuration of installed toolchains (`java-*`, `python3*`). Those are bound read-only
from the host, one entry at a time, from the allowlist below; anything not on it stays out
(`shadow`, `gshadow`, `sudoers`, `ssh`, `ssl/private`, package manager credentials…).
The account files, `hosts`, `hostname`, `resolv.conf` and `nsswitch.conf` are written for
the sandbox: users it adds stay inside it. `passwd` and `group` list the host's system
accounts (ids below 1000, and nobody), which the host's programs expect, without anything
about the host's people; `shadow` and `gshadow` lock every account.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass

HOST_ETC = "/etc"
# Host entries every sandbox sees read-only: names and glob patterns, relative to /etc.
SHARED = (
    "adduser.conf", "alternatives", "bash.bashrc", "bindresvport.blacklist",
    "ca-certificates", "ca-certificates.conf", "debian_version", "default", "deluser.conf",
    "dpkg", "environment", "ethertypes", "fonts", "gai.conf", "gitconfig", "host.conf",
    "inputrc", "issue", "issue.net", "java-*", "jvm", "ld.so.cache", "ld.so.conf",
    "ld.so.conf.d", "legal", "locale.alias", "locale.conf", "locale.gen", "localtime",
    "login.defs", "lsb-release", "magic", "magic.mime", "mailcap", "mailcap.order",
    "manpath.config", "mime.types", "nanorc", "networks", "os-release", "perl", "profile",
    "profile.d", "protocols", "python3*", "rpc", "services", "shells", "skel", "ssl/certs",
    "ssl/openssl.cnf", "terminfo", "timezone", "vim", "xdg",
)
# Never shared, even if a pattern above would match (defence in depth).
NEVER = {"shadow", "gshadow", "shadow-", "gshadow-", "sudoers", "sudoers.d", "ssh",
         "ssl/private", "subuid", "subgid", "machine-id", "apt", "pip.conf", "npmrc",
         "netrc", "security", "krb5.keytab", "passwd", "group", "hosts", "hostname",
         "resolv.conf", "nsswitch.conf", "mtab"}
SYSTEM_ID_LIMIT = 1000
NOBODY = 65534


@dataclass(frozen=True)
class SharedEntry:
    """A host entry of /etc the sandbox sees: bound read-only, or (for a symlink, which a
    bind would follow) recreated as the same symlink."""

    name: str  # relative to /etc
    host_path: str
    symlink: str | None = None
    is_dir: bool = False


def shared_entries(host_etc: str = HOST_ETC) -> list[SharedEntry]:
    """The allowlisted entries that exist on this host, sorted so parents come first."""
    try:
        names = os.listdir(host_etc)
    except OSError:
        return []
    wanted: set[str] = set()
    for pattern in SHARED:
        if "/" in pattern:
            if os.path.lexists(os.path.join(host_etc, pattern)):
                wanted.add(pattern)
        else:
            wanted.update(fnmatch.filter(names, pattern))
    entries = []
    for name in sorted(wanted - NEVER):
        path = os.path.join(host_etc, name)
        if os.path.islink(path):
            entries.append(SharedEntry(name, path, symlink=os.readlink(path)))
        elif os.path.isdir(path):
            entries.append(SharedEntry(name, path, is_dir=True))
        elif os.path.isfile(path):
            entries.append(SharedEntry(name, path))
    return entries


def _accounts(text: str, *, id_field: int = 2) -> list[list[str]]:
    kept = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 4 or line.startswith("#") or not fields[id_field].isdigit():
            continue
        number = int(fields[id_field])
        if number < SYSTEM_ID_LIMIT or number == NOBODY:
            kept.append(fields)
    return kept


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(4 * 1024 * 1024)
    except OSError:
        return ""


def account_files(host_etc: str = HOST_ETC) -> dict[str, str]:
    """passwd, group, shadow and gshadow for a sandbox: the host's system accounts, with
    every password locked and no host person in any group."""
    users = _accounts(_read(os.path.join(host_etc, "passwd")))
    if not any(fields[0] == "root" for fields in users):
        users.insert(0, ["root", "x", "0", "0", "root", "/root", "/bin/sh"])
    groups = _accounts(_read(os.path.join(host_etc, "group")))
    if not any(fields[0] == "root" for fields in groups):
        groups.insert(0, ["root", "x", "0", ""])
    names = {fields[0] for fields in users}
    passwd = "".join(":".join([f[0], "x", *f[2:]]) + "\n" for f in users)
    group = "".join(":".join([f[0], "x", f[2], ",".join(m for m in f[3].split(",")
                                                       if m in names)]) + "\n"
                    for f in groups)
    shadow = "".join(f"{f[0]}:*:19000:0:99999:7:::\n" for f in users)
    gshadow = "".join(f"{f[0]}:*::\n" for f in groups)
    return {"passwd": passwd, "group": group, "shadow": shadow, "gshadow": gshadow}


def network_files(hostname: str, address: str, nameservers: list[str]) -> dict[str, str]:
    hosts = (f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
             f"{address}\t{hostname}\n")
    resolv = "".join(f"nameserver {server}\n" for server in nameservers)
    nsswitch = ("passwd:         files\ngroup:          files\nshadow:         files\n"
                "gshadow:        files\nhosts:          files dns\nnetworks:       files\n"
                "protocols:      db files\nservices:       db files\nethers:         db files\n"
                "rpc:            db files\n")
    return {"hosts": hosts, "hostname": hostname + "\n", "resolv.conf": resolv,
            "nsswitch.conf": nsswitch}


def write_etc(etc: str, *, hostname: str, address: str, nameservers: list[str],
              owner: tuple[int, int], shadow_gid: int | None) -> list[SharedEntry]:
    """Fill the private `etc` directory (on the host) and return the host entries still to
    bind read-only over their placeholders, which are created here."""
    os.makedirs(etc, exist_ok=True)
    os.chmod(etc, 0o755)
    files = {**account_files(), **network_files(hostname, address, nameservers)}
    for name, content in files.items():
        path = os.path.join(etc, name)
        with open(path, "w") as handle:
            handle.write(content)
        secret = name in ("shadow", "gshadow")
        os.chmod(path, 0o640 if secret else 0o644)
        os.chown(path, owner[0], shadow_gid if secret and shadow_gid is not None
                 else owner[1])
    mtab = os.path.join(etc, "mtab")
    os.symlink("../proc/self/mounts", mtab)
    os.lchown(mtab, *owner)
    binds = []
    for entry in shared_entries():
        target = os.path.join(etc, entry.name)
        parent = os.path.dirname(target)
        if not os.path.isdir(parent):
            os.makedirs(parent, 0o755)
            os.chown(parent, *owner)
        if entry.symlink is not None:
            os.symlink(entry.symlink, target)
            os.lchown(target, *owner)
            continue
        if entry.is_dir:
            os.makedirs(target, 0o755, exist_ok=True)
        else:
            with open(target, "w"):
                pass
        os.chown(target, *owner)
        binds.append(entry)
    os.chown(etc, *owner)
    return binds
