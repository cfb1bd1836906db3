"""The first process of every fake sandbox: it starts the sandbox's processes for the server
and reaps whatever is orphaned.

It runs inside the sandbox as `python3 -I -S init.py <fd>`, where `<fd>` is one end of a
`SOCK_SEQPACKET` socket pair whose other end the server holds. It uses the standard library
only, and few modules of it (each import costs memory in every sandbox: `_signal` rather
than `signal`, `_socket` rather than `socket`, no `json`). The server imports this file too,
for the message layout; nothing runs on import.

Requests (server to init) are `marshal` dumps, sent in fragments: a first byte of `+` means
more follows, `R` ends the request; file descriptors ride on the last fragment. The init
trusts the server. Replies (init to server) are fixed 16-byte records, `kind, pad[3],
request (u32), a (i32), b (i32)`, little-endian, which the server validates: whoever runs
code in the sandbox may try to impersonate this process, so nothing it sends is trusted.

- `spawn`: fork a child in a new session with the given argv, env, cwd, uid/gid and stdio
  (stdin, stdout and optionally stderr arrive as descriptors; with `tty`, they are the
  slave side of a pseudo-terminal, which becomes the session's controlling terminal);
  reply `SPAWNED pid` once the child has executed its program, or `FAILED errno stage`.
  A plain process (no terminal, no uid/gid) is started by the C code behind `subprocess`
  (`_posixsubprocess.fork_exec`, a vfork where the Python has it): no Python runs in the
  child, which makes a spawn about a millisecond faster than a Python `fork`. The others
  (and Pythons whose `fork_exec` this file does not know) take the `fork` way, which
  changes ids before `chdir`, so a working directory is checked as the command's user.
- `signal`: signal the process group of a child it spawned and has not reaped yet.
- `connect`: open a TCP connection to a port on the sandbox's own loopback (127.0.0.1, then
  ::1) and hand the connected socket back (`CONNECTED`, descriptor attached), so the server
  reaches applications bound to 127.0.0.1 inside the sandbox's network namespace.
- `pause` / `resume`: stop or continue every other process of the sandbox (SIGSTOP /
  SIGCONT), for hosts without a cgroup freezer; only as PID 1 of its own PID namespace.
- `EXITED pid status` is reported for every child it spawned, with the raw wait status.

When the server's end closes (the server stopped or died), the init exits: as PID 1 of the
sandbox's PID namespace that makes the kernel kill every process of the sandbox.
"""

import _signal
import _socket
import marshal
import os
import select
import sys
import time

PROTOCOL = 1
REPLY_SIZE = 16
MAX_FDS = 4
FRAGMENT = 60 * 1024  # payload bytes per message; well under the socket's send buffer
MAX_REQUEST = 16 * 1024 * 1024
CONNECT_SECONDS = 10.0

# Reply kinds.
READY, SPAWNED, FAILED, CONNECTED, EXITED = 1, 2, 3, 4, 5
# Where a spawn or connect failed (`b` of FAILED).
STAGE_FORK, STAGE_STDIO, STAGE_CREDENTIALS, STAGE_CWD, STAGE_EXEC, STAGE_CONNECT = range(1, 7)
STAGE_REQUEST = 7

_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36


def pack_reply(kind, request=0, a=0, b=0):
    return (bytes((kind, 0, 0, 0)) + request.to_bytes(4, "little")
            + a.to_bytes(4, "little", signed=True) + b.to_bytes(4, "little", signed=True))


def unpack_reply(data):
    """(kind, request, a, b) of a reply record; raises ValueError for anything else."""
    if len(data) != REPLY_SIZE or data[0] not in (READY, SPAWNED, FAILED, CONNECTED, EXITED):
        raise ValueError("not a reply record")
    return (data[0], int.from_bytes(data[4:8], "little"),
            int.from_bytes(data[8:12], "little", signed=True),
            int.from_bytes(data[12:16], "little", signed=True))


def fragments(request):
    """The messages that carry one request."""
    payload = marshal.dumps(request, 4)
    pieces = [payload[i:i + FRAGMENT] for i in range(0, len(payload), FRAGMENT)] or [b""]
    return [b"+" + piece for piece in pieces[:-1]] + [b"R" + pieces[-1]]


def _fd_bytes(fds):
    return b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds)


def _prctl(option, value):
    """prctl(2) through ctypes, imported only here (it is the one thing `os` lacks)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except Exception:  # no ctypes: run on, the server still works
        pass


class Init:
    def __init__(self, fd):
        os.set_inheritable(fd, False)
        self.sock = _socket.socket(fileno=fd)
        self.sock.setblocking(True)
        self.pid_one = os.getpid() == 1
        self.spawned = set()  # children not reaped yet
        self.connecting = {}  # fd -> [request, socket, deadline, addresses left]
        self.partial = []
        self.poller = select.poll()

    # --- plumbing ------------------------------------------------------------------------

    def send(self, kind, request=0, a=0, b=0, fds=()):
        data = pack_reply(kind, request, a, b)
        if fds:
            self.sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _fd_bytes(fds))])
        else:
            self.sock.send(data)

    def receive(self):
        """The next whole request and its descriptors, None for a fragment, or False at
        the end (the server's end closed)."""
        space = _socket.CMSG_SPACE(MAX_FDS * 4)
        data, ancillary, _flags, _ = self.sock.recvmsg(FRAGMENT + 1, space,
                                                       _socket.MSG_CMSG_CLOEXEC)
        fds = []
        for level, kind, payload in ancillary:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                fds += [int.from_bytes(payload[i:i + 4], sys.byteorder)
                        for i in range(0, usable, 4)]
        if not data:
            return False
        self.partial.append(data[1:])
        if data[:1] == b"+" and sum(map(len, self.partial)) < MAX_REQUEST:
            _close_all(fds)
            return None
        payload, self.partial = b"".join(self.partial), []
        try:
            request = marshal.loads(payload)
        except (ValueError, EOFError, TypeError):
            request = None
        if not isinstance(request, dict):
            _close_all(fds)
            return None  # nothing to answer: not a request the server could have sent
        return request, fds

    # --- the loop ------------------------------------------------------------------------

    def run(self):
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        _signal.set_wakeup_fd(wake_w)
        _signal.signal(_signal.SIGCHLD, _ignore)
        self.poller.register(self.sock.fileno(), select.POLLIN)
        self.poller.register(wake_r, select.POLLIN)
        self.send(READY, 0, os.getpid(), PROTOCOL)
        while True:
            for fd, _events in self.poller.poll(self._poll_timeout()):
                if fd == wake_r:
                    while _drain(wake_r):
                        pass
                    self.reap()
                elif fd == self.sock.fileno():
                    message = self.receive()
                    if message is False:
                        return
                    if message is not None:
                        self.handle(*message)
                elif fd in self.connecting:
                    self.connected(fd)
            self._expire_connects()
            self.reap()

    def handle(self, request, fds):
        op = request.get("op")
        try:
            self._handle(op, request, fds)
        except Exception:  # a malformed request: say so, and serve on
            self.send(FAILED, request.get("id", 0) if isinstance(request.get("id"), int)
                      else 0, 22, STAGE_REQUEST)
        finally:
            _close_all(fds)

    def _handle(self, op, request, fds):
        if op == "spawn":
            self.spawn(request, fds)
        elif op == "connect":
            self.connect(request)
        elif op == "signal":
            pid = request["pid"]
            if pid in self.spawned:
                _quietly(os.killpg, pid, request["sig"])
        elif op in ("pause", "resume") and self.pid_one:
            # kill(-1) reaches every process of this PID namespace but the init.
            _quietly(os.kill, -1, _signal.SIGSTOP if op == "pause" else _signal.SIGCONT)
        else:
            self.send(FAILED, request.get("id", 0), 22, STAGE_REQUEST)

    def reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.spawned:
                self.spawned.discard(pid)
                self.send(EXITED, 0, pid, status)

    # --- spawn ---------------------------------------------------------------------------

    def spawn(self, request, fds):
        ident = request["id"]
        wanted = 1 + bool(request.get("stdin")) + bool(request.get("stderr"))
        if len(fds) != wanted:
            self.send(FAILED, ident, 9, STAGE_STDIO)  # EBADF
            return
        if (not request.get("tty") and request.get("uid") is None
                and request.get("gid") is None and _FORK_EXEC):
            try:
                self.spawn_plain(ident, request, fds)
                return
            except _Unfit:
                pass  # the `fork` way says what is wrong with the request
        if request.get("tty"):
            _terminal_calls()  # imported here, before the fork (and any setuid)
        err_r, err_w = os.pipe()
        try:
            pid = os.fork()
        except OSError as error:
            os.close(err_r)
            os.close(err_w)
            self.send(FAILED, ident, error.errno or 0, STAGE_FORK)
            return
        if pid == 0:
            _child(request, fds, err_w)  # never returns
        os.close(err_w)
        report = _read_to_end(err_r)
        if len(report) >= 5:
            _quietly(os.waitpid, pid, 0)
            self.send(FAILED, ident, int.from_bytes(report[1:5], "little"), report[0])
            return
        self.spawned.add(pid)
        self.send(SPAWNED, ident, pid)

    def spawn_plain(self, ident, request, fds):
        """`spawn` through `_posixsubprocess.fork_exec`. The child inherits the init's OOM
        score, so the init raises its own to 0 around the spawn (and lowers it back, which
        a process may do down to the value a privileged writer gave it)."""
        global _FORK_EXEC
        stdin = fds[0] if request.get("stdin") else None
        stdout = fds[1 if request.get("stdin") else 0]
        stderr = fds[-1] if request.get("stderr") else stdout
        try:
            argv = [os.fsencode(arg) for arg in request["argv"]]
            env = [os.fsencode(key) + b"=" + os.fsencode(value)
                   for key, value in request["env"].items()]
            cwd = os.fsencode(request["cwd"])
            program = argv[0]
        except (TypeError, AttributeError, KeyError, IndexError) as error:
            raise _Unfit() from error
        if any(b"\0" in item for item in (*argv, *env, cwd)) or \
                any(b"=" in os.fsencode(key) or not key for key in request["env"]):
            raise _Unfit()
        if b"/" in program:
            candidates = [program]
        else:
            path = os.fsencode(request["env"].get("PATH") or "/usr/local/bin:/usr/bin:/bin")
            candidates = [os.path.join(directory or b".", program)
                          for directory in path.split(b":")]
        null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) if stdin is None else None
        err_r, err_w = os.pipe()
        lowered = _oom_score()
        if lowered:
            _set_oom_score(b"0")
        try:
            pid = _FORK_EXEC(argv, candidates, cwd, env, null if stdin is None else stdin,
                             stdout, stderr, err_r, err_w)
        except OSError as error:
            os.close(err_r)
            self.send(FAILED, ident, error.errno or 0, STAGE_FORK)
            return
        except (TypeError, ValueError) as error:  # not the fork_exec this file expects
            _FORK_EXEC = None
            os.close(err_r)
            raise _Unfit() from error
        finally:
            if lowered:
                _set_oom_score(lowered)
            os.close(err_w)
            if null is not None:
                os.close(null)
        report = _read_to_end(err_r)
        if report:
            _quietly(os.waitpid, pid, 0)
            kind, _, rest = report.partition(b":")
            number, _, where = rest.partition(b":")
            try:
                code = int(number, 16) if kind == b"OSError" else 22
            except ValueError:
                code = 22
            # Before the exec, with no ids to change, only the chdir can fail.
            self.send(FAILED, ident, code or 22,
                      STAGE_CWD if where.startswith(b"noexec") else STAGE_EXEC)
            return
        self.spawned.add(pid)
        self.send(SPAWNED, ident, pid)

    # --- connect -------------------------------------------------------------------------

    def connect(self, request):
        self._try_connect(request["id"], int(request["port"]), ["127.0.0.1", "::1"])

    def _try_connect(self, ident, port, addresses):
        last = 111  # ECONNREFUSED
        while addresses:
            address = addresses.pop(0)
            family = _socket.AF_INET6 if ":" in address else _socket.AF_INET
            try:
                sock = _socket.socket(family, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
            except OSError as error:
                last = error.errno or last
                continue
            sock.setblocking(False)
            code = sock.connect_ex((address, port))
            if code == 0:
                self.send(CONNECTED, ident, fds=[sock.fileno()])
                sock.close()
                return
            if code == 115:  # EINPROGRESS
                self.connecting[sock.fileno()] = [ident, sock, _now() + CONNECT_SECONDS,
                                                  port, addresses]
                self.poller.register(sock.fileno(), select.POLLOUT)
                return
            sock.close()
            last = code
        self.send(FAILED, ident, last, STAGE_CONNECT)

    def connected(self, fd):
        ident, sock, _deadline, port, addresses = self.connecting.pop(fd)
        self.poller.unregister(fd)
        code = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
        if code == 0:
            self.send(CONNECTED, ident, fds=[fd])
            sock.close()
            return
        sock.close()
        if addresses:
            self._try_connect(ident, port, addresses)
        else:
            self.send(FAILED, ident, code, STAGE_CONNECT)

    def _poll_timeout(self):
        if not self.connecting:
            return None
        return max(0, int((min(c[2] for c in self.connecting.values()) - _now()) * 1000) + 1)

    def _expire_connects(self):
        now = _now()
        for fd in [fd for fd, c in self.connecting.items() if c[2] <= now]:
            ident, sock = self.connecting.pop(fd)[:2]
            self.poller.unregister(fd)
            sock.close()
            self.send(FAILED, ident, 110, STAGE_CONNECT)  # ETIMEDOUT

    def shutdown(self):
        """The server is gone. As PID 1 exiting is enough; otherwise kill what we started."""
        if not self.pid_one:
            for pid in list(self.spawned):
                _quietly(os.killpg, pid, _signal.SIGKILL)


class _Unfit(Exception):
    """A request `spawn_plain` leaves to the `fork` way (it reports what is wrong)."""


def _fork_exec_call():
    """`fork_exec(argv, candidates, cwd, env, stdin, stdout, stderr, err_r, err_w)` over
    this Python's `_posixsubprocess.fork_exec`, whose arguments changed between versions;
    None for a version not known here."""
    try:
        import _posixsubprocess
    except ImportError:
        return None
    native = _posixsubprocess.fork_exec
    version = sys.version_info[:2]
    if (3, 11) <= version <= (3, 13):
        def call(argv, candidates, cwd, env, stdin, stdout, stderr, err_r, err_w):
            return native(argv, candidates, False, (), cwd, env, stdin, -1, -1, stdout, -1,
                          stderr, err_r, err_w, True, True, -1, -1, None, -1, -1, None,
                          True)
    elif (3, 9) <= version <= (3, 10):
        def call(argv, candidates, cwd, env, stdin, stdout, stderr, err_r, err_w):
            return native(argv, candidates, False, (), cwd, env, stdin, -1, -1, stdout, -1,
                          stderr, err_r, err_w, True, True, -1, None, -1, -1, None)
    else:
        return None
    return call


_FORK_EXEC = None  # set by main(): the server imports this file for its layout only
_OOM_SCORE = [None]  # /proc/self/oom_score_adj, opened once


def _oom_score():
    """The init's own OOM score adjustment (bytes), or b"" when it is 0 or unreadable."""
    fd = _OOM_SCORE[0]
    if fd is None:
        try:
            fd = os.open("/proc/self/oom_score_adj", os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            fd = -1
        _OOM_SCORE[0] = fd
    if fd < 0:
        return b""
    try:
        value = os.pread(fd, 16, 0).strip()
    except OSError:
        return b""
    return b"" if value in (b"0", b"") else value


def _set_oom_score(value):
    _quietly(os.pwrite, _OOM_SCORE[0], value, 0)


def _read_to_end(fd):
    """What a child reports on its error pipe before it executes (nothing once it did: the
    pipe closes on exec), read until the pipe's end; `fd` is closed."""
    report = b""
    while True:
        try:
            chunk = os.read(fd, 512)
        except InterruptedError:
            continue
        if not chunk:
            break
        report += chunk
    os.close(fd)
    return report


def _child(request, fds, err_w):
    """In the forked child: set the process up as asked and execute it; on failure write
    `stage, errno` to `err_w` and exit 127. Never returns."""
    stage = STAGE_STDIO
    try:
        _signal.set_wakeup_fd(-1)
        for number in (_signal.SIGCHLD, _signal.SIGPIPE, _signal.SIGXFSZ):
            _signal.signal(number, _signal.SIG_DFL)
        stdin = fds.pop(0) if request.get("stdin") else os.open("/dev/null", os.O_RDONLY)
        stdout = fds.pop(0)
        stderr = fds.pop(0) if request.get("stderr") else stdout
        os.dup2(stdin, 0)
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        os.setsid()
        if request.get("tty"):
            fcntl, termios = _terminal_calls()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # the new session's controlling terminal
        try:
            adj = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
            os.write(adj, b"0")
            os.close(adj)
        except OSError:
            pass
        stage = STAGE_CREDENTIALS
        uid, gid = request.get("uid"), request.get("gid")
        if uid is not None or gid is not None:
            try:
                os.setgroups([])
            except PermissionError:
                pass  # a user namespace that denies setgroups: there are none to drop
            os.setgid(gid if gid is not None else uid)
            if uid is not None:
                os.setuid(uid)
        stage = STAGE_CWD
        os.chdir(request["cwd"])
        stage = STAGE_EXEC
        _execute(request["argv"], request["env"])
    except OSError as error:
        code = error.errno or 22
    except BaseException:
        code = 22  # EINVAL: a malformed request
    try:
        os.write(err_w, bytes((stage,)) + code.to_bytes(4, "little"))
    finally:
        os._exit(127)


def _execute(argv, env):
    """execvpe(3) without `os.execvpe`, which imports modules: after setuid the server's
    own interpreter (outside /usr) may not be readable any more."""
    program = argv[0]
    if "/" in program:
        os.execve(program, argv, env)
    failure = None
    for directory in (env.get("PATH") or "/usr/local/bin:/usr/bin:/bin").split(":"):
        try:
            os.execve(os.path.join(directory or ".", program), argv, env)
        except (FileNotFoundError, NotADirectoryError) as error:
            failure = failure or error
        except OSError as error:
            failure = error  # found but not runnable (EACCES…): report that
    raise failure or FileNotFoundError(2, "not found")


_TERMINAL = []


def _terminal_calls():
    """(fcntl, termios), imported the first time a terminal is asked for: most sandboxes
    never need them, and every module costs memory in every sandbox."""
    if not _TERMINAL:
        import fcntl
        import termios

        _TERMINAL.extend((fcntl, termios))
    return _TERMINAL


def _ignore(*_):
    pass


def _drain(fd):
    try:
        return os.read(fd, 512)
    except (BlockingIOError, InterruptedError):
        return b""


def _close_all(fds):
    for fd in fds:
        _quietly(os.close, fd)


def _quietly(function, *args):
    try:
        function(*args)
    except OSError:
        pass


def _now():
    return time.monotonic()


def main():
    fd = int(sys.argv[1])
    for number in (0, 1, 2):  # keep 0-2 taken, so received descriptors never land there
        try:
            os.fstat(number)
        except OSError:
            os.open("/dev/null", os.O_RDWR)
    _prctl(_PR_SET_DUMPABLE, 0)  # no ptrace, no /proc/1/mem, no /proc/1/fd from the sandbox
    global _FORK_EXEC
    _FORK_EXEC = _fork_exec_call()
    init = Init(fd)
    if not init.pid_one:
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)  # orphans come back to us, not to the host's init
    try:
        init.run()
    finally:
        init.shutdown()


if __name__ == "__main__":
    main()
