"""The ``penstock`` command line: run (its view, examples, job files, Ctrl-C) and bench."""

from __future__ import annotations

import ctypes
import dataclasses
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Final

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster_helpers import WAIT_S, child_pids, is_alive
from penstock import __version__
from penstock.cli import main
from penstock.cli._output import Column, plain_table, rich_table
from penstock.cli.job_view import JobView, VertexTracker, back_pressure_level, vertex_name
from penstock.examples import EXAMPLES, load_example
from penstock.ids import JobID
from penstock.runtime.client import observe_jobs
from penstock.runtime.control import SECRET_ENV, JobMetricsUpdate
from tls_certs import make_ca, openssl_available

REPO: Final = Path(__file__).parent.parent
FIRST_JOB: Final = REPO / "examples" / "first_job.py"
LOCAL: Final = ("-D", "execution.target=local")


# -- the command ---------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"penstock {__version__}"


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "usage: penstock" in err
    assert "bench" in err
    assert "run" in err


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["deploy"]) == 2
    assert "invalid choice: 'deploy'" in capsys.readouterr().err


def test_bench_without_benchmark_lists_them(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench"]) == 2
    assert "local-pipeline" in capsys.readouterr().err


# -- bench local-pipeline ------------------------------------------------------------


def test_bench_local_pipeline_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "local-pipeline", "--records", "20000", "--kind", "int8"]
    status = main([*argv, "--mode", "one-thread", "--json"])

    assert status == 0
    document = json.loads(capsys.readouterr().out)
    assert document["benchmark"] == "local-pipeline"
    results = document["results"]
    assert [result["batch"] for result in results] == [False, True]
    for result in results:
        assert result["records"] == 20000
        assert result["record_kind"] == "int8"
        assert result["payload_bytes"] == 8
        assert result["mode"] == "one-thread"
        assert result["records_per_s"] > 0


def test_bench_local_pipeline_table_is_plain_when_piped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["bench", "local-pipeline", "--records", "5000", "--kind", "bytes100"]
    status = main([*argv, "--mode", "threaded", "--no-batch"])

    assert status == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out  # no terminal escapes in a pipe
    lines = out.splitlines()
    assert lines[1].split() == [
        "kind",
        "bytes",
        "mode",
        "emit",
        "records",
        "seconds",
        "records/s",
        "MB/s",
    ]
    rows = [line.split() for line in lines[3:]]
    assert [row[:5] for row in rows] == [["bytes100", "100", "threaded", "emit", "5,000"]]


@pytest.mark.parametrize("records", ["0", "-3", "many"])
def test_bench_rejects_a_bad_record_count(records: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "local-pipeline", "--records", records]) == 2
    assert "--records" in capsys.readouterr().err


def test_bench_emit_styles_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "local-pipeline", "--batch", "--no-batch"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


# -- run: usage errors, found before anything starts ------------------------------------


@pytest.mark.parametrize(
    ("prop", "named"),
    [
        ("taskmanager.memory.segmentsize=32kb", "taskmanager.memory.segmentsize"),
        ("taskmanager.memory.segment-size=3kb", "taskmanager.memory.segment-size"),
        ("execution.buffer-timeout=soon", "execution.buffer-timeout"),
        ("execution.target=cloud", "execution.target"),
        ("parallelism.default", "parallelism.default"),
    ],
)
def test_run_with_a_bad_dynamic_property_exits_2_before_anything_starts(
    prop: str, named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = child_pids()
    assert main(["run", "-D", prop]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("penstock run: error: ")
    assert named in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""
    assert child_pids() == before


def test_run_reads_the_environment_and_d_wins_over_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PENSTOCK_PARALLELISM_DEFAULT", "0")
    monkeypatch.setenv("PENSTOCK_CLUSTER_SECRET", "not a configuration key")
    before = child_pids()
    assert main(["run", *LOCAL]) == 2
    err = capsys.readouterr().err
    assert "parallelism.default='0'" in err
    assert "from environment variable PENSTOCK_PARALLELISM_DEFAULT" in err
    assert child_pids() == before

    job_file = write_job(
        tmp_path / "sequence.py",
        "env.from_sequence(1, 10).add_sink(lambda n: None)",
        "env.execute('sequence')",
    )
    monkeypatch.setenv("PENSTOCK_PARALLELISM_DEFAULT", "3")
    assert main(["run", str(job_file), *LOCAL]) == 0
    assert (
        summary_rows(capsys.readouterr().out)["Source: Sequence Source -> Sink: Unnamed"][0] == "3"
    )
    assert main(["run", str(job_file), *LOCAL, "-D", "parallelism.default=2"]) == 0
    assert (
        summary_rows(capsys.readouterr().out)["Source: Sequence Source -> Sink: Unnamed"][0] == "2"
    )


@pytest.mark.parametrize("port", ["-5", "70000", "any"])
def test_jobmanager_with_a_bad_port_exits_2_with_the_reason(
    port: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["jobmanager", "--port", port]) == 2
    err = capsys.readouterr().err
    assert "penstock jobmanager: error: argument --port:" in err
    assert "Traceback" not in err


def test_run_with_contradicting_network_memory_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = child_pids()
    status = main(["run", "-D", "taskmanager.memory.network.min=2gb"])

    assert status == 2
    err = capsys.readouterr().err
    assert "taskmanager.memory.network.min" in err
    assert "must not exceed taskmanager.memory.network.max" in err
    assert child_pids() == before


def test_run_unknown_example_lists_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--example", "pagerank"]) == 2
    err = capsys.readouterr().err
    assert "no example named 'pagerank'" in err
    assert "word_count, slow_sink, broadcast" in err


def test_run_missing_job_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "job.py"
    assert main(["run", str(missing)]) == 2
    assert f"no such job file: {missing}" in capsys.readouterr().err


def test_run_job_file_and_example_exclude_each_other(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "job.py", "--example", "word_count"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_every_example_loads_by_either_spelling() -> None:
    for name in EXAMPLES:
        module = load_example(name.replace("_", "-"))
        assert callable(module.build)
        assert callable(module.main)
        assert module.JOB_NAME


# -- run: jobs ----------------------------------------------------------------------------


def summary_rows(out: str) -> dict[str, list[str]]:
    """The plain summary table's rows by vertex name (cells split on two spaces)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("vertex "))
    rows: dict[str, list[str]] = {}
    for line in lines[start + 2 :]:
        cells = [cell.strip() for cell in line.split("  ") if cell.strip()]
        if len(cells) < 6:
            break
        rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.cluster
def test_run_first_job_file_prints_its_records_and_a_summary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", str(FIRST_JOB)]) == 0

    out = capsys.readouterr().out
    assert "\x1b[" not in out
    printed = [line.split() for line in out.splitlines() if len(line.split()) == 2]
    final = {word: int(count) for word, count in printed}
    assert final == {
        "to": 2,
        "be": 2,
        "or": 1,
        "not": 1,
        "that": 1,
        "is": 1,
        "the": 1,
        "question": 1,
    }
    assert "Job 'first job' (" in out and ") FINISHED after " in out
    rows = summary_rows(out)
    assert rows["Source: Collection Source"][:3] == ["1", "0", "2"]
    assert rows["Keyed Aggregation"][:3] == ["2", "10", "10"]


def test_run_example_applies_dynamic_properties(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--example", "broadcast", *LOCAL]) == 0

    out = capsys.readouterr().out
    assert out.count("got 1,000 rules (7,893 characters)") == 3
    rows = summary_rows(out)
    assert rows["Source: Collection Source"][:3] == ["1", "0", "1,000"]
    assert rows["Map -> Sink: Count Per Subtask"][:3] == ["3", "3,000", "0"]


def write_job(path: Path, *lines: str) -> Path:
    """Writes a job file: an environment ``env``, then ``lines``."""
    preamble = (
        "from penstock import StreamExecutionEnvironment",
        "env = StreamExecutionEnvironment.get_execution_environment()",
    )
    path.write_text("".join(f"{line}\n" for line in (*preamble, *lines)), encoding="utf-8")
    return path


def run_failing_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], *lines: str
) -> tuple[str, str]:
    """Runs a job file of ``lines`` on the local target, expecting status 1: (out, err)."""
    job_file = tmp_path / "failing.py"
    job_file.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    assert main(["run", str(job_file), *LOCAL]) == 1
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_run_failed_job_exits_1_with_the_remote_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, err = run_failing_job(
        tmp_path,
        capsys,
        "from penstock import StreamExecutionEnvironment",
        "def check(n):",
        "    if n == 7:",
        "        raise ValueError(f'bad record {n}')",
        "    return n",
        "env = StreamExecutionEnvironment.get_execution_environment()",
        "env.from_sequence(1, 10).map(check).add_sink(lambda n: None)",
        "env.execute('failing')",
    )

    assert "penstock run: JobExecutionError: Job 'failing'" in err
    assert "Caused by builtins.ValueError: bad record 7" in err
    assert "in check" in err  # the remote traceback text
    assert "FAILED after" in out


def test_log_lines_name_process_pid_and_thread(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    assert main(["--log-level", "info", "run", "--example", "broadcast", *LOCAL]) == 0

    err = capsys.readouterr().err
    submitted = next(line for line in err.splitlines() if "job 'broadcast' submitted" in line)
    assert " INFO " in submitted
    assert f"MainProcess[{os.getpid()}] local-jm-main penstock.runtime.jobmanager:" in submitted
    # main leaves logging as it found it.
    assert root.handlers == handlers
    assert root.level == level


@pytest.mark.slow
@pytest.mark.cluster
def test_slow_sink_backpressure_reaches_the_source() -> None:
    from penstock.api.environment import StreamExecutionEnvironment
    from penstock.examples import slow_sink

    env = StreamExecutionEnvironment.get_execution_environment({"parallelism.default": 2})
    slow_sink.build(env, records=400_000)
    updates: list[JobMetricsUpdate] = []
    view = JobView(io.StringIO(), live=False)

    def observe(update: JobMetricsUpdate) -> None:
        updates.append(update)
        view.on_update(update)

    with view, observe_jobs(observe):
        result = env.execute(slow_sink.JOB_NAME)

    source, mapper, sink = "Source: Numbers -> To Event", "Map", "Sink: Slow Sink"
    # The live classification reached HIGH upstream of the sink, never at the sink.
    assert view.peak_levels == {source: "HIGH", mapper: "HIGH", sink: "OK"}
    final = result.get_metrics()
    sources = [m for name, m in final.items() if name.startswith(source)]
    assert len(sources) == 2
    assert all(m["accumulateBackPressuredTimeMs"] > 0 for m in sources)
    (sink_metrics,) = (m for name, m in final.items() if name.startswith(sink))
    assert sink_metrics["accumulateBackPressuredTimeMs"] == 0
    assert sink_metrics["accumulateBusyTimeMs"] > 0
    # accumulateBackPressuredTimeMs grows from update to update.
    seen = [
        max(
            (
                m.get("accumulateBackPressuredTimeMs", 0.0)
                for name, m in u.metrics.items()
                if name.startswith(source)
            ),
            default=0.0,
        )
        for u in updates
    ]
    assert seen == sorted(seen)
    assert seen[-1] > seen[0]


@pytest.mark.slow
@pytest.mark.cluster
def test_ctrl_c_cancels_the_job_and_leaves_no_process() -> None:
    command = [sys.executable, "-m", "penstock", "run", "--example", "slow_sink"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert process.stdout is not None
        # The plain view prints a line per vertex and second once the job runs.
        line = process.stdout.readline()
        while line and not line.startswith("t="):
            line = process.stdout.readline()
        assert line.startswith("t="), "the job never showed a live line"
        task_managers = child_pids_of(process.pid)
        assert len(task_managers) == 2
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=WAIT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    assert "penstock run: interrupted; the job was cancelled" in err
    assert "Traceback" not in err
    assert "FINISHED" not in out
    for pid in task_managers:
        assert not is_alive(pid)


@pytest.mark.cluster
def test_a_closed_standard_output_ends_the_run_quietly(tmp_path: Path) -> None:
    """``penstock run job.py | head -3``: status 141, as for SIGPIPE, no traceback."""
    job_file = write_job(tmp_path / "printer.py", "env.from_sequence(1, 10**9).print()")
    job_file.write_text(job_file.read_text() + "env.execute()\n")
    command = [sys.executable, "-m", "penstock", "run", str(job_file)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        line = process.stdout.readline()
        while line and line.strip() != "1":
            line = process.stdout.readline()
        assert line.strip() == "1", "the job never printed its first record"
        task_managers = child_pids_of(process.pid)
        process.stdout.close()  # as head does once it has its lines
        err = process.stderr.read()
        process.wait(timeout=WAIT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()
    assert process.returncode == 141, err
    assert "Traceback" not in err
    for pid in task_managers:
        assert not is_alive(pid)


def _tgkill(pid: int, tid: int, signum: int) -> None:
    """Sends ``signum`` to one thread of another process (Linux ``tgkill``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_SYS_TGKILL, pid, tid, signum) != 0:
        raise OSError(ctypes.get_errno(), "tgkill failed")


_SYS_TGKILL: Final = 234  # x86-64


@pytest.mark.cluster
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="tgkill's number is x86-64's")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_the_job_manager_stops_on_a_signal_delivered_to_any_of_its_threads(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """The kernel may hand a process's signal to any thread that does not block it."""
    command = [sys.executable, "-m", "penstock", "jobmanager", "--host", "127.0.0.1"]
    secret = ["--port", "0", "--secret-file", str(tmp_path / "secret")]
    process = subprocess.Popen(
        [*command, *secret], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith("JobManager listening on ")
        others = [
            int(tid) for tid in os.listdir(f"/proc/{process.pid}/task") if int(tid) != process.pid
        ]
        assert others
        _tgkill(process.pid, others[0], signum)
        _, err = process.communicate(timeout=WAIT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "penstock jobmanager: shutting down" in err


def child_pids_of(parent: int) -> set[int]:
    """Pids of the live children of ``parent``, from /proc."""
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == parent and fields[0] != "Z":
            children.add(int(entry.name))
    return children


# -- the view ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratio", "level"),
    [(0.0, "OK"), (0.1, "OK"), (0.11, "LOW"), (0.5, "LOW"), (0.51, "HIGH"), (1.0, "HIGH")],
)
def test_back_pressure_levels_follow_flinks_web_ui(ratio: float, level: str) -> None:
    assert back_pressure_level(ratio) == level


@pytest.mark.parametrize(
    ("task", "vertex"),
    [
        ("Map (1/2)", "Map"),
        ("Source: Sequence Source -> Map (12/16)", "Source: Sequence Source -> Map"),
        ("Map (1/2) (2/2)", "Map (1/2)"),
        ("Sink", "Sink"),
    ],
)
def test_vertex_name_drops_the_subtask_suffix(task: str, vertex: str) -> None:
    assert vertex_name(task) == vertex


def make_update(
    elapsed_ms: int,
    tasks: dict[str, tuple[float, float, float]],
    sampled_ms: int | None = None,
    final: bool = False,
) -> JobMetricsUpdate:
    """Tasks as ``name: (numRecordsIn, numRecordsOut, backPressuredTimeMsPerSecond)``."""
    return JobMetricsUpdate(
        JobID(1, 2),
        "job",
        elapsed_ms,
        {
            name: {
                "numRecordsIn": records_in,
                "numRecordsOut": records_out,
                "backPressuredTimeMsPerSecond": back_pressured,
                "busyTimeMsPerSecond": 1000 - back_pressured,
                "outPoolUsage": 0.5,
            }
            for name, (records_in, records_out, back_pressured) in tasks.items()
        },
        dict.fromkeys(tasks, "FINISHED" if final else "RUNNING"),
        dict.fromkeys(tasks, elapsed_ms if sampled_ms is None else sampled_ms),
        final,
    )


def test_vertex_tracker_sums_rates_and_takes_the_worst_subtask() -> None:
    tracker = VertexTracker()
    first = tracker.update(make_update(1000, {"A (1/2)": (0, 100, 50), "A (2/2)": (0, 300, 0)}))
    assert [row.name for row in first] == ["A"]
    assert first[0].records_out == 400
    assert first[0].records_out_per_s == 0  # no rate from a single sample

    second = tracker.update(
        make_update(3000, {"A (1/2)": (0, 2100, 600), "A (2/2)": (0, 1300, 20)})
    )
    row = second[0]
    assert row.parallelism == 2
    assert row.running == 2
    assert row.records_out == 3400
    assert row.records_out_per_s == pytest.approx((2000 + 1000) / 2)
    assert row.back_pressure == pytest.approx(0.6)
    assert row.level == "HIGH"
    assert row.busy == pytest.approx(0.98)
    assert row.out_pool_usage == 0.5

    # No new sample: the rates stay; the peak level is remembered.
    third = tracker.update(
        make_update(4000, {"A (1/2)": (0, 2100, 0), "A (2/2)": (0, 1300, 0)}, sampled_ms=3000)
    )
    assert third[0].records_out_per_s == pytest.approx(1500)
    assert third[0].level == "OK"
    assert third[0].peak_level == "HIGH"


def test_a_finished_subtask_adds_no_rate_to_its_vertex() -> None:
    tracker = VertexTracker()
    tracker.update(make_update(1000, {"A (1/2)": (0, 0, 0), "A (2/2)": (0, 0, 0)}))
    running = make_update(2000, {"A (1/2)": (0, 1000, 0), "A (2/2)": (0, 500, 0)})
    (row,) = tracker.update(running)
    assert row.records_out_per_s == pytest.approx(1500)
    # A/1 finished with that sample: it sends no more, A/2 goes on at 500/s.
    later = make_update(3000, {"A (1/2)": (0, 1000, 0), "A (2/2)": (0, 1000, 0)})
    later.sampled_ms["A (1/2)"] = 2000
    later.states["A (1/2)"] = "FINISHED"
    (row,) = tracker.update(later)
    assert row.records_out_per_s == pytest.approx(500)
    assert row.running == 1


def test_a_subtask_that_ended_backpressured_does_not_hold_its_vertex_at_high() -> None:
    tracker = VertexTracker()
    update = make_update(1000, {"A (1/2)": (0, 10, 900), "A (2/2)": (0, 10, 0)})
    update.states["A (1/2)"] = "FINISHED"
    update.metrics["A (1/2)"]["accumulateBackPressuredTimeMs"] = 500.0
    (row,) = tracker.update(update)
    assert row.level == "OK"
    assert row.back_pressured_ms == 500.0  # what it spent backpressured still counts
    # Once every subtask ended, their last values stand (the summary).
    final = make_update(2000, {"A (1/2)": (0, 10, 900), "A (2/2)": (0, 20, 0)}, final=True)
    (row,) = tracker.update(final)
    assert row.level == "HIGH"


@given(st.lists(st.floats(0, 1000), min_size=1, max_size=8))
def test_the_vertex_level_is_the_level_of_its_worst_subtask(back_pressured: list[float]) -> None:
    tasks = {
        f"V ({index + 1}/{len(back_pressured)})": (0.0, 0.0, value)
        for index, value in enumerate(back_pressured)
    }
    (row,) = VertexTracker().update(make_update(1000, tasks))
    assert row.level == back_pressure_level(max(back_pressured) / 1000)


def test_the_summary_says_failed_for_a_job_that_failed_without_a_task() -> None:
    # A job that never got its slots has no task states to tell its end by.
    stream = io.StringIO()
    with JobView(stream, live=False) as view:
        view.on_update(replace(make_update(0, {}, final=True), outcome="FAILED"))
    assert "FAILED after 0.0 s" in stream.getvalue()


def test_plain_view_prints_a_line_per_vertex_and_a_summary() -> None:
    stream = io.StringIO()
    with JobView(stream, live=False) as view:
        view.on_update(make_update(1000, {"A (1/1)": (0, 10, 900), "B (1/1)": (10, 0, 0)}))
        view.on_update(
            make_update(2000, {"A (1/1)": (0, 30, 0), "B (1/1)": (30, 0, 0)}, final=True)
        )
    lines = stream.getvalue().splitlines()
    assert lines[0] == "Job 'job' (00000000000000020000000000000001) is running."
    assert lines[1].startswith("t=  1.0s A [1/1] in=0/s out=0/s backpressure=HIGH (90%)")
    assert lines[2].startswith("t=  1.0s B [1/1]")
    assert lines[3] == "Job 'job' (00000000000000020000000000000001) FINISHED after 2.0 s"
    assert summary_rows("\n".join(lines)) == {
        "A": ["1", "0", "30", "HIGH", "0.0 s"],
        "B": ["1", "30", "0", "OK", "0.0 s"],
    }
    assert view.peak_levels == {"A": "HIGH", "B": "OK"}


def test_live_view_shows_brackets_in_names_as_text() -> None:
    # rich would take "[/tmp]" for a closing tag and fail; a name is text.
    from rich.console import Console

    name = "Map: drop [/tmp] and [bold]paths[/bold] (1/1)"
    update = dataclasses.replace(make_update(1000, {name: (0, 10, 900)}), job_name="clean [/] up")
    view = JobView(io.StringIO(), live=False)
    view.on_update(update)
    drawn = io.StringIO()
    Console(file=drawn, width=200).print(view._render(update))  # what the live view draws
    assert "Map: drop [/tmp] and [bold]paths[/bold]" in drawn.getvalue()
    assert "clean [/] up" in drawn.getvalue()
    assert "HIGH" in drawn.getvalue()  # the level keeps its style markup


def test_rich_table_shows_brackets_in_cells_and_title_as_text() -> None:
    from rich.console import Console

    table = rich_table([Column("name"), Column("n", numeric=True)], [["a [/x] b", "1"]], "t [/]")
    stream = io.StringIO()
    Console(file=stream, width=80).print(table)
    assert "a [/x] b" in stream.getvalue()
    assert "t [/]" in stream.getvalue()


def test_plain_table_aligns_numbers_right() -> None:
    table = plain_table(
        [Column("name"), Column("count", numeric=True)], [["a", "1"], ["long name", "1,000"]]
    )

    assert table.splitlines() == [
        "name       count",
        "---------  -----",
        "a              1",
        "long name  1,000",
    ]


def test_run_job_file_takes_its_default_parallelism_from_dash_d(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_job(
        tmp_path / "job.py",
        "print('parallelism', env.get_parallelism())",
        "env.from_sequence(1, 4).map(lambda x: x).execute_and_collect()",
    )
    status = main(["run", str(job), "-D", "parallelism.default=3", "-D", "execution.target=local"])
    assert status == 0
    assert "parallelism 3" in capsys.readouterr().out


@pytest.mark.cluster
def test_run_ships_the_modules_beside_the_job_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The TaskManagers cannot import a module that only the job file's directory has:
    # it travels with the functions, by value, as a Flink job's classes travel in its jar.
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "neighbour_helpers_for_run.py").write_text(
        "def triple(value):\n"
        "    return value * 3\n"
        "class Box:\n"
        "    def __init__(self, value):\n"
        "        self.value = value\n"
    )
    job_file = jobs / "uses_neighbour.py"
    job_file.write_text(
        "from neighbour_helpers_for_run import Box, triple\n"
        "from penstock import StreamExecutionEnvironment\n"
        "env = StreamExecutionEnvironment.get_execution_environment(\n"
        "    {'parallelism.default': 2, 'minicluster.number-of-taskmanagers': 2}\n"
        ")\n"
        "boxes = env.from_sequence(1, 100).map(triple).map(Box).execute_and_collect()\n"
        "print('total', sum(box.value for box in boxes))\n"
    )
    monkeypatch.chdir(tmp_path)  # not the job's directory
    assert main(["run", str(job_file)]) == 0
    assert "total 15150" in capsys.readouterr().out


def test_a_job_file_sees_itself_alone_in_sys_argv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    job_file = tmp_path / "parses_its_command_line.py"
    job_file.write_text(
        "import argparse, sys\n"
        "print('argv', sys.argv)\n"
        "parser = argparse.ArgumentParser()\n"
        "parser.add_argument('--n', type=int, default=10)\n"
        "n = parser.parse_args().n\n"
        "from penstock import StreamExecutionEnvironment\n"
        "env = StreamExecutionEnvironment.get_execution_environment()\n"
        "print('total', sum(env.from_sequence(1, n).execute_and_collect()))\n"
    )
    argv = ["penstock", "run", str(job_file), *LOCAL]
    monkeypatch.setattr(sys, "argv", argv)
    assert main(argv[1:]) == 0
    out = capsys.readouterr().out
    assert f"argv {[str(job_file)]}" in out
    assert "total 55" in out
    assert sys.argv == argv  # restored


def test_run_of_a_file_that_runs_no_job_exits_1_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_file = write_job(
        tmp_path / "builds_only.py",
        "env.from_sequence(1, 10).print()  # and no execute()",
    )
    assert main(["run", str(job_file), *LOCAL]) == 1
    err = capsys.readouterr().err
    assert "ran no job" in err
    assert "execute()" in err


def test_an_error_in_the_job_file_is_shown_from_the_file_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As ``python JOB.py`` shows it: no frames of ``penstock run`` or ``runpy``."""
    job_file = tmp_path / "typo.py"
    job_file.write_text("def parse(line):\n    return int(line)\n\nparse('x')\n")
    assert main(["run", str(job_file), *LOCAL]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):\n")
    assert f'File "{job_file}", line 4, in <module>' in err
    assert f'File "{job_file}", line 2, in parse' in err
    assert err.rstrip().endswith("ValueError: invalid literal for int() with base 10: 'x'")
    assert "runpy" not in err
    assert "penstock/cli" not in err


def test_a_bad_setting_made_by_the_job_file_exits_2_with_its_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_file = write_job(
        tmp_path / "zero.py",
        "env.from_sequence(1, 3).map(abs).set_parallelism(0)",
        "env.execute()",
    )
    assert main(["run", str(job_file), *LOCAL]) == 2
    err = capsys.readouterr().err
    assert f'File "{job_file}", line 3, in <module>' in err
    assert (
        err.rstrip()
        .splitlines()[-1]
        .startswith("penstock.errors.ConfigurationError: Invalid configuration parallelism=0")
    )


def test_a_bad_dash_d_setting_with_a_job_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The file did not set it: its traceback would point at its execute() call.
    job_file = write_job(
        tmp_path / "fine.py",
        "env.from_sequence(1, 3).print()",
        "env.execute()",
    )
    setting = ["-D", "taskmanager.host=no-such-host.invalid"]
    assert main(["run", str(job_file), *setting]) == 2
    err = capsys.readouterr().err
    assert err.startswith("penstock run: error: Invalid configuration taskmanager.host=")
    assert "Traceback" not in err


def test_contradicting_dash_d_settings_stop_a_job_file_before_it_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"
    job_file = write_job(
        tmp_path / "fine.py",
        f"open({str(marker)!r}, 'w').close()",
        "env.from_sequence(1, 3).print()",
        "env.execute()",
    )
    assert main(["run", str(job_file), "-D", "heartbeat.interval=60s"]) == 2
    assert capsys.readouterr().err == (
        "penstock run: error: Invalid configuration heartbeat.interval=60000: "
        "heartbeat.interval (1 min) must not exceed heartbeat.timeout (50 s)\n"
    )
    assert not marker.exists()


def test_a_remote_job_without_the_cluster_key_is_one_line_that_says_where_it_goes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    job_file = write_job(tmp_path / "remote.py", "env.from_sequence(1, 3).print()", "env.execute()")
    remote = ["-D", "execution.target=remote", "-D", "jobmanager.rpc.port=1"]
    assert main(["run", str(job_file), *remote]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"penstock run: error: Invalid configuration {SECRET_ENV}='': the cluster key is "
        f"missing: set {SECRET_ENV} to the key of the cluster (the contents of the "
        "JobManager's --secret-file)\n"
    )


@pytest.mark.parametrize("key_material", [False, True])
def test_run_with_network_settings_no_task_manager_could_use_exits_2_at_once(
    key_material: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Found before any TaskManager starts, not as processes that exit on their way up.
    if key_material:
        if not openssl_available():
            pytest.skip("the openssl command is needed to make test certificates")
        ca = make_ca(tmp_path)
        key, setting = (
            "security.ssl.internal.keystore",
            [
                "-D",
                "security.ssl.internal.enabled=true",
                "-D",
                f"security.ssl.internal.keystore={tmp_path / 'missing.pem'}",
                "-D",
                f"security.ssl.internal.truststore={ca.cert}",
            ],
        )
    else:
        key, setting = "taskmanager.host", ["-D", "taskmanager.host=no-such-host.invalid"]
    before = child_pids()
    assert main(["run", "--example", "broadcast", *setting]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"penstock run: error: Invalid configuration {key}=")
    assert child_pids() == before


def test_run_with_a_busy_data_port_exits_2_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_file = write_job(tmp_path / "one.py", "env.from_sequence(1, 3).print()", "env.execute()")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        before = child_pids()
        setting = ["-D", f"taskmanager.data.port={port}", "-D", "parallelism.default=1"]
        assert main(["run", str(job_file), *setting]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"penstock run: error: Invalid configuration taskmanager.data.port={port}"
    )
    assert child_pids() == before


def test_a_job_file_that_does_not_compile_shows_where(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_file = tmp_path / "unclosed.py"
    job_file.write_text("values = (1,\n")
    assert main(["run", str(job_file), *LOCAL]) == 1
    err = capsys.readouterr().err
    assert f'File "{job_file}", line 1' in err
    assert "SyntaxError: '(' was never closed" in err
    assert "Traceback" not in err


def test_run_against_an_unreachable_cluster_says_why_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    remote = ["-D", "execution.target=remote", "-D", "jobmanager.rpc.port=1"]
    monkeypatch.delenv("PENSTOCK_CLUSTER_SECRET", raising=False)
    assert main(["run", "--example", "broadcast", *remote]) == 2
    err = capsys.readouterr().err
    assert "PENSTOCK_CLUSTER_SECRET" in err
    assert "Traceback" not in err

    monkeypatch.setenv("PENSTOCK_CLUSTER_SECRET", "0" * 64)
    assert main(["run", "--example", "broadcast", *remote]) == 1
    err = capsys.readouterr().err
    assert err.startswith("penstock run: ")
    assert "Traceback" not in err


def test_run_failed_job_prints_an_error_without_frames_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The JobManager refuses to ship the function: its SerializationError has no frames
    # of its own, only a cause (cloudpickle's TypeError) that has.
    err = run_failing_job(
        tmp_path,
        capsys,
        "import threading",
        "from penstock import StreamExecutionEnvironment",
        "lock = threading.Lock()",
        "env = StreamExecutionEnvironment.get_execution_environment()",
        "env.from_sequence(1, 3).map(lambda n: (lock, n)[1]).add_sink(lambda n: None)",
        "env.execute('locked')",
    )[1]

    refusal = "cannot be sent to its TaskManager: the function of operator 'Map'"
    assert err.count(refusal) == 2  # the job's failure and its cause, not a third time
    assert "Caused by builtins.TypeError: cannot pickle '_thread.lock' object" in err
    assert "Traceback (most recent call last):" in err  # the TypeError's frames


def test_run_failed_job_prints_the_notes_of_a_cause_without_frames(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = run_failing_job(
        tmp_path,
        capsys,
        "from penstock import StreamExecutionEnvironment",
        "def check(n):",
        "    if n == 2:",
        "        cause = ValueError('bad row')",
        "        cause.add_note('while parsing line 3')",
        "        raise RuntimeError('record 2 failed') from cause",
        "    return n",
        "env = StreamExecutionEnvironment.get_execution_environment()",
        "env.from_sequence(1, 3).map(check).add_sink(lambda n: None)",
        "env.execute('noted')",
    )[1]

    assert "Caused by builtins.ValueError: bad row" in err
    assert "while parsing line 3" in err  # the cause was never raised, but has a note


def test_run_with_one_data_port_for_several_task_managers_exits_2_before_they_start(
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = child_pids()
    assert main(["run", "-D", "taskmanager.data.port=47123"]) == 2
    err = capsys.readouterr().err
    assert "taskmanager.data.port=47123" in err
    assert "cannot share one data port" in err
    assert child_pids() == before


def test_taskmanager_with_a_data_port_in_use_exits_2_naming_the_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PENSTOCK_CLUSTER_SECRET", "a key")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        status = main(
            ["taskmanager", "--jobmanager", "127.0.0.1:1", "-D", f"taskmanager.data.port={port}"]
        )
    assert status == 2
    err = capsys.readouterr().err
    assert f"taskmanager.data.port={port}" in err
    assert "Address already in use" in err
    assert "Traceback" not in err
