"""StreamGraph generation and chaining into a JobGraph: names, partitioners, parallelism."""

from __future__ import annotations

import struct

import cloudpickle
import pytest
from hypothesis import given
from hypothesis import strategies as st

from penstock.api.datastream import DataStream
from penstock.api.environment import StreamExecutionEnvironment
from penstock.api.stream_graph import (
    ChainingStrategy,
    OperatorTransformation,
    Partitioning,
    StreamEdge,
    StreamGraph,
    StreamNode,
)
from penstock.config import Configuration, compute_default_max_parallelism
from penstock.errors import ConfigurationError, IllegalStateError
from penstock.functions import KeySelector, Partitioner, as_key_selector, as_partitioner
from penstock.runtime.deployment import build_deployment
from penstock.runtime.job_graph import JobEdge, JobGraph, JobVertex
from penstock.serialization.types import (
    GenericSerializer,
    IntSerializer,
    StrSerializer,
    StructSerializer,
)
from penstock.task.operators import MapFactory, SequenceSourceFactory


def make_env(parallelism: int = 1, **config: object) -> StreamExecutionEnvironment:
    """An environment; keyword arguments are keys with "." and "-" written as "_"."""
    keys = {"pipeline_max_parallelism": "pipeline.max-parallelism"}
    keys["execution_buffer_timeout"] = "execution.buffer-timeout"
    settings: dict[str, object] = {"parallelism.default": parallelism}
    settings.update({keys[key]: value for key, value in config.items()})
    return StreamExecutionEnvironment.get_execution_environment(settings)


def names(job: JobGraph) -> list[str]:
    return [vertex.name for vertex in job.vertices]


def vertex_named(job: JobGraph, name: str) -> JobVertex:
    matches = [vertex for vertex in job.vertices if vertex.name == name]
    assert len(matches) == 1, names(job)
    return matches[0]


def edge_between(job: JobGraph, source: str, target: str) -> JobEdge:
    source_id = vertex_named(job, source).id
    target_id = vertex_named(job, target).id
    matches = [e for e in job.edges if e.source == source_id and e.target == target_id]
    assert len(matches) == 1
    return matches[0]


def double(x: object) -> object:
    assert isinstance(x, int)
    return x * 2


def is_even(x: object) -> bool:
    assert isinstance(x, int)
    return x % 2 == 0


# -- chaining ----------------------------------------------------------------------------


def test_forward_edges_of_equal_parallelism_chain_into_one_vertex() -> None:
    env = make_env(2)
    env.from_sequence(1, 10).map(double).filter(is_even).print()
    job = env.get_job_graph("chain")
    assert names(job) == ["Source: Sequence Source -> Map -> Filter -> Sink: Print to Std. Out"]
    (vertex,) = job.vertices
    assert job.edges == ()
    assert vertex.parallelism == 2
    assert [op.name for op in vertex.operators] == [
        "Source: Sequence Source",
        "Map",
        "Filter",
        "Sink: Print to Std. Out",
    ]
    # Operator node ids are the creation order of the operators.
    node_ids = [op.node_id for op in vertex.operators]
    assert node_ids == sorted(node_ids)
    assert vertex.is_source
    assert job.name == "chain"


def test_a_change_of_parallelism_breaks_the_chain_with_a_rebalance_edge() -> None:
    env = make_env(2)
    env.from_sequence(1, 10).map(double).set_parallelism(3).filter(is_even).print()
    job = env.get_job_graph()
    # The filter and the sink take the default parallelism again.
    assert names(job) == ["Source: Sequence Source", "Map", "Filter -> Sink: Print to Std. Out"]
    assert [vertex.parallelism for vertex in job.vertices] == [2, 3, 2]
    assert edge_between(job, "Source: Sequence Source", "Map").partitioner.kind == "rebalance"
    edge = edge_between(job, "Map", "Filter -> Sink: Print to Std. Out")
    assert edge.partitioner.kind == "rebalance"


@pytest.mark.parametrize(
    ("method", "kind"),
    [
        ("rebalance", "rebalance"),
        ("rescale", "rescale"),
        ("shuffle", "shuffle"),
        ("broadcast", "broadcast"),
        ("global_", "global"),
    ],
)
def test_every_partitioning_but_forward_breaks_the_chain(method: str, kind: str) -> None:
    env = make_env(2)
    source = env.from_sequence(1, 10)
    partitioned: DataStream = getattr(source, method)()
    partitioned.map(double).print()
    job = env.get_job_graph()
    assert names(job) == ["Source: Sequence Source", "Map -> Sink: Print to Std. Out"]
    (edge,) = job.edges
    assert edge.partitioner.kind == kind
    assert str(edge.partitioner) == kind.upper()


def test_an_explicit_forward_between_equal_parallelism_chains() -> None:
    env = make_env(3)
    env.from_sequence(1, 10).forward().map(double).print()
    assert names(env.get_job_graph()) == [
        "Source: Sequence Source -> Map -> Sink: Print to Std. Out"
    ]


def test_forward_with_a_change_of_parallelism_is_rejected_with_flinks_message() -> None:
    env = make_env(1)
    env.from_sequence(1, 10).map(double).forward().filter(is_even).set_parallelism(2).print()
    with pytest.raises(IllegalStateError) as caught:
        env.get_job_graph()
    message = str(caught.value)
    assert message.startswith("Forward partitioning does not allow change of parallelism.")
    assert (
        "Upstream operation: Map-2 parallelism: 1, downstream operation: Filter-4 parallelism: 2"
        in message
    )
    assert message.endswith(
        "You must use another partitioning strategy, "
        "such as broadcast, rebalance, shuffle or global."
    )


def test_the_last_partitioning_of_a_stream_wins() -> None:
    env = make_env(2)
    env.from_sequence(1, 10).shuffle().broadcast().rebalance().map(double).print()
    (edge,) = env.get_job_graph().edges
    assert edge.partitioner.kind == "rebalance"


def test_a_fan_out_ends_the_chain() -> None:
    env = make_env(2)
    mapped = env.from_sequence(1, 10).map(double)
    mapped.filter(is_even).print()
    mapped.add_sink(print)
    job = env.get_job_graph()
    assert names(job) == [
        "Source: Sequence Source -> Map",
        "Filter -> Sink: Print to Std. Out",
        "Sink: Unnamed",
    ]
    assert [edge.partitioner.kind for edge in job.edges] == ["forward", "forward"]
    head = vertex_named(job, "Source: Sequence Source -> Map")
    assert {edge.source for edge in job.edges} == {head.id}


def test_an_operator_with_several_inputs_is_never_chained() -> None:
    env = make_env(2)
    first = env.from_sequence(1, 10)
    second = env.from_sequence(11, 20).map(double)
    first.union(second).filter(is_even).print()
    job = env.get_job_graph()
    assert names(job) == [
        "Source: Sequence Source",
        "Source: Sequence Source -> Map",
        "Filter -> Sink: Print to Std. Out",
    ]
    target = vertex_named(job, "Filter -> Sink: Print to Std. Out")
    inputs = job.inputs_of(target.id)
    assert [edge.target_input for edge in inputs] == [0, 1]
    assert [edge.source for edge in inputs] == [job.vertices[0].id, job.vertices[1].id]
    assert all(edge.partitioner.kind == "forward" for edge in inputs)


def test_a_partitioning_after_a_union_applies_to_every_input() -> None:
    env = make_env(2)
    first = env.from_sequence(1, 10)
    second = env.from_sequence(11, 20)
    first.union(second).rescale().map(double).print()
    job = env.get_job_graph()
    assert [edge.partitioner.kind for edge in job.edges] == ["rescale", "rescale"]


def test_union_keeps_the_partitioning_of_each_input() -> None:
    env = make_env(2)
    first = env.from_sequence(1, 10).shuffle()
    second = env.from_sequence(11, 20).broadcast()
    first.union(second).map(double).print()
    job = env.get_job_graph()
    assert [edge.partitioner.kind for edge in job.edges] == ["shuffle", "broadcast"]


def test_union_with_several_streams_orders_the_inputs() -> None:
    env = make_env(1)
    streams = [env.from_collection([index]) for index in range(3)]
    streams[0].union(streams[1], streams[2]).map(double).print()
    job = env.get_job_graph()
    target = job.vertices[-1]
    assert target.name == "Map -> Sink: Print to Std. Out"
    sources = [job.vertex(edge.source) for edge in job.inputs_of(target.id)]
    assert [source.operators[0].node_id for source in sources] == [1, 2, 3]


def test_disable_chaining_isolates_the_operator() -> None:
    env = make_env(2)
    env.from_sequence(1, 10).map(double).filter(is_even).disable_chaining().map(double).print()
    assert names(env.get_job_graph()) == [
        "Source: Sequence Source -> Map",
        "Filter",
        "Map -> Sink: Print to Std. Out",
    ]


def test_start_new_chain_breaks_the_chain_before_the_operator_only() -> None:
    env = make_env(2)
    env.from_sequence(1, 10).map(double).filter(is_even).start_new_chain().map(double).print()
    job = env.get_job_graph()
    assert names(job) == [
        "Source: Sequence Source -> Map",
        "Filter -> Map -> Sink: Print to Std. Out",
    ]
    (edge,) = job.edges
    assert edge.partitioner.kind == "forward"


def test_disable_operator_chaining_runs_every_operator_in_its_own_vertex() -> None:
    env = make_env(2).disable_operator_chaining()
    assert not env.is_chaining_enabled()
    env.from_sequence(1, 10).map(double).print()
    job = env.get_job_graph()
    assert names(job) == ["Source: Sequence Source", "Map", "Sink: Print to Std. Out"]
    assert [edge.partitioner.kind for edge in job.edges] == ["forward", "forward"]


def test_vertices_of_one_name_are_told_apart() -> None:
    # Tasks and their metrics go by name: two "Map" vertices would share "Map (1/2)".
    env = make_env(2).disable_operator_chaining()
    env.from_sequence(1, 10).map(double).filter(is_even).map(double).map(double).print()
    job = env.get_job_graph()
    assert names(job) == [
        "Source: Sequence Source",
        "Map",
        "Filter",
        "Map [2]",
        "Map [3]",
        "Sink: Print to Std. Out",
    ]


def test_a_name_made_unique_skips_names_the_job_already_has() -> None:
    env = make_env(2).disable_operator_chaining()
    env.from_sequence(1, 10).map(double).map(double).name("Map [2]").map(double).print()
    job = env.get_job_graph()
    assert names(job) == [
        "Source: Sequence Source",
        "Map",
        "Map [2]",
        "Map [3]",
        "Sink: Print to Std. Out",
    ]


def test_named_sources_and_sinks_keep_their_prefix() -> None:
    env = make_env(1)
    source = env.from_sequence(1, 10).name("numbers")
    assert source.get_name() == "numbers"
    source.map(double).name("doubled").add_sink(print).name("out")
    assert names(env.get_job_graph()) == ["Source: numbers -> doubled -> Sink: out"]


def test_sinks_chain_and_can_be_configured() -> None:
    env = make_env(2)
    mapped = env.from_sequence(1, 10).map(double)
    sink = mapped.add_sink(print).name("numbers out").set_parallelism(1).disable_chaining()
    assert sink.get_name() == "numbers out"
    assert sink.get_parallelism() == 1
    job = env.get_job_graph()
    assert names(job) == ["Source: Sequence Source -> Map", "Sink: numbers out"]
    assert job.edges[0].partitioner.kind == "rebalance"


# -- slot sharing groups -----------------------------------------------------------------


def test_slot_sharing_groups_are_set_inherited_and_break_chains() -> None:
    env = make_env(2)
    mapped = env.from_sequence(1, 10).map(double).slot_sharing_group("heavy")
    mapped.filter(is_even).print()
    job = env.get_job_graph()
    assert names(job) == ["Source: Sequence Source", "Map -> Filter -> Sink: Print to Std. Out"]
    groups = {vertex.name: vertex.slot_sharing_group for vertex in job.vertices}
    assert groups == {
        "Source: Sequence Source": "default",
        "Map -> Filter -> Sink: Print to Std. Out": "heavy",
    }
    assert job.edges[0].partitioner.kind == "forward"


def test_inputs_of_different_groups_leave_an_operator_in_the_default_group() -> None:
    env = make_env(1)
    first = env.from_sequence(1, 10).slot_sharing_group("a")
    second = env.from_sequence(1, 10).slot_sharing_group("a")
    third = env.from_sequence(1, 10).slot_sharing_group("b")
    first.union(second).map(double).name("same").print()
    first.union(third).map(double).name("mixed").print()
    graph = env.get_stream_graph()
    group_of = {node.name: node.slot_sharing_group for node in graph.nodes}
    assert group_of["same"] == "a"
    assert group_of["mixed"] == "default"


# -- keyed and custom partitioning -------------------------------------------------------


def test_key_by_makes_a_hash_edge_with_the_key_groups_of_the_consumer() -> None:
    env = make_env(200)
    env.from_sequence(1, 10).key_by(lambda x: x % 7).sum().print()
    job = env.get_job_graph()
    assert names(job) == [
        "Source: Sequence Source",
        "Keyed Aggregation -> Sink: Print to Std. Out",
    ]
    (edge,) = job.edges
    assert edge.partitioner.kind == "hash"
    assert str(edge.partitioner) == "HASH"
    expected = compute_default_max_parallelism(200)
    assert expected == 512
    assert edge.partitioner.max_parallelism == expected
    assert job.vertices[1].max_parallelism == expected
    assert edge.partitioner.key_selector is not None
    assert as_key_selector(edge.partitioner.key_selector)(15) == 1
    selector = edge.partitioner.create()
    selector.setup(200)
    assert 0 <= selector.select_channel(15) < 200


def test_pipeline_max_parallelism_sets_the_key_groups() -> None:
    env = make_env(4).set_max_parallelism(64)
    assert env.get_max_parallelism() == 64
    env.from_sequence(1, 10).key_by(lambda x: x).reduce(lambda a, b: b).print()
    job = env.get_job_graph()
    assert job.edges[0].partitioner.max_parallelism == 64
    assert all(vertex.max_parallelism == 64 for vertex in job.vertices)
    assert names(job)[1] == "Keyed Reduce -> Sink: Print to Std. Out"


def test_an_operator_max_parallelism_overrides_the_configuration() -> None:
    env = make_env(2, pipeline_max_parallelism=64)
    env.from_sequence(1, 10).key_by(lambda x: x).reduce(lambda a, b: b).set_max_parallelism(
        4096
    ).print()
    assert env.get_job_graph().edges[0].partitioner.max_parallelism == 4096


def test_a_max_parallelism_below_the_parallelism_is_rejected() -> None:
    env = make_env(8).set_max_parallelism(4)
    env.from_sequence(1, 10).print()
    with pytest.raises(ConfigurationError) as caught:
        env.get_job_graph()
    assert caught.value.key == "pipeline.max-parallelism"
    assert caught.value.value == 4
    assert "smaller than the parallelism (8)" in str(caught.value)


def test_key_by_with_a_key_selector_object() -> None:
    class Parity(KeySelector):
        def get_key(self, value: object) -> object:
            assert isinstance(value, int)
            return value % 2

    env = make_env(2)
    env.from_sequence(1, 10).key_by(Parity()).map(double).print()
    job = env.get_job_graph()
    assert names(job) == ["Source: Sequence Source", "Map -> Sink: Print to Std. Out"]
    (edge,) = job.edges
    assert edge.partitioner.kind == "hash"
    assert edge.partitioner.key_selector is not None
    assert as_key_selector(edge.partitioner.key_selector)(7) == 1


def test_partition_custom_with_a_function_and_with_a_partitioner_object() -> None:
    class Modulo(Partitioner):
        def partition(self, key: object, num_partitions: int) -> int:
            assert isinstance(key, int)
            return key % num_partitions

    env = make_env(3)
    source = env.from_sequence(1, 10)
    source.partition_custom(lambda key, n: 0, lambda x: x).map(double).print()
    source.partition_custom(Modulo(), lambda x: x + 1).map(double).print()
    job = env.get_job_graph()
    assert [edge.partitioner.kind for edge in job.edges] == ["custom", "custom"]
    first, second = (edge.partitioner for edge in job.edges)
    assert first.partitioner is not None and second.partitioner is not None
    assert as_partitioner(first.partitioner)(5, 3) == 0
    assert as_partitioner(second.partitioner)(5, 3) == 2
    selector = second.create()
    selector.setup(3)
    assert selector.select_channel(4) == 2  # key 5 -> 5 % 3


def test_a_keyed_stream_feeds_several_keyed_operators() -> None:
    env = make_env(2)
    keyed = env.from_collection([("a", 1), ("b", 2)]).key_by(lambda pair: pair[0])
    keyed.sum(1).print()
    keyed.reduce(lambda a, b: a).print()
    job = env.get_job_graph()
    assert names(job) == [
        "Source: Collection Source",
        "Keyed Aggregation -> Sink: Print to Std. Out",
        "Keyed Reduce -> Sink: Print to Std. Out",
    ]
    assert [edge.partitioner.kind for edge in job.edges] == ["hash", "hash"]


# -- parallelism -------------------------------------------------------------------------


def test_from_collection_is_a_parallelism_one_source() -> None:
    env = make_env(4)
    env.from_collection([1, 2, 3]).map(double).print()
    job = env.get_job_graph()
    assert names(job) == ["Source: Collection Source", "Map -> Sink: Print to Std. Out"]
    assert [vertex.parallelism for vertex in job.vertices] == [1, 4]
    assert job.edges[0].partitioner.kind == "rebalance"


def test_from_collection_refuses_another_parallelism() -> None:
    env = make_env(1)
    source = env.from_collection([1, 2, 3])
    with pytest.raises(ConfigurationError, match="non parallel operator must be 1") as caught:
        source.set_parallelism(2)
    assert caught.value.value == 2
    source.set_parallelism(1)
    assert source.get_parallelism() == 1


@pytest.mark.parametrize("bad", [0, -1])
def test_an_operator_parallelism_below_one_is_rejected(bad: int) -> None:
    env = make_env(1)
    mapped = env.from_sequence(1, 10).map(double)
    with pytest.raises(ConfigurationError, match="must be at least 1") as caught:
        mapped.set_parallelism(bad)
    assert caught.value.value == bad


@pytest.mark.parametrize("bad", [2.0, "2", True])
def test_an_operator_parallelism_that_is_not_an_int_is_rejected(bad: object) -> None:
    mapped = make_env(1).from_sequence(1, 10).map(double)
    with pytest.raises(ConfigurationError, match="must be an int") as caught:
        mapped.set_parallelism(bad)  # type: ignore[arg-type]
    assert caught.value.value == bad


def test_from_sequence_takes_the_default_parallelism_resolved_at_build_time() -> None:
    env = make_env(1)
    env.from_sequence(1, 10).print()
    env.set_parallelism(3)
    (vertex,) = env.get_job_graph().vertices
    assert vertex.parallelism == 3


# -- buffer timeouts ---------------------------------------------------------------------


def test_buffer_timeouts_come_from_the_configuration_the_environment_and_the_operator() -> None:
    env = make_env(2, execution_buffer_timeout="7 ms")
    assert env.get_buffer_timeout() == 7
    source = env.from_sequence(1, 10)
    source.rebalance().map(double).set_buffer_timeout(0).rebalance().print()
    job = env.get_job_graph()
    timeouts = {vertex.name: vertex.buffer_timeout_ms for vertex in job.vertices}
    assert timeouts == {
        "Source: Sequence Source": 7,
        "Map": 0,
        "Sink: Print to Std. Out": 7,
    }
    env.set_buffer_timeout(-1)
    assert env.get_job_graph().vertices[0].buffer_timeout_ms == -1


def test_a_chain_flushes_with_the_buffer_timeout_of_its_tail() -> None:
    env = make_env(2).set_buffer_timeout(50)
    env.from_sequence(1, 10).set_buffer_timeout(1).map(double).rebalance().print()
    job = env.get_job_graph()
    assert names(job)[0] == "Source: Sequence Source -> Map"
    assert job.vertices[0].buffer_timeout_ms == 50


def test_a_bad_operator_buffer_timeout_names_the_key() -> None:
    env = make_env(1)
    with pytest.raises(ConfigurationError) as caught:
        env.from_sequence(1, 10).map(double).set_buffer_timeout(-5)
    assert caught.value.key == "execution.buffer-timeout"
    assert caught.value.value == -5


# -- serializers -------------------------------------------------------------------------


def test_edges_carry_the_serializer_of_the_producing_operator() -> None:
    env = make_env(1)
    source = env.from_sequence(1, 10)
    source.rebalance().add_sink(print).name("ints")
    source.map(str, output_type=str).name("to str").rebalance().add_sink(print).name("strs")
    source.map(double).name("any").rebalance().add_sink(print).name("generic")
    source.filter(is_even).rebalance().add_sink(print).name("filtered")
    env.from_collection(["a", "b"]).rebalance().add_sink(print).name("collected strs")
    env.from_collection(["a", 1]).rebalance().add_sink(print).name("mixed")
    env.from_collection([1 << 70]).rebalance().add_sink(print).name("big ints")
    job = env.get_job_graph()
    serializer_into = {job.vertex(edge.target).name: type(edge.serializer) for edge in job.edges}
    assert serializer_into == {
        # The source fans out, so it is a vertex of its own: these come from it.
        "Sink: ints": IntSerializer,
        "to str": IntSerializer,
        "any": IntSerializer,
        "Filter": IntSerializer,
        # These come from the operators.
        "Sink: strs": StrSerializer,
        "Sink: generic": GenericSerializer,
        "Sink: filtered": IntSerializer,
        "Sink: collected strs": StrSerializer,
        "Sink: mixed": GenericSerializer,
        "Sink: big ints": GenericSerializer,
    }


def test_a_struct_layout_as_output_type_gives_records_a_struct_serializer() -> None:
    env = make_env(1)
    point = struct.Struct("<qd")
    source = env.from_sequence(1, 10).map(lambda v: (v, v / 2), output_type=point)
    source.rebalance().add_sink(print)
    env.from_collection([(1, 2.5)], point).rebalance().add_sink(print)
    job = env.get_job_graph()
    serializers: list[object] = [edge.serializer for edge in job.edges]
    assert len(serializers) == 2
    for serializer in serializers:
        assert isinstance(serializer, StructSerializer)
        records = [(3, 1.5), (-(2**63), float("inf"))]
        frames = serializer.serialize_frames(records)  # big-endian on the wire, as Flink
        assert len(frames) == 2 * (4 + 16)
        assert serializer.deserialize_frames(memoryview(frames)) == records


def test_union_of_different_types_uses_the_generic_serializer_downstream() -> None:
    env = make_env(1)
    ints = env.from_sequence(1, 10)
    strs = env.from_collection(["a"])
    assert ints.union(strs).output_type is None
    assert ints.union(env.from_sequence(1, 2)).output_type is int


# -- the graph itself --------------------------------------------------------------------


def test_no_operator_is_an_error() -> None:
    env = make_env(1)
    with pytest.raises(IllegalStateError, match="No operators defined in streaming topology"):
        env.get_job_graph()


def test_a_source_nothing_reads_does_not_run() -> None:
    env = make_env(1)
    env.from_sequence(1, 5)
    env.from_collection([1]).print()
    assert names(env.get_job_graph()) == ["Source: Collection Source -> Sink: Print to Std. Out"]


def test_operators_defined_after_a_read_of_the_graph_still_count() -> None:
    env = make_env(1)
    source = env.from_sequence(1, 5)
    source.print()
    assert len(env.get_stream_graph().nodes) == 2
    source.map(double).print()
    graph = env.get_stream_graph(clear_transformations=True)
    assert len(graph.nodes) == 4
    with pytest.raises(IllegalStateError):
        env.get_stream_graph()


def test_vertices_are_in_topological_order_and_deploy() -> None:
    env = make_env(2)
    left = env.from_sequence(1, 10).set_parallelism(1).map(double).set_parallelism(1)
    right = env.from_sequence(1, 10)
    left.union(right).key_by(lambda x: x).sum().rebalance().print()
    job = env.get_job_graph()
    position = {vertex.id: index for index, vertex in enumerate(job.vertices)}
    assert all(position[edge.source] < position[edge.target] for edge in job.edges)
    locations = {
        (index, subtask): ("127.0.0.1", 1)
        for index, vertex in enumerate(job.vertices)
        for subtask in range(vertex.parallelism)
    }
    task_names = [descriptor.task_name for descriptor in build_deployment(job, locations)]
    assert task_names == [
        "Source: Sequence Source -> Map (1/1)",
        "Source: Sequence Source (1/2)",
        "Source: Sequence Source (2/2)",
        "Keyed Aggregation (1/2)",
        "Keyed Aggregation (2/2)",
        "Sink: Print to Std. Out (1/2)",
        "Sink: Print to Std. Out (2/2)",
    ]


def test_the_job_graph_round_trips_through_cloudpickle_with_its_lambdas() -> None:
    env = make_env(2, execution_buffer_timeout="5 ms")
    offset = 10
    (
        env.from_sequence(1, 10)
        .map(lambda x: x + offset)
        .key_by(lambda x: x % 3)
        .reduce(lambda a, b: a + b)
        .partition_custom(lambda key, n: key % n, lambda x: x)
        .add_sink(lambda x: None)
    )
    job = env.get_job_graph("pickled")
    copy = cloudpickle.loads(cloudpickle.dumps(job))
    assert isinstance(copy, JobGraph)
    assert copy.job_id == job.job_id
    assert names(copy) == names(job)
    assert copy.config == {"parallelism.default": "2", "execution.buffer-timeout": "5"}
    assert Configuration(copy.config).get_raw("execution.buffer-timeout") == 5
    mapper = copy.vertices[0].operators[1].factory
    assert isinstance(mapper, MapFactory)
    assert callable(mapper.fn)
    assert mapper.fn(1) == 11
    hash_spec = copy.edges[0].partitioner
    assert hash_spec.key_selector is not None
    assert as_key_selector(hash_spec.key_selector)(5) == 2
    custom_spec = copy.edges[1].partitioner
    assert custom_spec.partitioner is not None
    assert as_partitioner(custom_spec.partitioner)(7, 2) == 1
    # Every factory builds its operator after the trip.
    for vertex in copy.vertices:
        for spec in vertex.operators:
            assert spec.factory.create() is not None


# -- StreamGraph directly ----------------------------------------------------------------


def test_stream_graph_generation_from_transformations() -> None:
    source = OperatorTransformation(1, "S", SequenceSourceFactory(1, 4), name_prefix="Source: ")
    mapper = OperatorTransformation(2, "M", MapFactory(double), inputs=(source,), parallelism=2)
    graph = StreamGraph.generate([mapper], Configuration({"parallelism.default": 2}))
    assert [str(node) for node in graph.nodes] == ["Source: S-1", "M-2"]
    assert graph.out_edges(1) == graph.in_edges(2)
    (edge,) = graph.edges
    assert graph.is_chainable(edge)
    assert [[node.name for node in chain] for chain in graph.chains()] == [["Source: S", "M"]]
    assert graph.node(2).chaining_strategy is ChainingStrategy.ALWAYS
    with pytest.raises(IllegalStateError, match="no stream node 9"):
        graph.node(9)


def test_stream_graph_rejects_edges_to_unknown_nodes() -> None:
    node = StreamNode(
        1,
        "S",
        SequenceSourceFactory(1, 2),
        1,
        128,
        "default",
        100,
        ChainingStrategy.ALWAYS,
        GenericSerializer(),
    )
    edge = StreamEdge(1, 2, Partitioning("forward").to_spec(128), 0)
    with pytest.raises(IllegalStateError, match="unknown node"):
        StreamGraph("job", [node], [edge], Configuration())


@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from([1, 2, 3]),
            st.sampled_from([None, "forward", "rebalance", "shuffle", "rescale"]),
            st.sampled_from(["default", "other"]),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_a_linear_pipeline_breaks_exactly_where_the_rule_says(
    steps: list[tuple[int, str | None, str]],
) -> None:
    env = make_env(1)
    stream = env.from_sequence(1, 10)
    parallelism, group = 1, "default"
    expected_breaks: list[bool] = []
    for index, (new_parallelism, asked, new_group) in enumerate(steps):
        # A forward edge must keep the parallelism: fall back to the default edge.
        partitioning = None if asked == "forward" and new_parallelism != parallelism else asked
        if partitioning is not None:
            stream = getattr(stream, partitioning)()
        stream = stream.map(double).name(f"m{index}").set_parallelism(new_parallelism)
        stream = stream.slot_sharing_group(new_group)
        expected_breaks.append(
            partitioning not in (None, "forward")
            or new_parallelism != parallelism
            or new_group != group
        )
        parallelism, group = new_parallelism, new_group
    stream.add_sink(print).name("end").set_parallelism(parallelism)
    job = env.get_job_graph()
    expected_names: list[list[str]] = [["Source: Sequence Source"]]
    for index, broken in enumerate(expected_breaks):
        if broken:
            expected_names.append([])
        expected_names[-1].append(f"m{index}")
    expected_names[-1].append("Sink: end")
    assert names(job) == [" -> ".join(chain) for chain in expected_names]
    assert len(job.edges) == len(job.vertices) - 1
    for edge in job.edges:
        source, target = job.vertex(edge.source), job.vertex(edge.target)
        if source.parallelism != target.parallelism:
            assert edge.partitioner.kind not in ("forward",)
