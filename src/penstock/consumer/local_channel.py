"""LocalInputChannel: reads a subpartition of the same TaskManager, with no copy."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from penstock.consumer.input_channel import BufferAndAvailability, InputChannel
from penstock.errors import PartitionNotFoundError
from penstock.ids import ResultPartitionID
from penstock.partition.manager import ResultPartitionManager
from penstock.partition.view import PipelinedSubpartitionView

if TYPE_CHECKING:
    from penstock.consumer.input_gate import SingleInputGate

__all__ = ["LocalInputChannel"]

log = logging.getLogger(__name__)


class LocalInputChannel(InputChannel):
    """An input channel whose producer lives in this process.

    It reads the producer's subpartition view directly: the buffers it returns are
    slices of the producer's segments, recycled into the producer's pool when read. No
    credit and no input buffers are involved. If the partition is not registered yet
    (the producer is still starting), the request is retried with exponential backoff
    (``taskmanager.network.request-backoff.initial`` to ``.max``), and fails with
    ``PartitionNotFoundError`` once the backoff is exhausted.
    """

    def __init__(
        self,
        gate: SingleInputGate,
        channel_index: int,
        partition_id: ResultPartitionID,
        subpartition_index: int,
        partition_manager: ResultPartitionManager,
        initial_backoff_ms: int = 100,
        max_backoff_ms: int = 10_000,
    ) -> None:
        super().__init__(
            gate,
            channel_index,
            partition_id,
            subpartition_index,
            initial_backoff_ms,
            max_backoff_ms,
        )
        self.partition_manager = partition_manager
        self._view: PipelinedSubpartitionView | None = None
        self._lock = threading.Lock()
        self._retry_timer: threading.Timer | None = None

    def request_subpartition(self) -> None:
        with self._lock:
            if self._view is not None or self._released:
                return
            try:
                view = self.partition_manager.create_subpartition_view(
                    self.partition_id, self.subpartition_index, self
                )
            except PartitionNotFoundError as exc:
                if not self._increase_backoff():
                    self.set_error(exc)
                    return
                delay = self._current_backoff_ms / 1000
                log.debug("%s not found, retrying in %.3f s", self.partition_id, delay)
                self._retry_timer = threading.Timer(delay, self.request_subpartition)
                self._retry_timer.daemon = True
                self._retry_timer.start()
                return
            except Exception as exc:
                self.set_error(exc)
                return
            self._view = view
        # A subpartition that already holds data (or was released) says so from inside
        # create_subpartition_view, before the view is published above. A consumer
        # polling in between found nothing and dropped that notification, and the
        # subpartition will not repeat it until its data is read: say it again.
        if view.is_available() or view.is_released:
            self.notify_data_available()

    def get_next_buffer(self) -> BufferAndAvailability | None:
        self.check_error()
        view = self._view
        if view is None or self._released:
            return None
        polled = view.get_next_buffer()
        if polled is None:
            return None
        buffer = polled.buffer
        self.num_bytes_in += buffer.size
        self.num_buffers_in += 1
        return BufferAndAvailability(
            buffer, polled.next_data_type, polled.backlog, polled.sequence_number
        )

    def resume_consumption(self) -> None:
        if self._view is not None:
            self._view.resume_consumption()

    def release_all_resources(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
            if self._retry_timer is not None:
                self._retry_timer.cancel()
            view = self._view
        if view is not None:
            view.release_all_resources()

    def buffers_in_use(self) -> int:
        view = self._view
        return view.subpartition.queue_length if view is not None else 0
