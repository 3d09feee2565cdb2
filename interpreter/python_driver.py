"""Capsule code-interpreter driver for Python and bash contexts (runs inside a sandbox).

The daemon starts one driver per context with three streams (docs/adr/0011):
  fd 3  requests from the daemon, one JSON object per line
  fd 4  events to the daemon, one JSON object per line
  fd 1, 2  the daemon's diagnostics stream until the driver replaces them

User code never sees fds 3 and 4 (they are close-on-exec and not where print
goes): the driver points fd 1 and 2 at pipes of its own and turns whatever
arrives there (print, C extensions, subprocesses) into stdout/stderr events,
JSON-escaped. A printed line that looks like an event is just text in one.

Python contexts run cells in an IPython InteractiveShell, so results come from
IPython's display formatters (_repr_html_, _repr_png_, ...), the inline
matplotlib backend and its traceback formatter, exactly as in a notebook.
Bash contexts feed cells to one interactive bash, so cd and exports persist.
"""

import fcntl
import io
import json
import os
import select
import signal
import sys
import threading

REQ_FD = 3
EVT_FD = 4
# Most bytes of output one event carries; larger writes become several events.
CHUNK = 64 * 1024
# A result's mime bundle larger than this is replaced by a note (the daemon bounds it too).
MAX_BUNDLE = 16 * 1024 * 1024

_emit_lock = threading.Lock()
_current = {"id": None}


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class Interrupts:
    """SIGINT raises KeyboardInterrupt only while a cell runs and the main thread writes no event."""

    def __init__(self):
        self.main = threading.get_ident()
        self.running = False
        self.emitting = 0
        self.pending = False
        self.requested = False

    def handler(self, signum, frame):
        if not self.running:
            return
        self.requested = True
        if self.emitting:
            self.pending = True
            return
        raise KeyboardInterrupt()

    def after_emit(self):
        if self.pending and self.running and not self.emitting:
            self.pending = False
            raise KeyboardInterrupt()


interrupts = Interrupts()


def emit(event):
    if "id" not in event:
        event["id"] = _current["id"]
    line = (json.dumps(event, ensure_ascii=True, default=str) + "\n").encode("ascii")
    # Signal handlers run on the main thread only; the capture thread's writes cannot be cut.
    main = threading.get_ident() == interrupts.main
    if main:
        interrupts.emitting += 1
    try:
        with _emit_lock:
            _write_all(EVT_FD, line)
    finally:
        if main:
            interrupts.emitting -= 1
    if main:
        interrupts.after_emit()


class Capture:
    """fd 1 and 2 go to pipes read here; their bytes become stdout/stderr events, in order per stream."""

    def __init__(self):
        self.lock = threading.Lock()
        self.pipes = {}
        self.decoders = {}
        import codecs

        for fd, name in ((1, "stdout"), (2, "stderr")):
            r, w = os.pipe()
            os.dup2(w, fd)
            os.close(w)
            fcntl.fcntl(r, fcntl.F_SETFL, fcntl.fcntl(r, fcntl.F_GETFL) | os.O_NONBLOCK)
            os.set_inheritable(r, False)
            self.pipes[r] = name
            self.decoders[r] = codecs.getincrementaldecoder("utf-8")("replace")
        # Python-level writes become events directly, in the order they were made across both streams;
        # only output below Python (C code, child processes) goes through the pipes.
        sys.stdout = Writer(self, "stdout", 1)
        sys.stderr = Writer(self, "stderr", 2)
        threading.Thread(target=self.run, daemon=True, name="capsule-capture").start()

    def _read_available(self, r):
        while True:
            try:
                data = os.read(r, CHUNK)
            except BlockingIOError:
                return
            if not data:
                return
            text = self.decoders[r].decode(data)
            if text:
                emit({"t": self.pipes[r], "text": text})

    def drain(self):
        """Everything written to fd 1 and 2 so far becomes events before the caller's next event."""
        if Writer.pending["text"]:
            Writer.flush_pending(self)
        with self.lock:
            for r in self.pipes:
                self._read_available(r)

    def run(self):
        fds = list(self.pipes)
        while True:
            ready, _, _ = select.select(fds, [], [])
            with self.lock:
                for r in ready:
                    self._read_available(r)


class Writer(io.TextIOBase):
    """sys.stdout / sys.stderr: whole lines (or what a flush finds) as events, after any earlier fd-level output."""

    pending = {"stream": None, "text": ""}
    lock = threading.RLock()

    def __init__(self, capture, name, fd):
        self.capture = capture
        self.name = name
        self._fd = fd

    def fileno(self):
        return self._fd

    @property
    def encoding(self):
        return "utf-8"

    def writable(self):
        return True

    def isatty(self):
        return False

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not %s" % type(s).__name__)
        with Writer.lock:
            p = Writer.pending
            if p["stream"] not in (None, self.name):
                Writer.flush_pending(self.capture)
            p["stream"] = self.name
            p["text"] += s
            if "\n" in s or len(p["text"]) >= CHUNK:
                Writer.flush_pending(self.capture)
        return len(s)

    def flush(self):
        Writer.flush_pending(self.capture)

    @staticmethod
    def flush_pending(capture):
        with Writer.lock:
            p = Writer.pending
            text, stream = p["text"], p["stream"]
            p["text"], p["stream"] = "", None
        if text:
            capture.drain()
            for i in range(0, len(text), CHUNK):
                emit({"t": stream, "text": text[i:i + CHUNK]})


def read_requests():
    """Request lines from fd 3 (the daemon is trusted, but a broken line is skipped, not fatal)."""
    buf = b""
    while True:
        try:
            data = os.read(REQ_FD, 1 << 20)
        except InterruptedError:
            continue
        except KeyboardInterrupt:
            continue
        if not data:
            return
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            try:
                yield json.loads(line)
            except ValueError:
                continue


def bounded(bundle):
    size = sum(len(v) if isinstance(v, str) else len(json.dumps(v, default=str)) for v in bundle.values())
    if size <= MAX_BUNDLE:
        return bundle
    return {"text/plain": "<result of %d bytes omitted: larger than %d>" % (size, MAX_BUNDLE)}


# --- Python ------------------------------------------------------------------


def plain_python_context(capture):
    """Without IPython (templates other than python): cells still keep their state, results are repr() text."""
    import ast
    import linecache
    import platform
    import traceback

    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    count = [0]

    def execute(req):
        count[0] += 1
        name = "<cell-%d>" % count[0]
        code = req.get("code", "")
        # The source goes in linecache, so tracebacks show the user's lines.
        linecache.cache[name] = (len(code), None, code.splitlines(True), name)
        envs = req.get("envs") or {}
        saved = {k: os.environ.get(k) for k in envs}
        os.environ.update(envs)
        try:
            interrupts.running = True
            try:
                tree = ast.parse(code, name, "exec")
                last = None
                if tree.body and isinstance(tree.body[-1], ast.Expr):
                    last = ast.Expression(tree.body.pop().value)
                exec(compile(tree, name, "exec"), namespace)
                if last is not None:
                    value = eval(compile(last, name, "eval"), namespace)
                    if value is not None:
                        namespace["_"] = value
                        capture.drain()
                        emit({"t": "result", "data": bounded({"text/plain": repr(value)}), "metadata": {}})
            finally:
                interrupts.running = False
            return "ok", count[0]
        except BaseException as e:  # noqa: BLE001 - every exception of a cell is its result
            capture.drain()
            # Only the cell's frames (and what they called), not this driver's (its SIGINT handler included).
            frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename != __file__]
            lines = ["Traceback (most recent call last):\n"] if frames else []
            lines += traceback.format_list(frames) + traceback.format_exception_only(type(e), e)
            emit({
                "t": "error",
                "name": type(e).__name__,
                "value": str(e),
                "traceback": [line for chunk in lines for line in chunk.rstrip("\n").split("\n")],
            })
            return ("interrupted" if isinstance(e, KeyboardInterrupt) and interrupts.requested else "error"), count[0]
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    return execute, {"version": platform.python_version(), "rich": False}


def python_context(capture):
    # A notebook's import path: the working directory first, not this file's directory.
    sys.path[0] = ""
    try:
        import IPython  # noqa: F401
    except ImportError:
        return plain_python_context(capture)
    # Lazily inline: matplotlib picks this backend when user code imports it, and the backend then
    # hooks itself into the shell (figures shown or left open at the end of a cell become results).
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell

    class Publisher(DisplayPublisher):
        def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):
            capture.drain()
            emit({"t": "display", "data": bounded(data), "metadata": metadata or {}})

        def clear_output(self, wait=False):
            pass

    class Hook(DisplayHook):
        def write_output_prompt(self):
            pass

        def write_format_data(self, format_dict, md_dict=None):
            capture.drain()
            emit({"t": "result", "data": bounded(format_dict), "metadata": md_dict or {}})

    class Shell(InteractiveShell):
        def _showtraceback(self, etype, evalue, stb):
            capture.drain()
            # The SIGINT handler's frame is the driver's, not the user's.
            stb = [chunk for chunk in stb if __file__ not in str(chunk)]
            emit({
                "t": "error",
                "name": getattr(etype, "__name__", str(etype)),
                "value": str(evalue),
                "traceback": [line for chunk in stb for line in str(chunk).split("\n")],
            })

        def enable_gui(self, gui=None):
            pass

    from traitlets.config import Config

    Shell.display_pub_class = Publisher
    Shell.displayhook_class = Hook
    config = Config()
    # No history database: a context's history is its cells, and HOME may not be writable.
    config.HistoryManager.enabled = False
    config.HistoryManager.hist_file = ":memory:"
    shell = Shell.instance(config=config, colors="NoColor")

    def execute(req):
        envs = req.get("envs") or {}
        saved = {k: os.environ.get(k) for k in envs}
        os.environ.update(envs)
        status = "ok"
        try:
            interrupts.running = True
            try:
                res = shell.run_cell(req.get("code", ""), store_history=True)
            finally:
                interrupts.running = False
            if interrupts.requested:
                status = "interrupted"
            elif not res.success:
                status = "error"
        except KeyboardInterrupt:
            status = "interrupted"
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return status, shell.execution_count - 1

    import platform

    return execute, {"version": platform.python_version()}


# --- bash --------------------------------------------------------------------


def bash_context(capture):
    import shlex
    import subprocess
    import tempfile

    # SIGINT is for bash and the command it runs; the driver only waits for the status line.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    status_r, status_w = os.pipe()
    os.set_inheritable(status_r, False)
    STATUS_FD = 200
    workdir = tempfile.mkdtemp(prefix="capsule-bash-")
    os.chmod(workdir, 0o700)

    def child_setup():
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    # The status pipe sits at STATUS_FD in bash (pass_fds keeps it there: close_fds runs after preexec_fn).
    os.dup2(status_w, STATUS_FD)
    os.close(status_w)
    stdin_r, stdin_w = os.pipe()
    proc = subprocess.Popen(
        # --noediting: no readline, which would echo every line it reads.
        ["bash", "--norc", "--noprofile", "--noediting", "+m", "+H", "-i"],
        stdin=stdin_r,
        stdout=1,
        stderr=2,
        preexec_fn=child_setup,
        close_fds=True,
        pass_fds=(STATUS_FD,),
        env=dict(os.environ, PS1="", PS2="", PS0="", PROMPT_COMMAND=""),
    )
    os.close(STATUS_FD)
    os.close(stdin_r)
    os.set_inheritable(stdin_w, False)
    # Its answer proves the shell reads our lines before the first cell.
    setup = "set +o history +H +m; unset HISTFILE; builtin printf '%s\\n' $? >&200\n"
    _write_all(stdin_w, setup.encode())
    pending = b""

    def wait_status():
        nonlocal pending
        while b"\n" not in pending:
            ready, _, _ = select.select([status_r], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    return None
                continue
            data = os.read(status_r, 4096)
            if not data:
                return None
            pending += data
        line, pending = pending.split(b"\n", 1)
        try:
            return int(line.strip() or b"0")
        except ValueError:
            return 1

    if wait_status() is None:
        raise RuntimeError("bash exited while starting")
    capture.drain()

    count = [0]

    def execute(req):
        count[0] += 1
        cell = os.path.join(workdir, "cell-%d.sh" % count[0])
        with open(cell, "w") as f:
            f.write(req.get("code", ""))
            f.write("\n")
        prefix = " ".join("%s=%s" % (k, shlex.quote(v)) for k, v in (req.get("envs") or {}).items())
        # The cell runs in the shell itself (source), without our status fd and without our request pipe
        # as its stdin; the status line is a separate input line, so an interrupted cell still reports.
        line = "%s builtin source %s </dev/null 200>&-\nbuiltin printf '%%s\\n' $? >&200\n" % (prefix, shlex.quote(cell))
        _write_all(stdin_w, line.encode())
        code = wait_status()
        capture.drain()
        try:
            os.unlink(cell)
        except OSError:
            pass
        if code is None:
            emit({"t": "error", "name": "BashExited", "value": "bash exited", "traceback": []})
            emit({"t": "end", "status": "error", "count": count[0]})
            sys.exit(1)
        if code == 130:
            return "interrupted", count[0]
        if code != 0:
            emit({"t": "error", "name": "ExitCode", "value": "the last command exited with code %d" % code, "traceback": []})
            return "error", count[0]
        return "ok", count[0]

    version = subprocess.run(["bash", "-c", "echo $BASH_VERSION"], capture_output=True, text=True).stdout.strip()
    return execute, {"version": version}


def main():
    language = sys.argv[1] if len(sys.argv) > 1 else "python"
    for fd in (REQ_FD, EVT_FD):
        os.set_inheritable(fd, False)
    # Until it is ready, a driver that fails prints to the diagnostics stream (the original fd 1/2).
    signal.signal(signal.SIGINT, interrupts.handler)
    try:
        capture = Capture()
        if language == "bash":
            execute, info = bash_context(capture)
        else:
            execute, info = python_context(capture)
    except BaseException as e:  # noqa: BLE001 - reported to the daemon, then exit
        emit({"t": "fatal", "message": "%s: %s" % (type(e).__name__, e)})
        raise
    capture.drain()
    emit({"t": "ready", "language": language, "pid": os.getpid(), **info})
    for req in read_requests():
        op = req.get("op")
        if op == "execute":
            _current["id"] = req.get("id")
            interrupts.requested = False
            interrupts.pending = False
            try:
                status, count = execute(req)
            except KeyboardInterrupt:
                status, count = "interrupted", None
            capture.drain()
            emit({"t": "end", "status": status, "count": count})
            _current["id"] = None
        elif op == "shutdown":
            break


if __name__ == "__main__":
    main()
