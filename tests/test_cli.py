"""The ``penstock`` command line and the word-count demo behind ``penstock run``."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from itertools import chain, count

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from penstock import __version__, demo
from penstock.cli import main
from penstock.cli._output import Column, plain_table
from penstock.demo import (
    VOCABULARY,
    DemoResult,
    DemoSnapshot,
    back_pressure_level,
    generate_words,
    run_demo,
)


def fake_clock(step: float = 0.5) -> Callable[[], float]:
    """A clock that advances ``step`` seconds each time it is read."""
    return partial(next, count(0.0, step))


def small_demo(records: int) -> Callable[..., DemoResult]:
    """``run_demo`` cut down to ``records`` records, for the command's own path."""
    return partial(run_demo, records, slow_records_per_s=records * 10.0)


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


# -- run -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prop", "named"),
    [
        ("taskmanager.memory.segmentsize=32kb", "taskmanager.memory.segmentsize"),
        ("taskmanager.memory.segment-size=3kb", "taskmanager.memory.segment-size"),
        ("execution.buffer-timeout=soon", "execution.buffer-timeout"),
        ("parallelism.default", "parallelism.default"),
    ],
)
def test_run_with_a_bad_dynamic_property_exits_2(
    prop: str, named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "-D", prop]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("penstock run: error: ")
    assert named in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_run_with_contradicting_network_memory_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(["run", "-D", "taskmanager.memory.network.min=2gb"])

    assert status == 2
    err = capsys.readouterr().err
    assert "taskmanager.memory.network.min" in err
    assert "must not exceed taskmanager.memory.network.max" in err


def test_run_job_file_needs_the_runtime(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "job.py"]) == 2
    captured = capsys.readouterr()
    assert "job file job.py needs the penstock runtime" in captured.err
    assert "not include yet" in captured.err
    assert captured.out == ""


def test_run_example_needs_the_runtime(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--example", "wordcount"]) == 2
    assert "example 'wordcount' needs the penstock runtime" in capsys.readouterr().err


def test_run_job_file_and_example_exclude_each_other(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "job.py", "--example", "wordcount"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_run_demo_prints_a_summary(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo, "run_demo", small_demo(30_000))

    assert main(["run"]) == 0

    out = capsys.readouterr().out
    assert "\x1b[" not in out
    summary = dict(
        line.split("  ", 1) for line in out.splitlines() if line.startswith(("records", "segm"))
    )
    assert summary["records"].strip() == "30,000"
    # 64 mb of network memory in 32 kb segments, all back after the run.
    assert summary["segments back in the pool"].strip() == "2048 / 2048 (all)"


def test_run_demo_takes_network_settings_from_dynamic_properties(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo, "run_demo", small_demo(20_000))

    assert main(["run", "-D", "taskmanager.memory.segment-size=4kb"]) == 0

    assert "16384 / 16384 (all)" in capsys.readouterr().out


def test_log_lines_name_process_pid_and_thread(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo, "run_demo", small_demo(10_000))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    assert main(["--log-level", "info", "run"]) == 0

    err = capsys.readouterr().err
    started = next(line for line in err.splitlines() if "Word count demo:" in line)
    assert " INFO " in started
    assert f"MainProcess[{os.getpid()}] MainThread penstock.demo:" in started
    # main leaves logging as it found it.
    assert root.handlers == handlers
    assert root.level == level


def test_ctrl_c_exits_130_without_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(**_: object) -> DemoResult:
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run_demo", interrupted)

    assert main(["run"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "penstock run: interrupted"


# -- the demo ----------------------------------------------------------------------------


def test_demo_counts_every_word_exactly_on_one_channel() -> None:
    records = 200_000
    result = run_demo(records, clock=fake_clock(), slow_records_per_s=10_000_000.0)

    expected = Counter(chain.from_iterable(generate_words(records)))
    assert result.records == records
    assert result.word_counts == expected
    assert result.distinct_words == len(expected)
    assert result.top_words(3) == expected.most_common(3)
    # Keyed: the channels' words are disjoint and together are all the words.
    channel_words = result.channel_words
    assert len(channel_words) == 4
    assert sum(len(words) for words in channel_words) == len(expected)
    assert frozenset().union(*channel_words) == set(expected)
    assert result.all_segments_returned
    assert result.segments_returned == result.segments_total == 2048


def test_demo_reports_a_snapshot_per_tick_while_throttled() -> None:
    records = 100_000
    snapshots: list[DemoSnapshot] = []
    # Throttled from start to end at 500k records/s: the run lasts at least 0.2 s, many
    # samples of 5 ms; the fake clock makes every second sample a tick.
    result = run_demo(
        records,
        clock=fake_clock(0.5),
        on_tick=snapshots.append,
        sample_s=0.005,
        slow_from=0.0,
        slow_until=1.0,
        slow_records_per_s=500_000.0,
    )

    assert result.records == records
    assert result.all_segments_returned
    assert snapshots
    elapsed = [snapshot.elapsed_s for snapshot in snapshots]
    assert elapsed == sorted(elapsed)
    received = [snapshot.records_in for snapshot in snapshots]
    assert received == sorted(received)
    for snapshot in snapshots:
        assert 0.0 <= snapshot.back_pressured_ratio <= 1.0
        assert snapshot.back_pressure == back_pressure_level(snapshot.back_pressured_ratio)
        assert snapshot.out_pool_usage >= 0.0
        assert snapshot.output_queue_length >= 0
    assert result.peak_back_pressure == max(s.back_pressured_ratio for s in snapshots)


def test_demo_interrupted_stops_both_ends_and_propagates() -> None:
    def interrupt(_: DemoSnapshot) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_demo(
            1_000_000,
            clock=fake_clock(1.0),
            on_tick=interrupt,
            sample_s=0.005,
            slow_from=0.0,
            slow_until=1.0,
            slow_records_per_s=1_000_000.0,
        )

    names = {thread.name for thread in threading.enumerate()}
    assert not names & {"demo-producer", "demo-consumer"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"records": -1},
        {"slow_from": 0.6, "slow_until": 0.5},
        {"slow_until": 1.5},
        {"slow_records_per_s": 0.0},
        {"tick_s": 0.0},
    ],
)
def test_demo_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        run_demo(clock=time.perf_counter, **kwargs)  # type: ignore[arg-type]


@settings(max_examples=25)
@given(st.integers(0, 20_000), st.integers(1, 5000), st.integers(1, 5000))
def test_generated_stream_does_not_depend_on_batch_size(
    records: int, batch_a: int, batch_b: int
) -> None:
    a = list(generate_words(records, batch_a))
    b = list(generate_words(records, batch_b))

    assert all(0 < len(batch) <= batch_a for batch in a)
    flat = list(chain.from_iterable(a))
    assert flat == list(chain.from_iterable(b))
    assert len(flat) == records
    assert set(flat) <= set(VOCABULARY)


@pytest.mark.parametrize(
    ("ratio", "level"),
    [(0.0, "OK"), (0.1, "OK"), (0.11, "LOW"), (0.5, "LOW"), (0.51, "HIGH"), (1.0, "HIGH")],
)
def test_back_pressure_levels_follow_flinks_web_ui(ratio: float, level: str) -> None:
    assert back_pressure_level(ratio) == level


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
