"""TaskMailbox and MailboxProcessor: the single-threaded loop every task runs.

Theory of operation
-------------------
A task does everything on one thread (Flink's mailbox model). Other threads never
touch the task's operators; they put **mails** (small actions) into its
``TaskMailbox``, and the task thread runs them between steps of its **default
action**, which processes input (one buffer per step) or, in a source, emits a batch.

``MailboxProcessor.run_mailbox_loop`` repeats::

    run every pending mail (highest priority first, FIFO within a priority)
    run the default action once

When the default action cannot make progress (the output has no buffer: soft
backpressure; the input has no data: idle) it *suspends* itself through the
``MailboxController`` and registers ``suspension.resume`` as a callback of the
availability future it waits for. While suspended the loop blocks on the mailbox, not
in a sleep: the resume arrives as a mail posted by the future's callback (or directly,
when the future completes on the task thread). Each suspension can carry a
``TimerGauge`` that measures the wait.

The loop ends when the default action reports all actions completed, when a mail
stops it, or when ``cancel()`` (any thread) closes the mailbox, which also wakes a
loop blocked on it.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from penstock.errors import IllegalStateError

__all__ = [
    "DEFAULT_PRIORITY",
    "MAX_PRIORITY",
    "Mail",
    "MailboxController",
    "MailboxExecutor",
    "MailboxProcessor",
    "Suspension",
    "TaskMailbox",
]

DEFAULT_PRIORITY: Final = 0
"""Priority of ordinary mails (Flink's MIN_PRIORITY)."""

MAX_PRIORITY: Final = 1 << 30
"""Priority of control mails that must run before anything else (cancellation, resume)."""


class IntervalTimer(Protocol):
    """Measures a wait: ``mark_start`` when it begins, ``mark_end`` when it ends."""

    def mark_start(self) -> None: ...

    def mark_end(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Mail:
    """An action for the task thread.

    Attributes:
        action: Runs on the task thread; an exception it raises fails the task.
        priority: Higher runs first; equal priorities run in the order they were put.
        description: Names the mail in logs and errors.
    """

    action: Callable[[], None]
    priority: int = DEFAULT_PRIORITY
    description: str = ""

    def run(self) -> None:
        self.action()


@dataclass(order=True, slots=True)
class _Entry:
    key: tuple[int, int]
    mail: Mail = field(compare=False)


class TaskMailbox:
    """A thread-safe queue of mails, ordered by priority then arrival.

    Any thread may ``put``; only the task thread takes. ``close()`` refuses new mails
    and wakes a thread blocked in ``take``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._heap: list[_Entry] = []
        self._sequence = itertools.count()
        self._closed = False

    @property
    def has_mail(self) -> bool:
        """Whether a mail is pending; a cheap, lock-free look for the hot loop."""
        return bool(self._heap)

    @property
    def size(self) -> int:
        return len(self._heap)

    @property
    def is_closed(self) -> bool:
        return self._closed

    def put(self, mail: Mail) -> None:
        """Queues ``mail``.

        Raises:
            IllegalStateError: The mailbox is closed.
        """
        if not self.try_put(mail):
            msg = f"the mailbox is closed; mail {mail.description!r} was not accepted"
            raise IllegalStateError(msg)

    def try_put(self, mail: Mail) -> bool:
        """Queues ``mail``; False (and nothing queued) if the mailbox is closed."""
        with self._lock:
            if self._closed:
                return False
            heapq.heappush(self._heap, _Entry((-mail.priority, next(self._sequence)), mail))
            self._not_empty.notify()
            return True

    def try_take(self, min_priority: int = DEFAULT_PRIORITY) -> Mail | None:
        """The next mail of at least ``min_priority``, or None without waiting."""
        with self._lock:
            return self._pop(min_priority)

    def take(self, min_priority: int = DEFAULT_PRIORITY) -> Mail | None:
        """The next mail of at least ``min_priority``, waiting for one; None once closed."""
        with self._lock:
            while True:
                mail = self._pop(min_priority)
                if mail is not None or self._closed:
                    return mail
                self._not_empty.wait()

    def drain(self) -> list[Mail]:
        """Removes and returns every pending mail, in the order they would run."""
        with self._lock:
            entries = sorted(self._heap)
            self._heap.clear()
        return [entry.mail for entry in entries]

    def close(self) -> None:
        """Refuses new mails and wakes the taker; pending mails stay takeable."""
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()

    def _pop(self, min_priority: int) -> Mail | None:
        heap = self._heap
        if heap and -heap[0].key[0] >= min_priority:
            return heapq.heappop(heap).mail
        return None


class Suspension:
    """A suspended default action; ``resume()`` (any thread, idempotent) resumes it."""

    __slots__ = ("_processor", "_resumed", "timer")

    def __init__(self, processor: MailboxProcessor, timer: IntervalTimer | None) -> None:
        self._processor = processor
        self.timer = timer
        self._resumed = False

    @property
    def is_resumed(self) -> bool:
        return self._resumed

    def resume(self) -> None:
        """Lets the default action run again: directly on the task thread, else by a mail."""
        if self._resumed:
            return
        processor = self._processor
        if processor.is_mailbox_thread():
            processor._resume(self)
        else:
            processor.mailbox.try_put(
                Mail(lambda: processor._resume(self), MAX_PRIORITY, "resume default action")
            )

    def resume_on(self, _: object) -> None:
        """``resume`` with the signature of a future's done-callback."""
        self.resume()


class MailboxController:
    """What the default action uses to steer the loop."""

    __slots__ = ("_processor",)

    def __init__(self, processor: MailboxProcessor) -> None:
        self._processor = processor

    def suspend_default_action(self, timer: IntervalTimer | None = None) -> Suspension:
        """Stops calling the default action until the returned suspension is resumed.

        ``timer`` (if given) measures the suspension: started now, ended on resume.
        """
        return self._processor._suspend(timer)

    def all_actions_completed(self) -> None:
        """The task has nothing left to do: the loop ends after the current step."""
        self._processor._running = False


class MailboxExecutor:
    """Submits actions to a task's mailbox with one priority (Flink's MailboxExecutor)."""

    __slots__ = ("_mailbox", "_priority")

    def __init__(self, mailbox: TaskMailbox, priority: int) -> None:
        self._mailbox = mailbox
        self._priority = priority

    def execute(self, action: Callable[[], None], description: str = "") -> None:
        """Queues ``action`` for the task thread.

        Raises:
            IllegalStateError: The mailbox is closed (the task is ending).
        """
        self._mailbox.put(Mail(action, self._priority, description))


DefaultAction = Callable[[MailboxController], None]
"""One step of the task's work; suspends itself through the controller when it must wait."""


class MailboxProcessor:
    """Runs a task's mailbox loop: mails first, then one step of the default action.

    Args:
        default_action: The task's work, one step per call.
        mailbox: The mailbox to serve (a new one by default).
    """

    def __init__(self, default_action: DefaultAction, mailbox: TaskMailbox | None = None) -> None:
        self.default_action = default_action
        self.mailbox = mailbox or TaskMailbox()
        self.controller = MailboxController(self)
        self._suspension: Suspension | None = None
        self._running = True
        self._cancelled = False
        self._thread: threading.Thread | None = None

    @property
    def is_default_action_available(self) -> bool:
        return self._suspension is None

    @property
    def is_running(self) -> bool:
        return self._running

    @property
    def is_cancelled(self) -> bool:
        return self._cancelled

    def is_mailbox_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def get_mailbox_executor(self, priority: int = DEFAULT_PRIORITY) -> MailboxExecutor:
        return MailboxExecutor(self.mailbox, priority)

    def run_mailbox_loop(self) -> None:
        """Runs mails and the default action until completed, stopped or cancelled.

        Raises:
            BaseException: Whatever a mail or the default action raised.
        """
        self._thread = threading.current_thread()
        mailbox = self.mailbox
        default_action = self.default_action
        controller = self.controller
        try:
            while self._running:
                if mailbox.has_mail or self._suspension is not None:
                    self._process_mail()
                    if not self._running:
                        break
                default_action(controller)
        finally:
            self._end_suspension()

    def all_actions_completed(self) -> None:
        """Ends the loop: at once on the task thread, else by a mail (any thread)."""
        if self.is_mailbox_thread():
            self._running = False
        else:
            self.mailbox.try_put(Mail(self._stop, MAX_PRIORITY, "all actions completed"))

    def cancel(self) -> None:
        """Stops the loop from any thread and wakes it if it waits on the mailbox."""
        self._cancelled = True
        self._running = False
        self.mailbox.close()

    def _process_mail(self) -> None:
        mailbox = self.mailbox
        while self._running:
            mail = mailbox.try_take()
            if mail is None:
                break
            mail.run()
        # While suspended, wait for mails: one of them resumes the default action.
        while self._running and self._suspension is not None:
            mail = mailbox.take()
            if mail is None:  # closed
                self._running = False
                return
            mail.run()

    def _stop(self) -> None:
        self._running = False

    def _suspend(self, timer: IntervalTimer | None) -> Suspension:
        if self._suspension is not None:
            msg = "the default action is already suspended"
            raise IllegalStateError(msg)
        suspension = Suspension(self, timer)
        if timer is not None:
            timer.mark_start()
        self._suspension = suspension
        return suspension

    def _resume(self, suspension: Suspension) -> None:
        if suspension._resumed:
            return
        suspension._resumed = True
        if suspension.timer is not None:
            suspension.timer.mark_end()
        if self._suspension is suspension:
            self._suspension = None

    def _end_suspension(self) -> None:
        suspension = self._suspension
        if suspension is not None:
            self._resume(suspension)
