"""The operators on lists, the function adapters, and the operator chain."""

from __future__ import annotations

import pickle
from collections import namedtuple
from collections.abc import Callable, Iterable, Sequence
from typing import cast

import cloudpickle
import pytest
from hypothesis import given
from hypothesis import strategies as st

from penstock.errors import IllegalStateError
from penstock.functions import (
    FilterFunction,
    FlatMapFunction,
    KeyedProcessFunction,
    KeySelector,
    MapFunction,
    ProcessContext,
    ReduceFunction,
    SinkFunction,
    as_map,
    as_partitioner,
)
from penstock.runtime.job_graph import OperatorSpec
from penstock.task.operator import Collector, OperatorFactory, RuntimeContext, StreamOperator
from penstock.task.operator_chain import DiscardingOutput, OperatorChain
from penstock.task.operators import (
    CollectionSourceFactory,
    CollectSinkFactory,
    FilterFactory,
    FlatMapFactory,
    MapFactory,
    PrintSinkFactory,
    ProcessFactory,
    ReduceFactory,
    SequenceSourceFactory,
    SinkFactory,
    SumFactory,
    sequence_split,
)


class ListOutput:
    """An output that records every batch."""

    def __init__(self) -> None:
        self.batches: list[list[object]] = []

    def collect(self, record: object) -> None:
        self.batches.append([record])

    def collect_batch(self, records: Sequence[object]) -> None:
        self.batches.append(list(records))

    @property
    def records(self) -> list[object]:
        return [record for batch in self.batches for record in batch]


def context(index: int = 0, parallelism: int = 1, **kwargs: object) -> RuntimeContext:
    return RuntimeContext("Task (1/1)", "Op", index, parallelism, **kwargs)  # type: ignore[arg-type]


def run_operator(
    factory: OperatorFactory, *batches: list[object], ctx: RuntimeContext | None = None
) -> ListOutput:
    operator = cast("StreamOperator[object, object]", factory.create())
    output = ListOutput()
    operator.setup(output, ctx or context())
    operator.open()
    for batch in batches:
        operator.process_batch(batch)
    operator.end_input()
    operator.close()
    return output


class Lifecycle:
    """Counts open/close calls of a rich function."""

    def __init__(self) -> None:
        self.opened: list[RuntimeContext] = []
        self.closed = 0

    def open(self, runtime_context: RuntimeContext) -> None:
        self.opened.append(runtime_context)

    def close(self) -> None:
        self.closed += 1


# -- one-input operators -----------------------------------------------------------


def test_map_with_callable_and_function_object() -> None:
    assert run_operator(MapFactory(lambda x: x * 2), [1, 2], [3]).records == [2, 4, 6]

    class Double(Lifecycle, MapFunction):
        def __init__(self) -> None:
            Lifecycle.__init__(self)

        def map(self, value: object) -> object:
            return cast("int", value) * 2

    fn = Double()
    ctx = context()
    out = run_operator(MapFactory(fn), [1, 2], [3], ctx=ctx)
    assert out.records == [2, 4, 6]
    assert out.batches == [[2, 4], [6]]  # one collect_batch per input batch
    assert fn.opened == [ctx] and fn.closed == 1


def test_flat_map_returning_iterables_and_with_collector() -> None:
    out = run_operator(FlatMapFactory(lambda s: s.split()), ["a b", "", "c"])
    assert out.records == ["a", "b", "c"]

    class Explode(Lifecycle, FlatMapFunction):
        def __init__(self) -> None:
            Lifecycle.__init__(self)

        def flat_map(self, value: object, out: Collector[object]) -> None:  # type: ignore[override]
            for _ in range(cast("int", value)):
                out.collect(value)

    fn = Explode()
    assert run_operator(FlatMapFactory(fn), [1, 0, 2]).records == [1, 2, 2]
    assert len(fn.opened) == 1 and fn.closed == 1

    class Gen(FlatMapFunction):
        def flat_map(self, value: object) -> Iterable[object]:
            yield value
            yield value

    assert run_operator(FlatMapFactory(Gen()), [7]).records == [7, 7]


class CountingOutput(ListOutput):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def collect_batch(self, records: Sequence[object]) -> None:
        super().collect_batch(records)
        self.count += len(records)


class Explode:
    """Produces ``value`` records per record, into a collector or as a generator."""

    def __init__(self) -> None:
        self.output = CountingOutput()
        self.emitted_while_running: list[int] = []

    def generate(self, value: int) -> Iterable[int]:
        for index in range(value):
            self.emitted_while_running.append(self.output.count)
            yield index

    def collect_into(self, value: int, out: Collector[object]) -> None:
        for record in self.generate(value):
            out.collect(record)


def explode_as_process(explode: Explode, by_collector: bool) -> Callable[..., object]:
    """A process function that explodes records, by collector or as a generator."""
    if by_collector:

        def process_collecting(value: int, ctx: ProcessContext, out: Collector[object]) -> None:
            explode.collect_into(value, out)

        return process_collecting

    def process_generating(value: int, ctx: ProcessContext) -> Iterable[int]:
        return explode.generate(value)

    return process_generating


@pytest.mark.parametrize("kind", ["flat_map", "process"])
@pytest.mark.parametrize("by_collector", [True, False])
def test_what_one_record_produces_goes_downstream_while_it_is_produced(
    kind: str, by_collector: bool
) -> None:
    # One record may produce any number of records over any time (a generator over a
    # file, or one that never ends): they must not wait, all of them, in one list.
    explode = Explode()
    flat_map = explode.collect_into if by_collector else explode.generate
    factory: OperatorFactory = (
        FlatMapFactory(flat_map)
        if kind == "flat_map"
        else ProcessFactory(explode_as_process(explode, by_collector), lambda _: 0)
    )
    operator = cast("StreamOperator[object, object]", factory.create())
    operator.setup(explode.output, context())
    operator.open()
    operator.process_batch([3, 50_000])
    operator.close()

    batches = explode.output.batches
    assert explode.output.records == [0, 1, 2, *range(50_000)]
    assert batches[0] == [0]  # the first record goes at once
    assert max(map(len, batches)) <= 4096
    assert explode.emitted_while_running[1] == 1  # out before the second was produced
    assert explode.emitted_while_running[-1] >= 50_000 - 4096


def test_filter_keeps_matching_and_skips_empty_batches() -> None:
    out = run_operator(FilterFactory(lambda x: x > 1), [0, 1], [2, 3])
    assert out.batches == [[2, 3]]

    class Even(Lifecycle, FilterFunction):
        def __init__(self) -> None:
            Lifecycle.__init__(self)

        def filter(self, value: object) -> bool:
            return cast("int", value) % 2 == 0

    fn = Even()
    assert run_operator(FilterFactory(fn), list(range(6))).records == [0, 2, 4]
    assert (len(fn.opened), fn.closed) == (1, 1)


def test_keyed_reduce_emits_running_aggregate_per_key() -> None:
    records: list[object] = [("a", 1), ("b", 10), ("a", 2), ("a", 3), ("b", 20)]
    out = run_operator(
        ReduceFactory(lambda x, y: (x[0], x[1] + y[1]), lambda r: r[0]), records[:2], records[2:]
    )
    assert out.records == [("a", 1), ("b", 10), ("a", 3), ("a", 6), ("b", 30)]

    class Max(Lifecycle, ReduceFunction):
        def __init__(self) -> None:
            Lifecycle.__init__(self)

        def reduce(self, value1: object, value2: object) -> object:
            return max(cast("int", value1), cast("int", value2))

    class Parity(KeySelector):
        def get_key(self, value: object) -> object:
            return cast("int", value) % 2

    fn = Max()
    assert run_operator(ReduceFactory(fn, Parity()), [3, 1, 4, 8, 5]).records == [3, 3, 4, 8, 5]
    assert (len(fn.opened), fn.closed) == (1, 1)


def test_keyed_operators_open_and_close_their_key_selector() -> None:
    class Parity(Lifecycle, KeySelector):
        def __init__(self) -> None:
            Lifecycle.__init__(self)

        def get_key(self, value: object) -> object:
            return cast("int", value) % 2

    reduce_key, sum_key = Parity(), Parity()
    factories: list[tuple[Parity, OperatorFactory]] = [
        (reduce_key, ReduceFactory(lambda x, y: x, reduce_key)),
        (sum_key, SumFactory(None, sum_key)),
    ]
    for key, factory in factories:
        ctx = context()
        run_operator(factory, [1, 2, 3], ctx=ctx)
        assert key.opened == [ctx] and key.closed == 1

    class Both(Lifecycle, KeySelector, ReduceFunction):
        """One object as reducer and key selector: opened and closed once."""

        def __init__(self) -> None:
            Lifecycle.__init__(self)

        def get_key(self, value: object) -> object:
            return value

        def reduce(self, value1: object, value2: object) -> object:
            return value1

    both = Both()
    run_operator(ReduceFactory(both, both), [1, 1])
    assert (len(both.opened), both.closed) == (1, 1)


def test_operator_closes_its_key_selector_even_if_its_function_fails_to_close() -> None:
    class FailingClose(Lifecycle, ReduceFunction):
        def __init__(self) -> None:
            Lifecycle.__init__(self)

        def reduce(self, value1: object, value2: object) -> object:
            return value1

        def close(self) -> None:
            super().close()
            msg = "close failed"
            raise RuntimeError(msg)

    class Key(Lifecycle, KeySelector):
        def __init__(self) -> None:
            Lifecycle.__init__(self)

        def get_key(self, value: object) -> object:
            return value

    fn, key = FailingClose(), Key()
    with pytest.raises(RuntimeError, match="close failed"):
        run_operator(ReduceFactory(fn, key), [1])
    assert (fn.closed, key.closed) == (1, 1)


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(-100, 100)), max_size=50))
def test_sum_by_position_matches_running_totals(records: list[tuple[str, int]]) -> None:
    out = run_operator(SumFactory(1, lambda r: r[0]), cast("list[object]", records))
    totals: dict[str, int] = {}
    expected = []
    for key, value in records:
        totals[key] = totals.get(key, 0) + value
        expected.append((key, totals[key]))
    assert out.records == expected


def test_sum_keeps_other_fields_of_the_first_record() -> None:
    records: list[object] = [("a", 1, "first"), ("a", 2, "second")]
    assert run_operator(SumFactory(1, lambda r: r[0]), records).records == [
        ("a", 1, "first"),
        ("a", 3, "first"),
    ]
    dicts: list[object] = [{"k": "x", "n": 1}, {"k": "x", "n": 4}]
    out = run_operator(SumFactory("n", lambda r: r["k"]), dicts)
    assert out.records == [{"k": "x", "n": 1}, {"k": "x", "n": 5}]
    assert dicts[0] == {"k": "x", "n": 1}  # input records are not mutated
    scalars: list[object] = [1, 2, 3, 4]
    assert run_operator(SumFactory(None, lambda r: r % 2), scalars).records == [1, 2, 4, 6]
    point = namedtuple("point", ["key", "value"])
    named: list[object] = [point("p", 1), point("p", 2)]
    summed = run_operator(SumFactory(1, lambda r: r.key), named).records
    assert summed == [point("p", 1), point("p", 3)]
    assert type(summed[1]) is point
    by_name = run_operator(SumFactory("value", lambda r: r.key), named).records
    assert by_name[1] == point("p", 3)


def test_keyed_process_function_sees_the_key() -> None:
    class Tag(Lifecycle, KeyedProcessFunction):
        def __init__(self) -> None:
            Lifecycle.__init__(self)

        def process_element(
            self, value: object, ctx: ProcessContext, out: Collector[object]
        ) -> None:
            out.collect((ctx.get_current_key(), value))

    fn = Tag()
    out = run_operator(ProcessFactory(fn, lambda r: r % 3), [1, 5, 9])
    assert out.records == [(1, 1), (2, 5), (0, 9)]
    assert (len(fn.opened), fn.closed) == (1, 1)


def test_sinks_invoke_per_record() -> None:
    seen: list[object] = []
    run_operator(SinkFactory(seen.append), [1, 2], [3])
    assert seen == [1, 2, 3]

    class Into(Lifecycle, SinkFunction):
        def __init__(self) -> None:
            Lifecycle.__init__(self)
            self.values: list[object] = []

        def invoke(self, value: object) -> None:
            self.values.append(value)

    fn = Into()
    assert run_operator(SinkFactory(fn), ["x"]).records == []
    assert fn.values == ["x"] and (len(fn.opened), fn.closed) == (1, 1)


def test_print_sink_prefixes_subtask_when_parallel(capsys: pytest.CaptureFixture[str]) -> None:
    run_operator(PrintSinkFactory(), [1, "a"])
    assert capsys.readouterr().out == "1\na\n"
    run_operator(PrintSinkFactory(), [(1, 2)], ctx=context(index=1, parallelism=3))
    assert capsys.readouterr().out == "2> (1, 2)\n"


def test_collect_sink_sends_batches_to_the_results_sink() -> None:
    batches: list[list[object]] = []
    run_operator(CollectSinkFactory(), [1, 2], [], [3], ctx=context(results_sink=batches.append))
    assert batches == [[1, 2], [3]]
    with pytest.raises(IllegalStateError, match="execute_and_collect"):
        run_operator(CollectSinkFactory(), [1])


def test_function_open_and_close_run_once_even_if_called_twice() -> None:
    fn = Lifecycle()
    fn_map = cast("object", fn)
    setattr(fn_map, "map", lambda value: value)  # noqa: B010 - a duck-typed MapFunction
    operator = MapFactory(fn_map).create()
    operator.setup(ListOutput(), context())
    operator.open()
    operator.open()
    operator.close()
    operator.close()
    assert (len(fn.opened), fn.closed) == (1, 1)


def test_close_without_open_does_not_close_the_function() -> None:
    fn = Lifecycle()
    setattr(fn, "map", lambda value: value)  # noqa: B010
    operator = MapFactory(fn).create()
    operator.close()
    assert fn.closed == 0


def test_a_function_whose_open_failed_is_closed() -> None:
    # Its open may have taken resources before it raised (Flink closes it too).
    class OpenFails(Lifecycle, MapFunction):
        def __init__(self) -> None:
            Lifecycle.__init__(self)

        def open(self, runtime_context: RuntimeContext) -> None:
            msg = "open failed"
            raise RuntimeError(msg)

        def map(self, value: object) -> object:
            return value

    fn = OpenFails()
    operator = MapFactory(fn).create()
    operator.setup(ListOutput(), context())
    with pytest.raises(RuntimeError, match="open failed"):
        operator.open()
    operator.close()
    assert fn.closed == 1


def test_bad_functions_are_rejected() -> None:
    with pytest.raises(TypeError, match="map"):
        MapFactory(42).create()
    with pytest.raises(TypeError, match="partition"):
        as_partitioner(42)
    assert as_map(str.upper)("a") == "A"
    assert as_map(int)("3") == 3  # a type is a plain callable


# -- sources -----------------------------------------------------------------------------


def drain_source(factory: OperatorFactory, ctx: RuntimeContext, batch: int) -> ListOutput:
    source = factory.create()
    output = ListOutput()
    source.setup(output, ctx)
    source.open()
    while source.emit_next_batch(batch):  # type: ignore[union-attr]
        pass
    source.close()
    return output


@given(
    st.integers(-50, 50),
    st.integers(-1, 200),
    st.integers(1, 7),
    st.integers(1, 64),
)
def test_sequence_source_splits_contiguously(
    start: int, length: int, parallelism: int, batch: int
) -> None:
    end = start + length - 1
    parts = [
        drain_source(SequenceSourceFactory(start, end), context(i, parallelism), batch).records
        for i in range(parallelism)
    ]
    assert [x for part in parts for x in part] == list(range(start, end + 1))
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1
    for i, part in enumerate(parts):
        assert part == list(sequence_split(start, end, parallelism, i))
        output = drain_source(SequenceSourceFactory(start, end), context(i, parallelism), batch)
        assert all(len(b) <= batch for b in output.batches)


def test_collection_source_emits_in_order_from_subtask_zero_only() -> None:
    records = list("abcdefg")
    out = drain_source(CollectionSourceFactory(records), context(), 3)
    assert out.batches == [["a", "b", "c"], ["d", "e", "f"], ["g"]]
    assert drain_source(CollectionSourceFactory(records), context(1, 2), 3).records == []
    assert drain_source(CollectionSourceFactory([]), context(), 3).records == []


# -- factories -------------------------------------------------------------------------


def test_factories_pickle_with_cloudpickle() -> None:
    factories: list[OperatorFactory] = [
        CollectionSourceFactory([1, 2]),
        SequenceSourceFactory(1, 5),
        MapFactory(lambda x: x + 1),
        FlatMapFactory(lambda x: [x]),
        FilterFactory(lambda x: True),
        ReduceFactory(lambda a, b: a, lambda r: r),
        SumFactory(0, lambda r: r),
        ProcessFactory(lambda v, c, o: None, lambda r: r),
        SinkFactory(print),
        PrintSinkFactory(),
        CollectSinkFactory(),
    ]
    for factory in factories:
        copy = pickle.loads(cloudpickle.dumps(factory))
        assert type(copy) is type(factory)
        assert copy.is_source == factory.is_source
        copy.create()
    assert [f.is_source for f in factories[:3]] == [True, True, False]


# -- the chain ------------------------------------------------------------------------


def test_chain_links_operators_and_orders_the_lifecycle() -> None:
    events: list[str] = []

    class Tracked(MapFunction):
        def __init__(self, name: str) -> None:
            self.name = name

        def open(self, runtime_context: RuntimeContext) -> None:
            events.append(f"open {self.name} as {runtime_context.operator_name}")

        def map(self, value: object) -> object:
            return f"{value}{self.name}"

        def close(self) -> None:
            events.append(f"close {self.name}")

    collected: list[list[object]] = []
    specs = (
        OperatorSpec("A", MapFactory(Tracked("a")), 0),
        OperatorSpec("B", MapFactory(Tracked("b")), 1),
        OperatorSpec("Sink", CollectSinkFactory(), 2),
    )

    def ctx(spec: OperatorSpec) -> RuntimeContext:
        return RuntimeContext(
            "A -> B -> Sink (1/1)", spec.name, 0, 1, results_sink=collected.append
        )

    chain = OperatorChain(specs, [], ctx)
    assert isinstance(chain.network_output, DiscardingOutput)
    assert not chain.is_source
    chain.open()
    head = cast("StreamOperator[object, object]", chain.head)
    head.process_batch(["x", "y"])
    chain.end_input()
    chain.close_operators()
    chain.close_operators()  # closes once
    assert collected == [["xab", "yab"]]
    assert events == ["open b as B", "open a as A", "close a", "close b"]


def test_chain_close_attempts_every_operator_and_raises_the_first_error() -> None:
    closed: list[str] = []

    class Failing(MapFunction):
        def __init__(self, name: str) -> None:
            self.name = name

        def map(self, value: object) -> object:
            return value

        def close(self) -> None:
            closed.append(self.name)
            msg = f"close {self.name}"
            raise RuntimeError(msg)

    specs = (
        OperatorSpec("A", MapFactory(Failing("a")), 0),
        OperatorSpec("B", MapFactory(Failing("b")), 1),
    )
    chain = OperatorChain(specs, [], lambda spec: RuntimeContext("t", spec.name, 0, 1))
    chain.open()
    with pytest.raises(RuntimeError, match="close a"):
        chain.close_operators()
    assert closed == ["a", "b"]

    chain = OperatorChain(specs, [], lambda spec: RuntimeContext("t", spec.name, 0, 1))
    chain.open()
    chain.close_operators(suppress=True)  # logged, not raised
