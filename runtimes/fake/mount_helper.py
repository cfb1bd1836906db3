"""Stage a sandbox's mounts in a private mount namespace, then exec runc (see `launch.py`).

    python3 -I -S mount_helper.py <userns-fd> <count> (<kind> <source> <target>)... <command>...

In a mount namespace of its own that nothing else shares, it attaches each source at its
target: `bind` as a plain recursive bind mount, `idmap` as a clone of the source's tree
given the user namespace's id map (`idmap.py`). Then it executes the command (runc), which
inherits that namespace and binds the targets into the container; nothing is ever mounted
in the host's namespace. `<userns-fd>` is -1 when nothing is idmapped. The server imports
this module too, for the system calls (`idmap.supported`).
"""

import ctypes
import os
import platform
import struct
import sys

# System call numbers are the same on every architecture for these (new) calls.
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442
OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC = 0x1, 0o2000000
AT_FDCWD, AT_EMPTY_PATH, AT_RECURSIVE = -100, 0x1000, 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_IDMAP = 0x00100000
CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _check(result):
    if result < 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))
    return result


def open_tree(path):
    """A detached copy of the mount tree at `path` (a descriptor)."""
    if platform.machine() not in ("x86_64", "aarch64", "riscv64", "ppc64le", "s390x"):
        raise OSError(38, "idmapped mounts are not wired up for this architecture")
    return _check(_libc.syscall(SYS_OPEN_TREE, AT_FDCWD, os.fsencode(path),
                                OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE))


def set_idmap(tree, userns_fd):
    attr = struct.pack("QQQQ", MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
    buffer = ctypes.create_string_buffer(attr, len(attr))
    _check(_libc.syscall(SYS_MOUNT_SETATTR, tree, b"", AT_EMPTY_PATH | AT_RECURSIVE,
                         buffer, len(attr)))


def attach(tree, target):
    _check(_libc.syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, os.fsencode(target),
                         MOVE_MOUNT_F_EMPTY_PATH))


def main():
    userns_fd, count = int(sys.argv[1]), int(sys.argv[2])
    entries = sys.argv[3:3 + 3 * count]
    command = sys.argv[3 + 3 * count:]
    _check(_libc.unshare(CLONE_NEWNS))
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None))
    for kind, source, target in zip(entries[0::3], entries[1::3], entries[2::3],
                                    strict=True):
        if kind == "idmap":
            tree = open_tree(source)
            set_idmap(tree, userns_fd)
            attach(tree, target)
            os.close(tree)
        else:
            _check(_libc.mount(os.fsencode(source), os.fsencode(target), None,
                               MS_BIND | MS_REC, None))
    if userns_fd >= 0:
        os.close(userns_fd)
    os.execv(command[0], command)


if __name__ == "__main__":
    try:
        main()
    except OSError as error:
        sys.stderr.write(f"level=error msg=\"preparing idmapped volumes: {error}\"\n")
        sys.exit(1)
