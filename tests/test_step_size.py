"""Steps of a chain stay within a time budget, so slow functions emit as they go."""

from __future__ import annotations

import threading

import pytest

from penstock import StreamExecutionEnvironment
from penstock.task.step_size import StepSize

WAIT_S = 10.0


def test_a_step_starts_at_one_record_and_doubles_while_cheap() -> None:
    step = StepSize(1000, budget_s=0.010)
    sizes = []
    for _ in range(12):
        sizes.append(step.size)
        step.update(step.size, 0.0001)
    assert sizes[:5] == [1, 2, 4, 8, 16]
    assert step.size == 1000  # never beyond the maximum


def test_a_slow_step_shrinks_the_next_in_proportion() -> None:
    step = StepSize(1000, budget_s=0.010)
    step.size = 1000
    step.update(1000, 0.100)  # ten times over budget
    assert step.size == 100
    step.update(100, 2.0)  # 20 ms per record: one record per step
    assert step.size == 1
    step.update(1, 0.020)
    assert step.size == 1


def test_a_step_in_budget_but_not_cheap_keeps_its_size() -> None:
    step = StepSize(1000, budget_s=0.010)
    step.size = 64
    step.update(64, 0.007)
    assert step.size == 64
    step.update(10, 0.001)  # a short step (the source ran dry) says nothing of the size
    assert step.size == 64


@pytest.mark.parametrize("bad", [(0, 0.01), (10, 0.0), (10, -1.0)])
def test_a_step_needs_a_maximum_and_a_budget(bad: tuple[int, float]) -> None:
    with pytest.raises(ValueError, match="a step needs"):
        StepSize(*bad)


PROCESSED: list[object] = []
FIRST_RESULT_SEEN = threading.Event()
"""Module-level, so that the local target's copy of ``gated`` (it travels by reference)
shares them with the test."""


def gated(value: object) -> object:
    """Works on record 1 at once, on the others only once the first result came out."""
    if value != 1 and not FIRST_RESULT_SEEN.wait(timeout=WAIT_S):
        msg = "the first result never came out while later records waited"
        raise TimeoutError(msg)
    PROCESSED.append(value)
    return value


@pytest.mark.parametrize("through_the_network", [False, True])
def test_a_function_emits_its_first_result_before_it_works_on_the_rest(
    through_the_network: bool,
) -> None:
    # A whole batch (200 records) would hold record 1 back until record 2 was done,
    # which waits for record 1: the job fails after WAIT_S instead.
    PROCESSED.clear()
    FIRST_RESULT_SEEN.clear()
    env = StreamExecutionEnvironment.get_execution_environment(
        {"execution.target": "local", "execution.buffer-timeout": "0 ms"}
    )
    stream = env.from_sequence(1, 200)
    if through_the_network:
        stream = stream.rebalance()  # a buffer's records are one list at the map
    results = stream.map(gated).execute_and_collect()
    first = next(results)
    done_when_first_arrived = list(PROCESSED)
    FIRST_RESULT_SEEN.set()
    rest = list(results)

    assert done_when_first_arrived == [1]
    assert [first, *rest] == list(range(1, 201))


def test_a_buffer_cut_into_slices_hands_each_record_down_once() -> None:
    from typing import cast

    from penstock.consumer.input_gate import InputGate
    from penstock.task.input_processor import StreamTaskNetworkInput

    slices: list[list[object]] = []
    network_input = StreamTaskNetworkInput(cast("InputGate", None), [], slices.append)
    network_input._step.size = 2  # cheap: the second slice may be 4, more than is left
    records: list[object] = list(range(4))
    network_input._process(records)
    assert [len(part) for part in slices] == [2, 2]
    assert [record for part in slices for record in part] == records
