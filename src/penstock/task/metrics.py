"""Task I/O metrics with Flink's names: counters, queue gauges and time gauges.

Theory of operation
-------------------
A task thread is, at every moment, doing one of three things: working (busy), waiting
for input (idle), or waiting for its output (backpressured). The waits are measured
with ``TimerGauge``s, Flink's way: ``mark_start()`` when the wait begins and
``mark_end()`` when it ends, on the task thread, a few times per buffer at most.
Soft backpressure is the mailbox's default action suspended on an unavailable
output; hard backpressure is the time blocked inside
``request_buffer_builder_blocking`` (the partition's ``backpressure_timer`` hook).

A gauge reports two values: the total since the task started (``accumulate*``) and
the time per second over a recent window (``*MsPerSecond``, capped at 1000), which is
what a live view shows. Busy time is what is left: ``1000 − min(idle + bp, 1000)``.

``TaskIOMetrics.snapshot()`` is safe from any thread: gauges take a small lock, and
counters and queue lengths are read as plain integers.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from penstock.consumer.input_channel import InputChannel
from penstock.consumer.input_gate import SingleInputGate
from penstock.partition.result_partition import ResultPartition

__all__ = [
    "DEFAULT_WINDOW_SECONDS",
    "DETAILED_QUEUE_METRICS",
    "METRIC_NAMES",
    "TaskIOMetrics",
    "TimerGauge",
]

DEFAULT_WINDOW_SECONDS: Final = 5
"""Length of the window of the ``*MsPerSecond`` gauges (Flink's TimerGauge uses 60 s
with 5 s updates; a shorter window suits a live view of a short job)."""

_MS_PER_SECOND: Final = 1000.0

METRIC_NAMES: Final = (
    "numRecordsIn",
    "numRecordsOut",
    "numBytesIn",
    "numBytesOut",
    "numBuffersInLocal",
    "numBuffersInRemote",
    "inPoolUsage",
    "outPoolUsage",
    "inputQueueLength",
    "outputQueueLength",
    "isBackPressured",
    "idleTimeMsPerSecond",
    "busyTimeMsPerSecond",
    "backPressuredTimeMsPerSecond",
    "softBackPressuredTimeMsPerSecond",
    "hardBackPressuredTimeMsPerSecond",
    "accumulateIdleTimeMs",
    "accumulateBusyTimeMs",
    "accumulateBackPressuredTimeMs",
)
"""Every key of ``TaskIOMetrics.snapshot()`` (besides the detailed ones)."""

DETAILED_QUEUE_METRICS: Final = ("totalQueueLen", "minQueueLen", "maxQueueLen", "avgQueueLen")
"""With ``taskmanager.network.detailed-metrics``, the queue lengths of each input gate
(over its channels) and each output (over its subpartitions), as Flink names them:
``Shuffle.Netty.Input.<gate index>.<name>`` and ``Shuffle.Netty.Output.<output index>.<name>``."""

Clock = Callable[[], float]
"""Seconds on a monotonic clock."""


class TimerGauge:
    """Measures time spent in one state, in total and per second over a recent window.

    Time is kept in one-second buckets so that the window moves smoothly; an interval
    still running counts up to now.

    Args:
        clock: Monotonic seconds (``time.monotonic``; tests pass a fake clock).
        window_seconds: Length of the window of ``get_value``.
    """

    __slots__ = (
        "_accumulated_ms",
        "_buckets",
        "_clock",
        "_created",
        "_frozen_at",
        "_lock",
        "_start",
        "window",
    )

    def __init__(self, clock: Clock = time.monotonic, window_seconds: int = DEFAULT_WINDOW_SECONDS):
        self._clock = clock
        self.window = window_seconds
        self._lock = threading.Lock()
        self._created = clock()
        self._start: float | None = None
        self._accumulated_ms = 0.0
        self._buckets: deque[list[float]] = deque()  # [second, ms] pairs, oldest first
        self._frozen_at: float | None = None

    @property
    def is_measuring(self) -> bool:
        return self._start is not None

    def mark_start(self) -> None:
        """The state begins (no-op if it already began)."""
        with self._lock:
            if self._start is None:
                self._start = self._clock()

    def mark_end(self) -> None:
        """The state ends (no-op if it was not measuring)."""
        with self._lock:
            start = self._start
            if start is None:
                return
            self._start = None
            end = self._clock()
            self._accumulated_ms += (end - start) * _MS_PER_SECOND
            self._add(start, end)
            self._prune(end)

    def freeze(self) -> None:
        """Ends a running interval and stops the window at now (the task ended)."""
        self.mark_end()
        with self._lock:
            if self._frozen_at is None:
                self._frozen_at = self._clock()

    # ``start``/``stop`` make a gauge a ``BackPressureTimer`` for result partitions.
    start = mark_start
    stop = mark_end

    def get_value(self) -> float:
        """Milliseconds per second spent in the state over the window (0..1000)."""
        with self._lock:
            now = self._now()
            window_start = max(self._created, math.floor(now) - self.window + 1)
            span = now - window_start
            if span <= 0:
                return 0.0
            first = math.floor(window_start)
            total = sum(ms for second, ms in self._buckets if second >= first)
            if self._start is not None:
                total += (now - max(self._start, window_start)) * _MS_PER_SECOND
        return min(_MS_PER_SECOND, total / span)

    def get_accumulated_ms(self) -> float:
        """Milliseconds spent in the state since the gauge was made."""
        with self._lock:
            ongoing = 0.0 if self._start is None else self._now() - self._start
            return self._accumulated_ms + ongoing * _MS_PER_SECOND

    def _now(self) -> float:
        frozen = self._frozen_at
        return self._clock() if frozen is None else frozen

    def _add(self, start: float, end: float) -> None:
        buckets = self._buckets
        second = math.floor(start)
        while start < end:
            edge = min(end, second + 1.0)
            ms = (edge - start) * _MS_PER_SECOND
            if buckets and buckets[-1][0] == second:
                buckets[-1][1] += ms
            else:
                buckets.append([float(second), ms])
            start = edge
            second += 1

    def _prune(self, now: float) -> None:
        oldest = math.floor(now) - self.window
        buckets = self._buckets
        while buckets and buckets[0][0] < oldest:
            buckets.popleft()


class TaskIOMetrics:
    """The I/O metrics of one task, read by ``snapshot()`` from any thread.

    The task thread updates ``num_records_in`` / ``num_records_out`` (per batch) and
    marks the timers; byte, buffer, queue and pool figures are read live from the
    task's partitions and gates, which keep their own counters.

    Args:
        clock: Monotonic seconds, shared by the timers.
        window_seconds: Window of the ``*MsPerSecond`` gauges.
        detailed: Also report the queue lengths of each gate and output
            (``DETAILED_QUEUE_METRICS``).
    """

    def __init__(
        self,
        clock: Clock = time.monotonic,
        window_seconds: int = DEFAULT_WINDOW_SECONDS,
        detailed: bool = False,
    ) -> None:
        self._clock = clock
        self.detailed = detailed
        self.idle_timer = TimerGauge(clock, window_seconds)
        self.soft_back_pressured_timer = TimerGauge(clock, window_seconds)
        self.hard_back_pressured_timer = TimerGauge(clock, window_seconds)
        self.num_records_in = 0
        self.num_records_out = 0
        self.partitions: Sequence[ResultPartition] = ()
        self.gates: Sequence[SingleInputGate] = ()
        self.channels: Sequence[InputChannel] = ()
        self._started: float | None = None
        self._ended: float | None = None

    def attach(
        self, partitions: Sequence[ResultPartition], gates: Sequence[SingleInputGate]
    ) -> None:
        """Reads figures from these partitions and gates; times hard backpressure."""
        self.partitions = tuple(partitions)
        self.gates = tuple(gates)
        self.channels = tuple(channel for gate in gates for channel in gate.channels)
        for partition in partitions:
            partition.backpressure_timer = self.hard_back_pressured_timer

    def mark_running(self) -> None:
        """The task started processing: busy time counts from now."""
        if self._started is None:
            self._started = self._clock()

    def mark_ended(self) -> None:
        """The task stopped processing: the time gauges freeze."""
        if self._started is not None and self._ended is None:
            for timer in self._timers:
                timer.freeze()
            self._ended = self._clock()

    @property
    def _timers(self) -> tuple[TimerGauge, ...]:
        return (self.idle_timer, self.soft_back_pressured_timer, self.hard_back_pressured_timer)

    def is_back_pressured(self) -> bool:
        """Whether any output cannot take a buffer now (Flink's isBackPressured)."""
        return any(
            not partition.is_released and not partition.is_available()
            for partition in self.partitions
        )

    def snapshot(self) -> dict[str, float]:
        """Every metric by Flink's name (see ``METRIC_NAMES``)."""
        idle_per_second = self.idle_timer.get_value()
        soft = self.soft_back_pressured_timer.get_value()
        hard = self.hard_back_pressured_timer.get_value()
        back_pressured = min(_MS_PER_SECOND, soft + hard)
        idle_ms = self.idle_timer.get_accumulated_ms()
        back_pressured_ms = (
            self.soft_back_pressured_timer.get_accumulated_ms()
            + self.hard_back_pressured_timer.get_accumulated_ms()
        )
        started = self._started
        elapsed_ms = 0.0
        if started is not None:
            end = self._ended if self._ended is not None else self._clock()
            elapsed_ms = (end - started) * _MS_PER_SECOND
        local = remote = 0
        for channel in self.channels:
            if channel.is_remote:
                remote += channel.num_buffers_in
            else:
                local += channel.num_buffers_in
        figures = {
            "numRecordsIn": float(self.num_records_in),
            "numRecordsOut": float(self.num_records_out),
            "numBytesIn": float(sum(channel.num_bytes_in for channel in self.channels)),
            "numBytesOut": float(sum(partition.num_bytes_out for partition in self.partitions)),
            "numBuffersInLocal": float(local),
            "numBuffersInRemote": float(remote),
            "inPoolUsage": _usage(gate.buffer_usage for gate in self.gates),
            "outPoolUsage": _usage(
                (partition.buffer_pool.used_buffers, partition.buffer_pool.num_buffers)
                for partition in self.partitions
            ),
            "inputQueueLength": float(sum(gate.input_queue_length for gate in self.gates)),
            "outputQueueLength": float(
                sum(partition.output_queue_length for partition in self.partitions)
            ),
            "isBackPressured": 1.0 if self.is_back_pressured() else 0.0,
            "idleTimeMsPerSecond": idle_per_second,
            "busyTimeMsPerSecond": (
                _MS_PER_SECOND - min(idle_per_second + back_pressured, _MS_PER_SECOND)
                if started is not None
                else 0.0
            ),
            "backPressuredTimeMsPerSecond": back_pressured,
            "softBackPressuredTimeMsPerSecond": soft,
            "hardBackPressuredTimeMsPerSecond": hard,
            "accumulateIdleTimeMs": idle_ms,
            "accumulateBusyTimeMs": max(0.0, elapsed_ms - idle_ms - back_pressured_ms),
            "accumulateBackPressuredTimeMs": back_pressured_ms,
        }
        if self.detailed:
            for index, gate in enumerate(self.gates):
                lengths = [channel.buffers_in_use() for channel in gate.channels]
                figures.update(_queue_figures(f"Shuffle.Netty.Input.{index}", lengths))
            for index, partition in enumerate(self.partitions):
                lengths = [subpartition.queue_length for subpartition in partition.subpartitions]
                figures.update(_queue_figures(f"Shuffle.Netty.Output.{index}", lengths))
        return figures


def _usage(pools: Iterable[tuple[int, int]]) -> float:
    """Used over total buffers, summed over ``(used, total)`` pools (0 without any)."""
    used = total = 0
    for pool_used, pool_total in pools:
        used += pool_used
        total += pool_total
    return used / total if total else 0.0


def _queue_figures(group: str, lengths: Sequence[int]) -> dict[str, float]:
    """``DETAILED_QUEUE_METRICS`` of one gate or output, named under ``group``."""
    total = sum(lengths)
    return {
        f"{group}.totalQueueLen": float(total),
        f"{group}.minQueueLen": float(min(lengths, default=0)),
        f"{group}.maxQueueLen": float(max(lengths, default=0)),
        f"{group}.avgQueueLen": total / len(lengths) if lengths else 0.0,
    }
