"""TaskMailbox and MailboxProcessor: priorities, suspension and resumption, cancellation."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import pytest
from hypothesis import given
from hypothesis import strategies as st

from penstock.errors import IllegalStateError
from penstock.memory.availability import complete
from penstock.task.mailbox import (
    DEFAULT_PRIORITY,
    MAX_PRIORITY,
    Mail,
    MailboxController,
    MailboxProcessor,
    TaskMailbox,
)
from wait_helpers import signal_on_condition_wait

WAIT = 10.0


class CountingTimer:
    def __init__(self) -> None:
        self.starts = 0
        self.ends = 0

    def mark_start(self) -> None:
        self.starts += 1

    def mark_end(self) -> None:
        self.ends += 1


# -- TaskMailbox ------------------------------------------------------------------------


def test_mails_run_by_priority_then_fifo() -> None:
    mailbox = TaskMailbox()
    order: list[str] = []
    for name, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", 1)]:
        mailbox.put(Mail(lambda n=name: order.append(n), priority, name))  # type: ignore[misc]
    assert mailbox.size == 5
    while (mail := mailbox.try_take()) is not None:
        mail.run()
    assert order == ["b", "d", "e", "a", "c"]
    assert not mailbox.has_mail


@given(st.lists(st.tuples(st.integers(-3, 3), st.integers()), max_size=40))
def test_take_order_is_stable_sort_by_descending_priority(items: list[tuple[int, int]]) -> None:
    mailbox = TaskMailbox()
    for index, (priority, _) in enumerate(items):
        mailbox.put(Mail(lambda: None, priority, str(index)))
    taken = [mail.description for mail in mailbox.drain()]
    expected = [str(index) for index, _ in sorted(enumerate(items), key=lambda pair: -pair[1][0])]
    assert taken == expected


def test_try_take_respects_min_priority() -> None:
    mailbox = TaskMailbox()
    mailbox.put(Mail(lambda: None, DEFAULT_PRIORITY, "low"))
    assert mailbox.try_take(MAX_PRIORITY) is None
    mailbox.put(Mail(lambda: None, MAX_PRIORITY, "high"))
    high = mailbox.try_take(MAX_PRIORITY)
    assert high is not None and high.description == "high"
    low = mailbox.try_take()
    assert low is not None and low.description == "low"


def test_closed_mailbox_refuses_mails_and_wakes_taker(monkeypatch: pytest.MonkeyPatch) -> None:
    mailbox = TaskMailbox()
    waiting = signal_on_condition_wait(monkeypatch, mailbox._not_empty)
    taken: list[Mail | None] = []
    taker = threading.Thread(target=lambda: taken.append(mailbox.take()), daemon=True)
    taker.start()
    assert waiting.wait_for(1, WAIT)  # close() takes the lock only once the taker waits
    mailbox.close()
    taker.join(WAIT)
    assert not taker.is_alive()
    assert taken == [None]
    assert not mailbox.try_put(Mail(lambda: None))
    with pytest.raises(IllegalStateError, match="closed"):
        mailbox.put(Mail(lambda: None, description="late"))


def test_take_waits_for_a_mail_from_another_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    mailbox = TaskMailbox()
    waiting = signal_on_condition_wait(monkeypatch, mailbox._not_empty)
    mail = Mail(lambda: None, description="from elsewhere")
    taken: list[Mail | None] = []
    taker = threading.Thread(target=lambda: taken.append(mailbox.take()), daemon=True)
    taker.start()
    assert waiting.wait_for(1, WAIT)  # put() takes the lock only once the taker waits
    mailbox.put(mail)
    taker.join(WAIT)
    assert not taker.is_alive()
    assert taken == [mail]


# -- MailboxProcessor ------------------------------------------------------------------


def test_default_action_runs_until_all_actions_completed() -> None:
    steps: list[int] = []

    def action(controller: MailboxController) -> None:
        steps.append(len(steps))
        if len(steps) == 5:
            controller.all_actions_completed()

    MailboxProcessor(action).run_mailbox_loop()
    assert steps == [0, 1, 2, 3, 4]


def test_pending_mails_run_before_the_next_default_action_step() -> None:
    events: list[str] = []
    processor: MailboxProcessor

    def action(controller: MailboxController) -> None:
        events.append("step")
        if events.count("step") == 1:
            executor = processor.get_mailbox_executor()
            executor.execute(lambda: events.append("low"), "low")
            processor.get_mailbox_executor(MAX_PRIORITY).execute(lambda: events.append("high"))
        else:
            controller.all_actions_completed()

    processor = MailboxProcessor(action)
    processor.run_mailbox_loop()
    assert events == ["step", "high", "low", "step"]


def test_suspended_action_resumes_when_its_future_completes_elsewhere() -> None:
    future: Future[None] = Future()
    timer = CountingTimer()
    steps: list[str] = []
    waiting = threading.Event()

    def action(controller: MailboxController) -> None:
        if not steps:
            steps.append("suspend")
            suspension = controller.suspend_default_action(timer)
            future.add_done_callback(suspension.resume_on)
            waiting.set()
        else:
            steps.append("resumed")
            controller.all_actions_completed()

    processor = MailboxProcessor(action)
    loop = threading.Thread(target=processor.run_mailbox_loop)
    loop.start()
    assert waiting.wait(WAIT)
    assert not processor.is_default_action_available
    assert timer.starts == 1 and timer.ends == 0
    complete(future)  # from this thread: the resume travels as a mail
    loop.join(WAIT)
    assert not loop.is_alive()
    assert steps == ["suspend", "resumed"]
    assert (timer.starts, timer.ends) == (1, 1)


def test_resume_on_the_mailbox_thread_is_direct_and_idempotent() -> None:
    steps: list[str] = []

    def action(controller: MailboxController) -> None:
        if not steps:
            steps.append("suspend")
            suspension = controller.suspend_default_action()
            suspension.resume()
            suspension.resume()
            assert suspension.is_resumed
        else:
            steps.append("again")
            controller.all_actions_completed()

    processor = MailboxProcessor(action)
    processor.run_mailbox_loop()
    assert steps == ["suspend", "again"]
    assert not processor.mailbox.has_mail


def test_mails_run_while_suspended() -> None:
    ran = threading.Event()
    suspended = threading.Event()

    def action(controller: MailboxController) -> None:
        controller.suspend_default_action()
        suspended.set()

    processor = MailboxProcessor(action)
    loop = threading.Thread(target=processor.run_mailbox_loop)
    loop.start()
    assert suspended.wait(WAIT)
    processor.mailbox.put(Mail(ran.set, description="while suspended"))
    assert ran.wait(WAIT)
    processor.all_actions_completed()
    loop.join(WAIT)
    assert not loop.is_alive()


def test_double_suspension_is_an_error() -> None:
    def action(controller: MailboxController) -> None:
        controller.suspend_default_action()
        controller.suspend_default_action()

    with pytest.raises(IllegalStateError, match="already suspended"):
        MailboxProcessor(action).run_mailbox_loop()


def test_cancel_wakes_a_suspended_loop_and_stops_its_timer() -> None:
    timer = CountingTimer()
    suspended = threading.Event()

    def action(controller: MailboxController) -> None:
        controller.suspend_default_action(timer)
        suspended.set()

    processor = MailboxProcessor(action)
    loop = threading.Thread(target=processor.run_mailbox_loop)
    loop.start()
    assert suspended.wait(WAIT)
    processor.cancel()
    processor.cancel()
    loop.join(WAIT)
    assert not loop.is_alive()
    assert processor.is_cancelled
    assert (timer.starts, timer.ends) == (1, 1)


def test_cancel_stops_a_busy_loop_after_its_step() -> None:
    steps = 0
    processor: MailboxProcessor

    def action(controller: MailboxController) -> None:
        nonlocal steps
        steps += 1
        if steps == 3:
            processor.cancel()

    processor = MailboxProcessor(action)
    processor.run_mailbox_loop()
    assert steps == 3


def test_an_exception_in_a_mail_ends_the_loop() -> None:
    def action(controller: MailboxController) -> None:
        processor.mailbox.put(Mail(boom, description="boom"))

    def boom() -> None:
        msg = "mail failed"
        raise RuntimeError(msg)

    processor = MailboxProcessor(action)
    with pytest.raises(RuntimeError, match="mail failed"):
        processor.run_mailbox_loop()
