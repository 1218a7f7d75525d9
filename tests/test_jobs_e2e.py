"""Jobs written as a user writes them, run end to end on a mini-cluster of two processes.

Every job goes through the public API (``StreamExecutionEnvironment``, the function
classes of ``penstock.functions``) on ``execution.target: minicluster``. Most run with
parallelism 2 on two TaskManager processes of one slot each, so every exchange between
subtasks of different indexes crosses loopback TCP between the two processes.

User functions run in the TaskManager processes, which cannot import this module:
they are lambdas, nested functions, or function classes defined inside a function,
which cloudpickle ships by value. A rich function records its subtask index in
``open(runtime_context)`` and tags its records with it, so the tests see where every
record went. Records come back through ``execute_and_collect`` and are checked against
results computed here, independently of penstock.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final, cast

import pytest

from cluster_helpers import WAIT_S, child_pids, no_leftover_processes
from penstock import (
    ConfigurationError,
    JobExecutionError,
    RemoteError,
    StreamExecutionEnvironment,
)
from penstock.functions import (
    FilterFunction,
    FlatMapFunction,
    KeySelector,
    MapFunction,
    Partitioner,
    ReduceFunction,
    SinkFunction,
)
from penstock.runtime.client import CloseableIterator
from penstock.writer.key_groups import DEFAULT_MAX_PARALLELISM, assign_to_channel

if TYPE_CHECKING:
    from penstock import DataStream, RuntimeContext
    from penstock.task.operator import Collector

__all__ = ["no_leftover_processes"]

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

N: Final = 2000
"""Records of the ordinary jobs: a thousand per source subtask."""

TWO_PROCESSES: Final[Mapping[str, object]] = {
    "execution.target": "minicluster",
    "minicluster.number-of-taskmanagers": 2,
    "taskmanager.numberOfTaskSlots": 1,
    "parallelism.default": 2,
}


def cluster_env(extra: Mapping[str, object] | None = None) -> StreamExecutionEnvironment:
    """An environment on a mini-cluster of two one-slot TaskManagers, parallelism 2."""
    return StreamExecutionEnvironment.get_execution_environment({**TWO_PROCESSES, **(extra or {})})


def subtask_tagger() -> MapFunction:
    """A rich map function: ``value -> (index of this subtask, value)``."""

    class TagWithSubtask(MapFunction):
        index = -1

        def open(self, runtime_context: RuntimeContext) -> None:
            self.index = runtime_context.get_index_of_this_subtask()

        def map(self, value: object) -> object:
            return self.index, value

    return TagWithSubtask()


Route = tuple[int, int, int]
"""(upstream subtask, downstream subtask, value) of one record of an exchange."""


def run_exchange(
    partition: Callable[[DataStream], DataStream],
    downstream_parallelism: int = 2,
    extra: Mapping[str, object] | None = None,
) -> list[Route]:
    """Sends 1..N from a parallel source through ``partition``; where did each record go?

    The source's subtasks tag the records with their index before the exchange and the
    consumer (not chained, so the records really travel through the network stack)
    tags them with its own index after it.
    """
    env = cluster_env(extra)
    upstream = env.from_sequence(1, N).map(subtask_tagger())
    downstream = (
        partition(upstream)
        .map(subtask_tagger())
        .set_parallelism(downstream_parallelism)
        .disable_chaining()
    )
    routes = []
    for record in downstream.execute_and_collect("exchange"):
        consumer, (producer, value) = cast("tuple[int, tuple[int, int]]", record)
        routes.append((producer, consumer, value))
    return sorted(routes, key=lambda route: route[2])


def by_producer(routes: Iterable[Route]) -> dict[int, list[Route]]:
    """The routes of each producer subtask, in the order it emitted them (by value)."""
    grouped: dict[int, list[Route]] = defaultdict(list)
    for route in sorted(routes, key=lambda route: route[2]):
        grouped[route[0]].append(route)
    return grouped


def assert_every_value_once(routes: Iterable[Route]) -> None:
    assert sorted(value for _, _, value in routes) == list(range(1, N + 1))


def assert_contiguous_sources(routes: Iterable[Route]) -> None:
    """Each source subtask emitted one contiguous slice of 1..N (NumberSequenceSource)."""
    grouped = by_producer(routes)
    assert sorted(grouped) == [0, 1]
    for producer_routes in grouped.values():
        values = [value for _, _, value in producer_routes]
        assert values == list(range(values[0], values[-1] + 1))


def collect(stream: DataStream, job_name: str = "collect") -> list[object]:
    return list(stream.execute_and_collect(job_name))


def collect_strings(stream: DataStream, job_name: str = "collect") -> list[str]:
    return [cast("str", record) for record in stream.execute_and_collect(job_name)]


# -- every partitioner ----------------------------------------------------------------


def test_forward_keeps_each_record_at_the_subtask_of_the_same_index() -> None:
    routes = run_exchange(lambda stream: stream.forward())

    assert_every_value_once(routes)
    assert_contiguous_sources(routes)
    assert all(producer == consumer for producer, consumer, _ in routes)


def test_rebalance_deals_each_producers_records_round_robin() -> None:
    routes = run_exchange(lambda stream: stream.rebalance())

    assert_every_value_once(routes)
    assert_contiguous_sources(routes)
    for producer_routes in by_producer(routes).values():
        first = producer_routes[0][1]
        consumers = [consumer for _, consumer, _ in producer_routes]
        assert consumers == [(first + k) % 2 for k in range(len(consumers))]


def test_rescale_deals_round_robin_over_the_producers_own_consumers() -> None:
    # 2 producers and 4 consumers: producer p feeds consumers 2p and 2p + 1 only,
    # starting with 2p (Flink's RescalePartitioner, a pointwise edge).
    routes = run_exchange(
        lambda stream: stream.rescale(),
        downstream_parallelism=4,
        extra={"taskmanager.numberOfTaskSlots": 2},
    )

    assert_every_value_once(routes)
    assert_contiguous_sources(routes)
    for producer, producer_routes in by_producer(routes).items():
        consumers = [consumer for _, consumer, _ in producer_routes]
        assert consumers == [2 * producer + k % 2 for k in range(len(consumers))]


def test_shuffle_sends_each_record_to_exactly_one_random_subtask() -> None:
    routes = run_exchange(lambda stream: stream.shuffle())

    assert_every_value_once(routes)
    counts = Counter(consumer for _, consumer, _ in routes)
    # Uniform choices: all 2000 records at one subtask has probability 2 ** -1999.
    assert set(counts) == {0, 1}
    for producer_routes in by_producer(routes).values():
        assert {consumer for _, consumer, _ in producer_routes} == {0, 1}


def test_broadcast_gives_every_subtask_every_record() -> None:
    routes = run_exchange(lambda stream: stream.broadcast())

    seen = Counter((consumer, value) for _, consumer, value in routes)
    assert seen == Counter({(c, v): 1 for c in (0, 1) for v in range(1, N + 1)})
    producer_of = {value: producer for producer, _, value in routes}
    assert all(producer_of[value] == producer for producer, _, value in routes)
    assert_contiguous_sources(route for route in routes if route[1] == 0)


def test_global_sends_everything_to_subtask_zero() -> None:
    routes = run_exchange(lambda stream: stream.global_())

    assert_every_value_once(routes)
    assert_contiguous_sources(routes)
    assert {consumer for _, consumer, _ in routes} == {0}


def test_key_by_sends_every_key_to_exactly_one_subtask_in_both_processes() -> None:
    # String keys: Python salts str hashes per process, so routing by hash() would
    # split a key between the subtasks of the two TaskManagers.
    def word_key(record: object) -> object:
        _, value = cast("tuple[int, int]", record)
        return f"wört-{value % 17}"

    routes = run_exchange(lambda stream: stream.key_by(word_key))

    assert_every_value_once(routes)
    consumers_of_key: dict[str, set[int]] = defaultdict(set)
    producers_of_key: dict[str, set[int]] = defaultdict(set)
    for producer, consumer, value in routes:
        consumers_of_key[f"wört-{value % 17}"].add(consumer)
        producers_of_key[f"wört-{value % 17}"].add(producer)
    assert len(consumers_of_key) == 17
    for key, consumers in consumers_of_key.items():
        # Both producers (two processes) sent this key, and to the same subtask:
        # the one Flink's key-group assignment gives it.
        assert producers_of_key[key] == {0, 1}
        assert consumers == {assign_to_channel(key, DEFAULT_MAX_PARALLELISM, 2)}
    assert {consumer for _, consumer, _ in routes} == {0, 1}


def test_partition_custom_respects_the_partitioners_choice() -> None:
    class ByRemainder(Partitioner):
        def partition(self, key: object, num_partitions: int) -> int:
            if num_partitions != 2:
                msg = f"expected 2 partitions, got {num_partitions}"
                raise AssertionError(msg)
            return 1 if cast("int", key) % 3 == 0 else 0

    def value_of(record: object) -> object:
        return cast("tuple[int, int]", record)[1]

    routes = run_exchange(lambda stream: stream.partition_custom(ByRemainder(), value_of))

    assert_every_value_once(routes)
    assert all(consumer == (1 if value % 3 == 0 else 0) for _, consumer, value in routes)


def test_partition_custom_takes_a_plain_callable() -> None:
    routes = run_exchange(
        lambda stream: stream.partition_custom(
            lambda key, n: cast("int", key) % n, lambda record: cast("tuple[int, int]", record)[1]
        )
    )

    assert_every_value_once(routes)
    assert all(consumer == value % 2 for _, consumer, value in routes)


def test_channels_without_exclusive_buffers_live_on_floating_ones() -> None:
    # buffers-per-channel 0: every buffer a remote channel receives is borrowed from
    # its gate, after the sender announced the backlog.
    routes = run_exchange(
        lambda stream: stream.rebalance(),
        extra={"taskmanager.network.memory.buffers-per-channel": 0},
    )
    assert_every_value_once(routes)
    assert {(producer, consumer) for producer, consumer, _ in routes} == {
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
    }


def test_key_selectors_and_partitioners_are_opened_and_closed_once_per_subtask(
    tmp_path: Path,
) -> None:
    # Each subtask gets its own copy of every function object: the copies note their
    # lifecycle in a file, and refuse to work before open().
    journal = tmp_path / "lifecycle"

    def note(line: str) -> None:
        with journal.open("a") as file:
            file.write(line + "\n")

    class Noting:
        kind = "?"

        def __init__(self) -> None:
            self.subtask: int | None = None

        def open(self, runtime_context: RuntimeContext) -> None:
            self.subtask = runtime_context.subtask_index
            note(f"open {self.kind} {self.subtask}")

        def close(self) -> None:
            note(f"close {self.kind} {self.subtask}")

        def check_open(self) -> None:
            if self.subtask is None:
                msg = f"the {self.kind} was used before open()"
                raise AssertionError(msg)

    class ValueKey(Noting, KeySelector):
        kind = "key"

        def get_key(self, value: object) -> object:
            self.check_open()
            return cast("tuple[int, int]", value)[1]

    class ByParity(Noting, Partitioner):
        kind = "partitioner"

        def partition(self, key: object, num_partitions: int) -> int:
            self.check_open()
            return cast("int", key) % num_partitions

    class KeyedFirst(Noting, ReduceFunction):
        kind = "reduce"

        def reduce(self, value1: object, value2: object) -> object:
            return value1

    routes = run_exchange(lambda stream: stream.partition_custom(ByParity(), ValueKey()))
    assert all(consumer == value % 2 for _, consumer, value in routes)
    assert_every_value_once(routes)
    producers = Counter(journal.read_text().splitlines())
    expected = {
        f"{event} {kind} {subtask}": 1
        for event in ("open", "close")
        for kind in ("key", "partitioner")
        for subtask in (0, 1)
    }
    assert producers == expected

    # A keyed stream's key selector runs twice per record: in the producer, to route,
    # and in the keyed operator, to find the state. Both copies are opened and closed.
    journal.unlink()
    env = cluster_env()
    reduced = env.from_sequence(1, N).map(lambda v: (0, v)).key_by(ValueKey()).reduce(KeyedFirst())
    assert sorted(cast("tuple[int, int]", record)[1] for record in collect(reduced)) == list(
        range(1, N + 1)
    )
    keyed = Counter(journal.read_text().splitlines())
    assert keyed == {
        **{f"{event} key {i}": 2 for event in ("open", "close") for i in (0, 1)},
        **{f"{event} reduce {i}": 1 for event in ("open", "close") for i in (0, 1)},
    }


# -- keyed aggregation ----------------------------------------------------------------

WORDS: Final = (
    "flink", "stream", "buffer", "credit", "straße", "naïve", "日本", "backpressure",
    "netty", "slot", "task", "key", "Key", "", "ü", "🙂",
)  # fmt: skip


def text_lines(count: int, seed: int = 7) -> list[str]:
    """Lines of words separated by single spaces (the empty word is skipped)."""
    rng = random.Random(seed)
    return [" ".join(w for w in rng.choices(WORDS, k=12) if w) for _ in range(count)]


def test_keyed_reduce_with_string_keys_counts_every_word_exactly() -> None:
    lines = text_lines(250)
    expected = Counter(word for line in lines for word in line.split(" "))

    class AddCounts(ReduceFunction):
        def reduce(self, value1: object, value2: object) -> object:
            word, count = cast("tuple[str, int]", value1)
            return word, count + cast("tuple[str, int]", value2)[1]

    env = cluster_env()
    counts = (
        env.from_collection(lines)
        .flat_map(lambda line: cast("str", line).split(" "))
        .map(lambda word: (word, 1))
        .key_by(lambda pair: cast("tuple[str, int]", pair)[0])
        .reduce(AddCounts())
    )
    running: dict[str, list[int]] = defaultdict(list)
    for record in collect(counts, "word count"):
        word, count = cast("tuple[str, int]", record)
        running[word].append(count)

    # A running reduce emits one aggregate per record: 1, 2, ..., n for each word, in
    # order (a key lives in one subtask, and its aggregates reach the sink in order).
    assert {word: len(seen) for word, seen in running.items()} == expected
    for word, seen in running.items():
        assert seen == list(range(1, expected[word] + 1)), word


def test_sum_on_a_tuple_position_keeps_a_running_total_per_key() -> None:
    env = cluster_env()
    sums = (
        env.from_sequence(1, N)
        .map(lambda v: (f"k{cast('int', v) % 5}", v, "tag"))
        .key_by(lambda record: cast("tuple[str, int, str]", record)[0])
        .sum(1)
    )
    running: dict[str, list[int]] = defaultdict(list)
    for record in collect(sums, "sum"):
        key, total, tag = cast("tuple[str, int, str]", record)
        assert tag == "tag"
        running[key].append(total)

    values_of: dict[str, list[int]] = defaultdict(list)
    for v in range(1, N + 1):
        values_of[f"k{v % 5}"].append(v)
    assert sorted(running) == sorted(values_of)
    for key, totals in running.items():
        # The two sources interleave, so the order of additions is not fixed; but the
        # totals rise by exactly the key's values, each used once.
        assert totals == sorted(totals)
        steps = [b - a for a, b in zip([0, *totals], totals, strict=False)]
        assert sorted(steps) == values_of[key]


# -- records, buffers and timeouts ----------------------------------------------------

LARGE_SIZES: Final = (3 << 20, (5 << 20) + 123, 8 << 20, (4 << 20) + 7, (3 << 20) + 1, 6 << 20)


def payload(index: int) -> bytes:
    return random.Random(index).randbytes(LARGE_SIZES[index])


@pytest.mark.slow
def test_records_of_several_mib_arrive_intact() -> None:
    sizes = LARGE_SIZES

    def make(index: object) -> bytes:
        i = cast("int", index)
        return random.Random(i).randbytes(sizes[i])

    def digest(data: object) -> object:
        raw = cast("bytes", data)
        return len(raw), hashlib.sha256(raw).hexdigest(), raw

    env = cluster_env()
    stream = (
        env.from_sequence(0, len(sizes) - 1)
        .map(make, output_type=bytes)
        .rebalance()
        .map(digest)
        .disable_chaining()
    )
    received = collect(stream, "large records")

    expected = {hashlib.sha256(payload(i)).hexdigest(): len(payload(i)) for i in range(len(sizes))}
    assert len(received) == len(sizes)
    seen = {}
    for record in received:
        length, remote_digest, raw = cast("tuple[int, str, bytes]", record)
        assert len(raw) == length
        assert hashlib.sha256(raw).hexdigest() == remote_digest  # intact on both hops
        seen[remote_digest] = length
    assert seen == expected


@pytest.mark.parametrize("timeout_ms", [0, -1, 100])
def test_every_environment_buffer_timeout_delivers_everything(timeout_ms: int) -> None:
    env = cluster_env()
    env.set_buffer_timeout(timeout_ms)
    stream = env.from_sequence(1, N).map(lambda v: cast("int", v) * 3).rebalance().map(str)

    assert sorted(collect_strings(stream, f"timeout {timeout_ms}")) == sorted(
        str(v * 3) for v in range(1, N + 1)
    )


def test_operator_buffer_timeouts_deliver_everything() -> None:
    # Three exchanges in a row, each written with another timeout; the environment's
    # is yet another. How many records share a buffer depends on timing (a flush makes
    # data readable, it does not end the buffer), so only the deliveries are checked.
    env = cluster_env()
    env.set_buffer_timeout(50)
    stream = env.from_sequence(1, N)
    for timeout_ms in (0, -1, 100):
        stream = (
            stream.map(lambda v: cast("int", v) + 1)
            .name(f"Timeout {timeout_ms}")
            .set_buffer_timeout(timeout_ms)
            .rebalance()
        )
    stream.add_sink(lambda v: None)
    metrics = env.execute("operator timeouts").get_metrics()

    def records_in(vertex: str) -> float:
        return sum(
            values["numRecordsIn"]
            for name, values in metrics.items()
            if name.startswith(f"{vertex} (")
        )

    assert records_in("Timeout -1") == N  # written with timeout 0
    assert records_in("Timeout 100") == N  # written with timeout -1
    assert records_in("Sink: Unnamed") == N  # written with timeout 100


def test_operator_buffer_timeouts_keep_every_record_exact() -> None:
    env = cluster_env()
    stream = env.from_sequence(1, N).map(lambda v: cast("int", v) * 7).set_buffer_timeout(-1)
    stream = stream.rebalance().map(lambda v: -cast("int", v)).set_buffer_timeout(0)
    stream = stream.rebalance().map(str).set_buffer_timeout(100)

    assert sorted(collect_strings(stream, "timeouts")) == sorted(
        str(-7 * v) for v in range(1, N + 1)
    )


# -- execute_and_collect --------------------------------------------------------------


def test_execute_and_collect_returns_every_record() -> None:
    env = cluster_env()
    stream = env.from_collection([f"r{i}" for i in range(N)]).rebalance().map(str.upper)

    assert sorted(collect_strings(stream)) == sorted(f"R{i}" for i in range(N))


def test_execute_and_collect_with_a_limit_stops_early_and_cancels_the_job() -> None:
    env = cluster_env()
    endless = env.from_sequence(0, 10**15).rebalance().map(lambda v: cast("int", v) * 2)

    records = list(endless.execute_and_collect("endless", limit=25))

    assert len(records) == 25
    assert len(set(records)) == 25
    assert all(isinstance(r, int) and r % 2 == 0 for r in records)
    # The job was cancelled and its TaskManagers stopped: the fixture checks that no
    # process is left, and this returned although the source never ends.


def test_closing_the_collect_iterator_cancels_the_job() -> None:
    before = child_pids()
    env = cluster_env()
    iterator = env.from_sequence(0, 10**15).map(lambda v: v).execute_and_collect("closed early")
    first = next(iterator)
    assert isinstance(first, int)
    assert len(child_pids() - before) == 2  # the two TaskManagers run the job

    assert isinstance(iterator, CloseableIterator)
    iterator.close()

    assert child_pids() - before == set()


def test_closing_the_collect_iterator_before_reading_cancels_the_job() -> None:
    before = child_pids()
    env = cluster_env()
    iterator = env.from_sequence(0, 10**15).map(lambda v: v).execute_and_collect("never read")
    assert len(child_pids() - before) == 2  # submitted: the TaskManagers run it

    assert isinstance(iterator, CloseableIterator)
    iterator.close()

    assert child_pids() - before == set()


# -- failures and configuration -------------------------------------------------------


def execute_in_thread(env: StreamExecutionEnvironment, job_name: str) -> BaseException | None:
    """Runs the job; returns what it raised. Fails the test if it outlives WAIT_S."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            env.execute(job_name)
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, name=f"execute {job_name}", daemon=True)
    thread.start()
    thread.join(WAIT_S)
    assert not thread.is_alive(), f"job {job_name!r} still runs after {WAIT_S} s"
    return outcome[0]


def test_a_user_exception_fails_the_job_with_its_type_message_and_remote_traceback() -> None:
    def reject_1234(value: object) -> object:
        if value == 1234:
            message = f"bad record {value}"
            raise ValueError(message)
        return value

    env = cluster_env()
    # The source never ends: only the failure (and cancelling every task of both
    # TaskManagers) can end this job.
    env.from_sequence(0, 10**15).rebalance().map(reject_1234).add_sink(lambda v: None)
    error = execute_in_thread(env, "failing")

    assert isinstance(error, JobExecutionError)
    assert "bad record 1234" in str(error)
    cause = error.__cause__
    assert isinstance(cause, RemoteError)
    assert cause.type_name == "builtins.ValueError"
    assert cause.message == "bad record 1234"
    assert "in reject_1234" in cause.traceback_text
    assert "raise ValueError(message)" in cause.traceback_text


def test_an_exception_in_open_fails_the_job() -> None:
    class NeedsResource(MapFunction):
        def open(self, runtime_context: RuntimeContext) -> None:
            if runtime_context.get_index_of_this_subtask() == 1:
                message = "resource unavailable on subtask 1"
                raise LookupError(message)

        def map(self, value: object) -> object:
            return value

    env = cluster_env()
    env.from_sequence(0, 10**15).rebalance().map(NeedsResource()).add_sink(lambda v: None)
    error = execute_in_thread(env, "failing open")

    assert isinstance(error, JobExecutionError)
    cause = error.__cause__
    assert isinstance(cause, RemoteError)
    assert cause.type_name == "builtins.LookupError"
    assert cause.message == "resource unavailable on subtask 1"
    assert "in open" in cause.traceback_text


def test_a_function_that_cannot_be_pickled_fails_the_job() -> None:
    lock = threading.Lock()  # a TaskManager process cannot receive a lock

    def guarded(value: object) -> object:
        with lock:
            return value

    env = cluster_env()
    env.from_sequence(1, N).rebalance().map(guarded).add_sink(lambda v: None)
    error = execute_in_thread(env, "unpicklable")

    assert isinstance(error, JobExecutionError)
    cause = error.__cause__
    assert isinstance(cause, RemoteError)
    assert cause.type_name == "penstock.errors.SerializationError"
    assert (
        "the function of operator 'Map' cannot be pickled "
        "(TypeError: cannot pickle '_thread.lock' object)" in cause.message
    )
    assert "create such objects where they are used (in a function's open(), for" in cause.message


def test_a_key_selector_that_cannot_be_pickled_is_named() -> None:
    lock = threading.Lock()

    def key(value: int) -> int:
        with lock:
            return value % 2

    env = cluster_env()
    env.from_sequence(1, N).key_by(key).map(lambda v: v).add_sink(lambda v: None)
    error = execute_in_thread(env, "unpicklable key")

    assert isinstance(error, JobExecutionError)
    assert "the key selector of the HASH output cannot be pickled" in str(error.__cause__)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("taskmanager.numberOfTaskSlots", 0),
        ("minicluster.number-of-taskmanagers", 0),
        ("execution.target", "yarn"),
        ("execution.buffer-timeout", -2),
        ("taskmanager.memory.segment-size", "12 apples"),
        ("taskmanager.network.memory.buffers-per-channel", "two"),
        ("taskmanager.numberOfTaskSlot", 2),  # a misspelt key
    ],
)
def test_a_bad_configuration_value_fails_before_anything_starts(key: str, value: object) -> None:
    before = child_pids()
    with pytest.raises(ConfigurationError) as info:
        env = cluster_env({key: value})
        env.from_sequence(1, 10).add_sink(lambda v: None)
        env.execute("never runs")

    assert info.value.key == key
    assert key in str(info.value)
    assert child_pids() == before


@pytest.mark.parametrize(
    ("key", "settings"),
    [
        (
            "taskmanager.memory.network.min",
            {"taskmanager.memory.network.min": "64 mb", "taskmanager.memory.network.max": "1 mb"},
        ),
        (
            "taskmanager.network.request-backoff.initial",
            {
                "taskmanager.network.request-backoff.initial": 5000,
                "taskmanager.network.request-backoff.max": 100,
            },
        ),
    ],
)
def test_inconsistent_values_fail_before_any_process_starts(
    key: str, settings: Mapping[str, object]
) -> None:
    before = child_pids()
    env = cluster_env(settings)
    env.from_sequence(1, 10).add_sink(lambda v: None)
    with pytest.raises(ConfigurationError) as info:
        env.execute("never runs")

    assert info.value.key == key
    assert child_pids() == before


# -- rich functions, union, slot sharing ----------------------------------------------


def test_rich_functions_are_opened_and_closed_once_per_subtask(tmp_path: Path) -> None:
    marks = str(tmp_path)

    class Counting(MapFunction):
        """Writes one file per open and per close; the close file holds the count."""

        def open(self, runtime_context: RuntimeContext) -> None:
            self.index = runtime_context.get_index_of_this_subtask()
            self.parallelism = runtime_context.get_number_of_parallel_subtasks()
            self.count = 0
            self._mark("open", f"{self.parallelism}")

        def map(self, value: object) -> object:
            self.count += 1
            return value

        def close(self) -> None:
            self._mark("close", f"{self.count}")

        def _mark(self, event: str, text: str) -> None:
            name = f"{marks}/{event}-{self.index}-{os.getpid()}-{id(self)}"
            with open(name, "x") as file:  # "x": a second open would fail
                file.write(text)

    class Odd(FilterFunction):
        def filter(self, value: object) -> bool:
            return cast("int", value) % 2 == 1

    class Discard(SinkFunction):
        def invoke(self, value: object) -> None:
            if cast("int", value) % 2 == 0:
                message = f"the filter let {value} through"
                raise AssertionError(message)

    env = cluster_env()
    env.from_sequence(1, N).rebalance().map(Counting()).filter(Odd()).add_sink(Discard())
    env.execute("rich functions")

    events: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for mark in tmp_path.iterdir():
        event, index, pid, _ = mark.name.split("-")
        events[event].append((int(index), int(pid), mark.read_text()))
    assert sorted(index for index, _, _ in events["open"]) == [0, 1]
    assert sorted(index for index, _, _ in events["close"]) == [0, 1]
    assert {text for _, _, text in events["open"]} == {"2"}
    # close came after the last record: the counts add up to every record.
    assert sum(int(text) for _, _, text in events["close"]) == N
    # Each subtask ran in its own TaskManager process, not in this one.
    pids = {pid for _, pid, _ in events["open"]}
    assert len(pids) == 2
    assert os.getpid() not in pids
    assert {(i, p) for i, p, _ in events["open"]} == {(i, p) for i, p, _ in events["close"]}


def test_flat_map_filter_and_union() -> None:
    class RepeatWithCollector(FlatMapFunction):
        def flat_map(self, value: object, out: Collector[object]) -> None:  # type: ignore[override]
            for copy in range(cast("int", value) % 3):
                out.collect((value, copy))

    class Halves(FlatMapFunction):
        def flat_map(self, value: object) -> Iterable[object]:
            v = cast("int", value)
            yield v // 2
            yield v - v // 2

    class Positive(FilterFunction):
        def filter(self, value: object) -> bool:
            return cast("int", value) > 0

    env = cluster_env()
    evens = env.from_sequence(1, 1000).filter(lambda v: cast("int", v) % 2 == 0)
    with_collector = evens.flat_map(RepeatWithCollector())
    returned_list = env.from_sequence(1001, 1400).flat_map(lambda v: [v] * (cast("int", v) % 4))
    generated = (
        env.from_collection(list(range(-50, 50))).flat_map(Halves()).filter(Positive())
    ).map(lambda v: ("half", v))
    union = with_collector.union(returned_list.rebalance(), generated)
    received = Counter(collect(union, "flat maps and union"))

    expected: Counter[object] = Counter()
    for v in range(2, 1001, 2):
        expected.update((v, copy) for copy in range(v % 3))
    for v in range(1001, 1401):
        expected.update([v] * (v % 4))
    for v in range(-50, 50):
        expected.update(("half", h) for h in (v // 2, v - v // 2) if h > 0)
    assert received == expected


def test_slot_sharing_groups_put_source_and_sink_on_different_task_managers() -> None:
    # One slot per TaskManager and no TaskManager count given: the mini-cluster starts
    # one per slot the job needs, and the two groups need one slot each.
    env = StreamExecutionEnvironment.get_execution_environment(
        {"execution.target": "minicluster", "taskmanager.numberOfTaskSlots": 1}
    )
    env.from_sequence(1, N).map(lambda v: cast("int", v) + 1).add_sink(
        lambda v: None
    ).slot_sharing_group("sinks")
    metrics = env.execute("two groups").get_metrics()

    assert sorted(metrics) == ["Sink: Unnamed (1/1)", "Source: Sequence Source -> Map (1/1)"]
    sink = metrics["Sink: Unnamed (1/1)"]
    assert sink["numRecordsIn"] == N
    assert sink["numBuffersInRemote"] > 0
    assert sink["numBuffersInLocal"] == 0


# -- JobExecutionResult ---------------------------------------------------------------


def test_job_execution_result_has_id_runtime_and_metrics_per_flink_task_name() -> None:
    env = cluster_env()
    doubled = env.from_sequence(1, N).map(lambda v: cast("int", v) * 2)
    doubled.rebalance().map(lambda v: v).add_sink(lambda v: None)
    result = env.execute("metrics")

    job_id = result.get_job_id()
    assert len(str(job_id)) == 32
    int(str(job_id), 16)
    assert result.get_net_runtime() > 0
    metrics = result.get_metrics()
    sources = ["Source: Sequence Source -> Map (1/2)", "Source: Sequence Source -> Map (2/2)"]
    sinks = ["Map -> Sink: Unnamed (1/2)", "Map -> Sink: Unnamed (2/2)"]
    assert sorted(metrics) == sorted(sources + sinks)
    assert sum(metrics[name]["numRecordsOut"] for name in sources) == N
    assert sum(metrics[name]["numRecordsIn"] for name in sinks) == N
    assert all(metrics[name]["numRecordsIn"] == 0 for name in sources)
    bytes_out = sum(metrics[name]["numBytesOut"] for name in sources)
    assert bytes_out > 0
    # The consumers also count the end-of-partition events they read, as Flink's do.
    bytes_in = sum(metrics[name]["numBytesIn"] for name in sinks)
    assert bytes_out <= bytes_in <= bytes_out + 4 * 64
    # Each consumer reads one channel from its own process and one from the other.
    for name in sinks:
        assert metrics[name]["numBuffersInLocal"] > 0
        assert metrics[name]["numBuffersInRemote"] > 0
    for values in metrics.values():
        assert values["isBackPressured"] in (0.0, 1.0)
        assert 0.0 <= values["outPoolUsage"] <= 1.0
