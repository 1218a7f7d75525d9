"""CreditBasedReader: the sender's view of one remote input channel, sans-IO.

Theory of operation
-------------------
Each remote channel announces *credit*: how many buffers it has free to receive into.
It starts with its exclusive buffers (the credit in its PartitionRequest) and adds
more with AddCredit as buffers come free. The sender keeps one reader per channel:

* a **data** buffer may be sent only while ``credit > 0``, and sending it costs one
  credit (invariant 4: credit never goes negative);
* an **event** costs nothing and may be sent at any time, so end-of-partition and
  checkpoint barriers are never stuck behind exhausted credit;
* a reader with data but no credit is simply not served; its buffers stay queued in
  the subpartition, the producer's pool fills, and the producer is backpressured. The
  connection keeps serving every other channel.

Every BufferResponse carries the *backlog* (data buffers still queued behind it), so
the receiver can ask for floating buffers before they are needed.

The reader does no I/O and never waits: the network server asks it whether it can be
served (``is_available``) and for the next buffer (``get_next_buffer``), and it tells
the server through ``on_available`` when its subpartition has new data.
"""

from __future__ import annotations

from collections.abc import Callable

from penstock.buffer.buffer import DataType
from penstock.errors import IllegalStateError, LocalProtocolError
from penstock.ids import InputChannelID
from penstock.partition.subpartition import BufferAndBacklog
from penstock.partition.view import PipelinedSubpartitionView

__all__ = ["CreditBasedReader"]


class CreditBasedReader:
    """Serves one subpartition view to one remote channel, within its credit.

    Args:
        receiver_id: The remote channel's id (multiplexes the connection).
        initial_credit: The credit the PartitionRequest announced.
        on_available: Called (on the thread that noticed) when the view has new data.
    """

    def __init__(
        self,
        receiver_id: InputChannelID,
        initial_credit: int,
        on_available: Callable[[CreditBasedReader], None],
    ) -> None:
        if initial_credit < 0:
            msg = f"initial credit must not be negative, got {initial_credit}"
            raise LocalProtocolError(msg)
        self.receiver_id = receiver_id
        self.initial_credit = initial_credit
        self.credit = initial_credit
        self.view: PipelinedSubpartitionView | None = None
        self.subpartition_id = 0
        self.in_queue = False
        self.buffers_sent = 0
        self.events_sent = 0
        self._on_available = on_available
        self._released = False

    # -- set-up --------------------------------------------------------------------

    def attach(self, view: PipelinedSubpartitionView, subpartition_id: int) -> None:
        """Starts reading ``view`` (the reader is the view's availability listener)."""
        self.view = view
        self.subpartition_id = subpartition_id

    # -- BufferAvailabilityListener -----------------------------------------------

    def notify_data_available(self) -> None:
        if not self._released:
            self._on_available(self)

    # -- credit ----------------------------------------------------------------------

    def add_credit(self, credit: int) -> None:
        """AddCredit from the receiver.

        Raises:
            LocalProtocolError: ``credit`` is not positive (the peer broke the protocol).
        """
        if credit <= 0:
            msg = f"AddCredit must announce a positive credit, got {credit}"
            raise LocalProtocolError(msg)
        self.credit += credit

    def resume_consumption(self) -> None:
        """The receiver finished aligning on a blocking event: unblock the subpartition."""
        if self.view is not None:
            self.view.resume_consumption()

    # -- serving -------------------------------------------------------------------

    def is_available(self) -> bool:
        """Whether ``get_next_buffer`` would return something now."""
        view = self.view
        if view is None or self._released:
            return False
        if view.is_released:
            return True  # so the server polls it and sends the failure or the release
        return view.get_availability_and_backlog(self.credit > 0)[0]

    def backlog_to_announce(self) -> int:
        """The backlog to tell a receiver that has no credit by design, else 0.

        A receiver without exclusive buffers (initial credit 0) asks for floating ones
        only when it learns of a backlog. Once its credit is spent, data that waits for
        it must be announced (BacklogAnnouncement), or it would wait forever.
        """
        view = self.view
        if self.initial_credit or self.credit or view is None or self._released:
            return 0
        return 0 if view.is_released else view.get_availability_and_backlog(False)[1]

    def get_next_buffer(self) -> BufferAndBacklog | None:
        """The next buffer within credit, or None.

        Raises:
            IllegalStateError: A data buffer came up with no credit left (a bug: the
                caller must check ``is_available`` first).
            PenstockError: The view failed (producer failure or release).
        """
        view = self.view
        if view is None or self._released:
            return None
        if (
            self.credit <= 0
            and not view.is_released
            and not view.get_availability_and_backlog(False)[0]
        ):
            return None
        polled = view.get_next_buffer()
        if polled is None:
            return None
        if polled.buffer.is_buffer:
            if self.credit <= 0:
                polled.buffer.recycle()
                msg = f"no credit available for {self.receiver_id}"
                raise IllegalStateError(msg)
            self.credit -= 1
            self.buffers_sent += 1
        else:
            self.events_sent += 1
        return polled

    def has_more(self, polled: BufferAndBacklog) -> bool:
        """Whether to serve this reader again, judged by what its last poll found next.

        As in Flink's PartitionRequestQueue, the subpartition is not asked again: data
        that arrives later notifies the reader anew.
        """
        next_type = polled.next_data_type
        if next_type is DataType.NONE:
            return False
        return self.credit > 0 or next_type.is_event

    # -- teardown --------------------------------------------------------------------

    @property
    def is_released(self) -> bool:
        return self._released

    def release(self) -> None:
        """Stops serving; the view is released, which counts as consumed (idempotent)."""
        if self._released:
            return
        self._released = True
        if self.view is not None:
            self.view.release_all_resources()

    def __repr__(self) -> str:
        return (
            f"CreditBasedReader({self.receiver_id}, credit={self.credit}, "
            f"subpartition={self.subpartition_id})"
        )
