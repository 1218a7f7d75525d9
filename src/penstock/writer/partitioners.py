"""Channel selectors: which subpartition of an output each record goes to.

Flink's stream partitioners, one class each, behind one seam (``ChannelSelector``):

=============================  ==========  ==================================================
partitioner                    shown as    channel of a record
=============================  ==========  ==================================================
``ForwardPartitioner``         FORWARD     0 (pointwise: one consumer per producer)
``RebalancePartitioner``       REBALANCE   round robin from a random channel
``RescalePartitioner``         RESCALE     round robin from channel 0 (pointwise)
``KeyGroupStreamPartitioner``  HASH        the owner of the key's key group
``BroadcastPartitioner``       BROADCAST   every channel; the writer broadcasts instead
``GlobalPartitioner``          GLOBAL      0
``ShufflePartitioner``         SHUFFLE     uniformly random
``CustomPartitionerWrapper``   CUSTOM      the user partitioner's choice for the key
=============================  ==========  ==================================================

Each selector has two ways in. ``select_channel`` routes one record and sits on the
per-record hot path, so it is a few interpreted steps with no per-record check that the
selector was set up: a selector used before ``setup`` fails through the arithmetic it
does anyway (a modulo by zero channels, caught by a try block that costs nothing until
it fires) and raises ``IllegalStateError``. ``split`` routes a whole batch, as the writer
does for everything readable in a buffer: round robin slices the batch, the keyed
partitioner hashes all keys in C or numpy and groups records with one stable sort. A
``split`` gives exactly what ``select_channel`` on each record in order would give, and
leaves the selector in the same state (the round-robin position, the random generator).

A selector serves one subtask: ``copy`` makes a fresh, unconfigured one for another.
"""

from __future__ import annotations

import operator
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from itertools import repeat
from typing import (
    Final,
    Generic,
    Protocol,
    SupportsIndex,
    TypeAlias,
    TypeVar,
    runtime_checkable,
)

import numpy as np
import numpy.typing as npt

from penstock.errors import ConfigurationError, IllegalStateError
from penstock.functions import check_called_on_all
from penstock.writer.key_groups import (
    DEFAULT_MAX_PARALLELISM,
    MAX_PARALLELISM_KEY,
    PARALLELISM_KEY,
    UPPER_BOUND_MAX_PARALLELISM,
    _hash32,
    channels_for_keys,
    murmur_hash,
)

__all__ = [
    "BroadcastPartitioner",
    "ChannelSelector",
    "CustomPartitionerWrapper",
    "ForwardPartitioner",
    "GlobalPartitioner",
    "KeyGroupStreamPartitioner",
    "KeySelector",
    "Partitioner",
    "RebalancePartitioner",
    "RescalePartitioner",
    "ShufflePartitioner",
    "StreamPartitioner",
    "SupportsGetKey",
    "SupportsPartition",
]

T = TypeVar("T")
K = TypeVar("K")
T_contra = TypeVar("T_contra", contravariant=True)
K_contra = TypeVar("K_contra", contravariant=True)

_MEMO_LIMIT: Final = 1 << 14
"""The most key hashes a keyed partitioner remembers the channel of (about 1.5 MB)."""

BROADCAST_SELECT_MESSAGE: Final = "Broadcast partitioner does not support select channels."


class ChannelSelector(Protocol[T]):
    """Chooses the output channel (subpartition) of each record of one subtask."""

    @property
    def is_broadcast(self) -> bool:
        """Whether every record goes to every channel (the writer broadcasts it)."""
        ...

    @property
    def is_pointwise(self) -> bool:
        """Whether producers connect to a subset of consumers rather than to all."""
        ...

    def setup(self, number_of_channels: int) -> None:
        """Prepares the selector for an output with this many channels."""
        ...

    def select_channel(self, record: T) -> int:
        """The channel of one record, in ``range(number_of_channels)``."""
        ...

    def split(self, records: Sequence[T]) -> list[list[T]]:
        """The records of each channel, in their order, as ``select_channel`` routes them."""
        ...

    def copy(self) -> ChannelSelector[T]:
        """A fresh selector of the same kind and settings, not yet set up."""
        ...

    @property
    def user_functions(self) -> tuple[object, ...]:
        """The user's key selector and partitioner, opened and closed with the subtask."""
        ...


@runtime_checkable
class SupportsGetKey(Protocol[T_contra]):
    """A key selector object, as ``penstock.functions.KeySelector``."""

    def get_key(self, value: T_contra, /) -> object:
        """The key of a record."""
        ...


@runtime_checkable
class SupportsPartition(Protocol[K_contra]):
    """A partitioner object, as ``penstock.functions.Partitioner``."""

    def partition(self, key: K_contra, num_partitions: int, /) -> int:
        """The partition of a key, in ``range(num_partitions)``."""
        ...


KeySelector: TypeAlias = Callable[[T], object] | SupportsGetKey[T]
"""A function from record to key, or an object with ``get_key(record)``."""

Partitioner: TypeAlias = Callable[[K, int], int] | SupportsPartition[K]
"""A function ``(key, num_partitions) -> partition``, or an object with ``partition``."""


def _key_getter(key_selector: KeySelector[T]) -> Callable[[T], object]:
    if isinstance(key_selector, SupportsGetKey):
        return key_selector.get_key
    if callable(key_selector):
        return key_selector
    msg = f"A key selector must be callable or have get_key(record), got {key_selector!r}"
    raise TypeError(msg)


def _partition_function(partitioner: Partitioner[K]) -> Callable[[K, int], int]:
    if isinstance(partitioner, SupportsPartition):
        return partitioner.partition
    if callable(partitioner):
        return partitioner
    msg = f"A partitioner must be callable or have partition(key, n), got {partitioner!r}"
    raise TypeError(msg)


def _group(records: Sequence[T], channels: npt.NDArray[np.int32], n: int) -> list[list[T]]:
    """The records of each channel, in order, given the channel of every record.

    One stable sort of the channel numbers (a radix sort on int16, where every channel
    number fits) orders the records by channel in C; the groups are slices of the result.
    """
    if n == 1:
        return [list(records)]
    order = np.argsort(channels.astype(np.int16), kind="stable")
    in_channel_order: list[T] = np.fromiter(records, dtype=object, count=len(records))[
        order
    ].tolist()
    groups: list[list[T]] = []
    start = 0
    for end in np.bincount(channels, minlength=n).cumsum().tolist():
        groups.append(in_channel_order[start:end])
        start = end
    return groups


def _check_number_of_channels(number_of_channels: int) -> None:
    if not 0 < number_of_channels <= UPPER_BOUND_MAX_PARALLELISM:
        reason = f"number of channels not within 1..{UPPER_BOUND_MAX_PARALLELISM}"
        raise ConfigurationError(PARALLELISM_KEY, number_of_channels, reason)


def _not_set_up(selector: object) -> IllegalStateError:
    msg = f"{selector!r} is used before setup(number_of_channels) was called"
    return IllegalStateError(msg)


class StreamPartitioner(ABC, Generic[T]):
    """What Flink's partitioners share: the channel count, ``split`` and display name.

    Subclasses implement ``select_channel`` and ``copy``, and override ``split`` when
    they can route a batch faster than record by record.
    """

    __slots__ = ("_n",)

    display_name: str = "?"
    is_broadcast: bool = False
    is_pointwise: bool = False
    reads_records: bool = True
    """Whether the channel depends on the record (a key selector's, a custom one's)."""

    def __init__(self) -> None:
        self._n = 0

    @property
    def number_of_channels(self) -> int:
        """The channel count given to ``setup``; 0 before."""
        return self._n

    @property
    def user_functions(self) -> tuple[object, ...]:
        """The user's functions this partitioner calls: none but for keyed and custom."""
        return ()

    def setup(self, number_of_channels: int) -> None:
        """Prepares the selector for an output with this many channels.

        Raises:
            ConfigurationError: ``number_of_channels`` is not within 1..32768.
        """
        _check_number_of_channels(number_of_channels)
        self._n = number_of_channels

    @abstractmethod
    def select_channel(self, record: T) -> int:
        """The channel of one record."""

    def split(self, records: Sequence[T]) -> list[list[T]]:
        """The records of each channel, in order, as ``select_channel`` routes them."""
        n = self._checked_channels()
        groups: list[list[T]] = [[] for _ in range(n)]
        appenders = [group.append for group in groups]
        select = self.select_channel
        for record in records:
            appenders[select(record)](record)
        return groups

    @abstractmethod
    def copy(self) -> StreamPartitioner[T]:
        """A fresh selector of the same kind and settings, not yet set up."""

    def _checked_channels(self) -> int:
        if not self._n:
            raise _not_set_up(self)
        return self._n

    def __str__(self) -> str:
        return self.display_name

    def __repr__(self) -> str:
        return f"{type(self).__name__}(channels={self._n})"


def _first_only(records: Sequence[T], n: int) -> list[list[T]]:
    groups: list[list[T]] = [list(records)]
    groups.extend([] for _ in range(n - 1))
    return groups


class ForwardPartitioner(StreamPartitioner[T]):
    """Every record to channel 0: the one consumer subtask paired with this producer."""

    reads_records = False
    __slots__ = ()
    display_name = "FORWARD"
    is_pointwise = True

    def select_channel(self, record: T) -> int:
        return 0

    def split(self, records: Sequence[T]) -> list[list[T]]:
        return _first_only(records, self._checked_channels())

    def copy(self) -> ForwardPartitioner[T]:
        return ForwardPartitioner()


class GlobalPartitioner(StreamPartitioner[T]):
    """Every record to channel 0: the first subtask of the consumer."""

    reads_records = False
    __slots__ = ()
    display_name = "GLOBAL"

    def select_channel(self, record: T) -> int:
        return 0

    def split(self, records: Sequence[T]) -> list[list[T]]:
        return _first_only(records, self._checked_channels())

    def copy(self) -> GlobalPartitioner[T]:
        return GlobalPartitioner()


class BroadcastPartitioner(StreamPartitioner[T]):
    """Every record to every channel; the writer broadcasts, so selection is an error."""

    reads_records = False
    __slots__ = ()
    display_name = "BROADCAST"
    is_broadcast = True

    def select_channel(self, record: T) -> int:
        raise IllegalStateError(BROADCAST_SELECT_MESSAGE)

    def split(self, records: Sequence[T]) -> list[list[T]]:
        raise IllegalStateError(BROADCAST_SELECT_MESSAGE)

    def copy(self) -> BroadcastPartitioner[T]:
        return BroadcastPartitioner()


class _RoundRobinPartitioner(StreamPartitioner[T]):
    """Channels in turn, one record each, after the channel in ``_next``."""

    reads_records = False
    __slots__ = ("_next",)

    def __init__(self) -> None:
        super().__init__()
        self._next = -1

    def select_channel(self, record: T) -> int:
        try:
            self._next = channel = (self._next + 1) % self._n
        except ZeroDivisionError:
            raise _not_set_up(self) from None
        return channel

    def split(self, records: Sequence[T]) -> list[list[T]]:
        n = self._checked_channels()
        batch = records if isinstance(records, list) else list(records)
        first = self._next + 1  # the channel of batch[0]; channel c starts at (c - first) % n
        groups = [batch[(channel - first) % n :: n] for channel in range(n)]
        self._next = (self._next + len(batch)) % n
        return groups


class RebalancePartitioner(_RoundRobinPartitioner[T]):
    """Round robin over all channels, starting at a random one so producers spread out.

    Args:
        seed: Seeds the choice of the first channel, for reproducible routing; by
            default it comes from the operating system's randomness.
    """

    __slots__ = ("_random", "_seed")
    display_name = "REBALANCE"

    def __init__(self, seed: int | None = None) -> None:
        super().__init__()
        self._seed = seed
        self._random = random.Random(seed)

    def setup(self, number_of_channels: int) -> None:
        super().setup(number_of_channels)
        # select_channel advances before it returns, as Flink's does: the first record
        # goes to the channel after the one drawn here.
        self._next = self._random.randrange(number_of_channels)

    def copy(self) -> RebalancePartitioner[T]:
        return RebalancePartitioner(self._seed)


class RescalePartitioner(_RoundRobinPartitioner[T]):
    """Round robin from channel 0 over the consumers this producer is connected to."""

    __slots__ = ()
    display_name = "RESCALE"
    is_pointwise = True

    def setup(self, number_of_channels: int) -> None:
        super().setup(number_of_channels)
        self._next = -1

    def copy(self) -> RescalePartitioner[T]:
        return RescalePartitioner()


def _random_not_set_up() -> float:
    msg = "ShufflePartitioner is used before setup(number_of_channels) was called"
    raise IllegalStateError(msg)


class ShufflePartitioner(StreamPartitioner[T]):
    """Each record to a uniformly random channel.

    Args:
        seed: Seeds the generator, for reproducible routing; by default it comes from
            the operating system's randomness.
    """

    reads_records = False
    __slots__ = ("_generator", "_random", "_seed")
    display_name = "SHUFFLE"

    def __init__(self, seed: int | None = None) -> None:
        super().__init__()
        self._seed = seed
        self._generator = random.Random(seed)
        # Until setup this raises, so select_channel needs no check of its own.
        self._random: Callable[[], float] = _random_not_set_up

    def setup(self, number_of_channels: int) -> None:
        super().setup(number_of_channels)
        self._random = self._generator.random

    def select_channel(self, record: T) -> int:
        # floor(u * n) of a 53-bit uniform u: the bias is below n / 2**53.
        return int(self._random() * self._n)

    def split(self, records: Sequence[T]) -> list[list[T]]:
        n = self._checked_channels()
        count = len(records)
        # iter(callable, sentinel) lets numpy call the generator in C; random() never
        # returns the sentinel, and count stops it. The same draws, times n and
        # truncated, as select_channel makes one by one.
        draws = np.fromiter(iter(self._random, -1.0), np.float64, count)
        draws *= n
        return _group(records, draws.astype(np.int32), n)

    def copy(self) -> ShufflePartitioner[T]:
        return ShufflePartitioner(self._seed)


class KeyGroupStreamPartitioner(StreamPartitioner[T]):
    """Records by key: equal keys always go to the same channel, in every process.

    The key's ``stable_hash`` is murmur-hashed into one of ``max_parallelism`` key
    groups, and each channel owns a contiguous range of key groups, as in Flink.
    ``select_channel`` remembers the channel of up to 16384 key hashes, since murmur
    hashing one in Python costs far more than a dict lookup; ``split`` hashes a batch
    with numpy instead.

    Args:
        key_selector: A function from record to key, or an object with ``get_key``.
        max_parallelism: The number of key groups: the most channels the keyed state
            can ever be spread over.

    Raises:
        ConfigurationError: ``max_parallelism`` is not within 1..32768.
    """

    __slots__ = ("_channel_of_hash", "_get_key", "_groups", "_key_selector", "_max_parallelism")
    display_name = "HASH"

    def __init__(
        self, key_selector: KeySelector[T], max_parallelism: int = DEFAULT_MAX_PARALLELISM
    ) -> None:
        super().__init__()
        if not 0 < max_parallelism <= UPPER_BOUND_MAX_PARALLELISM:
            reason = f"Number of key-groups not within 1..{UPPER_BOUND_MAX_PARALLELISM}"
            raise ConfigurationError(MAX_PARALLELISM_KEY, max_parallelism, reason)
        self._key_selector = key_selector
        self._get_key = _key_getter(key_selector)
        self._max_parallelism = max_parallelism
        # The divisor select_channel uses; 0 until setup, so that an unconfigured
        # partitioner fails on the division it does anyway.
        self._groups = 0
        self._channel_of_hash: dict[int, int] = {}

    @property
    def key_selector(self) -> KeySelector[T]:
        """The key selector, as given."""
        return self._key_selector

    @property
    def user_functions(self) -> tuple[object, ...]:
        return (self._key_selector,)

    @property
    def max_parallelism(self) -> int:
        """The number of key groups."""
        return self._max_parallelism

    def setup(self, number_of_channels: int) -> None:
        """Prepares the partitioner for an output with this many channels.

        Raises:
            ConfigurationError: There are more channels than key groups, or not
                within 1..32768.
        """
        _check_number_of_channels(number_of_channels)
        if number_of_channels > self._max_parallelism:
            reason = (
                f"The maximum parallelism ({self._max_parallelism}) must not be smaller "
                f"than the parallelism ({number_of_channels})."
            )
            raise ConfigurationError(MAX_PARALLELISM_KEY, self._max_parallelism, reason)
        super().setup(number_of_channels)
        self._groups = self._max_parallelism
        self._channel_of_hash.clear()

    def select_channel(self, record: T) -> int:
        # Murmur hashing costs about 1 us in Python (every step makes a multi-digit
        # int), a dict hit about 30 ns, and keyed streams repeat their keys.
        key_hash = _hash32(self._get_key(record))
        channel = self._channel_of_hash.get(key_hash)
        if channel is None:
            channel = self._channel_for_new_hash(key_hash)
        return channel

    def _channel_for_new_hash(self, key_hash: int) -> int:
        try:
            channel = murmur_hash(key_hash) % self._groups * self._n // self._groups
        except ZeroDivisionError:
            raise _not_set_up(self) from None
        memo = self._channel_of_hash
        if len(memo) >= _MEMO_LIMIT:
            memo.clear()  # bounded: start over rather than grow with the key space
        memo[key_hash] = channel
        return channel

    def split(self, records: Sequence[T]) -> list[list[T]]:
        n = self._checked_channels()
        keys = list(map(self._get_key, records))
        check_called_on_all(len(keys), len(records), self._get_key)
        return _group(records, channels_for_keys(keys, self._groups, n), n)

    def copy(self) -> KeyGroupStreamPartitioner[T]:
        return KeyGroupStreamPartitioner(self._key_selector, self._max_parallelism)

    def __repr__(self) -> str:
        return (
            f"KeyGroupStreamPartitioner(max_parallelism={self._max_parallelism}, "
            f"channels={self._n})"
        )


class CustomPartitionerWrapper(StreamPartitioner[T], Generic[K, T]):
    """Records by a user partitioner's choice for their key (``partition_custom``).

    Args:
        partitioner: A function ``(key, num_partitions) -> partition`` or an object with
            ``partition(key, num_partitions)``; it must return an int in
            ``range(num_partitions)``.
        key_selector: A function from record to key, or an object with ``get_key``.
    """

    __slots__ = ("_get_key", "_key_selector", "_partition", "_partition_function", "_partitioner")
    display_name = "CUSTOM"

    def __init__(self, partitioner: Partitioner[K], key_selector: KeySelector[T]) -> None:
        super().__init__()
        self._partitioner = partitioner
        self._partition_function = _partition_function(partitioner)
        # Until setup this raises, so the user's function never sees 0 partitions and
        # select_channel needs no check of its own.
        self._partition: Callable[[K, int], int] = self._not_set_up
        self._key_selector = key_selector
        # Typed as returning K: the user pairs the key selector with the partitioner.
        self._get_key: Callable[[T], K] = _key_getter(key_selector)  # type: ignore[assignment]

    @property
    def user_functions(self) -> tuple[object, ...]:
        return (self._partitioner, self._key_selector)

    def setup(self, number_of_channels: int) -> None:
        super().setup(number_of_channels)
        self._partition = self._partition_function

    def _not_set_up(self, key: K, num_partitions: int) -> int:
        raise _not_set_up(self)

    def select_channel(self, record: T) -> int:
        n = self._n
        channel = self._partition(self._get_key(record), n)
        if type(channel) is int and 0 <= channel < n:
            return channel
        return self._checked(channel)

    def split(self, records: Sequence[T]) -> list[list[T]]:
        n = self._checked_channels()
        # Lazy maps call get_key and partition record by record, in the same order as
        # select_channel would.
        channels = list(map(self._partition, map(self._get_key, records), repeat(n)))
        check_called_on_all(len(channels), len(records), self._get_key, self._partition)
        if channels and not (
            set(map(type, channels)) == {int} and min(channels) >= 0 and max(channels) < n
        ):
            channels = [self._checked(channel) for channel in channels]
        return _group(records, np.array(channels, dtype=np.int32), n)

    def _checked(self, channel: object) -> int:
        """``channel`` as a channel index, or the error naming it and the channel count."""
        n = self._n
        index = -1
        if isinstance(channel, SupportsIndex) and not isinstance(channel, bool):
            index = operator.index(channel)  # numpy integers are fine, floats are not
        if not 0 <= index < n:
            msg = (
                f"Custom partitioner {self._partitioner!r} returned partition {channel!r}, "
                f"but there are {n} channels: a partition must be an int in 0..{n - 1}."
            )
            raise IllegalStateError(msg)
        return index

    def copy(self) -> CustomPartitionerWrapper[K, T]:
        return CustomPartitionerWrapper(self._partitioner, self._key_selector)
