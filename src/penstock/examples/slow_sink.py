"""A sink that cannot keep up: backpressure moves upstream.

A fast source and a map feed a sink that takes about a millisecond per batch of
records, so it is the bottleneck::

    Source: Numbers -> To Event  ==rebalance==>  Map  ==rebalance==>  Sink: Slow Sink

The sink's input buffers fill first; the map then finds no free buffer in its output
pool and waits (hard backpressure) or finds its output unavailable (soft), and stops
reading its input; the source's buffers fill in turn. Within seconds the map and the
source spend most of each second backpressured: their vertices show HIGH, their
``accumulateBackPressuredTimeMs`` grows, while the sink is busy, never backpressured.
The network stack bounds the memory all along: no queue grows.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Final

from penstock.api.environment import StreamExecutionEnvironment
from penstock.config import Configuration
from penstock.examples.reporting import ReportingSink

__all__ = [
    "DEFAULT_RECORDS",
    "JOB_NAME",
    "RECORDS_PER_PAUSE",
    "SlowSink",
    "build",
    "describe_results",
    "main",
]

JOB_NAME: Final = "slow sink"

DEFAULT_RECORDS: Final = 1_500_000
"""Records of the stream: about 20 seconds at the sink's pace."""

RECORDS_PER_PAUSE: Final = 100
"""The sink pauses after this many records."""

PAUSE_S: Final = 0.001
"""How long the sink pauses: about 100,000 records per second at most."""


def to_event(number: int) -> str:
    """``"event 42"``."""
    return f"event {number}"


def enrich(event: str) -> str:
    """``"EVENT 42"``: some work per record."""
    return event.upper()


class SlowSink(ReportingSink):
    """Takes ``PAUSE_S`` per ``RECORDS_PER_PAUSE`` records; reports how many it took."""

    def __init__(self, records_per_pause: int = RECORDS_PER_PAUSE) -> None:
        super().__init__()
        self.records_per_pause = records_per_pause
        self.count = 0

    def invoke(self, value: object) -> None:
        """Counts the record, pausing now and then as a slow external system would."""
        self.count += 1
        if self.count % self.records_per_pause == 0:
            time.sleep(PAUSE_S)

    def report(self) -> list[object]:
        """``[("slow sink", subtask index, records taken)]``."""
        return [("slow sink", self.subtask_index, self.count)]


def build(env: StreamExecutionEnvironment, records: int = DEFAULT_RECORDS) -> None:
    """Adds source → map → slow sink over ``records`` numbers to ``env``."""
    (
        env.from_sequence(1, records)
        .name("Numbers")
        .map(to_event, output_type=str)
        .name("To Event")
        .rebalance()
        .map(enrich, output_type=str)
        .rebalance()
        .add_sink(SlowSink())
        .name("Slow Sink")
        .set_parallelism(1)
    )


def describe_results(records: Sequence[object]) -> str | None:
    """``The slow sink took 1,500,000 records.``, or None without reports."""
    counts = [
        record[2]
        for record in records
        if isinstance(record, tuple) and len(record) == 3 and record[0] == "slow sink"
    ]
    if not counts:
        return None
    return f"The slow sink took {sum(counts):,} records."


def main(config: Configuration | None = None) -> None:
    """Runs the example on a mini-cluster and prints the final metrics of the source."""
    env = StreamExecutionEnvironment.get_execution_environment(
        Configuration({"parallelism.default": 2}) | (config or Configuration())
    )
    build(env)
    result = env.execute(JOB_NAME)
    for task, metrics in sorted(result.get_metrics().items()):
        print(
            f"{task}: accumulateBackPressuredTimeMs={metrics['accumulateBackPressuredTimeMs']:.0f}"
        )


if __name__ == "__main__":
    main()
