"""Channel selectors: routing, distribution, bulk split and stability across processes."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable, Sequence
from operator import itemgetter

import cloudpickle
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from penstock.errors import ConfigurationError, IllegalStateError, SerializationError
from penstock.writer.key_groups import assign_to_channel
from penstock.writer.partitioners import (
    BroadcastPartitioner,
    ChannelSelector,
    CustomPartitionerWrapper,
    ForwardPartitioner,
    GlobalPartitioner,
    KeyGroupStreamPartitioner,
    RebalancePartitioner,
    RescalePartitioner,
    ShufflePartitioner,
    StreamPartitioner,
)

Record = tuple[object, int]


def first(record: Record) -> object:
    return record[0]


class FirstField:
    """A key selector object, as penstock.functions.KeySelector."""

    def get_key(self, value: Record) -> object:
        return value[0]


class Modulo:
    """A partitioner object, as penstock.functions.Partitioner."""

    def partition(self, key: int, num_partitions: int) -> int:
        return key % num_partitions


def modulo(key: int, num_partitions: int) -> int:
    return key % num_partitions


def key_as_int(record: Record) -> int:
    key = record[0]
    return key if isinstance(key, int) else len(str(key))


# Factories of one selector kind each; randomized kinds get a fixed seed so two
# instances behave alike.
SELECTORS: dict[str, Callable[[], StreamPartitioner[Record]]] = {
    "forward": ForwardPartitioner,
    "global": GlobalPartitioner,
    "rebalance": lambda: RebalancePartitioner(seed=7),
    "rescale": RescalePartitioner,
    "shuffle": lambda: ShufflePartitioner(seed=7),
    "hash": lambda: KeyGroupStreamPartitioner(first),
    "hash-object": lambda: KeyGroupStreamPartitioner(FirstField(), max_parallelism=32),
    "custom": lambda: CustomPartitionerWrapper(modulo, key_as_int),
    "custom-object": lambda: CustomPartitionerWrapper(Modulo(), key_as_int),
}


def records_of(keys: Sequence[object]) -> list[Record]:
    return [(key, position) for position, key in enumerate(keys)]


def routed_one_by_one(
    selector: ChannelSelector[Record], records: Sequence[Record], n: int
) -> list[list[Record]]:
    groups: list[list[Record]] = [[] for _ in range(n)]
    for record in records:
        channel = selector.select_channel(record)
        assert 0 <= channel < n
        groups[channel].append(record)
    return groups


def chi_square(counts: Sequence[int]) -> float:
    expected = sum(counts) / len(counts)
    return sum((count - expected) ** 2 / expected for count in counts)


# --------------------------------------------------------------------------- the seam


@pytest.mark.parametrize(
    ("selector", "name", "broadcast", "pointwise"),
    [
        (ForwardPartitioner(), "FORWARD", False, True),
        (RebalancePartitioner(), "REBALANCE", False, False),
        (RescalePartitioner(), "RESCALE", False, True),
        (KeyGroupStreamPartitioner(first), "HASH", False, False),
        (BroadcastPartitioner(), "BROADCAST", True, False),
        (GlobalPartitioner(), "GLOBAL", False, False),
        (ShufflePartitioner(), "SHUFFLE", False, False),
        (CustomPartitionerWrapper(modulo, key_as_int), "CUSTOM", False, False),
    ],
)
def test_names_and_kinds(
    selector: ChannelSelector[Record], name: str, broadcast: bool, pointwise: bool
) -> None:
    assert str(selector) == name
    assert selector.is_broadcast is broadcast
    assert selector.is_pointwise is pointwise
    fresh = selector.copy()
    assert type(fresh) is type(selector)
    assert fresh is not selector
    assert str(fresh) == name


@pytest.mark.parametrize("kind", sorted(SELECTORS))
def test_copy_is_unconfigured_and_routes_alike(kind: str) -> None:
    original = SELECTORS[kind]()
    original.setup(5)
    fresh = original.copy()
    assert fresh.number_of_channels == 0
    fresh.setup(5)
    clone = SELECTORS[kind]()
    clone.setup(5)
    records = records_of(range(50))
    assert [fresh.select_channel(r) for r in records] == [clone.select_channel(r) for r in records]


@pytest.mark.parametrize("kind", sorted(SELECTORS))
@pytest.mark.parametrize("channels", [0, -1, 32769])
def test_setup_rejects_a_bad_channel_count(kind: str, channels: int) -> None:
    with pytest.raises(ConfigurationError, match="number of channels"):
        SELECTORS[kind]().setup(channels)


@pytest.mark.parametrize("kind", ["rebalance", "rescale", "shuffle", "hash", "custom"])
def test_select_channel_before_setup_is_an_illegal_state(kind: str) -> None:
    with pytest.raises(IllegalStateError, match="setup"):
        SELECTORS[kind]().select_channel((1, 0))


@pytest.mark.parametrize("kind", sorted(SELECTORS))
def test_split_before_setup_is_an_illegal_state(kind: str) -> None:
    with pytest.raises(IllegalStateError, match="setup"):
        SELECTORS[kind]().split(records_of([1, 2]))


@pytest.mark.parametrize("kind", sorted(SELECTORS))
def test_selectors_pickle_and_keep_routing(kind: str) -> None:
    unconfigured = pickle.loads(pickle.dumps(SELECTORS[kind]()))
    unconfigured.setup(3)
    selector = SELECTORS[kind]()
    selector.setup(3)
    records = records_of(range(20))
    copies = [
        unconfigured,
        pickle.loads(pickle.dumps(selector)),
        cloudpickle.loads(cloudpickle.dumps(selector)),
    ]
    expected = [selector.select_channel(r) for r in records]
    for restored in copies:
        assert [restored.select_channel(r) for r in records] == expected


# --------------------------------------------------------------------------- split


@pytest.mark.parametrize("kind", sorted(SELECTORS))
@given(
    batches=st.lists(st.lists(st.integers(-(2**40), 2**40) | st.text(max_size=5)), max_size=4),
    channels=st.integers(1, 9),
)
def test_split_equals_per_record_selection(
    kind: str, batches: list[list[object]], channels: int
) -> None:
    bulk = SELECTORS[kind]()
    one_by_one = SELECTORS[kind]()
    bulk.setup(channels)
    one_by_one.setup(channels)
    for keys in batches:
        records = records_of(keys)
        groups = bulk.split(records)
        assert groups == routed_one_by_one(one_by_one, records, channels)
        # The state after the batch is the same too: the next records route alike.
        probe = records_of(["probe", 1, 2])
        assert [bulk.select_channel(r) for r in probe] == [
            one_by_one.select_channel(r) for r in probe
        ]


@pytest.mark.parametrize("kind", ["rebalance", "rescale", "forward", "hash", "shuffle"])
def test_split_accepts_any_sequence_and_returns_fresh_lists(kind: str) -> None:
    records = records_of(range(10))
    selector = SELECTORS[kind]()
    selector.setup(3)
    groups = selector.split(tuple(records))
    assert sorted(r for group in groups for r in group) == records
    for group in groups:
        assert type(group) is list
        group.append(("extra", -1))
    assert records == records_of(range(10))


def test_split_of_tuple_records_keeps_them_whole() -> None:
    selector: KeyGroupStreamPartitioner[tuple[int, int]] = KeyGroupStreamPartitioner(itemgetter(0))
    selector.setup(2)
    records = [(1, 2), (3, 4), (5, 6)]
    groups = selector.split(records)
    assert sorted(r for group in groups for r in group) == records


# --------------------------------------------------------------------------- each selector


def test_forward_and_global_send_everything_to_channel_zero() -> None:
    for selector in (ForwardPartitioner[Record](), GlobalPartitioner[Record]()):
        selector.setup(4)
        records = records_of(range(10))
        assert {selector.select_channel(r) for r in records} == {0}
        assert selector.split(records) == [records, [], [], []]


def test_rebalance_starts_after_a_seeded_random_channel_and_cycles() -> None:
    selector = RebalancePartitioner[Record](seed=3)
    selector.setup(5)
    channels = [selector.select_channel((i, i)) for i in range(12)]
    start = channels[0]
    assert channels == [(start + i) % 5 for i in range(12)]


def test_rebalance_start_varies_with_the_seed() -> None:
    starts = set()
    for seed in range(40):
        selector = RebalancePartitioner[Record](seed=seed)
        selector.setup(8)
        starts.add(selector.select_channel((0, 0)))
    assert len(starts) > 1


def test_unseeded_rebalance_still_cycles() -> None:
    selector = RebalancePartitioner[Record]()
    selector.setup(3)
    channels = [selector.select_channel((i, i)) for i in range(9)]
    assert sorted(Counter(channels).values()) == [3, 3, 3]
    assert channels[3:] == channels[:6]


@pytest.mark.parametrize("selector_type", [RebalancePartitioner, RescalePartitioner])
@given(count=st.integers(0, 200), channels=st.integers(1, 12))
def test_round_robin_is_exactly_balanced(
    selector_type: type[StreamPartitioner[Record]], count: int, channels: int
) -> None:
    selector = selector_type()
    selector.setup(channels)
    sizes = [len(group) for group in selector.split(records_of(range(count)))]
    assert sum(sizes) == count
    assert max(sizes) - min(sizes) <= 1
    if count % channels == 0:
        assert sizes == [count // channels] * channels


def test_rescale_cycles_from_channel_zero() -> None:
    selector = RescalePartitioner[Record]()
    selector.setup(3)
    assert [selector.select_channel((i, i)) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    # The last record went to channel 0, so the batch continues at channel 1.
    assert selector.split(records_of("abcd")) == [
        [("c", 2)],
        [("a", 0), ("d", 3)],
        [("b", 1)],
    ]


def test_shuffle_is_roughly_uniform() -> None:
    # A fixed seed makes the draw, hence the statistic, the same on every run.
    selector = ShufflePartitioner[Record](seed=12345)
    selector.setup(10)
    groups = selector.split(records_of(range(100_000)))
    counts = [len(group) for group in groups]
    assert sum(counts) == 100_000
    # 27.88 is the 99.9% quantile of chi-square with 9 degrees of freedom.
    assert chi_square(counts) < 27.88
    one_by_one = Counter(selector.select_channel((i, i)) for i in range(100_000))
    assert chi_square([one_by_one[c] for c in range(10)]) < 27.88


def test_broadcast_refuses_selection() -> None:
    selector = BroadcastPartitioner[Record]()
    selector.setup(3)
    with pytest.raises(IllegalStateError, match="does not support select channels"):
        selector.select_channel((1, 1))
    with pytest.raises(IllegalStateError, match="does not support select channels"):
        selector.split(records_of([1]))


# --------------------------------------------------------------------------- keyed


def test_keyed_routing_is_flinks_key_group_assignment() -> None:
    selector = KeyGroupStreamPartitioner[Record](first, max_parallelism=128)
    selector.setup(4)
    # Long keys 0..5 go to channels 2, 2, 3, 3, 0, 3 in Flink (see test_key_groups).
    assert [selector.select_channel((k, 0)) for k in range(6)] == [2, 2, 3, 3, 0, 3]


@given(st.lists(st.integers() | st.text() | st.tuples(st.integers(), st.text()), min_size=1))
def test_equal_keys_go_to_one_channel(keys: list[object]) -> None:
    selector = KeyGroupStreamPartitioner[Record](first, max_parallelism=64)
    selector.setup(5)
    records = records_of(keys + keys[::-1])
    channel_of: dict[object, set[int]] = {}
    for channel, group in enumerate(selector.split(records)):
        for key, _ in group:
            channel_of.setdefault(key, set()).add(channel)
    for record in records:
        channel_of[record[0]].add(selector.select_channel(record))
    for key, channels in channel_of.items():
        assert channels == {assign_to_channel(key, 64, 5)}


def test_keyed_routing_spreads_distinct_keys() -> None:
    selector = KeyGroupStreamPartitioner[Record](first)
    selector.setup(4)
    counts = [len(g) for g in selector.split(records_of([f"user-{i}" for i in range(20_000)]))]
    # 128 key groups over 4 channels: each owns 32 of them, about a quarter of the keys.
    assert all(4_000 < count < 6_000 for count in counts)


def test_keyed_routing_is_unchanged_past_the_memo_limit() -> None:
    selector = KeyGroupStreamPartitioner[Record](first, max_parallelism=1024)
    selector.setup(7)
    keys = list(range(40_000)) + list(range(100))
    assert [selector.select_channel((k, 0)) for k in keys] == [
        assign_to_channel(k, 1024, 7) for k in keys
    ]


def test_keyed_partitioner_refuses_a_bad_max_parallelism() -> None:
    with pytest.raises(ConfigurationError, match=r"pipeline\.max-parallelism"):
        KeyGroupStreamPartitioner(first, max_parallelism=0)
    with pytest.raises(ConfigurationError, match=r"pipeline\.max-parallelism"):
        KeyGroupStreamPartitioner(first, max_parallelism=32769)


def test_keyed_partitioner_refuses_more_channels_than_key_groups() -> None:
    selector = KeyGroupStreamPartitioner[Record](first, max_parallelism=4)
    with pytest.raises(ConfigurationError, match=r"maximum parallelism \(4\).*parallelism \(5\)"):
        selector.setup(5)
    with pytest.raises(IllegalStateError, match="setup"):
        selector.split(records_of([1]))


def test_keyed_partitioner_refuses_unhashable_keys() -> None:
    selector = KeyGroupStreamPartitioner[Record](first)
    selector.setup(2)
    with pytest.raises(SerializationError, match="no stable hash"):
        selector.select_channel(([1], 0))
    with pytest.raises(SerializationError, match="no stable hash"):
        selector.split(records_of([1, [1]]))


def test_a_key_selector_must_be_callable() -> None:
    with pytest.raises(TypeError, match="key selector"):
        KeyGroupStreamPartitioner(42)  # type: ignore[arg-type]


def test_a_key_selector_zero_division_is_not_mistaken_for_missing_setup() -> None:
    def broken(record: Record) -> object:
        return 1 // 0

    selector = KeyGroupStreamPartitioner[Record](broken)
    selector.setup(2)
    with pytest.raises(ZeroDivisionError):
        selector.select_channel((1, 1))


ROUTING_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from penstock.writer.partitioners import KeyGroupStreamPartitioner
    keys = [f"key-{i}" for i in range(150)]
    keys += [f"k{i}".encode() for i in range(150)]
    keys += [(f"t{i}", i, b"x") for i in range(150)]
    records = [(k, i) for i, k in enumerate(keys)]
    one = KeyGroupStreamPartitioner(lambda r: r[0])
    one.setup(7)
    bulk = KeyGroupStreamPartitioner(lambda r: r[0])
    bulk.setup(7)
    split = [[r[1] for r in group] for group in bulk.split(records)]
    json.dump({
        "channels": [one.select_channel(r) for r in records],
        "split": split,
        "python_hash": [hash(k) % 7 for k in keys],
    }, sys.stdout)
    """
)


def route_in_subprocess(hash_seed: str) -> dict[str, list[object]]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    completed = subprocess.run(
        [sys.executable, "-c", ROUTING_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result: dict[str, list[object]] = json.loads(completed.stdout)
    return result


def test_key_routing_is_the_same_whatever_the_hash_seed() -> None:
    first_run = route_in_subprocess("1")
    second_run = route_in_subprocess("2")
    # Python's own hash differs between the two processes, so it would route differently...
    assert first_run["python_hash"] != second_run["python_hash"]
    # ...but penstock's routing does not, one by one or in bulk.
    assert first_run["channels"] == second_run["channels"]
    assert first_run["split"] == second_run["split"]
    assert len(set(first_run["channels"])) == 7


# --------------------------------------------------------------------------- custom


def test_custom_partitioner_routes_by_the_users_choice() -> None:
    for partitioner in (modulo, Modulo()):
        selector = CustomPartitionerWrapper[int, Record](partitioner, key_as_int)
        selector.setup(3)
        assert [selector.select_channel((k, 0)) for k in range(5)] == [0, 1, 2, 0, 1]


def test_custom_partitioner_may_return_numpy_integers() -> None:
    selector = CustomPartitionerWrapper[int, Record](lambda k, n: np.int64(k % n), key_as_int)  # type: ignore[arg-type, return-value]
    selector.setup(3)
    assert selector.select_channel((4, 0)) == 1
    assert selector.split(records_of([4, 5])) == [[], [(4, 0)], [(5, 1)]]


@pytest.mark.parametrize("bad", [3, -1, 7, 1.0, True, "1", None])
def test_custom_partitioner_out_of_range_is_an_illegal_state(bad: object) -> None:
    selector = CustomPartitionerWrapper[int, Record](lambda k, n: bad, key_as_int)  # type: ignore[arg-type, return-value]
    selector.setup(3)
    with pytest.raises(IllegalStateError) as raised:
        selector.select_channel((0, 0))
    assert repr(bad) in str(raised.value)
    assert "3 channels" in str(raised.value)
    with pytest.raises(IllegalStateError, match="3 channels"):
        selector.split(records_of([0, 1]))


def test_a_partitioner_must_be_callable() -> None:
    with pytest.raises(TypeError, match="partitioner"):
        CustomPartitionerWrapper(42, key_as_int)  # type: ignore[arg-type]
