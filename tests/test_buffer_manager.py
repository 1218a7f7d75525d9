"""BufferManager: exclusive and floating buffers of a remote channel, and its credit.

A real NetworkBufferPool and a gate LocalBufferPool (min 1, max 8) back the managers; a
recording channel stands in for the RemoteInputChannel and adds up the credit it is told
about. The stateful model checks at every step that the credit announced to a channel
(initial credit + notifications - buffers received) is exactly the number of free
segments its manager holds, and that no segment is lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from penstock.buffer.buffer import Buffer
from penstock.consumer.buffer_manager import BufferManager
from penstock.memory.local_pool import LocalBufferPool
from penstock.memory.network_pool import NetworkBufferPool
from penstock.memory.segment import MemorySegment

if TYPE_CHECKING:
    from penstock.consumer.remote_channel import RemoteInputChannel

SEGMENT_SIZE = 16
INITIAL_CREDIT = 2
FLOATING_MAX = 8


class RecordingChannel:
    """Stands in for a RemoteInputChannel: records each credit notification."""

    def __init__(self) -> None:
        self.notifications: list[int] = []

    def notify_buffer_available(self, count: int) -> None:
        assert count > 0, "a credit notification must announce at least one buffer"
        self.notifications.append(count)

    @property
    def announced(self) -> int:
        return sum(self.notifications)


@dataclass(slots=True)
class Setup:
    network: NetworkBufferPool
    pool: LocalBufferPool
    channels: list[RecordingChannel]
    managers: list[BufferManager]

    def receive(self, index: int, size: int = 4) -> Buffer:
        """A data buffer received into a free segment of manager ``index``."""
        manager = self.managers[index]
        segment = manager.take_segment()
        assert segment is not None
        return manager.wrap(segment, size)

    def close(self) -> None:
        for manager in self.managers:
            manager.release()
        self.pool.destroy()
        assert self.network.available_segments == self.network.total_segments
        assert self.network.required_segments == 0


def make_setup(num_managers: int = 1, total: int = 32) -> Setup:
    network = NetworkBufferPool(total, SEGMENT_SIZE)
    pool = network.create_buffer_pool(1, FLOATING_MAX)
    channels = [RecordingChannel() for _ in range(num_managers)]
    managers = [
        BufferManager(cast("RemoteInputChannel", channel), network, pool, INITIAL_CREDIT)
        for channel in channels
    ]
    for manager in managers:
        manager.request_exclusive_segments()
    return Setup(network, pool, channels, managers)


def test_exclusive_segments_are_taken_at_setup() -> None:
    network = NetworkBufferPool(16, SEGMENT_SIZE)
    channel = RecordingChannel()
    manager = BufferManager(cast("RemoteInputChannel", channel), network, None, 3)
    assert manager.available == 0
    manager.request_exclusive_segments()
    assert (manager.available, manager.floating_held, manager.required) == (3, 0, 3)
    assert network.available_segments == 13
    assert network.required_segments == 3  # reserved: no local pool can claim them
    assert channel.notifications == []  # the initial credit travels in the PartitionRequest
    manager.release()
    assert network.available_segments == 16
    assert network.required_segments == 0


def test_sender_backlog_borrows_floating_segments() -> None:
    setup = make_setup()
    manager, channel = setup.managers[0], setup.channels[0]
    manager.on_sender_backlog(5)
    assert manager.required == 5 + INITIAL_CREDIT
    assert (manager.available, manager.floating_held) == (7, 5)
    assert channel.notifications == [5]  # one notification for the whole batch
    manager.on_sender_backlog(3)  # holds more than needed now: nothing borrowed
    assert (manager.available, channel.notifications) == (7, [5])
    setup.close()


def test_floating_segments_are_capped_by_the_gate_pool() -> None:
    setup = make_setup()
    manager, channel = setup.managers[0], setup.channels[0]
    manager.on_sender_backlog(20)
    assert manager.required == 22
    assert manager.floating_held == FLOATING_MAX
    assert manager.available == FLOATING_MAX + INITIAL_CREDIT
    assert channel.announced == FLOATING_MAX
    assert setup.pool.available_segments == 0
    setup.close()


def test_a_waiting_channel_gets_the_segment_another_channel_recycles() -> None:
    setup = make_setup(num_managers=2)
    first, second = setup.managers
    first.on_sender_backlog(FLOATING_MAX)  # takes every floating segment
    assert first.floating_held == FLOATING_MAX
    second.on_sender_backlog(3)  # none left: registers as a listener of the pool
    assert second.available == INITIAL_CREDIT
    assert setup.channels[1].notifications == []
    buffer = setup.receive(0)  # a floating segment of the first channel...
    assert first.floating_held == FLOATING_MAX - 1
    buffer.recycle()  # ...read and recycled goes to the waiting channel
    assert second.floating_held == 1
    assert setup.channels[1].notifications == [1]
    assert setup.pool.available_segments == 0
    setup.close()


def test_a_listener_that_no_longer_needs_a_segment_refuses_it() -> None:
    setup = make_setup(num_managers=2)
    first, second = setup.managers
    first.on_sender_backlog(FLOATING_MAX)
    second.on_sender_backlog(3)  # registered
    second.on_sender_backlog(0)  # the backlog went away meanwhile
    buffer = setup.receive(0)
    buffer.recycle()
    assert second.floating_held == 0
    assert setup.channels[1].notifications == []
    assert setup.pool.available_segments == 1  # the pool kept it
    setup.close()


def test_recycling_an_exclusive_segment_gives_one_credit() -> None:
    setup = make_setup()
    manager, channel = setup.managers[0], setup.channels[0]
    buffer = setup.receive(0)
    assert manager.available == INITIAL_CREDIT - 1
    buffer.recycle()
    assert manager.available == INITIAL_CREDIT
    assert channel.notifications == [1]
    setup.close()


def test_a_recycled_floating_segment_is_kept_while_the_channel_is_short() -> None:
    setup = make_setup()
    manager, channel = setup.managers[0], setup.channels[0]
    manager.on_sender_backlog(3)  # 2 exclusive + 3 floating
    assert channel.notifications == [3]
    # Receiving takes floating segments first, so the fourth one is exclusive.
    received = [setup.receive(0) for _ in range(4)]
    assert (manager.available, manager.floating_held) == (1, 0)
    pool_free = setup.pool.available_segments
    received[0].recycle()  # floating, and 1 free of 5 needed: kept, one more credit
    assert (manager.available, manager.floating_held) == (2, 1)
    assert channel.notifications == [3, 1]
    assert setup.pool.available_segments == pool_free
    manager.on_sender_backlog(0)  # need 2 free, and 2 are
    received[1].recycle()  # floating, not needed: back to the gate pool
    assert (manager.available, manager.floating_held) == (2, 1)
    assert setup.pool.available_segments == pool_free + 1
    received[3].recycle()  # exclusive: 3 free but 2 needed, so a floating one goes back
    assert (manager.available, manager.floating_held) == (2, 0)
    assert channel.notifications == [3, 1]  # no new credit: one in, one out
    assert setup.pool.available_segments == pool_free + 2
    received[2].recycle()
    assert setup.pool.available_segments == pool_free + 3
    setup.close()


def test_a_floating_segment_goes_back_to_a_pool_that_shrank() -> None:
    setup = make_setup()
    manager = setup.managers[0]
    manager.on_sender_backlog(FLOATING_MAX)
    buffer = setup.receive(0)  # floating
    setup.pool.set_num_buffers(1)  # the pool holds more than its size now
    assert setup.pool.wants_segment_back(manager)
    buffer.recycle()
    assert manager.floating_held == FLOATING_MAX - 1
    assert setup.pool.requested_segments == FLOATING_MAX - 1  # returned to the network
    setup.close()


def test_release_returns_free_segments_now_and_used_ones_when_recycled() -> None:
    setup = make_setup()
    manager = setup.managers[0]
    manager.on_sender_backlog(4)
    received = [setup.receive(0) for _ in range(6)]  # 4 floating + 2 exclusive, all in use
    assert manager.available == 0
    manager.release()
    manager.release()  # idempotent
    assert manager.available == 0
    manager.on_sender_backlog(5)  # ignored after release
    assert manager.available == 0
    assert setup.channels[0].notifications == [4]
    for buffer in received:
        buffer.recycle()
    assert manager.available == 0  # nothing is taken back after release
    setup.pool.destroy()
    assert setup.network.available_segments == setup.network.total_segments
    assert setup.network.required_segments == 0


def test_release_while_waiting_for_a_floating_segment() -> None:
    setup = make_setup(num_managers=2)
    first, second = setup.managers
    first.on_sender_backlog(FLOATING_MAX)
    second.on_sender_backlog(2)  # registered as a listener
    second.release()
    buffer = setup.receive(0)
    buffer.recycle()  # offered to the released manager, refused, kept by the pool
    assert setup.pool.available_segments == 1
    assert setup.channels[1].notifications == []
    setup.close()


def test_destroying_the_gate_pool_stops_the_waiting() -> None:
    setup = make_setup(num_managers=2)
    first, second = setup.managers
    first.on_sender_backlog(FLOATING_MAX)
    second.on_sender_backlog(2)  # registered
    setup.pool.destroy()
    second.on_sender_backlog(3)  # a destroyed pool is not asked again
    assert second.floating_held == 0
    first.release()
    second.release()
    assert setup.network.available_segments == setup.network.total_segments
    assert setup.network.required_segments == 0


def test_without_a_floating_pool_only_exclusive_segments_are_used() -> None:
    network = NetworkBufferPool(8, SEGMENT_SIZE)
    channel = RecordingChannel()
    manager = BufferManager(cast("RemoteInputChannel", channel), network, None, 2)
    manager.request_exclusive_segments()
    manager.on_sender_backlog(10)
    assert (manager.available, manager.required) == (2, 12)
    segment = manager.take_segment()
    assert segment is not None
    manager.wrap(segment, 3).recycle()
    assert channel.notifications == [1]
    manager.release()
    assert network.available_segments == 8


# -- the stateful model ------------------------------------------------------------------


class BufferManagerMachine(RuleBasedStateMachine):
    """Three channels of one gate share a floating pool; buffers come in and are read.

    "receive" is what the network thread does for a BufferResponse: take a free segment
    (only if the sender had credit for it, i.e. the manager holds a free one) and apply
    the backlog it carries. "read" recycles a received buffer, in any order.
    """

    NUM = 3

    def __init__(self) -> None:
        super().__init__()
        # Enough for every exclusive segment and a full floating pool: the gate pool
        # reaches its maximum size, so "pool empty" means the pool is at its size.
        self.network = NetworkBufferPool(self.NUM * INITIAL_CREDIT + FLOATING_MAX + 2, 16)
        self.pool = self.network.create_buffer_pool(1, FLOATING_MAX)
        self.channels = [RecordingChannel() for _ in range(self.NUM)]
        self.managers = [
            BufferManager(
                cast("RemoteInputChannel", channel), self.network, self.pool, INITIAL_CREDIT
            )
            for channel in self.channels
        ]
        for manager in self.managers:
            manager.request_exclusive_segments()
        self.taken = [0] * self.NUM
        self.in_use: list[Buffer] = []
        self.released = [False] * self.NUM

    def _live(self) -> list[int]:
        return [i for i in range(self.NUM) if not self.released[i]]

    @rule(index=st.integers(0, NUM - 1), backlog=st.integers(0, 12))
    def sender_backlog(self, index: int, backlog: int) -> None:
        manager = self.managers[index]
        manager.on_sender_backlog(backlog)
        if self.released[index]:
            return
        assert manager.required == backlog + INITIAL_CREDIT
        # Borrowed until satisfied, or the pool had nothing left (then it waits).
        assert manager.available >= manager.required or self.pool.available_segments == 0

    @rule(index=st.integers(0, NUM - 1), backlog=st.integers(0, 12), size=st.integers(1, 16))
    def receive(self, index: int, backlog: int, size: int) -> None:
        manager = self.managers[index]
        if self.released[index] or manager.available == 0:
            return  # no credit: the sender sends nothing
        segment = manager.take_segment()
        assert segment is not None
        self.taken[index] += 1
        self.in_use.append(manager.wrap(segment, size))
        self.sender_backlog(index, backlog)

    @precondition(lambda self: bool(self.in_use))
    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        position = data.draw(st.integers(0, len(self.in_use) - 1))
        self.in_use.pop(position).recycle()

    @precondition(lambda self: len(self._live()) > 1)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        index = data.draw(st.sampled_from(self._live()))
        self.managers[index].release()
        self.released[index] = True
        assert self.managers[index].available == 0

    @invariant()
    def announced_credit_is_the_free_segments_held(self) -> None:
        for index in self._live():
            announced = INITIAL_CREDIT + self.channels[index].announced - self.taken[index]
            assert announced == self.managers[index].available

    @invariant()
    def no_segment_is_lost(self) -> None:
        held = sum(manager.available for manager in self.managers)
        assert (
            self.network.available_segments + self.pool.available_segments + held + len(self.in_use)
            == self.network.total_segments
        )

    @invariant()
    def no_free_floating_segment_while_a_channel_is_short(self) -> None:
        if self.pool.available_segments > 0:
            for index in self._live():
                manager = self.managers[index]
                assert manager.available >= manager.required

    def teardown(self) -> None:
        for manager in self.managers:
            manager.release()
        for buffer in self.in_use:
            buffer.recycle()
        self.pool.destroy()
        assert self.network.available_segments == self.network.total_segments
        assert self.network.required_segments == 0


BufferManagerMachine.TestCase.settings = settings(max_examples=120, stateful_step_count=40)
TestBufferManagerModel = BufferManagerMachine.TestCase


# -- listeners and segments that come free without a recycle ------------------------------


class OfferRecorder:
    """A floating-buffer listener that takes (or refuses) what it is offered."""

    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.offered: list[Buffer] = []

    def notify_buffer_available(self, buffer: Buffer) -> bool:
        self.offered.append(buffer)
        return self.accept

    def notify_buffer_destroyed(self) -> None:
        pass


def exhausted_gate_pool() -> tuple[NetworkBufferPool, LocalBufferPool, list[MemorySegment]]:
    """A gate pool whose one segment is in use while other pools hold all the rest."""
    network = NetworkBufferPool(10, 1024)
    pool = network.create_buffer_pool(1, 8)
    held: list[MemorySegment] = []
    while (segment := network.request_pooled_segment()) is not None:
        held.append(segment)
    while (segment := pool.request_memory_segment()) is not None:
        held.append(segment)
    return network, pool, held


def test_a_listener_gets_a_segment_the_pool_takes_from_the_global_pool() -> None:
    network, pool, held = exhausted_gate_pool()
    refusing, listener = OfferRecorder(accept=False), OfferRecorder()
    assert pool.add_buffer_listener(refusing)
    assert pool.add_buffer_listener(listener)

    network.recycle(held.pop())  # free again, globally

    # Refused by the first listener, taken by the second: none lies idle in the pool.
    assert (len(refusing.offered), len(listener.offered)) == (1, 1)
    assert pool.available_segments == 0
    listener.offered[0].recycle()
    assert pool.available_segments == 1


def test_a_listener_gets_a_segment_when_the_pool_grows() -> None:
    network = NetworkBufferPool(10, 1024)
    pool = network.create_buffer_pool(1, 8)
    pool.set_num_buffers(1)
    first = pool.request_memory_segment()
    assert first is not None and pool.request_memory_segment() is None
    listener = OfferRecorder()
    assert pool.add_buffer_listener(listener)

    pool.set_num_buffers(2)

    assert len(listener.offered) == 1
    assert pool.available_segments == 0
