"""The interpreter behind a Python code context. It runs *inside the sandbox*.

This file is never imported by the server: its source is handed to the sandbox's own
`python3` as `python3 -c <source> <token> <cwd> <mode>`, so it must work with nothing but
the standard library of whatever Python 3 the image has (3.7 and newer). When IPython is
importable there, its `InteractiveShell` runs the cells (magics, `display`, rich reprs, top-level
`await`); otherwise a small `ast`-based executor does the same core job.

Protocol (the server side is `server/execd/code/interpreter.py`):

* requests arrive on stdin, one JSON object per line:
  `{"op":"run","seq":N,"code":"..."}` and `{"op":"interrupt"}`. End of file ends the driver.
  User code never sees this pipe: its fd 0 is `/dev/null`.
* the user's own output goes to fd 1 and fd 2 unchanged (Python-level `print` through a
  line-buffered writer, subprocesses straight to the fd), so output keeps its order;
* the driver's messages are lines `\\x1e<token>|<json>\\n` written to private duplicates of
  fd 1 and fd 2, so user code that redirects or closes its fds cannot swallow them and a
  user `print` cannot be mistaken for one (the token is random per context). On stdout:
  `ready`, `result` (a cell's value), `display`, `error`, `done`; on stderr: `sync` (all
  stderr of cell N is before this line).
* interrupt (`{"op":"interrupt","seq":N}`): the stdin reader thread sends SIGINT to the main
  thread, whose handler raises `KeyboardInterrupt` in cell N if it is running; otherwise
  SIGINT is ignored, so the interpreter and its state survive. The server repeats the
  request until the cell ends, which covers one that arrives just before the cell starts.
"""

import ast
import base64
import builtins
import io
import json
import linecache
import os
import queue
import signal
import sys
import threading
import time
import traceback
import types

TOKEN = sys.argv[1] if len(sys.argv) > 1 else "0"
CWD = sys.argv[2] if len(sys.argv) > 2 else ""
MODE = sys.argv[3] if len(sys.argv) > 3 else "auto"  # auto | stdlib | ipython
MARK = b"\x1e" + TOKEN.encode("ascii") + b"|"
FLUSH_INTERVAL = 0.05  # a partial line is written out after this long
FLUSH_SIZE = 8192  # or once this much is pending
CO_COROUTINE = 0x0080
TOP_LEVEL_AWAIT = getattr(ast, "PyCF_ALLOW_TOP_LEVEL_AWAIT", 0)
CELL_PREFIX = "<cell-"

_state = {"running": False, "seq": None}
_driver_module = sys.modules["__main__"]  # keep the driver's globals alive


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _Stream(io.TextIOBase):
    """`sys.stdout`/`sys.stderr`: writes to the real fd, a line at a time (a partial line
    after `FLUSH_INTERVAL`), so that Python output and subprocess output stay in order."""

    def __init__(self, fd, name):
        super().__init__()
        self._fd = fd
        self._name = name
        self._pending = []
        self._size = 0
        self.lock = threading.RLock()
        self.buffer = _BinaryStream(self)

    @property
    def name(self):
        return "<" + self._name + ">"

    @property
    def encoding(self):
        return "utf-8"

    @property
    def errors(self):
        return "backslashreplace"

    def fileno(self):
        return self._fd

    def isatty(self):
        return False

    def readable(self):
        return False

    def writable(self):
        return True

    def seekable(self):
        return False

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError("write() argument must be str, not " + type(text).__name__)
        if not text:
            return 0
        with self.lock:
            self._pending.append(text)
            self._size += len(text)
            if "\n" in text or self._size >= FLUSH_SIZE:
                self.flush_locked()
        return len(text)

    def write_bytes(self, data):
        with self.lock:
            self.flush_locked()
            _write_all(self._fd, bytes(data))
        return len(data)

    def flush(self):
        with self.lock:
            self.flush_locked()

    def flush_locked(self):
        if self._pending:
            data = "".join(self._pending).encode("utf-8", "backslashreplace")
            self._pending = []
            self._size = 0
            _write_all(self._fd, data)

    def pending(self):
        return bool(self._pending)

    def reset_after_fork(self):
        self.lock = threading.RLock()


class _BinaryStream:
    """`sys.stdout.buffer`."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, data):
        return self._stream.write_bytes(data)

    def flush(self):
        self._stream.flush()

    def fileno(self):
        return self._stream.fileno()

    def isatty(self):
        return False


class _Channel:
    """The driver's messages: one line each on a private duplicate of fd 1 or fd 2."""

    def __init__(self, out_fd, err_fd, stdout, stderr):
        self.out_fd = out_fd
        self.err_fd = err_fd
        self.stdout = stdout
        self.stderr = stderr

    def send(self, message, to_stderr=False):
        stream = self.stderr if to_stderr else self.stdout
        fd = self.err_fd if to_stderr else self.out_fd
        data = MARK + json.dumps(message, default=_safe_str).encode("ascii") + b"\n"
        # Under the stream's lock: user output written before this message is out first,
        # and no flush from another thread lands in the middle of it.
        with stream.lock:
            stream.flush_locked()
            _write_all(fd, data)


_channel = None  # set in main()


def _emit(message, to_stderr=False):
    _channel.send(message, to_stderr)


def _safe_str(value):
    try:
        return str(value)
    except Exception as error:  # a broken __str__ must not break the driver
        return "<unprintable " + type(value).__name__ + ": " + repr(error) + ">"


# --- rich output ---------------------------------------------------------------------------

_REPR_METHODS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("image/jpeg", "_repr_jpeg_"),
    ("text/latex", "_repr_latex_"),
    ("application/json", "_repr_json_"),
    ("application/javascript", "_repr_javascript_"),
    ("application/pdf", "_repr_pdf_"),
)
_BINARY_TYPES = ("image/png", "image/jpeg", "application/pdf")


def _method(obj, name):
    if isinstance(obj, type):  # a class's _repr_html_ is an unbound function
        return None
    try:
        method = getattr(obj, name, None)
    except Exception:
        return None
    return method if callable(method) else None


def _jsonable(data):
    """A MIME bundle whose values JSON can carry: binary payloads base64, as Jupyter does."""
    bundle = {}
    for mime, value in data.items():
        if isinstance(value, (bytes, bytearray)):
            if mime in _BINARY_TYPES or mime.startswith("image/"):
                value = base64.b64encode(bytes(value)).decode("ascii")
            else:
                value = bytes(value).decode("utf-8", "replace")
        bundle[str(mime)] = value
    return bundle


def format_bundle(obj):
    """The MIME bundle of `obj`: `text/plain` always, others from `_repr_*_` methods."""
    data = {}
    method = _method(obj, "_repr_mimebundle_")
    if method is not None:
        try:
            bundle = method(include=None, exclude=None)
        except Exception:
            bundle = None
        if isinstance(bundle, tuple):
            bundle = bundle[0]
        if isinstance(bundle, dict):
            data.update(bundle)
    for mime, name in _REPR_METHODS:
        if mime in data:
            continue
        method = _method(obj, name)
        if method is None:
            continue
        try:
            value = method()
        except Exception:
            continue
        if isinstance(value, tuple):
            value = value[0]
        if value is not None:
            data[mime] = value
    if "text/plain" not in data:
        try:
            data["text/plain"] = repr(obj)
        except Exception as error:
            data["text/plain"] = "<repr of " + type(obj).__name__ + " failed: " + \
                _safe_str(error) + ">"
    return _jsonable(data)


def display(*objs, **kwargs):
    """Show objects as rich output now (each becomes a `result` event of the running cell).
    With `raw=True` each object is already a MIME bundle."""
    raw = kwargs.get("raw", False)
    for obj in objs:
        data = _jsonable(obj) if raw and isinstance(obj, dict) else format_bundle(obj)
        _emit({"ev": "display", "data": data})


def _flush_figures():
    """matplotlib figures a cell left open are shown as PNG, as Jupyter's inline backend
    does, then closed."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return
    if not getattr(pyplot, "_opensandbox_show", False):
        pyplot.show = lambda *args, **kwargs: _flush_figures()
        pyplot._opensandbox_show = True
    try:
        numbers = list(pyplot.get_fignums())
    except Exception:
        return
    for number in numbers:
        try:
            figure = pyplot.figure(number)
            image = io.BytesIO()
            figure.savefig(image, format="png", bbox_inches="tight")
            _emit({"ev": "display", "data": {
                "image/png": base64.b64encode(image.getvalue()).decode("ascii"),
                "text/plain": _safe_str(figure)}})
        except Exception as error:
            sys.stderr.write("could not render a figure: " + _safe_str(error) + "\n")
    try:
        pyplot.close("all")
    except Exception:
        pass


# --- errors ------------------------------------------------------------------------------


def _error_message(etype, value, lines):
    return {"ev": "error", "ename": getattr(etype, "__name__", _safe_str(etype)),
            "evalue": _safe_str(value) if value is not None else "", "traceback": lines}


def _split_lines(chunks):
    lines = []
    for chunk in chunks:
        lines.extend(_safe_str(chunk).rstrip("\n").split("\n"))
    return lines


def report_exception(etype, value, tb):
    """An `error` message for an exception raised by cell code; the driver's own frames
    are left out of the traceback."""
    while tb is not None and not tb.tb_frame.f_code.co_filename.startswith(CELL_PREFIX):
        tb = tb.tb_next
    link = tb
    while link is not None and link.tb_next is not None:
        if link.tb_next.tb_frame.f_code is _on_sigint.__code__:
            link.tb_next = None
        link = link.tb_next
    try:
        chunks = traceback.format_exception(etype, value, tb)
    except Exception:
        chunks = traceback.format_exception_only(etype, value)
    _emit(_error_message(etype, value, _split_lines(chunks)))


# --- executors ---------------------------------------------------------------------------


class StdlibExecutor:
    """Runs cells with `compile`/`eval` in one persistent `__main__` namespace; the value of
    a trailing expression is the cell's result."""

    name = "stdlib"

    def __init__(self):
        module = types.ModuleType("__main__")
        module.__dict__["__builtins__"] = builtins
        sys.modules["__main__"] = module
        self.namespace = module.__dict__
        self.count = 0
        self._loop = None
        builtins.display = display

    def run(self, code):
        self.count += 1
        number = self.count
        filename = CELL_PREFIX + str(number) + ">"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        try:
            tree = ast.parse(code, filename, "exec")
            last = None
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                last = ast.Expression(tree.body.pop().value)
            body = compile(tree, filename, "exec", flags=TOP_LEVEL_AWAIT, dont_inherit=True)
            expression = None
            if last is not None:
                expression = compile(last, filename, "eval", flags=TOP_LEVEL_AWAIT,
                                     dont_inherit=True)
        except (SyntaxError, ValueError, OverflowError):
            report_exception(*sys.exc_info())
            return number
        value = None
        try:
            _state["running"] = True
            try:
                self._execute(body)
                if expression is not None:
                    value = self._execute(expression)
            finally:
                _state["running"] = False
        except BaseException:  # KeyboardInterrupt and SystemExit are the cell's errors too
            report_exception(*sys.exc_info())
            _flush_figures()
            return number
        _flush_figures()
        if value is not None:
            self.namespace["_"] = value
            self.namespace["_" + str(number)] = value
            _emit({"ev": "result", "count": number, "data": format_bundle(value)})
        return number

    def _execute(self, code):
        result = eval(code, self.namespace)
        if code.co_flags & CO_COROUTINE:
            if self._loop is None:
                import asyncio

                self._loop = asyncio.new_event_loop()
            result = self._loop.run_until_complete(result)
        return result


def make_ipython_executor():
    """IPython's `InteractiveShell`, with its display hook and publisher turned into
    driver messages (as ipykernel does for Jupyter)."""
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    class Hook(DisplayHook):
        _data = None

        def start_displayhook(self):
            self._data = None

        def write_output_prompt(self):
            pass

        def write_format_data(self, format_dict, md_dict=None):
            self._data = format_dict

        def finish_displayhook(self):
            data, self._data = self._data, None
            if data:
                _emit({"ev": "result", "count": self.prompt_count, "data": _jsonable(data)})

    class Publisher(DisplayPublisher):
        def publish(self, data, metadata=None, source=None, **kwargs):
            _emit({"ev": "display", "data": _jsonable(data)})

        def clear_output(self, wait=False):
            pass

    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config, displayhook_class=Hook,
                                      display_pub_class=Publisher, colors="NoColor")

    def show_traceback(etype, value, stb):
        _emit(_error_message(etype, value, _split_lines(stb)))

    shell._showtraceback = show_traceback

    class IPythonExecutor:
        name = "ipython"

        def run(self, code):
            _state["running"] = True
            try:
                shell.run_cell(code, store_history=True)
            finally:
                _state["running"] = False
            _flush_figures()
            return shell.execution_count - 1

    return IPythonExecutor()


def make_executor():
    if MODE != "stdlib":
        try:
            return make_ipython_executor()
        except ImportError:
            if MODE == "ipython":
                raise
        except Exception as error:
            if MODE == "ipython":
                raise
            sys.stderr.write("IPython is installed but could not start (" + _safe_str(error) +
                             "); running cells with the standard library instead\n")
    return StdlibExecutor()


# --- the loop ------------------------------------------------------------------------------


def _on_sigint(signum, frame):
    if _state["running"]:
        raise KeyboardInterrupt


def _read_requests(in_fd, requests, main_thread):
    pending = bytearray()
    while True:
        try:
            chunk = os.read(in_fd, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            requests.put(None)
            return
        pending += chunk
        while True:
            end = pending.find(b"\n")
            if end < 0:
                break
            line = bytes(pending[:end])
            del pending[:end + 1]
            try:
                request = json.loads(line.decode("utf-8"))
            except ValueError:
                continue
            if request.get("op") == "interrupt":
                if _state["running"] and _state["seq"] == request.get("seq"):
                    signal.pthread_kill(main_thread, signal.SIGINT)
            else:
                requests.put(request)


def _flush_periodically(streams):
    while True:
        time.sleep(FLUSH_INTERVAL)
        for stream in streams:
            if stream.pending():
                try:
                    stream.flush()
                except Exception:
                    pass


def main():
    global _channel
    in_fd, out_fd, err_fd = os.dup(0), os.dup(1), os.dup(2)  # not inherited by children
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    stdout, stderr = _Stream(1, "stdout"), _Stream(2, "stderr")
    _channel = _Channel(out_fd, err_fd, stdout, stderr)
    sys.stdin = open(os.devnull)
    sys.stdout, sys.stderr = stdout, stderr
    sys.__stdout__, sys.__stderr__ = stdout, stderr  # so that nothing buffers behind our back
    if hasattr(os, "register_at_fork"):
        def after_fork():
            stdout.reset_after_fork()
            stderr.reset_after_fork()
        os.register_at_fork(after_in_child=after_fork)
    sys.argv = [""]
    if CWD:
        try:
            os.makedirs(CWD, exist_ok=True)
            os.chdir(CWD)
        except OSError as error:
            _emit({"ev": "fatal", "cwd": True, "message": _safe_str(error)})
            sys.exit(1)
    try:
        executor = make_executor()
    except BaseException as error:
        _emit({"ev": "fatal", "message": type(error).__name__ + ": " + _safe_str(error)})
        raise
    signal.signal(signal.SIGINT, _on_sigint)
    requests = queue.Queue()
    threading.Thread(target=_read_requests, name="opensandbox-requests", daemon=True,
                     args=(in_fd, requests, threading.main_thread().ident)).start()
    threading.Thread(target=_flush_periodically, name="opensandbox-flush", daemon=True,
                     args=((stdout, stderr),)).start()
    _emit({"ev": "ready", "pid": os.getpid(), "impl": executor.name,
           "version": sys.version.split()[0]})
    while True:
        request = requests.get()
        if request is None:
            break
        seq = request.get("seq", 0)
        _state["seq"] = seq
        count = 0
        try:
            try:
                count = executor.run(request.get("code", ""))
            except KeyboardInterrupt:  # arrived outside the cell's own error handling
                _emit(_error_message(KeyboardInterrupt, "", ["KeyboardInterrupt"]))
            stdout.flush()
            stderr.flush()
        finally:
            _emit({"ev": "sync", "seq": seq}, to_stderr=True)
            _emit({"ev": "done", "seq": seq, "count": count})
    stdout.flush()
    stderr.flush()


if __name__ == "__main__":  # `python3 -c <source>`; importing this file does nothing
    main()
