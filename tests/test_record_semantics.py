"""What a job computes, whatever the chaining, batching and parallelism: Flink's semantics.

Operators work on lists of records, but every record is emitted as it was when the
function returned it (Flink copies emitted records; PyFlink serializes them), types
inferred from a collection do not constrain what a reduce computes, and the settings
and partitionings that PyFlink defines behave as PyFlink says.
"""

from __future__ import annotations

import threading
from collections import namedtuple
from collections.abc import Iterator, Sequence
from typing import cast

import pytest

from penstock import JobExecutionError, StreamExecutionEnvironment
from penstock.api.datastream import DataStream
from penstock.errors import SerializationError
from penstock.functions import (
    FlatMapFunction,
    KeyedProcessFunction,
    KeySelector,
    MapFunction,
    ProcessContext,
)
from penstock.runtime.deployment import connections
from penstock.task.operator import Collector, RuntimeContext, snapshot
from penstock.task.operators import MapOperator

LOCAL: dict[str, object] = {"execution.target": "local", "taskmanager.numberOfTaskSlots": 4}
N_SPANNING = 5_000


def local_env(parallelism: int = 1) -> StreamExecutionEnvironment:
    return StreamExecutionEnvironment.get_execution_environment(
        {**LOCAL, "parallelism.default": parallelism}
    )


def collect(stream: DataStream) -> list[object]:
    return list(stream.execute_and_collect())


# -- emitted records are snapshots -------------------------------------------------------


class ReusingMap(MapFunction):
    """Returns one list, changed on every call: what Flink's object reuse allows."""

    def __init__(self) -> None:
        self.out: list[object] = [0]

    def map(self, value: object) -> object:
        self.out[0] = value
        return self.out


def test_snapshot_keeps_values_and_copies_what_can_change() -> None:
    values: list[object] = [1, 2.5, "s", b"b", None, True, (1, "a"), ()]
    for value in values:
        assert snapshot(value) is value
    row = ["a", [1]]
    copied = snapshot(row)
    assert copied == row and copied is not row and copied[1] is not row[1]
    nested = (1, [2])
    assert snapshot(nested) == nested and snapshot(nested) is not nested
    with pytest.raises(SerializationError, match="a list record cannot be copied"):
        snapshot([threading.Lock()])


@pytest.mark.parametrize("parallelism", [1, 2])
def test_a_reduce_that_updates_its_accumulator_in_place_emits_each_running_value(
    parallelism: int,
) -> None:
    def add_in_place(acc: list[object], value: list[object]) -> list[object]:
        acc[1] = cast("int", acc[1]) + cast("int", value[1])
        return acc

    env = local_env(parallelism)
    rows = [["a", 1], ["a", 2], ["a", 3], ["b", 10], ["b", 20]]
    stream = env.from_collection(rows).key_by(lambda row: row[0]).reduce(add_in_place)

    emitted = collect(stream)

    by_key: dict[object, list[object]] = {}
    for row in emitted:
        assert isinstance(row, list)
        by_key.setdefault(row[0], []).append(row[1])
    assert by_key == {"a": [1, 3, 6], "b": [10, 30]}


def test_a_function_that_reuses_its_output_object_emits_every_value() -> None:
    def counting_up(value: object) -> Iterator[list[object]]:
        row: list[object] = [value, 0]
        for i in range(3):
            row[1] = i
            yield row

    env = local_env()
    mapped = env.from_collection([1, 2, 3]).map(ReusingMap())
    assert collect(mapped) == [[1], [2], [3]]

    env = local_env()
    flat = env.from_collection([1, 2]).flat_map(counting_up)
    assert collect(flat) == [[1, 0], [1, 1], [1, 2], [2, 0], [2, 1], [2, 2]]


def test_a_collector_takes_each_record_as_it_is_when_collected() -> None:
    class Repeating(FlatMapFunction):
        def flat_map(self, value: object, out: Collector[object]) -> None:  # type: ignore[override]
            row = [value]
            out.collect(row)
            row.append("changed later")
            out.collect(row)

    class Running(KeyedProcessFunction):
        def __init__(self) -> None:
            self.seen: list[object] = []

        def process_element(
            self, value: object, ctx: ProcessContext, out: Collector[object]
        ) -> Iterator[object]:
            self.seen.append(value)
            yield self.seen

    env = local_env()
    assert collect(env.from_collection([1]).flat_map(Repeating())) == [[1], [1, "changed later"]]

    env = local_env()
    running = env.from_collection([1, 2, 3]).key_by(lambda v: 0).process(Running())
    assert collect(running) == [[1], [1, 2], [1, 2, 3]]


def test_a_chained_operator_that_changes_its_input_leaves_upstream_state_alone() -> None:
    def scale(row: object) -> object:
        assert isinstance(row, list)
        row[1] *= 10  # changes the record it was given
        return row

    env = local_env()
    rows = [["k", 1] for _ in range(N_SPANNING)]  # several buffers, so several batches
    totals = (
        env.from_collection(rows)
        .key_by(lambda row: row[0])
        .reduce(lambda a, b: [a[0], a[1] + b[1]])
        .map(scale)  # chained to the reduce: same parallelism, forward
    )

    emitted = [row[1] for row in cast("list[list[int]]", collect(totals))]
    assert emitted == [10 * n for n in range(1, N_SPANNING + 1)]


# -- reduce and sum ----------------------------------------------------------------------


@pytest.mark.parametrize("parallelism", [1, 2])
def test_a_reduce_may_emit_another_type_than_an_inferred_input_type(parallelism: int) -> None:
    env = local_env(parallelism)
    quotients = env.from_collection([1, 2, 3, 4]).key_by(lambda v: v % 2).reduce(lambda a, b: a / b)
    assert sorted(cast("list[float]", collect(quotients))) == [1 / 3, 0.5, 1, 2]

    env = local_env(parallelism)
    big = env.from_collection([2**62, 2**62, 2**62]).key_by(lambda v: 0).sum()
    assert collect(big) == [2**62, 2**63, 3 * 2**62]


def test_a_reduce_that_returns_none_starts_its_key_again() -> None:
    def until_three(total: object, value: object) -> object:
        result = cast("int", total) + cast("int", value)
        return None if result >= 3 else result

    env = local_env()
    stream = env.from_collection([1, 1, 1, 5, 1]).key_by(lambda v: 0).reduce(until_three)

    assert collect(stream) == [1, 2, None, 5, None]


@pytest.mark.parametrize("network_edge", [False, True])
@pytest.mark.parametrize(
    ("records", "declared"), [(["a", "b", "reset", "c"], str), ([1.0, 2.0, -1.0, 3.0], float)]
)
def test_a_reduce_of_a_declared_type_may_start_a_key_again_anywhere(
    records: list[object], declared: type, network_edge: bool
) -> None:
    # None is outside the declared type: whether the result crosses a channel after
    # the reduce (here, after a rebalance) must not decide whether the job fails.
    def add_or_reset(total: object, value: object) -> object:
        if value in ("reset", -1.0):
            return None
        return cast("str", total) + cast("str", value)

    env = local_env()
    typed = env.from_collection(records).map(lambda v: v, output_type=declared)
    reduced = typed.key_by(lambda v: 0).reduce(add_or_reset)
    if network_edge:
        reduced = reduced.rebalance().map(lambda v: v)
    expected = ["a", "ab", None, "c"] if declared is str else [1.0, 3.0, None, 3.0]
    assert collect(reduced) == expected


def test_sum_at_a_negative_position_counts_from_the_end() -> None:
    env = local_env()
    rows = [("a", 2, 1.0), ("a", 3, 1.5)]
    stream = env.from_collection(rows).key_by(lambda row: row[0]).sum(-1)
    assert collect(stream) == [("a", 2, 1.0), ("a", 2, 2.5)]


@pytest.mark.parametrize("position", [None, 1.5, True, [1]])
def test_sum_takes_only_an_int_or_str_position(position: object) -> None:
    keyed = local_env().from_collection([("a", 1)]).key_by(lambda row: row[0])
    with pytest.raises(TypeError, match="must be of int or str type"):
        keyed.sum(position)  # type: ignore[arg-type]


def test_sum_on_a_stream_of_numbers_takes_only_position_zero() -> None:
    keyed = local_env().from_sequence(1, 3).key_by(lambda v: 0)
    with pytest.raises(TypeError, match="The 1 field selected on a basic type"):
        keyed.sum(1)
    assert collect(keyed.sum(0)) == [1, 3, 6]


# -- settings and partitionings as in PyFlink -------------------------------------------


def test_an_operator_buffer_timeout_of_minus_one_takes_the_environment_default() -> None:
    env = local_env()
    env.set_buffer_timeout(20)
    env.from_sequence(1, 3).map(str).set_buffer_timeout(-1).rebalance().print()
    [map_vertex, _] = env.get_stream_graph().get_job_graph().vertices
    assert map_vertex.buffer_timeout_ms == 20


@pytest.mark.parametrize(
    ("producers", "consumers", "expected"),
    [
        (2, 3, [[0, 1], [2]]),
        (2, 5, [[0, 1, 2], [3, 4]]),
        (3, 4, [[0, 1], [2], [3]]),
        (2, 4, [[0, 1], [2, 3]]),
        (3, 2, [[0], [1], [1]]),
        (5, 2, [[0], [0], [1], [1], [1]]),
    ],
)
def test_pointwise_edges_connect_subtasks_as_flink_does(
    producers: int, consumers: int, expected: list[list[int]]
) -> None:
    assert connections(True, producers, consumers) == expected


@pytest.mark.parametrize(
    ("parallelism", "identifier", "prefixes"),
    [
        (1, None, {""}),
        (1, "out", {"out> "}),
        (2, None, {"1> ", "2> "}),
        (2, "out", {"out:1> ", "out:2> "}),
    ],
)
def test_print_prefixes_lines_as_flink_does(
    parallelism: int,
    identifier: str | None,
    prefixes: set[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = local_env(parallelism)
    env.from_sequence(1, 20).map(lambda v: f"v{v}").print(identifier)
    env.execute("print")
    lines = capsys.readouterr().out.splitlines()
    assert sorted(line.split("v")[1] for line in lines) == sorted(str(v) for v in range(1, 21))
    assert {line.split("v")[0] for line in lines} == prefixes


# -- a function that raises StopIteration fails the job, it does not end the batch ------


def stops_at_4500(value: object) -> object:
    if value == 4500:
        raise StopIteration  # what next() on an empty iterator raises, by mistake
    return value


@pytest.mark.parametrize(
    "step",
    [
        lambda s: s.map(stops_at_4500),
        lambda s: s.filter(stops_at_4500),
        lambda s: s.flat_map(lambda v: [stops_at_4500(v)]),
        lambda s: s.flat_map(lambda v: iter([v]) if v != 4500 else stops_at_4500(v)),
        lambda s: s.key_by(stops_at_4500).map(str),
        lambda s: s.partition_custom(lambda key, n: 0, stops_at_4500).map(str),
    ],
    ids=["map", "filter", "flat_map", "flat_map-iterator", "key_by", "partition_custom"],
)
@pytest.mark.parametrize("parallelism", [1, 2])
def test_a_stop_iteration_from_a_user_function_fails_the_job(
    step: object, parallelism: int
) -> None:
    env = local_env(parallelism)
    stream = cast("DataStream", step(env.from_sequence(1, 10_000)))  # type: ignore[operator]
    with pytest.raises(JobExecutionError, match="raised StopIteration on record"):
        collect(stream)


# -- each operator has its own copy of its function ---------------------------------------


class CountCalls(MapFunction):
    """Tags each record with this instance's count of calls and of opens."""

    def __init__(self) -> None:
        self.calls = 0
        self.opens = 0

    def open(self, runtime_context: RuntimeContext) -> None:
        self.opens += 1

    def map(self, value: object) -> object:
        self.calls += 1
        return (*cast("tuple[object, ...]", value), self.calls, self.opens)


@pytest.mark.parametrize("chained", [True, False])
def test_a_function_used_twice_is_two_functions_whatever_the_chaining(chained: bool) -> None:
    # Flink serializes each operator's function on its own: one object given to two
    # operators is two functions in every subtask, each opened once.
    env = local_env()
    count = CountCalls()
    first = env.from_collection([(), (), ()]).map(count)
    if not chained:
        first = first.rebalance()
    assert collect(first.map(count)) == [(1, 1, 1, 1), (2, 1, 2, 1), (3, 1, 3, 1)]


class OpenCountingKey(KeySelector):
    opened = 0

    def open(self, runtime_context: RuntimeContext) -> None:
        self.opened += 1
        if self.opened > 1:
            msg = "opened twice"
            raise AssertionError(msg)

    def get_key(self, value: object) -> object:
        return cast("tuple[int, int]", value)[0]


def test_a_key_selector_of_an_operator_and_of_its_output_is_opened_once_each() -> None:
    env = local_env(2)
    key = OpenCountingKey()
    rows = [(1, 1), (2, 2), (1, 3)]
    sums = env.from_collection(rows).key_by(key).sum(1).key_by(key).sum(1)
    assert sorted(cast("list[tuple[int, int]]", collect(sums))) == [(1, 1), (1, 5), (2, 2)]


# -- keyed state tells keys apart as routing does ----------------------------------------


@pytest.mark.parametrize("parallelism", [1, 2, 3])
def test_keys_equal_across_types_stay_apart_at_any_parallelism(parallelism: int) -> None:
    env = local_env(parallelism)
    rows = [(1, 1), (True, 10), (1.0, 100)] * 2
    sums = env.from_collection(rows).key_by(lambda row: row[0]).sum(1)

    last: dict[str, object] = {}
    for key, total in cast("list[tuple[object, int]]", collect(sums)):
        last[type(key).__name__] = total
    assert last == {"int": 2, "bool": 20, "float": 200}


Pair = namedtuple("Pair", "first second")


@pytest.mark.parametrize("parallelism", [1, 2, 3])
def test_tuple_keys_of_any_kind_keep_their_fields_apart(parallelism: int) -> None:
    # A namedtuple key is routed as a tuple; its fields are told apart as a tuple's.
    env = local_env(parallelism)
    rows = [(1, 1), (True, 10), (1.0, 100)] * 2
    sums = env.from_collection(rows).key_by(lambda row: Pair(row[0], "k")).sum(1)

    last: dict[str, object] = {}
    for key, total in cast("list[tuple[object, int]]", collect(sums)):
        last[type(key).__name__] = total
    assert last == {"int": 2, "bool": 20, "float": 200}


def test_byte_string_keys_of_any_kind_are_one_key() -> None:
    env = local_env(2)
    rows = [(b"k", 1), (bytearray(b"k"), 2), (b"other", 4)]
    totals = (
        env.from_collection(rows)
        .key_by(lambda row: row[0])
        .reduce(lambda a, b: (a[0], a[1] + b[1]))
    )
    finals = {bytes(key): total for key, total in cast("list[tuple[bytes, int]]", collect(totals))}
    assert finals == {b"k": 3, b"other": 4}


def test_object_reuse_lets_a_job_skip_the_copies() -> None:
    emitted: list[object] = []

    class Into:
        def collect(self, record: object) -> None:
            emitted.append(record)

        def collect_batch(self, records: Sequence[object]) -> None:
            emitted.extend(records)

    for reuse, expected in (("false", [[1], [2], [3]]), ("true", [[3], [3], [3]])):
        emitted.clear()
        operator = MapOperator(ReusingMap())
        config = {"pipeline.object-reuse": reuse}
        operator.setup(Into(), RuntimeContext("Map (1/1)", "Map", 0, 1, config=config))
        operator.open()
        operator.process_batch([1, 2, 3])
        # With reuse, the same object three times, as Flink would hand it on.
        assert emitted == expected
