"""Campaigns: run a grid of independent jobs into a JSONL file, resumably, locally or on Dask.

An experiment is a list of :class:`Job` (a stable key plus JSON parameters) and a job function
``fn(params) -> dict``. :func:`run_campaign` runs every job whose key has no row in ``out`` yet
and appends one row per finished job, written (single write, flush, fsync) by the submitting
process only, the moment the job finishes::

    {"key": ..., "params": ..., "status": "ok" | "error", "result": {...} | null,
     "error": "ExcType: message" | null, "wall_s": 0.12, "worker": "host:pid"}

Why it survives anything: a row is the unit of progress, and a row is either wholly on disk
(newline included) or it is an incomplete last line, which the next run cuts off (saving it to
``<out>.damaged``) before re-running that job. So a run killed at any moment, SIGKILL included,
resumes with no row lost or doubled. A lock on ``out`` keeps two campaigns from writing to the
same file at once.

Failures are data: a job that raises, returns a non-dict, or whose worker process dies (e.g.
killed by the out-of-memory killer) becomes an ``"error"`` row and the campaign goes on; pass
``retry_errors=True`` to run error rows again (the newest row for a key wins when reading).

Killing a campaign ends all of it. Every local worker process sets ``PR_SET_PDEATHSIG``
(SIGKILL) and watches its parent (:func:`boxhack.infra.procs.die_with_parent`), so a SIGKILLed
parent takes its workers with it, and they take their sandbox processes. The kernel sends the
signal when the *thread* that created a worker exits: in Python 3.11 a spawn-context
``ProcessPoolExecutor`` creates its workers inside ``submit()`` (``_adjust_process_count``), i.e.
in the thread that calls :func:`run_campaign` (only ``max_tasks_per_child``, not used here, makes
the pool's manager thread spawn them), and that thread waits in :func:`run_campaign` until the
pool is shut down, so it outlives every worker. SIGTERM on the parent raises
:class:`~boxhack.infra.procs.Terminated` (a ``KeyboardInterrupt``) in the main thread: the pool's
workers are killed, rows written so far stay, and the run resumes next time. On Dask the workers
belong to the cluster, not to the campaign: on SIGTERM (or Ctrl-C) the campaign cancels its
futures and closes its client; if it is SIGKILLed the scheduler notices the client is gone and
forgets its queued tasks, while a task already running finishes on its worker (Dask cannot
interrupt a running task) and its result is dropped.

The job function receives the parameters exactly as stored in the row (after a JSON round
trip: tuples become lists, numpy scalars Python numbers), so a local run, a resumed run and a
Dask run all call it with identical input and produce the same rows (``wall_s`` and ``worker``
aside).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import sys
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tqdm import tqdm

from boxhack.errors import BoxhackError
from boxhack.infra.files import fsync_dir
from boxhack.infra.jsonl import (
    damaged_path,
    encode_row,
    latest_by_key,
    read_rows,
    repair_tail,
    to_jsonable,
    write_line,
)
from boxhack.infra.procs import die_with_parent, sigterm_raises

__all__ = ["Job", "check_scheduler_address", "run_campaign"]

JobFn = Callable[[dict[str, Any]], Mapping[str, Any]]
Outcome = dict[str, Any]  # status, result, error, wall_s, worker: a row minus key and params

# Thread pools that would each grab every core in every worker; one thread per worker instead.
_THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class Job:
    """One cell of an experiment grid.

    ``key`` is the job's unique, stable id (e.g. ``"solvers/xor/attack1/l2/slsqp/margin/7"``):
    it is how a resumed campaign knows the job is done, so it must name every parameter that
    changes the result. ``params`` must be JSON-serialisable (numpy values are converted).
    """

    key: str
    params: dict[str, Any]


# --------------------------------------------------------------------------------------------
# Worker side: everything here runs in a worker process (or in-process when n_jobs=1).


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _limit_threads() -> None:
    """Make this worker process use one compute thread, without importing torch.

    The environment variables are read when torch/BLAS load, so a torch imported later by the
    job function starts with one thread; a torch already loaded is set directly.
    """
    for var in _THREAD_ENV_VARS:
        os.environ[var] = "1"
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def _init_worker(parent_pid: int) -> None:
    """A pool worker's initializer: die with the campaign, compute on one thread."""
    die_with_parent(parent_pid)
    _limit_threads()


def _describe(exc: BaseException) -> str:
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _execute(fn: JobFn, params: dict[str, Any], limit_threads: bool = True) -> Outcome:
    """Run one job; any exception of the job becomes an error outcome (never raised)."""
    if limit_threads:
        _limit_threads()
    start = time.perf_counter()
    result: Any = None
    error: str | None = None
    try:
        value = fn(params)
        if not isinstance(value, Mapping):
            raise TypeError(f"the job function returned {type(value).__name__}, expected a dict")
        # Convert here, in the worker, so a result that cannot be stored is this job's error.
        result = json.loads(encode_row(value))
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - any job failure is data; Ctrl-C is not
        result, error = None, _describe(exc)
    return {
        "status": "ok" if error is None else "error",
        "result": result,
        "error": error,
        "wall_s": time.perf_counter() - start,
        "worker": _worker_id(),
    }


def _probe(fn: JobFn) -> str:
    """Runs in a fresh worker: proves ``fn`` can be unpickled (imported) there."""
    return _worker_id()


# --------------------------------------------------------------------------------------------
# Parent side.


class _RowWriter:
    """The one writer of ``out``: holds an exclusive lock on it, repairs its tail on entry."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.repaired_bytes = 0
        self._file: Any = None

    def __enter__(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.exists()
        self._file = open(self.path, "ab")  # closed in __exit__
        try:
            self._lock()
            if not existed:
                fsync_dir(self.path.parent)
            # Only now, holding the lock, is it safe to cut a tail: no live writer can be mid-row.
            self.repaired_bytes = repair_tail(self.path)
        except BaseException:
            self._file.close()
            raise
        return self

    def _lock(self) -> None:
        try:
            import fcntl  # POSIX only: a local import keeps the module importable elsewhere
        except ImportError:  # not POSIX: no advisory lock, the rest still holds
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BoxhackError(
                f"{self.path} is locked by another campaign that is writing to it; wait for it "
                f"to finish (or stop it), or write to another file"
            ) from None

    def write(self, line: bytes) -> None:
        write_line(self._file, line)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._file.close()  # also releases the lock


def _default_n_jobs() -> int:
    """Cores this process may use (respects taskset / cgroup CPU sets where the OS tells)."""
    if hasattr(os, "process_cpu_count"):  # Python >= 3.13
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _normalise_jobs(jobs: list[Job]) -> dict[str, str]:
    """Validate the grid; return key -> params as canonical JSON text, in job order."""
    params_json: dict[str, str] = {}
    duplicates: list[str] = []
    for i, job in enumerate(jobs):
        if not isinstance(job, Job):
            raise BoxhackError(f"jobs[{i}] is a {type(job).__name__}, expected a campaign.Job")
        if not isinstance(job.key, str) or not job.key:
            raise BoxhackError(f"jobs[{i}] has key {job.key!r}; a key must be a non-empty string")
        if job.key in params_json:
            duplicates.append(job.key)
            continue
        if not isinstance(job.params, Mapping):
            raise BoxhackError(
                f"job {job.key!r}: params is a {type(job.params).__name__}, expected a dict"
            )
        try:
            params_json[job.key] = json.dumps(
                to_jsonable(job.params), allow_nan=False, separators=(",", ":")
            )
        except (TypeError, ValueError) as exc:
            raise BoxhackError(
                f"job {job.key!r}: params are not JSON-serialisable ({exc})"
            ) from None
    if duplicates:
        shown = ", ".join(repr(k) for k in duplicates[:5])
        more = f" and {len(duplicates) - 5} more" if len(duplicates) > 5 else ""
        raise BoxhackError(
            f"{len(duplicates)} duplicate job key(s) in the grid: {shown}{more}; every job needs "
            f"a unique key (include every parameter that varies in it)"
        )
    return params_json


def _check_runner(fn: Any, n_jobs: Any, scheduler: str | None, client: Any) -> None:
    """Refuse an unusable job function or a contradictory choice of where to run."""
    if not callable(fn):
        raise BoxhackError(f"fn must be a callable params -> dict, got {type(fn).__name__}")
    if scheduler is not None and client is not None:
        raise BoxhackError("give either scheduler (an address) or client, not both")
    if n_jobs is not None and (not isinstance(n_jobs, int) or n_jobs < 1):
        raise BoxhackError(f"n_jobs must be a positive integer or None, got {n_jobs!r}")
    if scheduler is not None:
        check_scheduler_address(scheduler)


def _split_done(
    job_list: list[Job], stored: dict[str, dict[str, Any]], retry_errors: bool
) -> tuple[dict[str, dict[str, Any]], list[Job]]:
    """The rows already stored for jobs that count as done, and the jobs still to run."""
    rows: dict[str, dict[str, Any]] = {}
    todo: list[Job] = []
    for job in job_list:
        row = stored.get(job.key)
        if row is not None and (row.get("status") == "ok" or not retry_errors):
            rows[job.key] = row
        else:
            todo.append(job)
    return rows, todo


def _dispatch(todo, fn, params_of, record, n_jobs, scheduler, client) -> None:
    """Run ``todo`` on Dask, in-process (one job at a time) or on a local pool of workers."""
    if scheduler is not None or client is not None:
        with sigterm_raises():
            _run_dask(todo, fn, params_of, record, scheduler, client)
    elif (n_jobs or _default_n_jobs()) == 1:
        for job in todo:
            record(job, _execute(fn, params_of(job), limit_threads=False))
    else:
        n_workers = min(n_jobs or _default_n_jobs(), len(todo))
        with sigterm_raises():
            _run_pool(todo, fn, params_of, record, n_workers)


def run_campaign(
    jobs: Iterable[Job],
    fn: JobFn,
    out: str | Path,
    *,
    n_jobs: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    retry_errors: bool = False,
    progress: bool = True,
    desc: str = "",
) -> list[dict[str, Any]]:
    """Run every job of ``jobs`` not yet in ``out``; return all their rows, in job order.

    Args:
        jobs: the grid; keys must be unique.
        fn: ``params -> dict``; for worker processes or Dask it must be picklable (a function
            defined at the top level of an importable module).
        out: JSONL file rows are appended to (created with its directories if missing).
        n_jobs: local worker processes (default: the usable cores); ``1`` runs in-process.
            Ignored with ``scheduler``/``client``.
        scheduler: address of a Dask distributed scheduler (``"tcp://host:8786"``) to run on.
        client: an existing ``distributed.Client`` to run on (not closed here).
        retry_errors: run again jobs whose newest row is an error (by default any row = done).
        progress: show a tqdm progress bar with ETA on stderr.
        desc: the progress bar's label (default: the file name).

    Returns:
        The newest row of each job (old rows and new), as stored in ``out``.

    Raises:
        BoxhackError: a bad grid (duplicate keys, non-JSON params), a corrupt line in the middle
            of ``out``, ``out`` locked by another campaign, or ``fn`` unusable in workers.
    """
    job_list = list(jobs)
    params_json = _normalise_jobs(job_list)
    _check_runner(fn, n_jobs, scheduler, client)
    out = Path(out)

    with _RowWriter(out) as writer:
        if writer.repaired_bytes:
            warnings.warn(
                f"{out}: cut off an incomplete last line ({writer.repaired_bytes} bytes, left by "
                f"an interrupted run; saved to {damaged_path(out)}); its job will run again",
                stacklevel=2,
            )
        rows, todo = _split_done(job_list, latest_by_key(read_rows(out)), retry_errors)
        _warn_changed_params(rows, params_json, out)

        bar = _progress_bar(len(job_list), len(job_list) - len(todo), progress, desc or out.name)
        errors = 0

        def record(job: Job, outcome: Outcome) -> None:
            nonlocal errors
            row = {"key": job.key, "params": json.loads(params_json[job.key]), **outcome}
            line = encode_row(row)
            writer.write(line)
            rows[job.key] = json.loads(line)
            if outcome["status"] != "ok":
                errors += 1
                bar.set_postfix(errors=errors, refresh=False)
            bar.update(1)

        def params_of(job: Job) -> dict[str, Any]:
            return json.loads(params_json[job.key])  # a fresh copy: fn may mutate it

        try:
            if todo:
                _dispatch(todo, fn, params_of, record, n_jobs, scheduler, client)
        finally:
            bar.close()
    return [rows[job.key] for job in job_list]


def _warn_changed_params(
    done: Mapping[str, Mapping[str, Any]], params_json: Mapping[str, str], out: Path
) -> None:
    """Warn when a stored row's params differ from its job's: the key does not name them all."""
    changed = [
        key for key, row in done.items() if row.get("params") != json.loads(params_json[key])
    ]
    if changed:
        warnings.warn(
            f"{out}: {len(changed)} job(s) already done with different params than now (first: "
            f"{changed[0]!r}); their old rows are kept. Put every varying parameter in the key, "
            f"or write to a new file",
            stacklevel=3,
        )


def _progress_bar(total: int, initial: int, enabled: bool, desc: str) -> Any:
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="job",
        file=sys.stderr,
        disable=not enabled,
        dynamic_ncols=True,
        smoothing=0.05,
    )


# --------------------------------------------------------------------------------------------
# Local worker processes.


def _new_pool(n_workers: int) -> ProcessPoolExecutor:
    # spawn, not fork: forking a parent that has started torch/OpenMP threads can deadlock.
    # No max_tasks_per_child: with it the pool's manager thread would spawn replacement
    # workers, and their parent-death signal would fire when that thread ends.
    return ProcessPoolExecutor(
        max_workers=n_workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(os.getpid(),),
    )


def _abandon(pool: ProcessPoolExecutor) -> None:
    """Stop ``pool`` now: kill its workers (a running job is lost; its row was never written,
    so it runs again on resume) and shut it down without waiting."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            process.kill()
        except (OSError, AttributeError, ValueError):  # already gone / already closed
            pass
    pool.shutdown(wait=False, cancel_futures=True)


def _check_loadable(pool: ProcessPoolExecutor, fn: JobFn) -> None:
    try:
        pool.submit(_probe, fn).result()
    except Exception as exc:  # noqa: BLE001 - PicklingError, AttributeError, BrokenProcessPool...
        name = getattr(fn, "__qualname__", repr(fn))
        raise BoxhackError(
            f"the job function {name} could not be loaded in a worker process ({_describe(exc)}). "
            f"Define it at the top level of a module the workers can import (not a lambda, a "
            f"nested function, or __main__ of `python -c`), or use n_jobs=1"
        ) from None


def _run_pool(
    todo: list[Job],
    fn: JobFn,
    params_of: Callable[[Job], dict[str, Any]],
    record: Callable[[Job, Outcome], None],
    n_workers: int,
) -> None:
    """Run jobs on a spawn process pool; a dead worker costs the pool, never a row.

    When a worker dies, ProcessPoolExecutor fails every unfinished future without saying whose
    job killed it. Those jobs are re-run one at a time in a one-worker pool, where a death can
    only be the job's own: it then gets an error row, the innocent ones their normal rows.
    """
    queue = deque(todo)
    window = 2 * n_workers  # enough queued work to keep workers busy, little lost on a break
    pool: ProcessPoolExecutor | None = _new_pool(n_workers)
    try:
        _check_loadable(pool, fn)
        while queue:
            if pool is None:
                pool = _new_pool(n_workers)
            suspects = _drain(pool, queue, fn, params_of, record, window)
            if suspects:
                pool.shutdown(wait=True, cancel_futures=True)
                pool = None
                _run_isolated(suspects, fn, params_of, record)
    except BaseException:  # Ctrl-C, SIGTERM, a failed write: stop at once; written rows are safe
        if pool is not None:
            _abandon(pool)
        raise
    if pool is not None:
        pool.shutdown(wait=True)


def _drain(
    pool: ProcessPoolExecutor,
    queue: deque[Job],
    fn: JobFn,
    params_of: Callable[[Job], dict[str, Any]],
    record: Callable[[Job, Outcome], None],
    window: int,
) -> list[Job]:
    """Run ``queue`` on ``pool`` until it is empty or the pool breaks; return the lost jobs."""
    inflight: dict[Future[Outcome], Job] = {}
    suspects: list[Job] = []
    broken = False
    while queue or inflight:
        while not broken and queue and len(inflight) < window:
            job = queue.popleft()
            try:
                inflight[pool.submit(_execute, fn, params_of(job))] = job
            except BrokenProcessPool:
                queue.appendleft(job)
                broken = True
        if not inflight:
            break
        done, _ = wait(inflight, return_when=FIRST_COMPLETED)
        for future in done:
            job = inflight.pop(future)
            try:
                outcome = future.result()
            except BrokenProcessPool:
                suspects.append(job)
                broken = True
            else:
                record(job, outcome)
    return suspects


def _run_isolated(
    suspects: list[Job],
    fn: JobFn,
    params_of: Callable[[Job], dict[str, Any]],
    record: Callable[[Job, Outcome], None],
) -> None:
    """Run each job alone in a one-worker pool, so a worker death is that job's error row."""
    pool: ProcessPoolExecutor | None = None
    completed = False
    try:
        for job in suspects:
            if pool is None:
                pool = _new_pool(1)
            try:
                worker = pool.submit(_probe, fn).result()  # the one process the job will run in
            except BrokenProcessPool:
                raise BoxhackError(
                    "a fresh worker process died before running any job; check memory limits"
                ) from None
            processes = list(getattr(pool, "_processes", {}).values())  # for the exit code only
            start = time.perf_counter()
            try:
                outcome = pool.submit(_execute, fn, params_of(job)).result()
            except BrokenProcessPool:
                pool.shutdown(wait=True, cancel_futures=True)
                pool = None
                outcome = {
                    "status": "error",
                    "result": None,
                    "error": f"WorkerDied: the worker process died{_exit_note(processes)} "
                    f"while running this job: killed (e.g. by the out-of-memory killer) or crashed",
                    "wall_s": time.perf_counter() - start,
                    "worker": worker,
                }
            record(job, outcome)
        completed = True
    finally:
        if pool is not None:
            if completed:
                pool.shutdown(wait=True, cancel_futures=True)
            else:
                _abandon(pool)


def _exit_note(processes: list[Any]) -> str:
    codes = [p.exitcode for p in processes if getattr(p, "exitcode", None) is not None]
    if not codes:
        return ""
    code = codes[0]
    if code < 0:
        try:
            return f" ({signal.Signals(-code).name})"
        except ValueError:
            return f" (signal {-code})"
    return f" (exit code {code})"


# --------------------------------------------------------------------------------------------
# Dask distributed.

_ADDRESS_HELP = (
    "give the scheduler's address as tcp://HOST:PORT (e.g. tcp://127.0.0.1:8786; also tls://, "
    "ws://, wss://, or HOST:PORT for tcp)"
)


def check_scheduler_address(address: Any) -> str:
    """``address`` if it is a Dask scheduler address this machine can dial, else a clear
    :class:`BoxhackError` (without connecting, and before anything is written)."""
    if not isinstance(address, str) or not address.strip():
        raise BoxhackError(f"scheduler address {address!r} is empty; {_ADDRESS_HELP}")
    try:
        from distributed.comm import parse_address  # Dask is optional: imported when used
        from distributed.comm.registry import get_backend
    except ImportError as exc:
        raise BoxhackError(
            f"running on Dask needs the distributed package ({exc}); "
            f"install it with: pip install 'dask[distributed]'"
        ) from None
    try:
        scheme, location = parse_address(address.strip())
        get_backend(scheme)
    except (ValueError, TypeError) as exc:
        raise BoxhackError(
            f"{address!r} is not a Dask scheduler address ({str(exc).splitlines()[0]}); "
            f"{_ADDRESS_HELP}"
        ) from None
    if scheme in ("tcp", "tls", "ws", "wss"):
        host, _, port = location.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise BoxhackError(
                f"{address!r} is not a Dask scheduler address (no HOST:PORT after "
                f"{scheme}://); {_ADDRESS_HELP}"
            )
    return address


def _run_dask(
    todo: list[Job],
    fn: JobFn,
    params_of: Callable[[Job], dict[str, Any]],
    record: Callable[[Job, Outcome], None],
    scheduler: str | None,
    client: Any,
) -> None:
    """Run jobs as Dask tasks; this process writes the rows, exactly as in a local run.

    Dask reschedules a task whose worker died; after ``distributed.scheduler.allowed-failures``
    deaths it gives up with ``KilledWorker``, which becomes the job's error row.
    """
    try:
        import distributed  # optional: only a campaign on a cluster needs it
    except ImportError as exc:
        raise BoxhackError(
            f"running on Dask needs the distributed package ({exc}); "
            f"install it with: pip install 'dask[distributed]'"
        ) from None
    own_client = client is None
    if own_client:
        try:
            client = distributed.Client(scheduler)
        except (OSError, TimeoutError, ValueError) as exc:
            raise BoxhackError(
                f"could not connect to the Dask scheduler at {scheduler!r} ({_describe(exc)}); "
                f"check the address and that the scheduler is running"
            ) from None
    token = uuid.uuid4().hex[:12]
    queue = deque(enumerate(todo))
    window = max(100, 4 * sum(client.nthreads().values()))
    inflight: dict[Any, Job] = {}
    completed = distributed.as_completed()

    def submit_more() -> None:
        while queue and len(inflight) < window:
            i, job = queue.popleft()
            future = client.submit(
                _execute, fn, params_of(job), key=f"boxhack-job-{token}-{i}", pure=False
            )
            inflight[future] = job
            completed.add(future)

    try:
        submit_more()
        for future in completed:
            job = inflight.pop(future)
            try:
                outcome = future.result()
            except distributed.KilledWorker as exc:
                last = getattr(exc, "last_worker", None)
                outcome = {
                    "status": "error",
                    "result": None,
                    "error": f"WorkerDied: Dask workers died running this job ({exc})",
                    "wall_s": 0.0,
                    "worker": str(getattr(last, "address", "unknown")),
                }
            record(job, outcome)
            future.release()
            submit_more()
    finally:
        if inflight:
            client.cancel(list(inflight))
        if own_client:
            client.close()
