"""Steps of a chain stay within a time budget, so slow functions emit as they go."""

from __future__ import annotations

import time

import pytest

from penstock import StreamExecutionEnvironment
from penstock.task.step_size import StepSize


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
"""What ``slow`` processed: module-level, so the local target's copy of the function
(it travels by reference) shares it with the test."""


def slow(value: object) -> object:
    time.sleep(0.005)
    PROCESSED.append(value)
    return value


@pytest.mark.parametrize("through_the_network", [False, True])
def test_a_slow_function_emits_its_first_results_after_a_few_records(
    through_the_network: bool,
) -> None:
    PROCESSED.clear()
    env = StreamExecutionEnvironment.get_execution_environment(
        {"execution.target": "local", "execution.buffer-timeout": "0 ms"}
    )
    stream = env.from_sequence(1, 200)
    if through_the_network:
        stream = stream.rebalance()  # a buffer's records are one list at the map
    results = stream.map(slow).execute_and_collect()
    first = next(results)
    done_when_first_arrived = len(PROCESSED)
    rest = list(results)

    assert [first, *rest] == list(range(1, 201))
    # A whole batch would be 200 records: everything before anything comes out.
    assert done_when_first_arrived <= 20
