"""Broadcast: every record reaches every subtask of the consumer.

A small stream of rules, read by one source subtask, is broadcast to a map with three
subtasks; each subtask's sink counts what it got and reports it::

    Source: Collection Source  ==broadcast==>  Map -> Sink: Count Per Subtask (x3)

With ``broadcast()`` the record writer copies each record into every subpartition
(Flink's ``BroadcastPartitioner``), so each of the three subtasks gets all 1,000
rules of a stream of 1,000.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from penstock.api.environment import StreamExecutionEnvironment
from penstock.config import Configuration
from penstock.examples.reporting import ReportingSink

__all__ = ["CONSUMERS", "DEFAULT_RECORDS", "JOB_NAME", "build", "describe_results", "main"]

JOB_NAME: Final = "broadcast"

DEFAULT_RECORDS: Final = 1000
CONSUMERS: Final = 3


def rule_length(rule: str) -> int:
    """The length of a rule, as a stand-in for applying it."""
    return len(rule)


class CountPerSubtask(ReportingSink):
    """Counts and sums its records; reports ``("broadcast", subtask, count, sum)``."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.total = 0

    def invoke(self, value: object) -> None:
        """Counts an int record."""
        self.count += 1
        self.total += value if isinstance(value, int) else 0

    def report(self) -> list[object]:
        """One record: this subtask's count and sum."""
        return [("broadcast", self.subtask_index, self.count, self.total)]


def build(env: StreamExecutionEnvironment, records: int = DEFAULT_RECORDS) -> None:
    """Adds the broadcast of ``records`` rules to ``CONSUMERS`` subtasks to ``env``."""
    (
        env.from_collection([f"rule {number}" for number in range(1, records + 1)])
        .broadcast()
        .map(rule_length)
        .set_parallelism(CONSUMERS)
        .add_sink(CountPerSubtask())
        .name("Count Per Subtask")
        .set_parallelism(CONSUMERS)
    )


def describe_results(records: Sequence[object]) -> str | None:
    """``subtask 1 got 1,000 rules (...); ...``, or None without reports."""
    reports = sorted(
        record
        for record in records
        if isinstance(record, tuple) and len(record) == 4 and record[0] == "broadcast"
    )
    if not reports:
        return None
    return "; ".join(
        f"subtask {index + 1} got {count:,} rules ({total:,} characters)"
        for _, index, count, total in reports
    )


def main(config: Configuration | None = None) -> None:
    """Runs the example on a mini-cluster and prints what each subtask got."""
    from penstock.runtime.client import observe_jobs

    env = StreamExecutionEnvironment.get_execution_environment(config)
    build(env)
    records: list[object] = []
    with observe_jobs(lambda update: None, on_records=records.extend):
        env.execute(JOB_NAME)
    print(describe_results(records))


if __name__ == "__main__":
    main()
