"""UnionInputGate: several input gates read as one, for tasks with several inputs."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future

from penstock.consumer.input_gate import CLOSED_GATE_MESSAGE, BufferOrEvent, InputGate
from penstock.errors import IllegalStateError, TaskCancelledError
from penstock.memory.availability import AvailabilityHelper, complete

__all__ = ["UnionInputGate"]


class UnionInputGate(InputGate):
    """Reads several gates as one, round robin over the gates that have data.

    Channel indices are offset so that they are unique across the union: the channels
    of the second gate follow those of the first, and so on. A gate that has nothing
    to read is watched through its availability future and queued again when it
    completes; nothing polls in a loop.
    """

    def __init__(self, gates: Sequence[InputGate], owner: str = "") -> None:
        if len(gates) < 2:
            msg = "a union input gate needs at least two gates"
            raise IllegalStateError(msg)
        self.owner = owner or gates[0].owner
        self.gates = list(gates)
        self._offsets: dict[int, int] = {}
        offset = 0
        for gate in self.gates:
            self._offsets[id(gate)] = offset
            offset += gate.num_channels
        self._num_channels = offset
        self._lock = threading.Lock()
        self._with_data: deque[InputGate] = deque()
        self._enqueued: set[int] = set()
        self._closed = False
        self._availability = AvailabilityHelper(available=False)
        for gate in self.gates:
            self._watch(gate)

    @property
    def num_channels(self) -> int:
        return self._num_channels

    def channel_offset(self, gate: InputGate) -> int:
        """Index of ``gate``'s first channel in the union."""
        return self._offsets[id(gate)]

    def request_partitions(self) -> None:
        for gate in self.gates:
            gate.request_partitions()

    def poll_next(self) -> BufferOrEvent | None:
        while True:
            with self._lock:
                if not self._with_data:
                    if not self.is_finished():
                        if self._closed:
                            raise TaskCancelledError(CLOSED_GATE_MESSAGE)
                        self._availability.reset_unavailable()
                    return None
                gate = self._with_data.popleft()
                self._enqueued.discard(id(gate))
            try:
                result = gate.poll_next()
            except BaseException:
                self._queue(gate)  # keep the failed gate queued: every later poll raises
                raise
            if result is None:
                if not gate.is_finished():
                    self._watch(gate)
                continue
            if result.more_available:
                self._queue(gate)
            elif not gate.is_finished():
                self._watch(gate)
            with self._lock:
                more = bool(self._with_data)
            return BufferOrEvent(
                result.buffer,
                result.event,
                result.channel_index + self._offsets[id(gate)],
                more,
            )

    def is_finished(self) -> bool:
        return all(gate.is_finished() for gate in self.gates)

    def get_available_future(self) -> Future[None]:
        return self._availability.get_available_future()

    def close(self) -> None:
        for gate in self.gates:
            gate.close()
        with self._lock:
            self._closed = True
            pending = self._availability.get_unavailable_to_reset_available()
        complete(pending)

    def _watch(self, gate: InputGate) -> None:
        gate.get_available_future().add_done_callback(lambda _: self._queue(gate))

    def _queue(self, gate: InputGate) -> None:
        with self._lock:
            if id(gate) in self._enqueued:
                return
            self._enqueued.add(id(gate))
            self._with_data.append(gate)
            to_complete = (
                self._availability.get_unavailable_to_reset_available()
                if len(self._with_data) == 1
                else None
            )
        if to_complete is not None:
            complete(to_complete)

    def __repr__(self) -> str:
        return f"UnionInputGate({self.owner!r}, gates={len(self.gates)})"
