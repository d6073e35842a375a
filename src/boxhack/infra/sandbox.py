"""Run work in separate worker processes under a wall-clock limit and a memory limit.

SciPy solvers cannot be stopped reliably from the outside: ``maxtime`` is checked only between
iterations, and SHGO on a 784-dimensional input has been seen to sit inside qhull's Delaunay
step for ever while using more than 8 GB. So every solve runs in a *sandbox*: a worker process
that

- runs one task at a time, a top-level function ``fn(args, ctx)`` named ``"module:qualname"``;
- lowers its own address-space limit (``RLIMIT_AS``) to its current size plus the task's
  ``memory_limit_mb`` while the task runs, so a runaway allocation fails inside the task
  (``MemoryError``, a torch or qhull allocation error) and is reported as ``"out-of-memory"``;
- gives the task a context with ``report(value)``, which streams the best result so far to
  the parent, and ``count(n)``, which stores a running count (e.g. of function evaluations) in a
  small shared memory page that the parent can read even after the worker was killed.

Tasks end by their own budgets (evaluations, iterations): the sandbox gives them no deadline,
so what they return does not depend on the machine's load. The wall-clock limit is only a
safety net against a task stuck in C code: when a task has not answered ``time_limit`` seconds
after it *really started* in the worker (worker start-up, imports and the transfer of its
arguments are outside the limit), the worker is killed (SIGKILL) and the outcome is
``"timeout"``, carrying the last reported value and the count. Choose the limit far above the
task's normal run time. A worker that dies (killed by the kernel's out-of-memory killer,
crashed) gives ``"out-of-memory"`` or ``"error"``; the next task gets a fresh worker. Workers are reused between tasks and stopped at exit; they die with their parent
(``PR_SET_PDEATHSIG`` on Linux) and ignore Ctrl-C (the parent handles it and kills them).

How workers start (``method``): on Linux a *zygote* (``python -m boxhack.infra.sandbox
zygote``) imports torch and SciPy once and forks a worker per request (milliseconds, which makes
killing a stuck solve cheap); elsewhere, or if the zygote cannot start, every worker is a fresh
``python -m boxhack.infra.sandbox worker`` (seconds of imports). Both are plain subprocesses,
not :mod:`multiprocessing` children, so they work from daemonic processes (campaign and Dask
workers) and never re-import the user's ``__main__`` script.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib
import mmap
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing import util as mp_util
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Self

from boxhack.errors import BoxhackError

__all__ = ["Outcome", "SandboxPool", "Task", "TaskContext", "run_task", "shared_pool"]

STATUSES = ("ok", "timeout", "out-of-memory", "error")
STARTUP_TIMEOUT = 300.0  # seconds a fresh child may take to import its modules
_STOP_WAIT = 2.0
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_COUNT = struct.Struct("<q")


@dataclass
class Task:
    """One unit of work: ``fn(args, ctx)``, with ``fn`` given as ``"module:qualname"``.

    ``time_limit``: the safety net, in seconds from the moment the task starts in its worker
    (``None``: none); ``memory_limit_mb``: extra address space the task may take.
    """

    fn: str
    args: Any
    time_limit: float | None = None
    memory_limit_mb: float | None = None


@dataclass
class Outcome:
    """How a task ended. ``value``: the function's return value (``status == "ok"``);
    ``progress``: the last value it reported (kept whatever the status)."""

    status: str
    value: Any = None
    progress: Any = None
    message: str = ""
    wall_s: float = 0.0
    worker: int | None = None
    count: int = 0  # the task's last ``ctx.count(n)``, read back also after a kill


@dataclass
class TaskContext:
    """What a task function receives besides its arguments (in the child process).

    ``report(value)`` streams a value to the parent (the latest one is kept, whatever the
    outcome); ``count(n)`` stores a running count where the parent can read it even after
    killing the worker (a few nanoseconds: call it as often as you like).
    """

    report: Callable[[Any], None] = field(default=lambda value: None)
    count: Callable[[int], None] = field(default=lambda n: None)
    started: float = field(default_factory=time.monotonic)


class _Counter:
    """An 8-byte count in a shared memory page (an unlinked file, inherited by the worker)."""

    def __init__(self, fd: int | None = None) -> None:
        if fd is None:
            fd = _anonymous_file()
            os.ftruncate(fd, mmap.PAGESIZE)
        self.fd = fd
        self.map = mmap.mmap(fd, mmap.PAGESIZE)

    def set(self, n: int) -> None:
        _COUNT.pack_into(self.map, 0, int(n))

    def get(self) -> int:
        try:
            return int(_COUNT.unpack_from(self.map, 0)[0])
        except ValueError:  # closed
            return 0

    def close(self) -> None:
        try:
            self.map.close()
        except (BufferError, ValueError):
            pass
        try:
            os.close(self.fd)
        except OSError:
            pass


def _anonymous_file() -> int:
    if hasattr(os, "memfd_create"):
        try:
            return os.memfd_create("boxhack-count")
        except OSError:
            pass
    fd, path = tempfile.mkstemp(prefix="boxhack-count-")
    os.unlink(path)
    return fd


def resolve(fn: str) -> Callable:
    module, _, qualname = fn.partition(":")
    if not module or not qualname:
        raise BoxhackError(f"task function {fn!r} must be written 'module:qualname'")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def is_memory_error(exc: BaseException) -> bool:
    """True for allocation failures: MemoryError, torch's allocator, qhull's memory errors."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return any(
        s in text
        for s in ("can't allocate memory", "cannot allocate memory", "insufficient memory",
                  "out of memory", "std::bad_alloc", "qh_memalloc")
    )  # fmt: skip


class _Pipe:
    """One direction of a pipe carrying plain pickles.

    ``Connection.send`` would use multiprocessing's ForkingPickler, for which torch registers
    reductions that pass tensors through shared-memory file descriptors and an authenticated
    side channel; between these unrelated processes that fails, so values go as ordinary pickles.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def send(self, obj: Any) -> None:
        self.conn.send_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))

    def recv(self) -> Any:
        return pickle.loads(self.conn.recv_bytes())

    def poll(self, timeout: float = 0.0) -> bool:
        return self.conn.poll(timeout)

    def close(self) -> None:
        self.conn.close()


# --------------------------------------------------------------------------------------------
# Child side.


def _vm_size_bytes() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _set_memory_limit(limit_bytes: int | None):
    """Lower the soft RLIMIT_AS to current size + limit; returns a function that undoes it."""
    try:
        import resource  # a local import: the module exists on POSIX systems only
    except ImportError:  # not POSIX
        return lambda: None
    if limit_bytes is None:
        return lambda: None
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    base = _vm_size_bytes()
    if base is None:
        return lambda: None
    new = base + int(limit_bytes)
    if hard != resource.RLIM_INFINITY:
        new = min(new, hard)
    if soft != resource.RLIM_INFINITY:
        new = min(new, soft)
    resource.setrlimit(resource.RLIMIT_AS, (new, hard))
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _serve(raw_in: Connection, raw_out: Connection, counter_fd: int,
           preload: Sequence[str] = ()) -> int:  # fmt: skip
    """The worker's loop: run tasks until told to stop or the parent goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    for var in _THREAD_VARS:
        os.environ[var] = "1"
    conn_in, conn_out = _Pipe(raw_in), _Pipe(raw_out)
    counter = _Counter(counter_fd)
    for module in preload:
        importlib.import_module(module)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
    conn_out.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn_in.recv()
        except (EOFError, OSError):
            return 0
        if msg[0] == "stop":
            return 0
        _, tid, fn_name, args, limit_bytes = msg
        start = time.monotonic()
        conn_out.send(("started", tid))

        def report(value, _tid=tid):
            conn_out.send(("progress", _tid, value))

        undo = _set_memory_limit(limit_bytes)
        try:
            fn = resolve(fn_name)
            value = fn(args, TaskContext(report=report, count=counter.set, started=start))
            undo()
            reply = ("done", tid, value, time.monotonic() - start)
        except BaseException as exc:  # noqa: BLE001 - every failure is reported, never raised
            undo()
            kind = "oom" if is_memory_error(exc) else "error"
            text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            if kind == "error":
                tb = traceback.format_exc(limit=-3)
                text = f"{text}\n{tb}" if len(tb) < 4000 else text
            reply = (kind, tid, text, time.monotonic() - start)
            del exc
        try:
            conn_out.send(reply)
        except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable return value
            conn_out.send(("error", tid, f"could not send the result: {exc!r}", reply[-1]))


def _worker_main(argv: Sequence[str]) -> int:
    """``worker READ_FD WRITE_FD COUNTER_FD PARENT_PID [MODULE...]``: one worker as a plain
    subprocess."""
    rfd, wfd, cfd, parent = (int(a) for a in argv[:4])
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before prctl took effect
        return 0
    return _serve(Connection(rfd, writable=False), Connection(wfd, readable=False), cfd,
                  argv[4:])  # fmt: skip


def _zygote_main(argv: Sequence[str]) -> int:
    """``zygote SOCKET_FD PARENT_PID [MODULE...]``: import the modules once, then fork a
    worker for each request.

    Requests on the (SOCK_SEQPACKET) socket: ``b"F"`` with three file descriptors (the new
    worker's read and write pipe ends and its counter page) -> ``b"P" + pid``; ``b"W" + pid`` -> wait for that
    worker to exit -> ``b"X" + exit code`` (negative: killed by that signal). The zygote exits
    when the socket closes (its parent is gone).
    """
    sock_fd, parent = int(argv[0]), int(argv[1])
    _die_with_parent()
    if os.getppid() != parent:
        return 0
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=sock_fd)
    for module in argv[2:]:
        importlib.import_module(module)
    sock.sendall(b"R")
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 64, 3)
        except OSError:
            return 0
        if not msg:
            return 0
        if msg[:1] == b"F" and len(fds) == 3:
            pid = os.fork()
            if pid == 0:  # the worker
                code = 1
                try:
                    sock.close()
                    _die_with_parent()
                    code = _serve(Connection(fds[0], writable=False),
                                  Connection(fds[1], readable=False), fds[2])  # fmt: skip
                finally:
                    os._exit(code)
            for fd in fds:
                os.close(fd)
            sock.sendall(b"P" + struct.pack("!i", pid))
        elif msg[:1] == b"W":
            (pid,) = struct.unpack("!i", msg[1:5])
            try:
                _, status = os.waitpid(pid, 0)
                code = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                code = 0
            sock.sendall(b"X" + struct.pack("!i", code))
        else:
            for fd in fds:
                os.close(fd)


# --------------------------------------------------------------------------------------------
# Parent side.


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = _package_root()
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    for var in _THREAD_VARS:
        env[var] = "1"
    return env


class _Zygote:
    """A subprocess that has imported torch and SciPy once and forks workers on request
    (milliseconds per worker instead of seconds of imports, e.g. after every kill)."""

    def __init__(self, preload: Sequence[str]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cmd = [sys.executable, "-m", "boxhack.infra.sandbox", "zygote", str(theirs.fileno()),
               str(os.getpid()), *preload]  # fmt: skip
        try:
            self.proc = subprocess.Popen(cmd, pass_fds=(theirs.fileno(),), env=_child_env(),
                                         stdin=subprocess.DEVNULL)  # fmt: skip
        finally:
            theirs.close()
        self.sock = ours
        self.sock.settimeout(STARTUP_TIMEOUT)
        try:
            ready = self.sock.recv(16)
        except (OSError, TimeoutError):
            ready = b""
        if ready != b"R":
            self.close()
            raise OSError("the sandbox zygote process did not start")
        self.sock.settimeout(60.0)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def fork(self, r_fd: int, w_fd: int, counter_fd: int) -> int:
        socket.send_fds(self.sock, [b"F"], [r_fd, w_fd, counter_fd])
        reply = self.sock.recv(16)
        if reply[:1] != b"P":
            raise OSError("the sandbox zygote did not fork a worker")
        return struct.unpack("!i", reply[1:5])[0]

    def reap(self, pid: int) -> int | None:
        try:
            self.sock.sendall(b"W" + struct.pack("!i", pid))
            reply = self.sock.recv(16)
        except OSError:
            return None
        if reply[:1] != b"X":
            return None
        return struct.unpack("!i", reply[1:5])[0]

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=_STOP_WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class _Popen:
    """``subprocess.Popen`` seen through the small interface the pool uses."""

    def __init__(self, popen: subprocess.Popen) -> None:
        self.popen = popen

    def poll(self) -> int | None:
        return self.popen.poll()

    def kill(self) -> None:
        try:
            self.popen.kill()
        except ProcessLookupError:
            pass

    def wait(self, timeout: float | None = None) -> int:
        return self.popen.wait(timeout)


class _ZygoteChild:
    """A worker forked by the zygote (not our child: its exit code comes from the zygote)."""

    def __init__(self, zygote: _Zygote, pid: int) -> None:
        self.zygote = zygote
        self.pid = pid
        self.code: int | None = None

    def _finished(self) -> bool:
        """True once the process has exited (a zombie or gone)."""
        try:
            with open(f"/proc/{self.pid}/stat") as fh:
                state = fh.read().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            return True
        return state in ("Z", "X")

    def poll(self) -> int | None:
        if self.code is None and self._finished():
            code = self.zygote.reap(self.pid)
            self.code = code if code is not None else 1
        return self.code

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float | None = None) -> int:
        end = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if end is not None and time.monotonic() > end:
                raise subprocess.TimeoutExpired("sandbox worker", timeout)
            time.sleep(0.005)
        return self.code


def default_method() -> str:
    """``"zygote"`` on Linux (workers forked from a pre-imported process), else
    ``"subprocess"`` (every worker a fresh interpreter)."""
    if sys.platform.startswith("linux") and hasattr(socket, "send_fds"):
        return "zygote"
    return "subprocess"


class _Worker:
    """One worker process and its two pipes."""

    def __init__(self, preload: Sequence[str], index: int, zygote: _Zygote | None) -> None:
        self.index = index
        self.counter = _Counter()
        r_child, w_parent = os.pipe()  # parent -> child
        r_parent, w_child = os.pipe()  # child -> parent
        c_fd = self.counter.fd
        try:
            if zygote is not None:
                self.proc = _ZygoteChild(zygote, zygote.fork(r_child, w_child, c_fd))
            else:
                cmd = [sys.executable, "-m", "boxhack.infra.sandbox", "worker", str(r_child),
                       str(w_child), str(c_fd), str(os.getpid()), *preload]  # fmt: skip
                self.proc = _Popen(subprocess.Popen(
                    cmd, pass_fds=(r_child, w_child, c_fd), env=_child_env(),
                    stdin=subprocess.DEVNULL,
                ))  # fmt: skip
        except BaseException:
            for fd in (w_parent, r_parent):
                os.close(fd)
            self.counter.close()
            raise
        finally:
            os.close(r_child)
            os.close(w_child)
        self.to_child = _Pipe(Connection(w_parent, readable=False))
        self.from_child = _Pipe(Connection(r_parent, writable=False))
        self.ready = False
        self.spawned = time.monotonic()
        # the task in flight
        self.job: int | None = None
        self.task: Task | None = None
        self.started: float | None = None
        self.sent: float | None = None
        self.progress: Any = None

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, index: int, task: Task) -> None:
        self.job, self.task, self.sent, self.started, self.progress = (
            index, task, time.monotonic(), None, None,
        )  # fmt: skip
        self.counter.set(0)
        limit = None if task.memory_limit_mb is None else int(task.memory_limit_mb * 2**20)
        self.to_child.send(("task", index, task.fn, task.args, limit))

    def clear(self) -> None:
        self.job = self.task = self.started = self.sent = self.progress = None

    def kill(self) -> None:
        self.proc.kill()
        try:
            self.proc.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            pass
        self.close_pipes()

    def stop(self) -> None:
        if self.alive:
            try:
                self.to_child.send(("stop",))
                self.proc.wait(timeout=_STOP_WAIT)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                self.kill()
        self.close_pipes()

    def close_pipes(self) -> None:
        for conn in (self.to_child, self.from_child):
            try:
                conn.close()
            except OSError:
                pass

    def death_note(self) -> tuple[str, str]:
        """(status, message) for a worker that died by itself while running a task."""
        try:
            code = self.proc.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = -signal.SIGKILL
        limited = self.task is not None and self.task.memory_limit_mb is not None
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            if -code == signal.SIGKILL:
                return "out-of-memory", (f"the solver process was killed ({name}), e.g. by the "
                                         "kernel's out-of-memory killer")  # fmt: skip
            if limited and -code in (signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS):
                return "out-of-memory", (f"the solver process crashed ({name}) under the memory "
                                         "limit, probably an allocation failure in C code")  # fmt: skip
            return "error", f"the solver process crashed ({name})"
        return "error", f"the solver process exited unexpectedly (exit code {code})"


def _elapsed(worker: _Worker) -> float:
    """Seconds since the worker's task started (or was sent, before it said so)."""
    t0 = worker.started if worker.started is not None else worker.sent
    return time.monotonic() - t0 if t0 is not None else 0.0


class SandboxPool:
    """Up to ``size`` sandbox children; :meth:`run` runs tasks on them in parallel."""

    def __init__(self, size: int = 1, preload: Sequence[str] = (), method: str | None = None) -> None:
        if not isinstance(size, int) or size < 1:
            raise BoxhackError(f"a sandbox pool needs size >= 1, got {size!r}")
        if method not in (None, "zygote", "subprocess"):
            raise BoxhackError(f"unknown sandbox method {method!r}; use 'zygote' or 'subprocess'")
        self.size = size
        self.preload = tuple(preload)
        self.method = method or default_method()
        self._zygote: _Zygote | None = None
        self._zygote_failures = 0
        self._workers: list[_Worker] = []
        self._count = 0

    def _get_zygote(self) -> _Zygote | None:
        if self.method != "zygote":
            return None
        if self._zygote is not None and not self._zygote.alive:
            self._zygote.close()
            self._zygote = None
        if self._zygote is None:
            try:
                self._zygote = _Zygote(self.preload)
            except OSError:
                self._zygote_failures += 1
                if self._zygote_failures >= 2:
                    self.method = "subprocess"  # give up on forking; plain interpreters work
                return None
        return self._zygote

    def _spawn(self) -> _Worker:
        self._count += 1
        zygote = self._get_zygote()
        try:
            worker = _Worker(self.preload, self._count, zygote)
        except OSError:
            if zygote is None:
                raise
            self._zygote_failures += 1
            zygote.close()
            self._zygote = None
            worker = _Worker(self.preload, self._count, None)
        self._workers.append(worker)
        return worker

    def _discard(self, worker: _Worker, kill: bool = True) -> None:
        if kill:
            worker.kill()
        else:
            worker.close_pipes()
        worker.counter.close()
        if worker in self._workers:
            self._workers.remove(worker)

    def close(self) -> None:
        for worker in list(self._workers):
            worker.stop()
            worker.counter.close()
        self._workers.clear()
        if self._zygote is not None:
            self._zygote.close()
            self._zygote = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(
        self,
        tasks: Sequence[Task],
        *,
        on_done: Callable[[int, Outcome], None] | None = None,
    ) -> list[Outcome]:
        """Run every task; return their outcomes in order (never raises for a task's failure).

        ``on_done(index, outcome)`` is called as each task finishes.
        """
        outcomes: list[Outcome | None] = [None] * len(tasks)
        pending = deque(enumerate(tasks))

        def finish(worker: _Worker, outcome: Outcome) -> None:
            assert worker.job is not None
            outcome.worker = worker.index
            outcome.count = worker.counter.get()
            if outcome.progress is None:
                outcome.progress = worker.progress
            outcomes[worker.job] = outcome
            if on_done is not None:
                on_done(worker.job, outcome)
            worker.clear()

        try:
            while pending or any(w.job is not None for w in self._workers):
                self._hand_out(pending, finish)
                busy = [w for w in self._workers if w.job is not None or not w.ready]
                if not busy:
                    continue
                readable = wait([w.from_child.conn for w in busy], timeout=self._next_deadline(busy))
                for w in busy:
                    if w.from_child.conn in readable:
                        self._drain(w, finish, _elapsed)
                self._enforce_limits(finish)
        except BaseException:
            for w in list(self._workers):
                if w.job is not None or not w.ready:
                    self._discard(w)
            raise
        return [o if o is not None else Outcome("error", message="not run") for o in outcomes]

    def _hand_out(self, pending: deque, finish) -> None:
        """Replace dead idle workers, start new ones up to ``size``, hand out tasks."""
        for w in list(self._workers):
            if w.job is None and not w.alive:
                self._discard(w, kill=False)
        while pending and len(self._workers) < self.size:
            self._spawn()
        n_busy = sum(w.job is not None for w in self._workers)
        for w in self._workers:
            if w.ready and w.job is None and pending and n_busy < self.size:
                n_busy += 1
                index, task = pending.popleft()
                try:
                    w.send(index, task)
                except (OSError, ValueError) as exc:
                    w.job, w.task = index, task
                    finish(w, Outcome("error", message=f"could not send the task: {exc}"))
                    self._discard(w)
                    break

    @staticmethod
    def _next_deadline(busy: list[_Worker]) -> float | None:
        """Seconds until the first start-up limit or safety net of ``busy`` runs out."""
        now = time.monotonic()
        deadlines = []
        for w in busy:
            if not w.ready:
                deadlines.append(w.spawned + STARTUP_TIMEOUT)
            elif w.started is not None and w.task.time_limit is not None:
                deadlines.append(w.started + w.task.time_limit)
        return max(0.0, min(deadlines) - now) if deadlines else None

    def _enforce_limits(self, finish) -> None:
        """Refuse a worker that did not start in time; kill a task past its safety net."""
        now = time.monotonic()
        for w in list(self._workers):
            if not w.ready and now > w.spawned + STARTUP_TIMEOUT:
                self._discard(w)
                raise BoxhackError(
                    f"a sandbox process did not start within {STARTUP_TIMEOUT:.0f} s"
                )
            if (
                w.job is not None
                and w.started is not None
                and w.task.time_limit is not None
                and now > w.started + w.task.time_limit
            ):
                limit = w.task.time_limit
                w.kill()
                finish(w, Outcome(
                    "timeout",
                    message=f"killed by the {limit:g} s safety net (the task did not "
                            f"return by itself)",
                    wall_s=_elapsed(w),
                ))  # fmt: skip
                self._discard(w, kill=False)

    def _drain(self, w: _Worker, finish, elapsed: Callable[[_Worker], float]) -> None:
        """Read every message a child has sent."""
        while True:
            try:
                if not w.from_child.poll():
                    return
                msg = w.from_child.recv()
            except (EOFError, OSError):
                if w.job is not None:
                    status, message = w.death_note()
                    finish(w, Outcome(status, message=message, wall_s=elapsed(w)))
                    self._discard(w, kill=False)
                elif not w.ready:
                    code = w.proc.wait()
                    self._discard(w, kill=False)
                    modules = ", ".join(("boxhack.infra.sandbox", *self.preload))
                    raise BoxhackError(
                        f"a sandbox process failed to start (exit code {code}); check that "
                        f"`{sys.executable} -c 'import {modules}'` works"
                    ) from None
                else:
                    self._discard(w, kill=False)
                return
            kind = msg[0]
            if kind == "ready":
                w.ready = True
            elif w.job is None or msg[1] != w.job:
                continue  # stale message of a finished task
            elif kind == "started":
                w.started = time.monotonic()
            elif kind == "progress":
                w.progress = msg[2]
            elif kind == "done":
                finish(w, Outcome("ok", value=msg[2], wall_s=msg[3]))
            elif kind == "oom":
                finish(w, Outcome("out-of-memory", message=msg[2], wall_s=msg[3]))
                self._discard(w)  # its heap may be fragmented or damaged: start afresh
                return
            elif kind == "error":
                finish(w, Outcome("error", message=msg[2], wall_s=msg[3]))


_SHARED: dict[tuple[str, ...], SandboxPool] = {}


def shared_pool(size: int = 1, preload: Sequence[str] = ()) -> SandboxPool:
    """This process's reusable pool for ``preload`` (grown to ``size`` if smaller)."""
    key = tuple(preload)
    pool = _SHARED.get(key)
    if pool is None:
        pool = _SHARED[key] = SandboxPool(size, preload)
    pool.size = max(pool.size, size)
    return pool


def _close_shared() -> None:
    for pool in _SHARED.values():
        pool.close()
    _SHARED.clear()


atexit.register(_close_shared)
# multiprocessing children (campaign workers) leave through os._exit without running atexit
# handlers, after joining their non-daemonic children: finalizers still run there.
_FINALIZER = mp_util.Finalize(None, _close_shared, exitpriority=100)


def run_task(
    fn: str,
    args: Any,
    *,
    time_limit: float | None = None,
    memory_limit_mb: float | None = None,
    preload: Sequence[str] = (),
) -> Outcome:
    """Run one task in this process's shared sandbox; see :class:`SandboxPool`."""
    task = Task(fn, args, time_limit, memory_limit_mb)
    return shared_pool(1, preload).run([task])[0]


if __name__ == "__main__":  # pragma: no cover - the child processes' entry point
    if len(sys.argv) < 2 or sys.argv[1] not in ("worker", "zygote"):
        print("usage: python -m boxhack.infra.sandbox worker|zygote ...\n(started by boxhack "
              "itself; not meant to be run by hand)", file=sys.stderr)
        sys.exit(2)
    main = _worker_main if sys.argv[1] == "worker" else _zygote_main
    sys.exit(main(sys.argv[2:]))
