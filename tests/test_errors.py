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
