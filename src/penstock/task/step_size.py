"""How many records one step hands to an operator chain: as many as fit a time budget.

Operators pass whole lists down a chain, so nothing a step computes is emitted before
the whole step is done. With cheap functions that is what makes a chain fast: a step of
a thousand records costs a millisecond. With a function that needs 20 ms per record it
would hold every result back for 20 s, where Flink emits each record as soon as it is
computed. ``StepSize`` keeps a step within a budget instead: a step that took longer
than the budget shrinks the next in proportion, one that took well under half of it
doubles the next, up to the maximum. It starts at one record, so the first results of a
slow chain come out at once; a cheap chain reaches the maximum within a few steps.

The time that counts is work, not waiting: a step blocked on backpressure says nothing
about how long its records take, so callers leave that time out where they can.
"""

from __future__ import annotations

from typing import Final

__all__ = ["STEP_BUDGET_FLUSH_ALWAYS_S", "STEP_BUDGET_S", "StepSize"]

STEP_BUDGET_S: Final = 0.010
"""The longest a step should take: what batching may add to a record's latency."""

STEP_BUDGET_FLUSH_ALWAYS_S: Final = 0.001
"""The budget with ``execution.buffer-timeout`` 0, where every record is flushed."""


class StepSize:
    """The number of records for the next step, adapted to how long steps take.

    Args:
        maximum: The largest step.
        budget_s: The longest a step should take, in seconds.
    """

    __slots__ = ("_budget_s", "maximum", "size")

    def __init__(self, maximum: int, budget_s: float = STEP_BUDGET_S) -> None:
        if maximum < 1 or budget_s <= 0:
            msg = f"a step needs a maximum >= 1 and a budget > 0, got {maximum} and {budget_s}"
            raise ValueError(msg)
        self.maximum = maximum
        self._budget_s = budget_s
        self.size = 1

    def update(self, records: int, busy_s: float) -> None:
        """A step of ``records`` records took ``busy_s`` seconds of work."""
        budget = self._budget_s
        if busy_s > budget:
            self.size = max(1, min(self.maximum, int(records * budget / busy_s)))
        elif busy_s * 2 < budget and records >= self.size:
            self.size = min(self.maximum, self.size * 2)
