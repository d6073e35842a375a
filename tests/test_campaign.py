"""Campaign runner: rows are written once, survive SIGKILL, and match across local and Dask runs."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boxhack.errors import BoxhackError
from boxhack.infra.campaign import Job, run_campaign
from boxhack.infra.jsonl import (
    append_row,
    damaged_path,
    encode_row,
    latest_by_key,
    read_rows,
    repair_tail,
    to_jsonable,
)

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import campaign_jobs  # needs TESTS_DIR on sys.path


@pytest.fixture(autouse=True)
def _workers_find_campaign_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spawned workers, Dask workers and `python -c` children must import campaign_jobs."""
    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS_DIR), *([old] if old else [])]))


def essence(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What must agree between runs (wall_s and worker naturally differ)."""
    return [(r["key"], r["params"], r["status"], r["result"], r["error"]) for r in rows]


def expected_square(x: int) -> dict[str, Any]:
    return {"y": x * x, "half": x / 2, "row": [0, x, 2 * x], "nan": None, "label": f"x={x}"}


def count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


# --- 1. SIGKILL at any moment --------------------------------------------------------------


def test_sigkill_midway_resumes_with_no_row_lost_or_doubled(tmp_path: Path) -> None:
    out = tmp_path / "killed.jsonl"
    jobs = campaign_jobs.make_jobs(40, sleep=0.06)
    script = (
        "import campaign_jobs\n"
        "from boxhack.infra.campaign import run_campaign\n"
        f"run_campaign(campaign_jobs.make_jobs(40, sleep=0.06), campaign_jobs.square, "
        f"{str(out)!r}, n_jobs=2, progress=False)\n"
    )
    # Kill twice at different points; the second run resumes the first's file.
    for kill_after in (5, 12):
        proc = subprocess.Popen(
            [sys.executable, "-c", script],
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: kill it with its workers
        )
        deadline = time.monotonic() + 30
        try:
            while count_lines(out) < kill_after:
                if proc.poll() is not None:
                    pytest.fail(f"campaign exited early: {proc.stderr.read().decode()[-2000:]}")
                assert time.monotonic() < deadline, "campaign made no progress"
                time.sleep(0.005)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stderr.close()
        assert count_lines(out) < len(jobs), "killed too late to test anything"

    resumed = run_campaign(jobs, campaign_jobs.square, out, n_jobs=1, progress=False)
    reference = run_campaign(
        jobs, campaign_jobs.square, tmp_path / "reference.jsonl", n_jobs=2, progress=False
    )

    stored = read_rows(out)
    assert Counter(r["key"] for r in stored) == Counter(j.key for j in jobs)  # each exactly once
    assert count_lines(out) == len(jobs)
    assert essence(resumed) == essence(reference)
    by_key = {r["key"]: (r["status"], r["result"]) for r in stored}
    assert by_key == {r["key"]: (r["status"], r["result"]) for r in reference}
    assert all(r["result"] == expected_square(r["params"]["x"]) for r in resumed)


# --- 1b. killing the campaign kills every process it started -----------------------------


def session_processes(sid: int) -> dict[int, str]:
    """Live (not zombie) processes of session ``sid``: pid -> "name (state)"."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        state, _ppid, _pgrp, session = stat[stat.rindex(")") + 2:].split()[:4]
        if int(session) == sid and state not in ("Z", "X"):
            found[int(entry.name)] = f"{name} ({state})"
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inspects /proc (Linux)")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killing_a_campaign_ends_its_workers_and_their_sandboxes(
    tmp_path: Path, sig: signal.Signals
) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    out = tmp_path / "rows.jsonl"
    script = (
        "import campaign_jobs\n"
        "from boxhack.infra.campaign import run_campaign\n"
        f"run_campaign(campaign_jobs.make_jobs(4, sleep=600, pids={str(pids)!r}), "
        f"campaign_jobs.sleeps_with_sandbox, {str(out)!r}, n_jobs=2, progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE,
                            start_new_session=True)  # its own session: find all it started
    try:
        deadline = time.monotonic() + 300  # generous: a busy machine imports torch slowly
        while len(list(pids.glob("sandbox-*"))) < 2:
            if proc.poll() is not None:
                pytest.fail(f"campaign exited early: {proc.stderr.read().decode()[-3000:]}")
            assert time.monotonic() < deadline, "the jobs never started their sandboxes"
            time.sleep(0.05)
        started = [int(p.name.split("-")[1]) for p in pids.iterdir()]
        members = session_processes(proc.pid)
        assert set(started) <= set(members), (started, members)
        assert len(members) >= 5  # the campaign, 2 workers, 2 sandbox processes (+ helpers)

        os.kill(proc.pid, sig)  # the parent only: its children must follow by themselves
        proc.wait(timeout=120)
        deadline = time.monotonic() + 30
        while (left := session_processes(proc.pid)) or any(alive(p) for p in started):
            assert time.monotonic() < deadline, f"still running after the kill: {left}"
            time.sleep(0.1)
        if sig == signal.SIGTERM:  # stopped by its handler, not by the default action
            assert proc.returncode != -signal.SIGTERM
            assert b"Terminated" in proc.stderr.read()
        assert count_lines(out) == 0  # no job finished: no row; a resume runs them all
    finally:
        for pid in session_processes(proc.pid):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()


# --- 2. an incomplete last line ------------------------------------------------------------


@pytest.mark.parametrize("damage", ["half_line", "no_newline", "invalid_json_with_newline"])
def test_incomplete_last_line_is_cut_saved_and_rerun(tmp_path: Path, damage: str) -> None:
    out = tmp_path / "rows.jsonl"
    jobs = campaign_jobs.make_jobs(5)
    first = run_campaign(jobs, campaign_jobs.square, out, n_jobs=1, progress=False)
    lines = out.read_bytes().splitlines(keepends=True)
    last = lines[-1]
    tail = {
        "half_line": last[: len(last) // 2],
        "no_newline": last[:-1],
        "invalid_json_with_newline": last[: len(last) // 2] + b"\n",
    }[damage]
    out.write_bytes(b"".join(lines[:-1]) + tail)

    assert [r["key"] for r in read_rows(out)] == [j.key for j in jobs[:-1]]  # tolerant reader
    with pytest.warns(UserWarning, match="incomplete last line"):
        again = run_campaign(jobs, campaign_jobs.square, out, n_jobs=1, progress=False)

    assert damaged_path(out) == tmp_path / "rows.jsonl.damaged"
    assert damaged_path(out).read_bytes() == tail.rstrip(b"\n") + b"\n"
    assert essence(again) == essence(first)
    stored = read_rows(out)
    assert [r["key"] for r in stored] == [j.key for j in jobs]  # re-run once, appended
    assert out.read_bytes().endswith(b"\n")


def test_repair_tail_is_a_no_op_on_clean_and_missing_files(tmp_path: Path) -> None:
    out = tmp_path / "clean.jsonl"
    assert repair_tail(out) == 0 and read_rows(out) == []
    append_row(out, {"key": "a", "v": 1})
    assert repair_tail(out) == 0
    assert not damaged_path(out).exists()


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.integers(-(10**6), 10**6) | st.text(max_size=8), min_size=1, max_size=6),
    data=st.data(),
)
def test_a_cut_anywhere_keeps_exactly_the_complete_rows(values: list[Any], data: Any) -> None:
    lines = [encode_row({"key": f"k{i}", "v": v}) for i, v in enumerate(values)]
    blob = b"".join(lines)
    cut = data.draw(st.integers(0, len(blob)))
    ends = np.cumsum([len(line) for line in lines])
    complete = int(np.searchsorted(ends, cut, side="right"))  # lines whose newline is kept
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cut.jsonl"
        path.write_bytes(blob[:cut])
        assert [r["v"] for r in read_rows(path)] == values[:complete]
        boundary = int(ends[complete - 1]) if complete else 0
        assert repair_tail(path) == cut - boundary
        assert path.read_bytes() == blob[:boundary]
        if cut > boundary:
            assert damaged_path(path).read_bytes().rstrip(b"\n") == blob[boundary:cut].rstrip(b"\n")


# --- 3. a corrupt middle line --------------------------------------------------------------


def test_corrupt_middle_line_raises_with_file_and_line_number(tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    jobs = campaign_jobs.make_jobs(4)
    run_campaign(jobs, campaign_jobs.square, out, n_jobs=1, progress=False)
    lines = out.read_bytes().splitlines(keepends=True)
    lines[1] = b'{"key": "grid/x/1", "status": oops}\n'
    out.write_bytes(b"".join(lines))
    before = out.read_bytes()

    with pytest.raises(BoxhackError, match=r"rows\.jsonl: line 2 is not a valid JSON row"):
        read_rows(out)
    with pytest.raises(BoxhackError, match="line 2") as info:
        run_campaign(jobs, campaign_jobs.square, out, n_jobs=1, progress=False)
    assert "fix it by hand" in str(info.value)
    assert out.read_bytes() == before  # nothing dropped or truncated
    assert not damaged_path(out).exists()

    lines[1] = b"[1, 2]\n"  # valid JSON but not a row
    out.write_bytes(b"".join(lines))
    with pytest.raises(BoxhackError, match="line 2"):
        read_rows(out)


# --- 4. failing jobs, dying workers, retries -----------------------------------------------


def test_raising_job_is_an_error_row_and_retry_errors_reruns_it(tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    flag = tmp_path / "fixed"
    jobs = campaign_jobs.make_jobs(6, flag=str(flag))

    rows = run_campaign(jobs, campaign_jobs.flaky, out, n_jobs=2, progress=False)
    assert [r["status"] for r in rows] == ["ok", "error"] * 3
    assert rows[1]["error"] == "ValueError: odd x=1" and rows[1]["result"] is None
    assert rows[2]["result"] == expected_square(2) and rows[2]["error"] is None
    assert all(isinstance(r["wall_s"], float) and ":" in r["worker"] for r in rows)
    assert all(r["worker"] != f"{socket.gethostname()}:{os.getpid()}" for r in rows)

    # Errors count as done by default: nothing is run or written again.
    again = run_campaign(jobs, campaign_jobs.flaky, out, n_jobs=2, progress=False)
    assert again == rows and count_lines(out) == 6

    flag.touch()
    retried = run_campaign(
        jobs, campaign_jobs.flaky, out, n_jobs=1, retry_errors=True, progress=False
    )
    assert [r["status"] for r in retried] == ["ok"] * 6
    assert count_lines(out) == 9  # only the three error rows were re-run
    latest = latest_by_key(read_rows(out))
    assert [latest[j.key] for j in jobs] == retried


def test_a_non_dict_result_is_an_error_row(tmp_path: Path) -> None:
    rows = run_campaign(
        campaign_jobs.make_jobs(2),
        campaign_jobs.returns_list,
        tmp_path / "r.jsonl",
        n_jobs=1,
        progress=False,
    )
    assert [r["status"] for r in rows] == ["error", "error"]
    assert rows[0]["error"] == "TypeError: the job function returned list, expected a dict"


def test_a_dying_worker_is_that_jobs_error_row_only(tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    jobs = campaign_jobs.make_jobs(8, die_at=3)
    rows = run_campaign(jobs, campaign_jobs.dies, out, n_jobs=2, progress=False)
    statuses = {r["key"]: r["status"] for r in rows}
    assert statuses.pop("grid/x/3") == "error"
    assert set(statuses.values()) == {"ok"}
    assert rows[3]["error"].startswith("WorkerDied: the worker process died")
    assert "SIGKILL" in rows[3]["error"]
    assert Counter(r["key"] for r in read_rows(out)) == Counter(j.key for j in jobs)
    assert all(
        r["result"] == expected_square(r["params"]["x"]) for r in rows if r["key"] in statuses
    )


def test_workers_run_torch_with_one_thread(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    rows = run_campaign(
        campaign_jobs.make_jobs(2),
        campaign_jobs.torch_threads,
        tmp_path / "t.jsonl",
        n_jobs=2,
        progress=False,
    )
    assert [r["result"] for r in rows] == [{"threads": 1}, {"threads": 1}]
    assert len({r["worker"] for r in rows}) >= 1


# --- 5. Dask ------------------------------------------------------------------------------


def test_dask_run_gives_the_same_rows_as_a_local_run(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    jobs = campaign_jobs.make_jobs(10, flag=str(tmp_path / "never"))
    local = run_campaign(
        jobs, campaign_jobs.flaky, tmp_path / "local.jsonl", n_jobs=1, progress=False
    )
    try:
        cluster = distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        )
    except Exception as exc:  # noqa: BLE001 - no usable sockets/processes here: skip
        pytest.skip(f"Dask LocalCluster did not start: {exc}")
    out = tmp_path / "dask.jsonl"
    with cluster, distributed.Client(cluster) as client:
        part = run_campaign(jobs[:4], campaign_jobs.flaky, out, client=client, progress=False)
        assert essence(part) == essence(local[:4])
        # The rest through a scheduler address: resumes the same file, across modes.
        dask = run_campaign(
            jobs, campaign_jobs.flaky, out, scheduler=cluster.scheduler_address, progress=False
        )
    assert essence(dask) == essence(local)
    assert count_lines(out) == len(jobs)
    assert {r["worker"] for r in dask}.isdisjoint({r["worker"] for r in local})


def test_unreachable_scheduler_is_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    import dask

    with (
        dask.config.set({"distributed.comm.timeouts.connect": "1s"}),
        pytest.raises(BoxhackError, match="could not connect to the Dask scheduler"),
    ):
        run_campaign(
            campaign_jobs.make_jobs(1),
            campaign_jobs.square,
            tmp_path / "r.jsonl",
            scheduler="tcp://127.0.0.1:1",
            progress=False,
        )


@pytest.mark.parametrize("address", ["garbage://x", "tcp://hostonly", "", "localhost"])
def test_a_malformed_scheduler_address_is_refused_before_anything_is_written(
    tmp_path: Path, address: str
) -> None:
    pytest.importorskip("distributed")
    out = tmp_path / "sub" / "r.jsonl"
    with pytest.raises(BoxhackError, match=r"tcp://HOST:PORT") as info:
        run_campaign(campaign_jobs.make_jobs(1), campaign_jobs.square, out,
                     scheduler=address, progress=False)
    assert "\n" not in str(info.value)
    assert not out.parent.exists()  # said at once: no connection attempt, no file


@pytest.mark.parametrize("experiment", ["novelty", "solvers", "adversarial", "combined", "gradient"])
def test_experiment_commands_refuse_a_malformed_scheduler_in_one_line(
    tmp_path: Path, capsys, experiment: str
) -> None:
    pytest.importorskip("distributed")
    from boxhack.cli import main

    out = tmp_path / "out"
    argv = ["experiment", experiment, "--out", str(out), "--scheduler", "garbage://x"]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "not a Dask scheduler address" in lines[0]
    assert "tcp://HOST:PORT" in lines[0]
    assert not out.exists()


# --- 6. in-process mode, bad grids, misuse -------------------------------------------------


def test_in_process_mode_runs_in_this_process_in_job_order(tmp_path: Path) -> None:
    jobs = campaign_jobs.make_jobs(5)[::-1]
    rows = run_campaign(
        jobs, campaign_jobs.square, tmp_path / "sub" / "r.jsonl", n_jobs=1, progress=False
    )
    assert [r["key"] for r in rows] == [j.key for j in jobs]
    assert {r["worker"] for r in rows} == {f"{socket.gethostname()}:{os.getpid()}"}
    assert [r["result"] for r in rows] == [expected_square(j.params["x"]) for j in jobs]
    lines = (tmp_path / "sub" / "r.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == rows
    assert set(rows[0]) == {"key", "params", "status", "result", "error", "wall_s", "worker"}


def test_bad_grids_are_rejected_before_anything_runs(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    dup = [Job("a", {"x": 1}), Job("b", {"x": 2}), Job("a", {"x": 3})]
    with pytest.raises(BoxhackError, match="duplicate job key.*'a'"):
        run_campaign(dup, campaign_jobs.square, out, n_jobs=1, progress=False)
    with pytest.raises(BoxhackError, match="'b'.*not JSON-serialisable"):
        run_campaign(
            [Job("a", {"x": 1}), Job("b", {"x": {1, 2}})],
            campaign_jobs.square,
            out,
            n_jobs=1,
            progress=False,
        )
    with pytest.raises(BoxhackError, match="n_jobs"):
        run_campaign([Job("a", {"x": 1})], campaign_jobs.square, out, n_jobs=0, progress=False)
    assert not out.exists() or count_lines(out) == 0


def test_an_unpicklable_job_function_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BoxhackError, match="could not be loaded in a worker process"):
        run_campaign(
            campaign_jobs.make_jobs(2),
            lambda p: {"x": p["x"]},
            tmp_path / "r.jsonl",
            n_jobs=2,
            progress=False,
        )


def test_a_file_locked_by_another_campaign_is_refused(tmp_path: Path) -> None:
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "r.jsonl"
    with open(out, "ab") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BoxhackError, match="locked by another campaign"):
            run_campaign(
                campaign_jobs.make_jobs(1), campaign_jobs.square, out, n_jobs=1, progress=False
            )
    assert (
        run_campaign(
            campaign_jobs.make_jobs(1), campaign_jobs.square, out, n_jobs=1, progress=False
        )[0]["status"]
        == "ok"
    )


def test_changed_params_under_a_done_key_warn(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    run_campaign([Job("a", {"x": 1})], campaign_jobs.square, out, n_jobs=1, progress=False)
    with pytest.warns(UserWarning, match="different params"):
        rows = run_campaign(
            [Job("a", {"x": 2})], campaign_jobs.square, out, n_jobs=1, progress=False
        )
    assert rows[0]["params"] == {"x": 1}  # the stored row is kept, not silently replaced


def test_numpy_values_and_non_finite_floats_encode_as_strict_json() -> None:
    value = {
        "i": np.int32(3),
        "f": np.float64(0.5),
        "b": np.bool_(True),
        "a": np.eye(2),
        "t": (1, 2),
        "nan": np.nan,
        "inf": [float("-inf")],
        4: "int key",
        "p": Path("x/y"),
    }
    assert to_jsonable(value) == {
        "i": 3,
        "f": 0.5,
        "b": True,
        "a": [[1.0, 0.0], [0.0, 1.0]],
        "t": [1, 2],
        "nan": None,
        "inf": [None],
        "4": "int key",
        "p": "x/y",
    }
    line = encode_row(value)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    json.loads(line)  # strict JSON: no NaN tokens
    assert json.loads(encode_row({"s": "\ud800 é"})) == {"s": "\ud800 é"}  # lone surrogate
    with pytest.raises(TypeError, match="set"):
        to_jsonable({"s": {1}})
