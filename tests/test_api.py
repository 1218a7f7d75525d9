"""The DataStream API: environment settings, misuse errors and how jobs are executed."""

from __future__ import annotations

import math
import sys
import threading
import types
from collections.abc import Callable, Iterator
from decimal import Decimal
from fractions import Fraction
from typing import cast

import pytest

import penstock.runtime
from penstock import (
    Configuration,
    ConfigurationError,
    IllegalStateError,
    JobExecutionError,
    JobExecutionResult,
    StreamExecutionEnvironment,
)
from penstock.api.datastream import DataStream, KeyedStream
from penstock.api.stream_graph import OperatorTransformation
from penstock.functions import FlatMapFunction, KeyedProcessFunction, MapFunction, ProcessContext
from penstock.runtime.job_graph import JobGraph
from penstock.task.operator import Collector, RuntimeContext
from penstock.task.operators import (
    CollectionSourceFactory,
    CollectSinkFactory,
    FlatMapFactory,
    MapFactory,
    ProcessFactory,
    SequenceSourceFactory,
    SumFactory,
)

LOCAL: dict[str, object] = {"execution.target": "local", "taskmanager.numberOfTaskSlots": 4}


def increment(x: object) -> object:
    assert isinstance(x, int)
    return x + 1


# -- the environment ---------------------------------------------------------------------


def test_the_environment_takes_a_dict_a_configuration_or_nothing() -> None:
    from_dict = StreamExecutionEnvironment.get_execution_environment({"parallelism.default": "3"})
    assert from_dict.get_parallelism() == 3
    config = Configuration({"execution.buffer-timeout": "20 ms"})
    from_config = StreamExecutionEnvironment.get_execution_environment(config)
    assert from_config.get_buffer_timeout() == 20
    config.set("execution.buffer-timeout", 30)
    assert from_config.get_buffer_timeout() == 20  # the environment holds a copy
    default = StreamExecutionEnvironment.get_execution_environment()
    assert default.get_parallelism() == 1
    assert default.get_buffer_timeout() == 100
    assert default.get_max_parallelism() == -1
    assert default.get_config() is default.configuration
    assert default.is_chaining_enabled()


def test_an_unknown_key_names_the_key_and_the_value() -> None:
    with pytest.raises(ConfigurationError) as caught:
        StreamExecutionEnvironment.get_execution_environment({"parallelism.defualt": 2})
    assert caught.value.key == "parallelism.defualt"
    assert caught.value.value == 2
    assert "parallelism.default" in str(caught.value)


@pytest.mark.parametrize(
    ("setter", "value", "key"),
    [
        ("set_parallelism", 0, "parallelism.default"),
        ("set_buffer_timeout", -2, "execution.buffer-timeout"),
        ("set_max_parallelism", 0, "pipeline.max-parallelism"),
        ("set_max_parallelism", 40000, "pipeline.max-parallelism"),
    ],
)
def test_bad_environment_settings_name_the_key_and_the_value(
    setter: str, value: int, key: str
) -> None:
    env = StreamExecutionEnvironment.get_execution_environment()
    with pytest.raises(ConfigurationError) as caught:
        getattr(env, setter)(value)
    assert caught.value.key == key
    assert caught.value.value == value


def test_settings_chain_and_land_in_the_configuration() -> None:
    env = StreamExecutionEnvironment.get_execution_environment()
    same = env.set_parallelism(4).set_buffer_timeout(0).set_max_parallelism(256)
    assert same is env
    assert env.configuration.to_dict() == {
        "parallelism.default": 4,
        "execution.buffer-timeout": 0,
        "pipeline.max-parallelism": 256,
    }


def test_from_sequence_checks_its_bounds() -> None:
    env = StreamExecutionEnvironment.get_execution_environment()
    with pytest.raises(ConfigurationError, match="Start of sequence must not be greater"):
        env.from_sequence(5, 4)
    with pytest.raises(ConfigurationError, match="must be an int"):
        env.from_sequence(1.5, 4)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="64 bits"):
        env.from_sequence(0, 1 << 64)
    single = env.from_sequence(4, 4)
    assert isinstance(single.transformation, OperatorTransformation)
    assert single.transformation.factory == SequenceSourceFactory(4, 4)
    assert single.output_type is int
    assert single.get_name() == "Sequence Source"


def test_from_collection_copies_the_records_and_infers_fast_types() -> None:
    env = StreamExecutionEnvironment.get_execution_environment()
    records = [b"a", b"b"]
    stream = env.from_collection(iter(records))
    records.append(b"c")
    assert isinstance(stream.transformation, OperatorTransformation)
    assert stream.transformation.factory == CollectionSourceFactory((b"a", b"b"))
    assert stream.output_type is bytes
    assert env.from_collection([1.0, 2.0]).output_type is float
    assert env.from_collection([True, False]).output_type is None
    assert env.from_collection([]).output_type is None
    assert env.from_collection([1, 2], type_info=str).output_type is str


@pytest.mark.parametrize("sample", ["int", 0, b""])
def test_a_record_given_as_a_type_is_refused_when_the_job_is_built(sample: object) -> None:
    # A sample would silently pick the serializer of its own type ("int" a str's).
    env = StreamExecutionEnvironment.get_execution_environment()
    with pytest.raises(TypeError, match="type_info must be a type"):
        env.from_collection([1], type_info=sample)  # type: ignore[arg-type]
    stream = env.from_collection([1])
    with pytest.raises(TypeError, match="output_type must be a type"):
        stream.map(str, output_type=sample)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="output_type must be a type"):
        stream.key_by(abs).process(lambda value, ctx: [value], output_type=sample)  # type: ignore[arg-type]


def test_type_hints_are_types_too() -> None:
    env = StreamExecutionEnvironment.get_execution_environment()
    stream = env.from_collection([1]).map(lambda x: (x, str(x)), output_type=tuple[int, str])
    assert stream.output_type == tuple[int, str]
    assert env.from_collection([[1]], type_info=list[int]).output_type == list[int]


# -- streams -----------------------------------------------------------------------------


def test_functions_that_are_neither_callable_nor_function_objects_are_refused() -> None:
    env = StreamExecutionEnvironment.get_execution_environment()
    source = env.from_sequence(1, 3)
    with pytest.raises(TypeError, match="map"):
        source.map(3)
    with pytest.raises(TypeError, match="filter"):
        source.filter("x")
    with pytest.raises(TypeError, match="key selector"):
        source.key_by(None)
    with pytest.raises(TypeError, match="partitioner"):
        source.partition_custom(1, increment)
    with pytest.raises(TypeError, match="sink"):
        source.add_sink(object())
    with pytest.raises(TypeError, match="process"):
        source.key_by(increment).process(42)


def test_function_objects_are_accepted_as_they_are() -> None:
    class AddOne(MapFunction):
        def map(self, value: object) -> object:
            return increment(value)

    class Twice(FlatMapFunction):
        def flat_map(self, value: object) -> list[object]:
            return [value, value]

    env = StreamExecutionEnvironment.get_execution_environment()
    adder = AddOne()
    mapped = env.from_sequence(1, 3).map(adder).flat_map(Twice())
    assert mapped.get_name() == "Flat Map"
    assert isinstance(mapped.transformation, OperatorTransformation)
    assert isinstance(mapped.transformation.factory, FlatMapFactory)
    mapped.print()
    (vertex,) = env.get_job_graph().vertices
    factory = vertex.operators[1].factory
    assert isinstance(factory, MapFactory)
    assert factory.fn is adder


def test_operator_settings_apply_only_to_operators() -> None:
    env = StreamExecutionEnvironment.get_execution_environment()
    source = env.from_sequence(1, 3)
    keyed = source.key_by(increment)
    with pytest.raises(IllegalStateError, match="not supported on a KeyedStream"):
        keyed.set_parallelism(2)
    with pytest.raises(IllegalStateError, match="not supported on a KeyedStream"):
        keyed.name("keys")
    with pytest.raises(IllegalStateError, match="Cannot override partitioning for KeyedStream"):
        keyed.rebalance()
    with pytest.raises(IllegalStateError, match="a partitioning method"):
        source.rebalance().set_parallelism(2)
    with pytest.raises(IllegalStateError, match=r"union\(\)"):
        source.union(env.from_sequence(1, 2)).slot_sharing_group("x")
    with pytest.raises(ConfigurationError):
        source.name("")
    with pytest.raises(ConfigurationError):
        source.slot_sharing_group("")
    with pytest.raises(ConfigurationError):
        source.set_max_parallelism(-1)


def test_union_refuses_streams_of_another_environment() -> None:
    env = StreamExecutionEnvironment.get_execution_environment()
    other = StreamExecutionEnvironment.get_execution_environment()
    with pytest.raises(IllegalStateError, match="same environment"):
        env.from_sequence(1, 2).union(other.from_sequence(1, 2))


def test_a_keyed_stream_remembers_its_key_selector_for_keyed_operators() -> None:
    env = StreamExecutionEnvironment.get_execution_environment()

    def first(pair: object) -> object:
        assert isinstance(pair, tuple)
        return pair[0]

    keyed = env.from_collection([("a", 1)]).key_by(first)
    assert isinstance(keyed, KeyedStream)
    summed = keyed.sum(1)
    assert summed.get_name() == "Keyed Aggregation"
    assert isinstance(summed.transformation, OperatorTransformation)
    assert summed.transformation.factory == SumFactory(1, first)
    # A stream of numbers sums the numbers themselves, whatever the position.
    numbers = env.from_sequence(1, 3).key_by(increment).sum()
    assert isinstance(numbers.transformation, OperatorTransformation)
    assert numbers.transformation.factory == SumFactory(None, increment)


def test_process_takes_a_keyed_process_function() -> None:
    class Echo(KeyedProcessFunction):
        def process_element(
            self, value: object, ctx: ProcessContext, out: Collector[object]
        ) -> None:
            out.collect((ctx.get_current_key(), value))

    env = StreamExecutionEnvironment.get_execution_environment()
    function = Echo()
    processed = env.from_sequence(1, 3).key_by(increment).process(function, output_type=str)
    assert processed.get_name() == "KeyedProcess"
    assert processed.output_type is str
    assert isinstance(processed.transformation, OperatorTransformation)
    assert processed.transformation.factory == ProcessFactory(function, increment)


# -- execution ---------------------------------------------------------------------------


class FakeClient:
    """Stands in for ``penstock.runtime.client``, recording what it is asked to run."""

    def __init__(self) -> None:
        self.jobs: list[tuple[JobGraph, Configuration, int | None]] = []

    def execute(self, job: JobGraph, config: Configuration) -> str:
        self.jobs.append((job, config, None))
        return "result"

    def execute_and_collect(
        self, job: JobGraph, config: Configuration, limit: int | None = None
    ) -> Iterator[object]:
        self.jobs.append((job, config, limit))
        return iter([1, 2])


@pytest.fixture
def fake_client(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    client = FakeClient()
    module = types.ModuleType("penstock.runtime.client")
    module.execute = client.execute  # type: ignore[attr-defined]
    module.execute_and_collect = client.execute_and_collect  # type: ignore[attr-defined]
    module.job_defaults = lambda: None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "penstock.runtime.client", module)
    monkeypatch.setattr(penstock.runtime, "client", module, raising=False)
    return client


def test_execute_runs_the_chained_job_graph_and_clears_the_operators(
    fake_client: FakeClient,
) -> None:
    env = StreamExecutionEnvironment.get_execution_environment({"parallelism.default": 2})
    env.from_sequence(1, 10).map(increment).print()
    assert env.execute("my job") == "result"  # type: ignore[comparison-overlap]
    ((job, config, _),) = fake_client.jobs
    assert job.name == "my job"
    assert [vertex.name for vertex in job.vertices] == [
        "Source: Sequence Source -> Map -> Sink: Print to Std. Out"
    ]
    assert config == env.configuration
    assert config is not env.configuration
    with pytest.raises(IllegalStateError, match="No operators defined"):
        env.execute()


def test_execute_and_collect_adds_a_parallelism_one_collect_sink(fake_client: FakeClient) -> None:
    env = StreamExecutionEnvironment.get_execution_environment({"parallelism.default": 2})
    env.from_sequence(1, 10).map(increment).execute_and_collect()
    env.from_collection([1]).execute_and_collect("collected", limit=7)
    first, second = fake_client.jobs
    job, _, limit = first
    assert limit is None
    assert job.name == "Penstock Streaming Job"
    assert [vertex.name for vertex in job.vertices] == [
        "Source: Sequence Source -> Map",
        "Sink: Data stream collect sink",
    ]
    assert [vertex.parallelism for vertex in job.vertices] == [2, 1]
    assert job.edges[0].partitioner.kind == "rebalance"
    assert isinstance(job.vertices[1].operators[0].factory, CollectSinkFactory)
    job, _, limit = second
    assert limit == 7
    assert job.name == "collected"
    assert [vertex.name for vertex in job.vertices] == [
        "Source: Collection Source -> Sink: Data stream collect sink"
    ]


def test_execute_and_collect_runs_every_operator_of_the_environment(
    fake_client: FakeClient,
) -> None:
    env = StreamExecutionEnvironment.get_execution_environment()
    env.from_sequence(1, 10).print()
    assert list(env.from_collection([1]).execute_and_collect()) == [1, 2]
    ((job, _, _),) = fake_client.jobs
    assert sorted(vertex.name for vertex in job.vertices) == [
        "Source: Collection Source -> Sink: Data stream collect sink",
        "Source: Sequence Source -> Sink: Print to Std. Out",
    ]


def test_a_limit_below_one_is_refused(fake_client: FakeClient) -> None:
    env = StreamExecutionEnvironment.get_execution_environment()
    with pytest.raises(ConfigurationError, match="limit"):
        env.from_sequence(1, 2).execute_and_collect(limit=0)
    assert fake_client.jobs == []


# -- end to end, in this process ---------------------------------------------------------


def test_a_keyed_pipeline_runs_on_the_local_target() -> None:
    env = StreamExecutionEnvironment.get_execution_environment({**LOCAL, "parallelism.default": 2})
    stream: DataStream = env.from_sequence(1, 100).map(lambda x: (x % 3, x), output_type=tuple)
    totals = stream.key_by(lambda pair: pair[0]).sum(1).execute_and_collect("sums")
    last: dict[object, object] = {}
    for record in totals:
        assert isinstance(record, tuple)
        last[record[0]] = record[1]
    assert last == {
        0: sum(range(3, 101, 3)),
        1: sum(range(1, 101, 3)),
        2: sum(range(2, 101, 3)),
    }


def test_execute_on_the_local_target_reports_flink_task_names() -> None:
    env = StreamExecutionEnvironment.get_execution_environment({**LOCAL, "parallelism.default": 2})
    env.from_collection(["a", "b", "c"]).map(str.upper).set_parallelism(1).add_sink(len)
    result = env.execute("upper")
    assert isinstance(result, JobExecutionResult)
    assert result.job_name == "upper"
    assert result.get_net_runtime() >= 0
    metrics = result.get_metrics()
    assert sorted(metrics) == [
        "Sink: Unnamed (1/2)",
        "Sink: Unnamed (2/2)",
        "Source: Collection Source -> Map (1/1)",
    ]
    assert metrics["Source: Collection Source -> Map (1/1)"]["numRecordsOut"] == 3
    sinks = [values for name, values in metrics.items() if name.startswith("Sink")]
    assert sum(values["numRecordsIn"] for values in sinks) == 3


def test_a_failing_user_function_fails_the_job_with_its_traceback() -> None:
    env = StreamExecutionEnvironment.get_execution_environment(LOCAL)

    def explode(x: object) -> object:
        msg = f"bad record {x}"
        raise ValueError(msg)

    env.from_collection([1]).map(explode).print()
    with pytest.raises(JobExecutionError) as caught:
        env.execute()
    cause = caught.value.__cause__
    assert cause is not None
    assert "ValueError" in str(cause)
    assert "bad record 1" in str(cause)


# -- what PyFlink users bring -----------------------------------------------------------


def collect_local(stream: DataStream) -> list[object]:
    return list(stream.execute_and_collect())


@pytest.mark.parametrize("parallelism", [1, 2])
def test_sum_adds_numbers_of_any_numeric_type(parallelism: int) -> None:
    import numpy as np

    env = StreamExecutionEnvironment.get_execution_environment(
        {**LOCAL, "parallelism.default": parallelism}
    )
    for values in (
        [np.int64(1), np.int64(2), np.int64(3)],
        [np.float32(0.5), np.float32(1.5)],
        [Decimal("0.1"), Decimal("0.2")],
        [Fraction(1, 3), Fraction(1, 6)],
    ):
        sums = collect_local(env.from_collection(values).key_by(lambda v: 0).sum())
        assert sums[-1] == sum(values)


@pytest.mark.parametrize("parallelism", [1, 2])
def test_nan_keys_are_one_key(parallelism: int) -> None:
    env = StreamExecutionEnvironment.get_execution_environment(
        {**LOCAL, "parallelism.default": parallelism}
    )
    records = [(float("nan"), 1), (float("nan"), 1), (float("nan"), 1), (1.0, 5)]
    sums = cast(
        "list[tuple[float, int]]",
        collect_local(env.from_collection(records).key_by(lambda r: r[0]).sum(1)),
    )
    assert sorted(total for key, total in sums if math.isnan(key)) == [1, 2, 3]


@pytest.mark.parametrize("parallelism", [1, 2])
def test_a_sum_beyond_64_bits_is_the_same_at_any_parallelism(parallelism: int) -> None:
    env = StreamExecutionEnvironment.get_execution_environment(
        {**LOCAL, "parallelism.default": parallelism}
    )
    sums = collect_local(env.from_sequence(2**62, 2**62 + 2).key_by(lambda v: 0).sum())
    assert max(cast("list[int]", sums)) == 3 * 2**62 + 3


@pytest.mark.parametrize("parallelism", [1, 2])
def test_a_reduce_beyond_64_bits_is_the_same_at_any_parallelism(parallelism: int) -> None:
    env = StreamExecutionEnvironment.get_execution_environment(
        {**LOCAL, "parallelism.default": parallelism}
    )
    stream = env.from_sequence(2**62, 2**62 + 2).key_by(lambda v: 0)
    totals = collect_local(stream.reduce(lambda a, b: cast("int", a) + cast("int", b)))
    assert max(cast("list[int]", totals)) == 3 * 2**62 + 3


@pytest.mark.parametrize("parallelism", [1, 2])
def test_text_that_is_not_utf_8_crosses_the_network(parallelism: int) -> None:
    env = StreamExecutionEnvironment.get_execution_environment(
        {**LOCAL, "parallelism.default": parallelism}
    )
    names = ["ok.csv", "caf\udce9.csv"]  # as os.listdir gives a Latin-1 file name
    stream = env.from_collection(names)
    assert stream.output_type is str
    assert sorted(cast("list[str]", collect_local(stream.rebalance().map(str.upper)))) == [
        "CAF\udce9.CSV",
        "OK.CSV",
    ]


def test_a_pyflink_style_process_function_yields_its_records() -> None:
    class Doubling(KeyedProcessFunction):
        def process_element(self, value: object, ctx: ProcessContext) -> Iterator[object]:  # type: ignore[override]
            yield (ctx.get_current_key(), value)
            yield (ctx.get_current_key(), value)

    env = StreamExecutionEnvironment.get_execution_environment(LOCAL)
    out = collect_local(env.from_collection([1, 2]).key_by(lambda v: v % 2).process(Doubling()))
    assert sorted(cast("list[tuple[int, int]]", out)) == [(0, 2), (0, 2), (1, 1), (1, 1)]


def test_from_collection_copies_its_records_when_called() -> None:
    records = [[1], [2]]
    env = StreamExecutionEnvironment.get_execution_environment(LOCAL)
    stream = env.from_collection(records)
    records[0].append(99)
    assert collect_local(stream) == [[1], [2]]


def test_from_collection_keeps_a_record_it_cannot_copy_and_copies_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lock = threading.Lock()
    records: list[object] = [[1], lock]
    env = StreamExecutionEnvironment.get_execution_environment(LOCAL)
    stream = env.from_collection(records)
    cast("list[int]", records[0]).append(99)
    assert isinstance(stream.transformation, OperatorTransformation)
    factory = stream.transformation.factory
    assert isinstance(factory, CollectionSourceFactory)
    assert factory.records == ([1], lock)
    assert "cannot copy" in caplog.text


@pytest.mark.parametrize(
    "signature",
    ["with out", "*args", "a decorator without functools.wraps"],
)
def test_a_process_function_with_out_or_an_unclear_signature_gets_a_collector(
    signature: str,
) -> None:
    def with_out(value: object, ctx: ProcessContext, out: Collector[object]) -> None:
        out.collect(value)

    def star_args(*args: object) -> None:
        value, _, out = args
        cast("Collector[object]", out).collect(value)

    def decorated(
        function: Callable[[object, ProcessContext, Collector[object]], None],
    ) -> Callable[..., None]:
        def wrapper(*args: object, **kwargs: object) -> None:
            function(*args, **kwargs)  # type: ignore[arg-type]

        return wrapper

    function = {
        "with out": with_out,
        "*args": star_args,
        "a decorator without functools.wraps": decorated(with_out),
    }[signature]
    env = StreamExecutionEnvironment.get_execution_environment(LOCAL)
    out = collect_local(env.from_collection([1, 2]).key_by(lambda v: v).process(function))
    assert sorted(cast("list[int]", out)) == [1, 2]


def test_the_runtime_context_answers_as_pyflinks_does() -> None:
    class Describe(MapFunction):
        def open(self, runtime_context: RuntimeContext) -> None:
            self.description = (
                runtime_context.get_task_name(),
                runtime_context.get_task_name_with_subtasks(),
                runtime_context.get_max_number_of_parallel_subtasks(),
                runtime_context.get_attempt_number(),
            )

        def map(self, value: object) -> object:
            return self.description

    env = StreamExecutionEnvironment.get_execution_environment(
        {**LOCAL, "parallelism.default": 2, "pipeline.max-parallelism": 64}
    )
    described = set(collect_local(env.from_sequence(1, 8).map(Describe())))
    assert described == {
        ("Source: Sequence Source -> Map", "Source: Sequence Source -> Map (1/2)#0", 64, 0),
        ("Source: Sequence Source -> Map", "Source: Sequence Source -> Map (2/2)#0", 64, 0),
    }
