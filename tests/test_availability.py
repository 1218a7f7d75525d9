"""Availability futures: ``complete``, ``any_of``, ``timer_future`` and ``AvailabilityHelper``."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import pytest
from hypothesis import given
from hypothesis import strategies as st

from penstock.memory.availability import (
    AVAILABLE,
    AvailabilityHelper,
    any_of,
    complete,
    timer_future,
)
from wait_helpers import signal_on_condition_wait

JOIN_TIMEOUT = 10.0


def _pending() -> Future[None]:
    return Future()


# -- complete -----------------------------------------------------------------------


def test_available_is_done() -> None:
    assert AVAILABLE.done()
    assert AVAILABLE.result() is None


def test_complete_completes_a_pending_future() -> None:
    future = _pending()
    complete(future)
    assert future.done()
    assert future.result() is None


def test_complete_is_idempotent() -> None:
    future = _pending()
    calls: list[None] = []
    future.add_done_callback(lambda _: calls.append(None))
    complete(future)
    complete(future)
    complete(AVAILABLE)
    assert future.done()
    assert calls == [None]


def test_complete_leaves_a_cancelled_future_alone() -> None:
    future = _pending()
    assert future.cancel()
    complete(future)
    assert future.cancelled()


@pytest.mark.parametrize("round_", range(5))
def test_complete_is_safe_under_racing_threads(round_: int) -> None:
    threads_count = 8
    future = _pending()
    callbacks: list[int] = []
    future.add_done_callback(lambda _: callbacks.append(round_))
    barrier = threading.Barrier(threads_count)
    errors: list[BaseException] = []

    def racer() -> None:
        try:
            barrier.wait(timeout=JOIN_TIMEOUT)
            for _ in range(50):
                complete(future)
        except BaseException as exc:  # collected and re-checked in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=racer) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
        assert not thread.is_alive()
    assert errors == []
    assert future.done()
    assert callbacks == [round_]


# -- any_of -------------------------------------------------------------------------


def test_any_of_is_done_at_once_when_one_is_done() -> None:
    combined = any_of([_pending(), AVAILABLE, _pending()])
    assert combined.done()


def test_any_of_waits_for_the_first() -> None:
    first, second, third = _pending(), _pending(), _pending()
    combined = any_of([first, second, third])
    assert not combined.done()
    complete(second)
    assert combined.done()
    # Later completions of the others do not disturb the combined future.
    complete(first)
    complete(third)
    assert combined.result() is None


def test_any_of_accepts_an_iterator() -> None:
    first, second = _pending(), _pending()
    combined = any_of(iter([first, second]))
    assert not combined.done()
    complete(first)
    assert combined.done()


def test_any_of_completes_on_a_cancelled_input() -> None:
    first, second = _pending(), _pending()
    combined = any_of([first, second])
    first.cancel()
    assert combined.done()
    assert combined.result() is None


def test_any_of_completed_from_another_thread() -> None:
    futures = [_pending() for _ in range(4)]
    combined = any_of(futures)
    thread = threading.Thread(target=complete, args=(futures[2],))
    thread.start()
    assert combined.result(timeout=JOIN_TIMEOUT) is None
    thread.join(JOIN_TIMEOUT)
    assert not thread.is_alive()


@given(count=st.integers(1, 6), data=st.data())
def test_any_of_completes_iff_some_input_is_done(count: int, data: st.DataObject) -> None:
    futures = [_pending() for _ in range(count)]
    done_before = data.draw(st.sets(st.integers(0, count - 1)), label="done before")
    for index in done_before:
        complete(futures[index])
    combined = any_of(futures)
    assert combined.done() == bool(done_before)
    done_after = data.draw(st.sets(st.integers(0, count - 1)), label="done after")
    for index in done_after:
        complete(futures[index])
    assert combined.done() == bool(done_before | done_after)


# -- timer_future -------------------------------------------------------------------


def test_timer_future_completes() -> None:
    future, timer = timer_future(0.0)
    assert future.result(timeout=JOIN_TIMEOUT) is None
    timer.join(JOIN_TIMEOUT)
    assert not timer.is_alive()
    assert timer.daemon


def test_cancelled_timer_never_completes_its_future() -> None:
    future, timer = timer_future(3600.0)
    assert not future.done()
    timer.cancel()
    timer.join(JOIN_TIMEOUT)
    assert not timer.is_alive()
    assert not future.done()


def test_timer_future_combines_with_any_of() -> None:
    never = _pending()
    deadline, timer = timer_future(0.0)
    assert any_of([never, deadline]).result(timeout=JOIN_TIMEOUT) is None
    timer.join(JOIN_TIMEOUT)
    assert not never.done()


# -- AvailabilityHelper -------------------------------------------------------------


def test_helper_starts_unavailable_by_default() -> None:
    helper = AvailabilityHelper()
    assert not helper.is_available()
    assert not helper.get_available_future().done()


def test_helper_can_start_available() -> None:
    helper = AvailabilityHelper(available=True)
    assert helper.is_available()
    assert helper.get_available_future().done()


def test_reset_unavailable_keeps_a_pending_future() -> None:
    helper = AvailabilityHelper()
    pending = helper.get_available_future()
    helper.reset_unavailable()
    assert helper.get_available_future() is pending


def test_reset_unavailable_after_available_gives_a_fresh_future() -> None:
    helper = AvailabilityHelper(available=True)
    helper.reset_unavailable()
    future = helper.get_available_future()
    assert not future.done()
    assert future is not AVAILABLE
    assert AVAILABLE.done()


def test_get_unavailable_to_reset_available_hands_over_the_pending_future() -> None:
    helper = AvailabilityHelper()
    pending = helper.get_available_future()
    calls: list[None] = []
    pending.add_done_callback(lambda _: calls.append(None))
    to_complete = helper.get_unavailable_to_reset_available()
    assert to_complete is pending
    assert helper.is_available()
    # The caller completes it (outside its lock): the waiter wakes only then.
    assert calls == []
    complete(to_complete)
    assert calls == [None]


def test_notify_available_wakes_waiters() -> None:
    helper = AvailabilityHelper()
    waiter = helper.get_available_future()
    helper.notify_available()
    assert waiter.done()
    assert helper.is_available()
    helper.notify_available()  # idempotent
    assert helper.is_available()


def test_helper_cycles_between_states() -> None:
    helper = AvailabilityHelper(available=True)
    seen: list[Future[None]] = []
    for _ in range(3):
        helper.reset_unavailable()
        pending = helper.get_available_future()
        assert not pending.done()
        assert pending not in seen
        seen.append(pending)
        helper.notify_available()
        assert pending.done()
    assert all(future.done() for future in seen)


def test_helper_wakes_a_thread_blocked_on_the_future(monkeypatch: pytest.MonkeyPatch) -> None:
    helper = AvailabilityHelper()
    future = helper.get_available_future()
    # Future.result() waits on this condition; completing the future notifies it.
    waiting = signal_on_condition_wait(monkeypatch, future._condition)
    woke = threading.Event()

    def waiter() -> None:
        # No timeout: a timed wait that runs out returns too once the future is done,
        # and would hide a completion that never woke the waiter.
        future.result()
        woke.set()

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    assert waiting.wait_for(1, JOIN_TIMEOUT)
    assert not woke.is_set()
    helper.notify_available()
    assert woke.wait(JOIN_TIMEOUT)
    thread.join(JOIN_TIMEOUT)
    assert not thread.is_alive()
