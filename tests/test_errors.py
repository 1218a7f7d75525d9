"""Failures travel between processes as text, whatever the exception looks like."""

from __future__ import annotations

import pytest

from penstock import JobExecutionError, StreamExecutionEnvironment
from penstock.errors import RemoteError


class Unprintable(Exception):
    def __str__(self) -> str:
        raise ValueError("no text for you")


def raised(error: BaseException) -> BaseException:
    """``error`` after a raise, so that it has a traceback."""
    try:
        raise error
    except BaseException as caught:  # any error is data here
        return caught


def test_an_exception_whose_str_fails_is_still_described() -> None:
    remote = RemoteError.from_exception(raised(Unprintable()))
    assert remote.type_name.endswith("Unprintable")
    assert remote.message == "<exception str() failed>"
    assert "raise error" in remote.traceback_text


def test_a_cause_chain_that_loops_ends_where_it_would_repeat() -> None:
    first, second = ValueError("a"), KeyError("b")
    first.__cause__ = second
    second.__cause__ = first
    remote = RemoteError.from_exception(raised(first))
    assert remote.message == "a"
    assert isinstance(remote.__cause__, RemoteError)
    assert remote.__cause__.message == "'b'"
    assert remote.__cause__.__cause__ is None


def test_a_remote_error_in_the_chain_keeps_its_own_causes() -> None:
    inner = RemoteError("builtins.OSError", "disk", "tb")
    inner.__cause__ = RemoteError("builtins.KeyError", "k")
    outer = RuntimeError("outer")
    outer.__cause__ = inner
    remote = RemoteError.from_exception(outer)
    assert remote.__cause__ is inner
    assert RemoteError.from_exception(inner) is inner


@pytest.mark.parametrize("target", ["local", "minicluster"])
def test_a_job_whose_failure_cannot_be_printed_fails_promptly(target: str) -> None:
    class Unprintable(Exception):  # here, so that it travels by value
        def __str__(self) -> str:
            raise ValueError("no text for you")

    def fails(value: object) -> object:
        if value == 5:
            error = Unprintable()
            error.__cause__ = KeyError("cause")
            error.__cause__.__cause__ = error  # and the chain loops
            raise error
        return value

    env = StreamExecutionEnvironment.get_execution_environment({"execution.target": target})
    env.from_sequence(1, 10).map(fails).add_sink(lambda value: None)
    with pytest.raises(JobExecutionError) as failure:
        env.execute("unprintable")
    cause = failure.value.__cause__
    assert isinstance(cause, RemoteError)
    assert cause.type_name.endswith("Unprintable")
    assert "fails" in cause.traceback_text


# -- user code that another process cannot read ---------------------------------------


def readable_only_in(pid: int, here: bool) -> type:
    """A class whose objects unpickle only in process ``pid`` (``here``) or only elsewhere.

    It stands for a class from a module that one side cannot import. Defined in a
    function, so that it travels by value.
    """

    def rebuild(origin: int) -> object:
        import os

        if (os.getpid() == origin) != here:
            raise ModuleNotFoundError("No module named 'user_helpers'")
        return Travelling(origin)

    class Travelling:
        def __init__(self, origin: int) -> None:
            self.origin = origin

        def __reduce__(self) -> tuple[object, tuple[int]]:
            return rebuild, (self.origin,)

    return Travelling


def test_user_code_a_taskmanager_cannot_read_fails_the_job_with_the_reason() -> None:
    import os

    unreadable_there = readable_only_in(os.getpid(), here=True)(os.getpid())
    env = StreamExecutionEnvironment.get_execution_environment(
        {"minicluster.number-of-taskmanagers": 2, "parallelism.default": 2}
    )
    env.from_sequence(1, 10).map(lambda value: (unreadable_there, value)[1]).add_sink(print)
    with pytest.raises(JobExecutionError, match="could not read the deployment") as failure:
        env.execute("unreadable function")
    cause = failure.value.__cause__
    assert isinstance(cause, RemoteError)
    assert isinstance(cause.__cause__, RemoteError)
    assert cause.__cause__.type_name == "builtins.ModuleNotFoundError"


def test_collected_records_the_client_cannot_read_fail_the_job_promptly() -> None:
    import os

    client = os.getpid()
    travelling = readable_only_in(client, here=False)

    def wrap(value: object) -> object:
        return travelling(client)

    env = StreamExecutionEnvironment.get_execution_environment(
        {"minicluster.number-of-taskmanagers": 2, "parallelism.default": 2}
    )
    stream = env.from_sequence(1, 1_000_000).rebalance().map(wrap)
    with pytest.raises(JobExecutionError, match="could not read the records") as failure:
        list(stream.execute_and_collect("unreadable records"))
    assert isinstance(failure.value.__cause__, ModuleNotFoundError)
